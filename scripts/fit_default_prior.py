"""Regenerate the shipped Anny pose prior from the built-in CMU poses and print its figures.

Usage: python scripts/fit_default_prior.py [--seed 0] [--out PATH]

Writes ``src/diffusion_hpc/prior/data/anny_prior.safetensors`` by default (deterministic given
the seed) and prints the model comparison (held-out log-likelihood per candidate, folds split by
skeleton) and the easy/hard calibration.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output file (default: the packaged prior)")
    args = ap.parse_args(argv)

    from diffusion_hpc.poses.io import builtin_poses
    from diffusion_hpc.prior.anny_prior import default_prior_path
    from diffusion_hpc.prior.fit import fit_prior, format_report

    out = Path(args.out) if args.out else default_prior_path()
    poses = builtin_poses()
    r = fit_prior(poses, out, seed=args.seed,
                  training_data=f"builtin_poses(): {len(poses)} CMU mocap poses retargeted to Anny (cmu_builtin.npz)")
    print(format_report(r))
    print(f"\nwrote {out} ({out.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
