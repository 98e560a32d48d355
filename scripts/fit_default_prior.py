"""Regenerate the shipped Anny pose prior from the built-in CMU poses, print its figures, and
write the packaged ``builtin-hard`` pose set.

Usage: python scripts/fit_default_prior.py [--seed 0] [--out PATH] [--sets-only]

Writes ``src/diffusion_hpc/prior/data/anny_prior.safetensors`` by default (deterministic given
the seed) and prints the model comparison (held-out log-likelihood per candidate, folds split by
skeleton) and the easy/hard calibration. Then (with the packaged prior only) writes
``src/diffusion_hpc/poses/data/cmu_builtin_sets.npz``: ``builtin-hard`` = the built-in poses
whose score under the shipped prior is at least its ``corpus_hard_threshold`` (the in-sample
threshold: the built-in poses are the prior's training corpus, which it scores lower than new
poses; see the calibration notes of :mod:`diffusion_hpc.prior.anny_prior`). ``--sets-only``
skips the fit and rewrites the sets from the shipped prior.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np


def hard_set(prior, poses) -> tuple[np.ndarray, dict]:
    """(names (M,), selection record) of the poses of ``poses`` the prior calls hard at its
    corpus threshold; the record says how (for :func:`diffusion_hpc.poses.io.builtin_set_selection`)."""
    import torch

    from diffusion_hpc.prior.anny_prior import default_prior_path, label_easy_hard

    with torch.no_grad():
        scores = prior.score(torch.as_tensor(poses.body_pose)).numpy()
    hard = scores >= prior.corpus_hard_threshold
    labels = label_easy_hard(poses.description)
    digest = hashlib.sha256(default_prior_path().read_bytes()).hexdigest()
    record = {
        "criterion": "prior score (in-sample: the built-in poses are the prior's training corpus) >= the prior's "
                     "corpus_hard_threshold (metadata calibration.in_sample_hard_threshold)",
        "prior": "anny (shipped)", "prior_sha256": digest,
        "threshold": round(float(prior.corpus_hard_threshold), 3),
        "heldout_hard_threshold": round(float(prior.hard_threshold), 3),
        "n_poses": int(hard.sum()), "n_builtin": int(len(poses)),
        "activity_labels": {"easy": int((hard & (labels == 0)).sum()), "hard": int((hard & (labels == 1)).sum()),
                            "unlabelled": int((hard & (labels < 0)).sum())},
        "score_quantiles": {q: round(float(np.quantile(scores[hard], float(q[1:]) / 100)), 1)
                            for q in ("q05", "q50", "q95")},
    }
    return poses.name[hard], record


def write_sets(prior, poses, path: Path) -> dict:
    """Write ``cmu_builtin_sets.npz`` (format ``dhpc-pose-sets/1``) atomically; return its records."""
    from diffusion_hpc.poses.io import SETS_FORMAT
    from diffusion_hpc.runtime.atomic import atomic_path

    names, record = hard_set(prior, poses)
    arrays = {"format": np.array(SETS_FORMAT), "builtin-hard": np.asarray(names, dtype=str),
              "builtin-hard.selection": np.array(json.dumps(record, sort_keys=True))}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return {"builtin-hard": record}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output file (default: the packaged prior)")
    ap.add_argument("--sets-only", action="store_true", help="only rewrite the packaged pose sets from the shipped prior")
    args = ap.parse_args(argv)

    from importlib import resources

    from diffusion_hpc.poses.io import SETS_FILE, builtin_poses
    from diffusion_hpc.prior.anny_prior import default_prior_path, load_default_prior
    from diffusion_hpc.prior.fit import fit_prior, format_report

    out = Path(args.out) if args.out else default_prior_path()
    poses = builtin_poses()
    if not args.sets_only:
        r = fit_prior(poses, out, seed=args.seed,
                      training_data=f"builtin_poses(): {len(poses)} CMU mocap poses retargeted to Anny (cmu_builtin.npz)")
        print(format_report(r))
        print(f"\nwrote {out} ({out.stat().st_size / 1024:.1f} KiB)")
        if args.out:
            return
        load_default_prior.cache_clear()
    sets_path = Path(str(resources.files("diffusion_hpc.poses").joinpath(SETS_FILE)))
    records = write_sets(load_default_prior(), poses, sets_path)
    print(f"wrote {sets_path}: " + json.dumps(records, sort_keys=True))


if __name__ == "__main__":
    main()
