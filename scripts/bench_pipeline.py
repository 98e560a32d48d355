"""Benchmark the Diffusion-HPC pipeline (modes T, R, D) on the tiny random backbone (CPU).

    .venv/bin/python scripts/bench_pipeline.py [--backbone DIR] [--threads 1] [--quick]

1. Cost: UNet evaluations per accepted sample per mode at the original, default and fast presets,
   read from the manifests of real pipeline runs (the UNet counters), against the original's
   170 (mode T) / 70 (mode R). The tiny backbone draws noise, so mode T's start stage is the real
   tiny txt2img (its cost is counted) with its images swapped for real photos, as a real backbone
   would draw a person; verification is on but nothing is dropped (no --min-agreement), so
   "accepted" = every sample whose start image held a person.
2. Throughput: samples/second at batch 1 vs batch 8 (mode R, k=1, and mode D with depth2img), and
   the share of the pipeline's time spent outside the UNet (segmentation, estimation, prior,
   render, VAE, text encoder, verification, Python).
3. Peak memory: the process's peak resident set size.

The tiny UNet is ~14 ms per call with one thread: the throughput figures measure the pipeline's
overhead around the UNet, not what a real backbone would do (an SD-1.x UNet: 8-10 s per guided
step at 512² on this CPU, where the UNet share approaches 100 %).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE = 64


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def photos_folder(root: Path) -> Path:
    import matplotlib
    import skimage.data as skdata
    from PIL import Image

    folder = root / "guides"
    folder.mkdir(exist_ok=True)
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skdata.camera()).save(folder / "camera.png")
    shutil.copy(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", folder / "grace_hopper.jpg")
    return folder


class PhotoStart:
    """The tiny txt2img (counted) with its noise replaced by real photos (see the module docstring)."""

    name = "txt2img"
    requires = ("prompts", "seeds")

    def __init__(self, inner, photos):
        self.inner, self.photos = inner, photos

    def generate(self, batch):
        result = self.inner.generate(batch)
        result.images = np.stack([self.photos[int(s) % len(self.photos)] for s in batch.seeds])
        return result


def run(cfg, out: Path, photos=None) -> dict:
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.pipeline.generate import Generator

    shutil.rmtree(out, ignore_errors=True)
    gen = Generator(cfg, progress=False)
    gen.load_models()
    if photos is not None:
        gen.stages.start = PhotoStart(gen.stages.start, photos)
    t0 = time.perf_counter()
    gen.run(out)
    wall = time.perf_counter() - t0
    rows = open_dataset(out).manifest()
    info = json.loads((out / "run.json").read_text())
    ok = sum(r["status"] == "ok" for r in rows)
    spent = sum(r["unet_evals"] for r in rows)
    return {"accepted": ok, "candidates": len(rows), "spent": spent, "per_accepted": spent / ok if ok else float("nan"),
            "wall": wall, "stage_seconds": info["stage_seconds_this_session"],
            "unet_seconds": info["unet_seconds_this_session"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", help="backbone directory (default: write the tiny one to a temp dir)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.generate.base import ORIGINAL_UNET_EVALS, PRESETS, expected_unet_evals
    from diffusion_hpc.pipeline.inputs import GuideImages

    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        if args.backbone:
            backbone = args.backbone
        else:
            from diffusion_hpc.generate.tiny import write_tiny_backbone

            backbone = str(write_tiny_backbone(tmp / "tiny"))
        guides = photos_folder(tmp)
        photos = [GuideImages(guides, (SIZE, SIZE)).load(i) for i in range(3)]
        common = dict(backbone=backbone, image_size=(SIZE, SIZE), seed=0)

        # 1. cost per accepted sample
        print("## UNet evaluations per accepted sample (measured by the UNet counters; tiny backbone)")
        print(f"{'preset':<9} {'mode':<4} {'k':>2} {'accepted':>8} {'measured':>9} {'formula':>8} {'original':>8}")
        n_cost = 3 if args.quick else 6
        for preset in PRESETS:
            p = PRESETS[preset]
            t2i = expected_unet_evals(p.txt2img_steps, p.guidance)
            regen = expected_unet_evals(p.regen_steps, p.guidance, p.strength)
            full = expected_unet_evals(p.regen_steps, p.guidance)
            for mode, k in (("T", 1), ("T", 3), ("R", 3), ("D", 1)):
                kw = dict(common, mode=mode, sampler={"preset": preset}, n=n_cost if k == 3 else max(2, n_cost // 3))
                if mode == "T":
                    kw.update(prompt="doing a backflip", k=k)
                elif mode == "R":
                    kw.update(guides=guides, k=k)
                else:
                    kw.update(generator="depth2img")
                res = run(GenerateConfig(**kw), tmp / f"cost_{preset}_{mode}{k}", photos if mode == "T" else None)
                formula = {"T": t2i / k + regen, "R": regen, "D": full}[mode]
                orig = ORIGINAL_UNET_EVALS.get(mode, "-")
                print(f"{preset:<9} {mode:<4} {k:>2} {res['accepted']:>4}/{res['candidates']:<3} "
                      f"{res['per_accepted']:>9.1f} {formula:>8.1f} {orig:>8}")

        # 2. throughput at batch 1 vs batch 8, share of time outside the UNet
        print("\n## Throughput (tiny backbone, default preset, threads=%d)" % args.threads)
        print(f"{'run':<22} {'batch':>5} {'samples/s':>9} {'outside UNet':>12}")
        n = 8
        for label, kw in (("R (k=1, real photos)", dict(mode="R", guides=guides, k=1)),
                          ("D (depth2img)", dict(mode="D", generator="depth2img"))):  # fmt: skip
            for batch in (1, 8):
                res = run(GenerateConfig(**common, **kw, n=n, batch_size=batch), tmp / f"tp_{kw['mode']}{batch}")
                outside = 1.0 - res["unet_seconds"] / res["stage_seconds"]
                print(f"{label:<22} {batch:>5} {n / res['stage_seconds']:>9.2f} {100 * outside:>11.1f}%")
        print(f"\npeak resident memory: {peak_mb():.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
