"""The default pose prior for Anny, learned from the built-in CMU motion-capture poses.

Model
=====

A pose is Anny's ``body_pose`` (B, 30, 3): axis-angle local rotations of bones 1..30 of
:data:`~diffusion_hpc.body.joint_sets.ANNY_CMU31`. Only the 20 articulated bones enter the model
(:data:`ARTICULATED_BONES`; the clavicle/hip-joint bones, thumbs, finger bases and fingers are
constant in the CMU data and carry no information; they are reset to the training mean, the
identity, when the prior generates poses). Each articulated bone is turned into the continuous 6D
rotation representation (the first two columns of its rotation matrix), giving a feature vector
``x`` of D = 120 values.

The density is a *Gaussian mixture in a PCA subspace with an isotropic residual* (a mixture of
probabilistic-PCA-like components sharing one subspace):

    y = Wᵀ (x − m)                  (d PCA coordinates; W: D×d orthonormal, m: feature mean)
    r = (x − m) − W y               (residual, orthogonal to the subspace)
    log p(x) = logsumexp_k [log π_k + log N(y; μ_k, Σ_k)] + log N(r; 0, σ² I_{D−d})

Full covariances Σ_k are regularised (a ridge of ``reg`` times the mean PCA variance is added).
It is fitted by :func:`diffusion_hpc.prior.fit.fit_prior` (PCA + EM, seeded, deterministic).

Score and penalty
=================

``score(body_pose)`` is a *squared whitened distance*, the analogue of VPoser's ‖z‖²:

    score = −2 (log p(x) − log p̂),   p̂ = Σ_k π_k N(μ_k; μ_k, Σ_k) · N(0; 0, σ² I)

so score ≥ 0, and for a single component it is exactly the squared Mahalanobis distance
(PCA part) plus ‖r‖²/σ² (residual part), i.e. roughly χ² with D degrees of freedom for typical
poses. ``penalty`` = score / 2 (the negative log-likelihood up to a constant), differentiable with
respect to ``body_pose`` (torch throughout; roma rotation conversions).

Plausibility, perturbation, sampling
====================================

``is_plausible``: ``score <= plausible_threshold``, the 99.5th percentile of the *held-out*
(out-of-fold, split by skeleton) scores of the training corpus, stored in the weights file.
``perturb`` (the original's VPoser augmentation z ← z · (1.5 + 0.3 N(0, 1)), DESIGN §2 step 4,
transposed to this prior): take the whitened PCA coordinates w = L_k⁻¹ (y − μ_k) of the pose in its
most responsible component (the analogue of VPoser's latent z), add a little noise
(``strength · perturb_scale · N(0, I)``, the analogue of VPoser's posterior sample), scale every
coordinate by ``1 + strength · (0.5 + 0.3 N(0, 1))`` (:func:`push_whitened`), map back, decode to
rotations (Gram–Schmidt on the 6D features). Variants therefore move *away* from the mean, i.e.
get harder. When the full push is not plausible the variant is the plausible pose furthest along
the segment from the input to the pushed target (:func:`bisect_plausible`, 8 halvings): shrunk
back only as far as plausibility needs. An implausible input is first pulled towards its
component mean, again only as far as needed. The input's residual and non-articulated bones are
kept. ``strength == 0`` returns the input unchanged.

Measured on the 739 built-in poses (``scripts/bench_prior.py``, seed 0, strength 1; all variants
plausible): in-sample scores of the inputs q05/q50/q95 = 27 / 59 / 126 (mean 66), of their variants
178 / 413 / 911 (mean 459). The whitened (PCA) part grows as the original's ‖z‖² does (46 → 130,
≈ 2.3× plus the noise); the rest comes from the decoding (re-orthonormalised rotations leave the
PCA subspace, where the residual variance is small). The previous isotropic 0.5σ step gave a
mean of 152.
``sample``: draw from the mixture
(PCA part and residual), decode, redraw implausible draws a bounded number of times.

Hard / easy calibration
=======================

The CMU activity labels (``description``) give an *easy* set (everyday walking, standing,
sitting, conversation...) and a *hard* set (cartwheels, flips, breakdance, yoga, rolls, jumps,
floor work...); the keyword lists are :data:`EASY_KEYWORDS` and :data:`HARD_KEYWORDS` (a
description matching both or neither is left out). ``hard_threshold`` is the score that maximises
balanced accuracy between these two sets on held-out scores (5-fold, folds by skeleton). The labels
are per motion file, not per frame (a "cartwheel" file also holds run-up frames), so perfect
separation is neither possible nor intended. The shipped figures (held-out log-likelihood per
candidate model, score quantiles of both sets, threshold, accuracy, AUC) are printed by
``scripts/fit_default_prior.py`` and stored in the weights file's metadata
(:attr:`AnnyPosePrior.metadata`). The shipped file (seed 0, 739 poses, 84 skeleton groups):

* selected: one Gaussian (k = 1) in d = 60 PCA dims, residual variance ×3: held-out
  log-likelihood 146.1 nats/pose, against 105.0 (d 40, k 1), 104.8 (d 40, k 2), 73.1 (d 24, k 4),
  142.4 (d 60, k 2), 134.2 (d 60, k 4), 89.3 (d 60, k 1, residual ×1). Mixtures do not beat one
  Gaussian on held-out skeletons with this little data.
* held-out scores: easy median 86 (q05 35, q95 250), hard median 166 (q05 38, q95 782);
  ``hard_threshold`` = 179.1; held-out AUC 0.69, accuracy 0.68 (easy 198 / 228 right, hard
  112 / 230 right); ``plausible_threshold`` = 1135 (99.5th percentile of held-out scores).
* the training poses score lower in-sample (median 59 against 127 held-out): the prior has seen
  them. ``hard_threshold`` (179.1) is for poses new to the prior (estimates, user pose files);
  only 5 of the 739 built-in poses reach it in-sample, against 253 of 739 (34 %) held-out. For the
  training corpus itself use :attr:`AnnyPosePrior.corpus_hard_threshold` =
  ``metadata["calibration"]["in_sample_hard_threshold"]`` (83.56, the in-sample balanced-accuracy
  threshold, in-sample AUC 0.705): 189 of 739 (26 %) built-in poses reach it (99 labelled hard,
  9 easy, 81 unlabelled). These 189 are the packaged set ``builtin-hard``
  (:func:`diffusion_hpc.poses.io.builtin_poses`, written by ``scripts/fit_default_prior.py``).

Note that the prior (like VPoser) ignores the global orientation: an inverted body with ordinary
articulation (a straight handstand) is not "hard" for it; tucked, split and folded bodies are.

The data used in this project was obtained from mocap.cs.cmu.edu. The database was created with
funding from NSF EIA-0196217.
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from diffusion_hpc.body.joint_sets import ANNY_CMU31
from diffusion_hpc.errors import InputError, MissingModelError
from diffusion_hpc.geometry.rotations import rot6d_to_rotmat
from diffusion_hpc.prior.base import PosePrior, as_generator
from diffusion_hpc.runtime.atomic import atomic_path
from diffusion_hpc.runtime.weights import read_tagged_safetensors

FORMAT = "dhpc-anny-prior/1"
NUM_BODY_JOINTS = len(ANNY_CMU31) - 1  # 30: body_pose holds bones 1..30

#: Bones that carry no information in the CMU data (constant channels) or are hand detail.
UNINFORMATIVE_BONES = (
    "LHipJoint", "RHipJoint", "LeftShoulder", "RightShoulder",
    "LThumb", "LeftFingerBase", "LeftHandFinger1", "RThumb", "RightFingerBase", "RightHandFinger1",
)  # fmt: skip
#: Bones modelled by the prior, in ANNY_CMU31 order.
ARTICULATED_BONES = tuple(b for b in ANNY_CMU31[1:] if b not in UNINFORMATIVE_BONES)
#: Their indices into ``body_pose`` (bone i of ANNY_CMU31 is body_pose[:, i - 1]).
ARTICULATED_INDEX = tuple(ANNY_CMU31.index(b) - 1 for b in ARTICULATED_BONES)

#: Activity keywords (lower case, matched as substrings of the CMU ``description``) of everyday,
#: easy motion: standing, walking, sitting, talking, carrying.
EASY_KEYWORDS = (
    "walk", "stand", "sit", "conversation", "story", "quarrel", "shake hands", "high-five",
    "carry", "pick up", "picking", "push heavy", "signals",
)  # fmt: skip
#: Activity keywords of hard poses: inverted, split, tucked, folded, airborne, floor work.
HARD_KEYWORDS = (
    "cartwheel", "flip", "breakdance", "yoga", "roll", "jump", "handstand", "acrobatic",
    "swimming", "crawl", "climb", "hang", "dive", "kick", "stretch", "laying", "split",
    "arabesque", "fall", "salutation",
)  # fmt: skip

PLAUSIBLE_PERCENTILE = 99.5
#: the original's latent push z · (1.5 + 0.3 N(0, 1)) (DESIGN §2 step 4), applied to whitened coordinates
PUSH_SCALE_MEAN, PUSH_SCALE_STD = 1.5, 0.3
#: halvings of the segment input -> pushed target when the full push is implausible (precision 2^-8)
BISECTIONS = 8
LOG_2PI = math.log(2.0 * math.pi)


def label_easy_hard(descriptions) -> np.ndarray:
    """(N,) int labels from activity descriptions: 0 easy, 1 hard, -1 neither or both.

    A description is easy if it contains an :data:`EASY_KEYWORDS` entry, hard if it contains a
    :data:`HARD_KEYWORDS` entry (case-insensitive substrings); matching both or neither gives -1.
    """
    out = []
    for d in descriptions:
        d = str(d).lower()
        easy = any(k in d for k in EASY_KEYWORDS)
        hard = any(k in d for k in HARD_KEYWORDS)
        out.append(0 if easy and not hard else 1 if hard and not easy else -1)
    return np.asarray(out, dtype=np.int64)


# --------------------------------------------------------------------------- pure functions


def pose_features(body_pose: torch.Tensor) -> torch.Tensor:
    """(B, 30, 3) axis-angle body pose -> (B, 6 * 20) 6D features of the articulated bones.

    The 6D feature of a bone is the first two columns of its rotation matrix, row-major
    (R[:, :2].reshape(6)).
    """
    import roma

    if body_pose.ndim != 3 or body_pose.shape[1:] != (NUM_BODY_JOINTS, 3):
        raise ValueError(f"body_pose must have shape (B, {NUM_BODY_JOINTS}, 3); got {tuple(body_pose.shape)}")
    idx = torch.as_tensor(ARTICULATED_INDEX, device=body_pose.device)
    rot = roma.rotvec_to_rotmat(body_pose[:, idx])  # (B, 20, 3, 3)
    return rot[..., :2].reshape(body_pose.shape[0], -1)


def features_to_pose(features: torch.Tensor, fixed_pose: torch.Tensor) -> torch.Tensor:
    """(B, 120) 6D features (any values) -> (B, 30, 3) axis-angle; non-articulated bones from
    ``fixed_pose`` (B or 1, 30, 3). Each 6D pair is orthonormalised (Gram–Schmidt)."""
    import roma

    b = features.shape[0]
    rot = rot6d_to_rotmat(features.reshape(b, len(ARTICULATED_INDEX), 6))
    rotvec = roma.rotmat_to_rotvec(rot)
    out = fixed_pose.expand(b, NUM_BODY_JOINTS, 3).clone()
    out[:, torch.as_tensor(ARTICULATED_INDEX)] = rotvec.to(out.dtype)
    return out


def gmm_subspace_log_density(
    x: torch.Tensor,
    mean: torch.Tensor,
    basis: torch.Tensor,
    residual_var: torch.Tensor,
    log_weights: torch.Tensor,
    means: torch.Tensor,
    chol: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log density of the PCA-subspace Gaussian mixture (see the module docstring).

    Args:
        x: (B, D) features. mean: (D,). basis: (D, d) orthonormal columns. residual_var: () σ².
        log_weights: (K,) log π_k. means: (K, d). chol: (K, d, d) lower Cholesky factors of Σ_k.
    Returns:
        (log p(x) (B,), per-component log π_k N(y; μ_k, Σ_k) (B, K) without the residual term).
    """
    dim, d = basis.shape
    centred = x - mean
    y = centred @ basis  # (B, d)
    r2 = (centred * centred).sum(-1) - (y * y).sum(-1)  # ||r||^2 (basis orthonormal)
    r2 = r2.clamp_min(0.0)
    log_res = -0.5 * (r2 / residual_var + (dim - d) * (LOG_2PI + torch.log(residual_var)))
    diff = (y[:, None, :] - means[None]).unsqueeze(-1)  # (B, K, d, 1)
    sol = torch.linalg.solve_triangular(chol[None].expand(y.shape[0], -1, -1, -1), diff, upper=False)
    maha = (sol.squeeze(-1) ** 2).sum(-1)  # (B, K)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (K,)
    comp = log_weights[None] - 0.5 * (maha + logdet[None] + d * LOG_2PI)
    return torch.logsumexp(comp, dim=-1) + log_res, comp


def gmm_subspace_log_peak(residual_var: torch.Tensor, log_weights: torch.Tensor, chol: torch.Tensor, dim: int) -> torch.Tensor:
    """() log p̂ = log Σ_k π_k N(μ_k; μ_k, Σ_k) + log N(0; 0, σ² I_{D−d}): an upper bound of log p."""
    d = chol.shape[-1]
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    peak = torch.logsumexp(log_weights - 0.5 * (logdet + d * LOG_2PI), dim=0)
    return peak - 0.5 * (dim - d) * (LOG_2PI + torch.log(residual_var))


def push_whitened(w: torch.Tensor, factor_noise: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """(B, d) whitened coordinates -> (B, d) pushed away from the mean, the original's VPoser
    augmentation: w · (1 + strength (:data:`PUSH_SCALE_MEAN` − 1 + :data:`PUSH_SCALE_STD` · n))
    with ``factor_noise`` n ~ N(0, 1) (B, d); strength 1 is w · (1.5 + 0.3 n), strength 0 is w."""
    return w * (1.0 + float(strength) * ((PUSH_SCALE_MEAN - 1.0) + PUSH_SCALE_STD * factor_noise))


def bisect_plausible(decode_at, is_plausible, batch: int, bisections: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest t in [0, 1] on a grid of 2^-``bisections`` whose pose is plausible, per row.

    Args:
        decode_at: callable (t (m,), rows (m,) long) -> (m, 30, 3) poses at fraction t of each
            row's path; t = 0 must be plausible (the start), t = 1 is the full move.
        is_plausible: callable (m, 30, 3) -> (m,) bool.
        batch: number of rows B. bisections: halvings of the interval after a failed full move.
    Returns:
        (poses (B, 30, 3) at the chosen t, t (B,)). Rows whose full move is plausible take t = 1
        without bisection; the others bisect [0, 1], keeping the plausible end.
    """
    rows = torch.arange(batch)
    t = torch.ones(batch)
    out = decode_at(t, rows)
    bad = rows[~is_plausible(out)]
    if bad.numel() == 0:
        return out, t
    lo, hi = torch.zeros(bad.numel()), torch.ones(bad.numel())
    best = decode_at(lo, bad)
    for _ in range(int(bisections)):
        mid = 0.5 * (lo + hi)
        pose = decode_at(mid, bad)
        ok = is_plausible(pose)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
        best[ok] = pose[ok]
    out[bad], t[bad] = best, lo
    return out, t


# --------------------------------------------------------------------------- the prior

PARAM_NAMES = ("mean", "basis", "residual_var", "log_weights", "means", "chol", "fixed_pose")


class AnnyPosePrior(PosePrior):
    """PCA-subspace Gaussian mixture over 6D rotations of Anny's 20 articulated bones.

    Args:
        params: tensors ``mean`` (D,), ``basis`` (D, d), ``residual_var`` (), ``log_weights`` (K,),
            ``means`` (K, d), ``chol`` (K, d, d), ``fixed_pose`` (30, 3).
        metadata: dict with at least ``hard_threshold`` and ``plausible_threshold``.
    """

    name = "anny"
    body_model = "anny"

    def __init__(self, params: dict[str, torch.Tensor], metadata: dict) -> None:
        super().__init__()
        missing = [k for k in PARAM_NAMES if k not in params]
        if missing:
            raise InputError(f"anny prior parameters lack {missing}")
        for key in PARAM_NAMES:
            self.register_buffer(key, torch.as_tensor(params[key], dtype=torch.float32).clone())
        dim = self.mean.shape[0]
        if dim != 6 * len(ARTICULATED_INDEX) or self.basis.shape[0] != dim or self.chol.shape[-1] != self.basis.shape[1]:
            raise InputError(f"anny prior parameters have inconsistent shapes: mean {tuple(self.mean.shape)}, basis {tuple(self.basis.shape)}, chol {tuple(self.chol.shape)}")
        self.metadata = dict(metadata)
        self.hard_threshold = float(metadata["hard_threshold"])
        self.plausible_threshold = float(metadata["plausible_threshold"])
        self.perturb_scale = float(metadata.get("perturb_scale", 0.5))
        #: the weights file (set by :func:`load_prior_file`; None when built from tensors)
        self.path: Path | None = None
        self.register_buffer("log_peak", gmm_subspace_log_peak(self.residual_var, self.log_weights, self.chol, dim))

    @property
    def corpus_hard_threshold(self) -> float:
        """The hard threshold for the training corpus itself (the built-in poses), scored in-sample:
        ``metadata["calibration"]["in_sample_hard_threshold"]`` (else :attr:`hard_threshold`)."""
        return float(self.metadata.get("calibration", {}).get("in_sample_hard_threshold", self.hard_threshold))

    # -- density ---------------------------------------------------------------------------

    def _density(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gmm_subspace_log_density(
            x, self.mean, self.basis, self.residual_var, self.log_weights, self.means, self.chol
        )

    def log_prob(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) log density of the 120-D 6D features (nats)."""
        return self._density(pose_features(torch.as_tensor(body_pose, dtype=torch.float32)))[0]

    def score(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) squared whitened distance −2 (log p − log p̂) ≥ 0; higher = less typical."""
        return -2.0 * (self.log_prob(body_pose) - self.log_peak)

    def penalty(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) score / 2 = negative log-likelihood up to a constant; differentiable."""
        return 0.5 * self.score(body_pose)

    def is_plausible(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) bool: score <= plausible_threshold (99.5th percentile of held-out training scores)."""
        with torch.no_grad():
            return self.score(body_pose) <= self.plausible_threshold

    # -- generation ------------------------------------------------------------------------

    def _decode(self, y: torch.Tensor, residual: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return features_to_pose(self.mean + y @ self.basis.T + residual, fixed)

    def mean_pose(self) -> torch.Tensor:
        """(1, 30, 3) the decoded mode of the heaviest component (a good fitting initialisation;
        note Anny's zero pose is *not* typical for the CMU data, whose retargeted spine, neck and
        head always carry a rest offset)."""
        with torch.no_grad():
            k = int(self.log_weights.argmax())
            return self._decode(self.means[k : k + 1], torch.zeros(1, self.mean.shape[0]), self.fixed_pose[None])

    def sample(self, n: int, generator: torch.Generator | None = None, max_tries: int = 20) -> torch.Tensor:
        """(n, 30, 3) poses drawn from the mixture; implausible draws are redrawn (up to
        ``max_tries`` rounds, then the remaining ones are replaced by their component mean)."""
        g = as_generator(generator)
        n = int(n)
        out = torch.zeros(n, NUM_BODY_JOINTS, 3)
        todo = torch.arange(n)
        with torch.no_grad():
            for attempt in range(max_tries + 1):
                m = todo.numel()
                if m == 0:
                    break
                k = torch.multinomial(self.log_weights.exp(), m, replacement=True, generator=g)
                eps = torch.randn(m, self.basis.shape[1], generator=g)
                y = self.means[k] + (self.chol[k] @ eps.unsqueeze(-1)).squeeze(-1)
                noise = torch.randn(m, self.mean.shape[0], generator=g) * self.residual_var.sqrt()
                residual = noise - (noise @ self.basis) @ self.basis.T
                if attempt == max_tries:
                    y, residual = self.means[k], torch.zeros_like(residual)
                pose = self._decode(y, residual, self.fixed_pose[None])
                ok = self.is_plausible(pose) | (attempt == max_tries)
                out[todo[ok]] = pose[ok]
                todo = todo[~ok]
        return out

    def _segment_to_plausible(
        self, y0: torch.Tensor, r0: torch.Tensor, y1: torch.Tensor, r1: torch.Tensor, fixed: torch.Tensor, bisections: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The plausible pose furthest along the segment from (y0, r0) (plausible) to (y1, r1):
        (pose (B, 30, 3), t (B,)); see :func:`bisect_plausible`."""

        def decode_at(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            yy = y0[rows] + t[:, None] * (y1[rows] - y0[rows])
            rr = r0[rows] + t[:, None] * (r1[rows] - r0[rows])
            return self._decode(yy, rr, fixed[rows])

        return bisect_plausible(decode_at, self.is_plausible, y0.shape[0], bisections)

    def perturb(
        self,
        body_pose: torch.Tensor,
        strength: float = 1.0,
        generator: torch.Generator | None = None,
        bisections: int = BISECTIONS,
    ) -> torch.Tensor:
        """(B, 30, 3) plausible variants of ``body_pose`` (B, 30, 3), pushed away from the prior's
        mean as the original's VPoser augmentation z · (1.5 + 0.3 N) (see the module docstring).

        1. whitened coordinates w of the pose in its most responsible component (an implausible
           input is first pulled towards that component's mean, only as far as needed);
        2. target w' = :func:`push_whitened` (w + strength · perturb_scale · ε, strength);
        3. the variant is the plausible pose furthest along the segment from the input to the
           target (:func:`bisect_plausible`, ``bisections`` halvings): the full push when it is
           plausible, else shrunk back only as far as needed.

        The input's residual (outside the PCA subspace) and its non-articulated bones are kept.
        ``strength == 0`` returns a copy. Deterministic given ``generator``.
        """
        body_pose = torch.as_tensor(body_pose, dtype=torch.float32)
        if float(strength) < 0:
            raise ValueError(f"strength must be >= 0, not {strength}")
        if float(strength) == 0.0:
            return body_pose.clone()
        g = as_generator(generator)
        with torch.no_grad():
            x = pose_features(body_pose)
            centred = x - self.mean
            y = centred @ self.basis
            residual = centred - y @ self.basis.T
            _, comp = self._density(x)
            k = comp.argmax(-1)
            mu, chol = self.means[k], self.chol[k]
            # 1. a plausible start: implausible inputs move towards their component's mean
            start_ok = self.is_plausible(body_pose)
            y0, r0 = y.clone(), residual.clone()
            if not bool(start_ok.all()):
                bad = torch.nonzero(~start_ok).squeeze(-1)
                _, t = self._segment_to_plausible(mu[bad], torch.zeros_like(residual[bad]), y[bad], residual[bad],
                                                  body_pose[bad], bisections)  # fmt: skip
                y0[bad] = mu[bad] + t[:, None] * (y[bad] - mu[bad])
                r0[bad] = t[:, None] * residual[bad]
            # 2. the target: the whitened coordinates pushed outward
            w = torch.linalg.solve_triangular(chol, (y0 - mu).unsqueeze(-1), upper=False).squeeze(-1)
            noise = torch.randn(w.shape, generator=g) * (float(strength) * self.perturb_scale)
            factor_noise = torch.randn(w.shape, generator=g)
            w1 = push_whitened(w + noise, factor_noise, float(strength))
            y1 = mu + (chol @ w1.unsqueeze(-1)).squeeze(-1)
            # 3. back along the segment only as far as plausibility needs
            out, _ = self._segment_to_plausible(y0, r0, y1, r0, body_pose, bisections)
        return out

    # -- io --------------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The parameters as a dict of contiguous float32 CPU tensors (for safetensors)."""
        return {k: getattr(self, k).detach().cpu().contiguous() for k in PARAM_NAMES}


def save_prior_file(path: str | os.PathLike, params: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write prior parameters and JSON metadata to a safetensors file, atomically."""
    from safetensors.torch import save_file


    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.as_tensor(params[k], dtype=torch.float32).contiguous() for k in PARAM_NAMES}
    meta = {"format": FORMAT, "dhpc": json.dumps(metadata, sort_keys=True)}
    with atomic_path(p) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return p


def load_prior_file(path: str | os.PathLike) -> AnnyPosePrior:
    """Load an :class:`AnnyPosePrior` from a safetensors file written by :func:`save_prior_file`."""
    p = Path(path)
    if not p.is_file():
        raise MissingModelError(
            f"Anny pose prior file not found: {p}. Fit one with `dhpc prior fit --poses builtin --out {p}` "
            "(or diffusion_hpc.prior.fit.fit_prior), or omit the path to use the shipped prior."
        )
    tensors, meta = read_tagged_safetensors(p, FORMAT, "prior")
    prior = AnnyPosePrior(tensors, json.loads(meta["dhpc"]))
    prior.path = p
    return prior


def default_prior_path() -> Path:
    """Path of the shipped prior (``diffusion_hpc/prior/data/anny_prior.safetensors``)."""
    from importlib import resources

    return Path(str(resources.files("diffusion_hpc.prior").joinpath("data/anny_prior.safetensors")))


@lru_cache(maxsize=1)
def load_default_prior() -> AnnyPosePrior:
    """The shipped Anny prior, loaded once per process (eval mode, no gradients on its buffers)."""
    path = default_prior_path()
    if not path.is_file():
        raise MissingModelError(
            f"the shipped Anny pose prior is missing at {path}; regenerate it with "
            "`python scripts/fit_default_prior.py` or reinstall the package"
        )
    return load_prior_file(path).eval()
