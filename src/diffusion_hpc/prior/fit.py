"""Fit the Anny pose prior (:mod:`diffusion_hpc.prior.anny_prior`) on a pose corpus.

Procedure (deterministic given ``seed``):

1. Features: 6D rotations of the 20 articulated bones (D = 120), see
   :func:`~diffusion_hpc.prior.anny_prior.pose_features`.
2. Groups for held-out evaluation: one group per performer / skeleton (CMU subject numbers with
   the same-skeleton pairs :data:`CMU_SAME_SKELETON` merged), else per source file; groups are
   dealt into ``folds`` folds of similar size.
3. Model selection: for every candidate (PCA dims d, mixture components k, residual variance
   scale s, :data:`DEFAULT_CANDIDATES`) fit PCA + EM on the
   training folds and record the mean held-out log-likelihood per pose (nats, 120-D features).
   The candidate with the highest value wins (ties within 0.5 nats go to fewer parameters).
4. Calibration on the out-of-fold scores of the winner: ``plausible_threshold`` = 99.5th
   percentile; ``hard_threshold`` = the score maximising balanced accuracy between the easy and
   hard activity sets (:func:`~diffusion_hpc.prior.anny_prior.label_easy_hard`); the held-out
   accuracy is estimated by choosing the threshold without each fold and testing on it.
5. The final model is fitted on all poses and written with its metadata (safetensors).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from diffusion_hpc.errors import ConfigError, InputError
from diffusion_hpc.prior.anny_prior import (
    ARTICULATED_BONES,
    ARTICULATED_INDEX,
    EASY_KEYWORDS,
    HARD_KEYWORDS,
    label_easy_hard,
    pose_features,
    save_prior_file,
)

#: CMU subject numbers recorded with the same skeleton (same performer and calibration).
CMU_SAME_SKELETON = ((18, 20), (19, 21), (63, 64), (77, 139), (78, 102), (83, 122), (91, 105), (93, 103), (106, 141))
#: Candidate grid: (PCA dims d, mixture components k, residual variance scale s). The residual
#: variance is s times the probabilistic-PCA estimate (s > 1 gives heavier residual tails, which
#: new skeletons need: held-out log-likelihood chooses s like the other two).
DEFAULT_CANDIDATES = (
    (24, 1, 1.0), (24, 1, 3.0), (24, 4, 3.0),
    (40, 1, 1.0), (40, 1, 3.0), (40, 2, 3.0), (40, 4, 3.0),
    (60, 1, 1.0), (60, 1, 3.0), (60, 2, 3.0), (60, 4, 3.0), (60, 1, 10.0),
)
VERSION = 1
TIE_NATS = 0.5


# --------------------------------------------------------------------------- pure numpy maths


def pca(x: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """PCA of (N, D) data: (mean (D,), basis (D, d), residual variance σ², eigenvalues (D,)).

    σ² is the mean of the discarded eigenvalues (the probabilistic-PCA estimate), floored at
    1e-6 times the largest one.
    """
    mean = x.mean(0)
    cov = np.cov(x - mean, rowvar=False, bias=True)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
    # Fix the sign of each axis (deterministic across platforms).
    signs = np.sign(evecs[np.argmax(np.abs(evecs), axis=0), np.arange(evecs.shape[1])])
    evecs = evecs * np.where(signs == 0, 1.0, signs)
    rest = evals[d:]
    sigma2 = float(max(rest.mean() if rest.size else 0.0, 1e-6 * evals[0]))
    return mean, evecs[:, :d], sigma2, evals


def _log_gauss(y: np.ndarray, means: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """(N, K) log N(y_n; μ_k, L_k L_kᵀ)."""
    n, d = y.shape
    out = np.empty((n, means.shape[0]))
    for k in range(means.shape[0]):
        sol = np.linalg.solve(chol[k], (y - means[k]).T)  # triangular, small d
        out[:, k] = -0.5 * ((sol**2).sum(0) + 2.0 * np.log(np.diag(chol[k])).sum() + d * math.log(2 * math.pi))
    return out


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def fit_gmm(
    y: np.ndarray, k: int, rng: np.random.Generator, reg: float = 0.05, iters: int = 200, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for a full-covariance Gaussian mixture on (N, d) data.

    Each covariance gets ``reg`` times the per-dimension data variance added to its diagonal
    (ridge regularisation); initialisation by k-means++ seeding with ``rng``.
    Returns (log_weights (K,), means (K, d), chol (K, d, d)).
    """
    n, d = y.shape
    if n < 2 * k:
        raise ConfigError(f"too few poses ({n}) for a mixture of {k} components")
    ridge = reg * y.var(0) + 1e-8
    centres = [y[rng.integers(n)]]
    for _ in range(1, k):
        dist = np.min([((y - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(y[rng.choice(n, p=dist / dist.sum())])
    means = np.array(centres)
    resp = np.eye(k)[np.argmin(((y[:, None] - means[None]) ** 2).sum(-1), axis=1)]
    prev = -np.inf
    for _ in range(iters):
        nk = resp.sum(0) + 1e-10
        weights = nk / n
        means = (resp.T @ y) / nk[:, None]
        chol = np.empty((k, d, d))
        for j in range(k):
            c = y - means[j]
            cov = (resp[:, j, None] * c).T @ c / nk[j] + np.diag(ridge)
            chol[j] = np.linalg.cholesky(cov)
        log_comp = np.log(weights)[None] + _log_gauss(y, means, chol)
        ll = _logsumexp(log_comp, 1)
        resp = np.exp(log_comp - ll[:, None])
        total = ll.mean()
        if total - prev < tol:
            break
        prev = total
    return np.log(weights), means, chol


def fit_params(x: np.ndarray, d: int, k: int, seed: int, reg: float, residual_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Fit PCA (d dims) + GMM (k components) to (N, D) features, residual variance scaled by
    ``residual_scale``; the parameter dict of
    :class:`~diffusion_hpc.prior.anny_prior.AnnyPosePrior` (without ``fixed_pose``)."""
    mean, basis, sigma2, _ = pca(x, d)
    sigma2 *= float(residual_scale)
    y = (x - mean) @ basis
    log_w, means, chol = fit_gmm(y, k, np.random.default_rng(seed), reg=reg)
    return {"mean": mean, "basis": basis, "residual_var": np.array(sigma2), "log_weights": log_w, "means": means, "chol": chol}


def log_density(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) log density of (N, D) features under fitted parameters (float64 numpy)."""
    dim, d = p["basis"].shape
    c = x - p["mean"]
    y = c @ p["basis"]
    r2 = np.clip((c**2).sum(1) - (y**2).sum(1), 0, None)
    s2 = float(p["residual_var"])
    log_res = -0.5 * (r2 / s2 + (dim - d) * (math.log(2 * math.pi) + math.log(s2)))
    return _logsumexp(p["log_weights"][None] + _log_gauss(y, p["means"], p["chol"]), 1) + log_res


def log_peak(p: dict[str, np.ndarray]) -> float:
    """log p̂ (see :func:`~diffusion_hpc.prior.anny_prior.gmm_subspace_log_peak`)."""
    dim, d = p["basis"].shape
    logdet = 2.0 * np.log(np.diagonal(p["chol"], axis1=1, axis2=2)).sum(1)
    peak = _logsumexp((p["log_weights"] - 0.5 * (logdet + d * math.log(2 * math.pi)))[None], 1)[0]
    return float(peak - 0.5 * (dim - d) * (math.log(2 * math.pi) + math.log(float(p["residual_var"]))))


def auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """Mann–Whitney AUC: probability that a ``pos`` score exceeds a ``neg`` score (ties ½)."""
    neg, pos = np.asarray(neg, float), np.asarray(pos, float)
    if neg.size == 0 or pos.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    return float(greater / (neg.size * pos.size))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold t maximising balanced accuracy of ``score >= t`` -> hard (labels 0 easy, 1 hard);
    midpoint between consecutive sorted scores."""
    s = np.sort(np.unique(scores))
    cands = np.concatenate([[s[0] - 1.0], (s[1:] + s[:-1]) / 2.0, [s[-1] + 1.0]])
    easy, hard = scores[labels == 0], scores[labels == 1]
    bal = [(np.mean(easy < t) + np.mean(hard >= t)) / 2.0 for t in cands]
    return float(cands[int(np.argmax(bal))])


def quantiles(values: np.ndarray, qs=(0.05, 0.25, 0.5, 0.75, 0.95)) -> dict[str, float]:
    """{"q05": ..., "q50": ...} quantiles, rounded to 3 decimals."""
    return {f"q{int(round(q * 100)):02d}": round(float(np.quantile(values, q)), 3) for q in qs}


# --------------------------------------------------------------------------- corpus handling


def pose_groups(pose_set) -> np.ndarray:
    """(N,) int group id per pose for splitting by performer / skeleton (see module docstring)."""
    if pose_set.subject is not None:
        subj = np.asarray(pose_set.subject, dtype=np.int64).copy()
        for a, b in CMU_SAME_SKELETON:
            subj[subj == b] = a
        return np.unique(subj, return_inverse=True)[1]
    if pose_set.source is not None:
        files = np.array([str(s).split(":")[0] for s in pose_set.source])
        return np.unique(files, return_inverse=True)[1]
    return np.arange(len(pose_set)) // 8


def assign_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N,) fold index per pose; whole groups go to one fold, folds balanced by pose count."""
    ids, counts = np.unique(groups, return_counts=True)
    if ids.size < folds:
        raise ConfigError(f"need at least {folds} groups (performers / files) for {folds}-fold evaluation, found {ids.size}")
    order = np.random.default_rng(seed).permutation(ids.size)
    order = order[np.argsort(-counts[order], kind="stable")]
    load = np.zeros(folds)
    fold_of = np.empty(ids.size, dtype=np.int64)
    for i in order:
        f = int(np.argmin(load))
        fold_of[i] = f
        load[f] += counts[i]
    return fold_of[np.searchsorted(ids, groups)]


def _features(body_pose: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return pose_features(torch.as_tensor(body_pose, dtype=torch.float64)).numpy()


def fit_prior(
    pose_set,
    out_path: str | os.PathLike,
    seed: int = 0,
    candidates=DEFAULT_CANDIDATES,
    folds: int = 5,
    reg: float = 0.3,
    plausible_percentile: float = 99.5,
    perturb_scale: float = 0.5,
    training_data: str | None = None,
) -> dict:
    """Fit the Anny prior on ``pose_set`` (a PoseSet with body_model "anny"), write it to
    ``out_path`` (safetensors, atomically) and return the figures (also stored as metadata).

    Args:
        pose_set: :class:`~diffusion_hpc.poses.io.PoseSet` for Anny (at least ``folds`` groups).
        out_path: the ``.safetensors`` file to write.
        seed: seeds the fold assignment and the EM initialisation.
        candidates: (PCA dims, components, residual scale) triples compared by held-out
            log-likelihood (the residual scale may be omitted: 1).
        folds: number of folds (split by performer / skeleton, see :func:`pose_groups`).
        reg: covariance ridge, a fraction of the per-dimension variance.
        plausible_percentile: percentile of held-out scores used as ``plausible_threshold``.
        perturb_scale: default perturbation step (whitened standard deviations per unit strength).
        training_data: a label for the metadata (default: a description of the corpus).
    Returns:
        dict with ``comparison`` (per candidate: d, k, params, heldout_loglik, per-fold values),
        ``selected``, ``calibration`` (thresholds, score quantiles of easy / hard, AUC, accuracy,
        confusion) and ``training`` (corpus facts).
    """

    if getattr(pose_set, "body_model", None) != "anny":
        raise InputError(f"the Anny prior is fitted on Anny poses; got body_model {getattr(pose_set, 'body_model', None)!r}")
    x = _features(pose_set.body_pose)
    n, dim = x.shape
    groups = pose_groups(pose_set)
    fold = assign_folds(groups, folds, seed)
    candidates = [(int(c[0]), int(c[1]), float(c[2]) if len(c) > 2 else 1.0) for c in candidates]
    for d, k, s in candidates:
        if not 1 <= d < dim or k < 1 or s <= 0:
            raise ConfigError(f"bad candidate (d={d}, k={k}, s={s}): need 1 <= d < {dim}, k >= 1, s > 0")

    comparison = []
    oof_scores: dict[tuple, np.ndarray] = {}
    for d, k, s in candidates:
        ll = np.empty(n)
        sc = np.empty(n)
        for f in range(folds):
            tr, te = fold != f, fold == f
            p = fit_params(x[tr], d, k, seed + f, reg, s)
            ll[te] = log_density(x[te], p)
            sc[te] = -2.0 * (ll[te] - log_peak(p))
        oof_scores[(d, k, s)] = sc
        n_params = k * (d + d * (d + 1) // 2) + (k - 1) + dim * d + dim + 1
        comparison.append({
            "d": d, "k": k, "residual_scale": s, "params": int(n_params),
            "heldout_loglik": round(float(ll.mean()), 3),
            "heldout_loglik_median": round(float(np.median(ll)), 3),
            "per_fold": [round(float(ll[fold == f].mean()), 3) for f in range(folds)],
        })
    best = max(c["heldout_loglik"] for c in comparison)
    near = [c for c in comparison if c["heldout_loglik"] >= best - TIE_NATS]
    chosen = min(near, key=lambda c: c["params"])
    d, k, s = chosen["d"], chosen["k"], chosen["residual_scale"]

    # Calibration on out-of-fold scores of the chosen candidate.
    scores = oof_scores[(d, k, s)]
    for c in comparison:
        c["selected"] = (c["d"], c["k"], c["residual_scale"]) == (d, k, s)
    labels = label_easy_hard(pose_set.description) if pose_set.description is not None else np.full(n, -1)
    plausible = float(np.percentile(scores, plausible_percentile))
    calibration: dict = {"plausible_threshold": round(plausible, 3), "plausible_percentile": plausible_percentile,
                         "all_quantiles": quantiles(scores)}
    have_labels = (labels == 0).any() and (labels == 1).any()
    if have_labels:
        lab = labels >= 0
        hard_t = best_threshold(scores[lab], labels[lab])
        pred = np.zeros(n, dtype=bool)
        for f in range(folds):
            m_out = lab & (fold != f)
            if (labels[m_out] == 0).any() and (labels[m_out] == 1).any():
                t_f = best_threshold(scores[m_out], labels[m_out])
            else:
                t_f = hard_t
            pred[fold == f] = scores[fold == f] >= t_f
        easy, hard = labels == 0, labels == 1
        tn, fp = int((easy & ~pred).sum()), int((easy & pred).sum())
        fn, tp = int((hard & ~pred).sum()), int((hard & pred).sum())
        calibration.update({
            "hard_threshold": round(hard_t, 3),
            "easy_keywords": list(EASY_KEYWORDS), "hard_keywords": list(HARD_KEYWORDS),
            "n_easy": int(easy.sum()), "n_hard": int(hard.sum()),
            "easy_quantiles": quantiles(scores[easy]), "hard_quantiles": quantiles(scores[hard]),
            "heldout_auc": round(auc(scores[easy], scores[hard]), 4),
            "heldout_accuracy": round((tn + tp) / (tn + fp + fn + tp), 4),
            "heldout_balanced_accuracy": round((tn / max(tn + fp, 1) + tp / max(tp + fn, 1)) / 2, 4),
            "heldout_confusion": {"easy_as_easy": tn, "easy_as_hard": fp, "hard_as_easy": fn, "hard_as_hard": tp},
        })
        for c in comparison:
            sc_c = oof_scores[(c["d"], c["k"], c["residual_scale"])]
            c["heldout_auc"] = round(auc(sc_c[easy], sc_c[hard]), 4)
    else:  # no activity labels: hard = top 20 % of held-out scores (documented fallback)
        calibration["hard_threshold"] = round(float(np.percentile(scores, 80.0)), 3)
        calibration["note"] = "no easy/hard activity labels in the corpus: hard_threshold = 80th percentile of held-out scores"

    final = fit_params(x, d, k, seed, reg, s)
    in_sample = -2.0 * (log_density(x, final) - log_peak(final))
    calibration["in_sample_quantiles"] = quantiles(in_sample)
    if have_labels:
        # For scoring the training corpus itself (e.g. mode D on the built-in poses), whose
        # in-sample scores are lower than those of new poses.
        calibration["in_sample_hard_threshold"] = round(best_threshold(in_sample[lab], labels[lab]), 3)
        calibration["in_sample_auc"] = round(auc(in_sample[labels == 0], in_sample[labels == 1]), 4)
    fixed = np.asarray(pose_set.body_pose, dtype=np.float64).mean(0)  # non-articulated bones: mean
    training = {
        "data": training_data or f"{n} Anny poses ({len(np.unique(groups))} performer/skeleton groups)",
        "n_poses": int(n), "n_groups": int(len(np.unique(groups))), "folds": folds, "seed": int(seed),
        "features": f"6D rotations (R[:, :2]) of {len(ARTICULATED_BONES)} bones: {', '.join(ARTICULATED_BONES)}",
        "reg": reg,
    }
    metadata = {
        "version": VERSION, "model": "pca-subspace gaussian mixture", "d": d, "k": k, "residual_scale": s,
        "hard_threshold": calibration["hard_threshold"], "plausible_threshold": calibration["plausible_threshold"],
        "perturb_scale": perturb_scale, "training": training, "comparison": comparison,
        "calibration": calibration, "score": "-2 (log p(x) - log p_peak)",
    }
    params = {key: torch.as_tensor(v, dtype=torch.float32) for key, v in final.items()}
    params["fixed_pose"] = torch.as_tensor(fixed, dtype=torch.float32)
    # The articulated bones of fixed_pose are never used; zero them for clarity.

    params["fixed_pose"][list(ARTICULATED_INDEX)] = 0.0
    path = save_prior_file(out_path, params, metadata)
    return {**metadata, "path": str(Path(path))}


def format_report(r: dict) -> str:
    """The comparison table and the calibration figures of a :func:`fit_prior` result, as text."""
    lines = []
    lines.append(f"{'d':>4} {'k':>3} {'s':>5} {'params':>7} {'heldout ll':>11} {'median ll':>10} {'AUC':>7}")
    for c in r["comparison"]:
        mark = "  <- selected" if c.get("selected") else ""
        lines.append(f"{c['d']:>4} {c['k']:>3} {c['residual_scale']:>5.1f} {c['params']:>7} {c['heldout_loglik']:>11.2f} "
              f"{c['heldout_loglik_median']:>10.2f} {c.get('heldout_auc', float('nan')):>7.3f}{mark}")
    cal = r["calibration"]
    lines.append(f"\nplausible_threshold {cal['plausible_threshold']} ({cal['plausible_percentile']}th pct of held-out scores)")
    lines.append(f"hard_threshold {cal['hard_threshold']}")
    for key in ("all_quantiles", "easy_quantiles", "hard_quantiles", "in_sample_quantiles"):
        if key in cal:
            lines.append(f"{key:>20}: " + "  ".join(f"{q}={v:.1f}" for q, v in cal[key].items()))
    if "heldout_auc" in cal:
        lines.append(f"easy n={cal['n_easy']} hard n={cal['n_hard']}  held-out AUC {cal['heldout_auc']:.3f}  "
              f"accuracy {cal['heldout_accuracy']:.3f}  balanced {cal['heldout_balanced_accuracy']:.3f}")
        lines.append(f"confusion (held-out thresholds): {cal['heldout_confusion']}")
    return "\n".join(lines)
