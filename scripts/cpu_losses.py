"""The bounded CPU experiment (``scripts/cpu_experiment.py``) once per loss set: ``--losses paper`` and ``dhpc``.

Same data (render-baseline datasets from CMU poses split by source file, held-out poses for the
test), same initial weights (a small random-init ResNet regressor, seed 0), same budget per loss
set; held-out MPJPE / PA-MPJPE (H36M-17 pelvis-centred, mm) before training and after it, with
``dhpc evaluate``'s functions. Writes ``losses.json`` to ``--out``.

Usage: ``python scripts/cpu_losses.py --out RUN_DIR [--minutes 6 | --steps N] [--losses paper dhpc]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_experiment as base  # the experiment's data and scoring, shared


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--losses", nargs="+", default=["paper", "dhpc"])
    parser.add_argument("--n-train", type=int, default=320)
    parser.add_argument("--n-test", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=6.0, help="training wall-clock budget per loss set")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per loss set (instead of --minutes)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import pytorch_lightning as pl
    from transformers import ResNetConfig

    from diffusion_hpc.config import TrainConfig
    from diffusion_hpc.hmr.evaluate import load_targets
    from diffusion_hpc.hmr.train import HMRModule, train

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_poses, test_poses, _ = base.split_poses(0.2, args.seed)
    train_dir = base.make_dataset(train_poses, out / "data" / "train", args.n_train, args.image_size, args.seed)
    test_dir = base.make_dataset(test_poses, out / "data" / "test", args.n_test, args.image_size, args.seed + 1)
    targets = load_targets(str(test_dir), crop_size=args.crop)
    backbone_config = ResNetConfig(**base.SMALL_RESNET).to_dict()
    pl.seed_everything(args.seed, verbose=False)  # the same initial weights train() draws
    before = {"step": 0, **base.evaluate_initial(HMRModule(backbone="tiny", backbone_config=backbone_config).regressor, targets)}
    results = {"before": before, "minutes": None if args.steps else args.minutes, "steps": args.steps, "train_samples": args.n_train, "test_samples": len(targets.images)}
    for losses in args.losses:
        run = out / f"run_{losses}"
        t0 = time.time()
        train(TrainConfig(
            synthetic=[train_dir], out=run, max_steps=args.steps or 10**7,
            max_minutes=None if args.steps else args.minutes, batch_size=args.batch_size,
            lr=args.lr, backbone="tiny", backbone_config=backbone_config, crop_size=args.crop, checkpoint_every=10**6,
            log_every=5, seed=args.seed, val=str(test_dir), accelerator="cpu", workers=0, losses=losses,
        ), progress=False)  # fmt: skip
        results[losses] = {"after": base.read_evals(run)[-1], "seconds": round(time.time() - t0, 1)}
        print(losses, results[losses], flush=True)
    (out / "losses.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
