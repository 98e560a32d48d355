"""A bounded CPU experiment: fine-tune a small HMR regressor on render-baseline data, test on unseen poses.

1. Split the built-in CMU poses by source file (``PoseSet.source``): about 20% of the files are
   held out, so no test pose (nor a neighbouring frame of one) is seen in training.
2. Generate render-baseline datasets from each split (``dhpc generate``'s Python API).
3. Fine-tune a small ResNet regressor (random init) in ``--chunks`` bounded pieces (each a
   resume of the previous), validating on the held-out set (``TrainConfig(val=...)``: ``dhpc evaluate``'s
   MPJPE / PA-MPJPE, H36M-17 pelvis-centred, mm) at the end of each piece; "before" is the
   initial (untrained) regressor, scored with the same functions.
4. Write ``results.json``, ``eval.csv`` and ``curves.png`` (loss and metric curves) to ``--out``;
   the run folder also holds ``val.jsonl`` and ``best/`` (the best regressor on held-out poses).

Usage: ``python scripts/cpu_experiment.py --out RUN_DIR [--minutes 8] [--n-train 320] [--n-test 64]``
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

#: Small random-init ResNet (about 1.2 M parameters): a CPU-sized stand-in for ResNet-50.
SMALL_RESNET = {"embedding_size": 32, "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1, 1], "layer_type": "basic"}


def split_poses(test_fraction: float, seed: int):
    """(train PoseSet, test PoseSet, held-out source files) split by CMU source file."""
    from diffusion_hpc.poses import builtin_poses

    poses = builtin_poses()
    sources = np.unique(poses.source)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(sources, size=max(1, int(round(test_fraction * len(sources)))), replace=False).tolist())
    is_test = np.array([s in held for s in poses.source])
    return poses.subset(~is_test), poses.subset(is_test), sorted(held)


def make_dataset(poses, out: Path, n: int, image_size: int, seed: int) -> Path:
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.pipeline.generate import generate
    from diffusion_hpc.poses.io import save_pose_file

    out.parent.mkdir(parents=True, exist_ok=True)
    pose_file = save_pose_file(out.with_suffix(".poses.npz"), poses)
    if not (out / "shards").is_dir():
        cfg = GenerateConfig(poses=str(pose_file), n=n, seed=seed, image_size=(image_size, image_size), batch_size=16)
        generate(cfg, out=out, progress=False)
    return out


def evaluate_initial(regressor, targets) -> dict[str, float]:
    """Held-out MPJPE / PA-MPJPE (mm) of a regressor that has not been trained (step 0)."""
    from diffusion_hpc.body import get_body_model
    from diffusion_hpc.hmr.evaluate import predict, score

    result = score(predict(regressor.eval(), get_body_model(regressor.spec.name), targets.images), targets)
    return {"mpjpe": result["mpjpe_mm"], "pa_mpjpe": result["pa_mpjpe_mm"]}


def read_evals(run: Path) -> list[dict]:
    """The run's validations (val.jsonl) as {step, mpjpe, pa_mpjpe}."""
    from diffusion_hpc.hmr.validation import read_rows

    return [{"step": r["step"], "mpjpe": r["mpjpe_mm"], "pa_mpjpe": r["pa_mpjpe_mm"]} for r in read_rows(run)]


def read_losses(run: Path) -> list[dict]:
    rows = []
    for path in sorted((run / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        for row in csv.DictReader(path.open()):
            if row.get("train/total"):
                rows.append({"step": int(row["step"]), "total": float(row["train/total"]), "kp2d": float(row["train/keypoints2d"])})
    return rows


def plot(out: Path, losses: list[dict], evals: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = np.array([r["step"] for r in losses])
    for key, label in (("total", "total loss"), ("kp2d", "2D keypoint loss")):
        v = np.array([r[key] for r in losses])
        k = max(1, len(v) // 30)
        smooth = np.convolve(v, np.ones(k) / k, mode="valid")
        a.plot(steps[k - 1 :], smooth, label=label)
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_title("training loss (moving mean)")
    a.legend()
    es = [e["step"] for e in evals]
    b.plot(es, [e["mpjpe"] for e in evals], "o-", label="MPJPE")
    b.plot(es, [e["pa_mpjpe"] for e in evals], "s-", label="PA-MPJPE")
    b.set_xlabel("step")
    b.set_ylabel("mm (held-out poses)")
    b.set_title("held-out 3D error")
    b.legend()
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-train", type=int, default=320)
    parser.add_argument("--n-test", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=8.0, help="total training wall-clock budget")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import pytorch_lightning as pl

    from diffusion_hpc.config import TrainConfig
    from diffusion_hpc.hmr.evaluate import load_targets
    from diffusion_hpc.hmr.train import HMRModule, train

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_poses, test_poses, held = split_poses(0.2, args.seed)
    train_dir = make_dataset(train_poses, out / "data" / "train", args.n_train, args.image_size, args.seed)
    test_dir = make_dataset(test_poses, out / "data" / "test", args.n_test, args.image_size, args.seed + 1)
    t_gen = time.time() - t0
    targets = load_targets(str(test_dir), crop_size=args.crop)
    run = out / "run"

    from transformers import ResNetConfig

    backbone_config = ResNetConfig(**SMALL_RESNET).to_dict()
    pl.seed_everything(args.seed, verbose=False)  # the same initial weights train() draws
    initial = HMRModule(backbone="tiny", backbone_config=backbone_config).regressor
    before = {"step": 0, **evaluate_initial(initial, targets)}
    print("before", before, flush=True)
    config = TrainConfig(
        synthetic=[train_dir], out=run, max_steps=10**7, batch_size=args.batch_size, lr=args.lr, backbone="tiny",
        backbone_config=backbone_config, crop_size=args.crop, checkpoint_every=10**6, log_every=5, seed=args.seed,
        val=str(test_dir), accelerator="cpu", workers=0,
    )  # fmt: skip
    for k in range(1, args.chunks + 1):  # each chunk ends with a validation (val_every: never in between)
        train(TrainConfig(**{**dict(config), "resume": k > 1, "max_minutes": args.minutes * k / args.chunks}),
              progress=False)  # fmt: skip
        print("chunk", k, read_evals(run)[-1], flush=True)
    evals = [before, *read_evals(run)]

    losses = read_losses(run)
    with (out / "eval.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "mpjpe", "pa_mpjpe"])
        writer.writeheader()
        writer.writerows(evals)
    figure = plot(out, losses, evals)
    results = {
        "train_samples": args.n_train,
        "test_samples": int(len(targets.images)),
        "train_poses": len(train_poses),
        "test_poses": len(test_poses),
        "held_out_sources": held,
        "held_out_activities": sorted(set(test_poses.description.tolist())) if test_poses.description is not None else [],
        "crop": args.crop,
        "batch_size": args.batch_size,
        "backbone": SMALL_RESNET,
        "steps": evals[-1]["step"],
        "before": evals[0],
        "after": evals[-1],
        "evals": evals,
        "generation_seconds": round(t_gen, 1),
        "total_seconds": round(time.time() - t0, 1),
        "figure": str(figure),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results[k] for k in ("steps", "before", "after", "total_seconds")}, indent=1))
    return results


if __name__ == "__main__":
    main()
