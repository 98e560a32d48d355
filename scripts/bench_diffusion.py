"""Benchmark the diffusion generators on the tiny random backbone (CPU).

    .venv/bin/python scripts/bench_diffusion.py [--backbone DIR] [--threads 1] [--repeats 3]

1. Throughput: samples/second at batch 1 vs batch 8 for txt2img (default preset: DPM++ 20 steps,
   guidance 7.5) and for regeneration (depth2img and ControlNet; 20 steps at strength 0.7 -> 14),
   and the share of wall time spent outside the UNet (text encoder, VAE, scheduler, ControlNet,
   Python).
2. Peak memory: the process's peak resident set size after each phase.
3. Cost: UNet evaluations per sample per preset (and the fast preset with TCD) and mode, measured by
   the UNet counter, against the original's 170 (mode T) and 70 (mode R).

Without ``--backbone`` the tiny backbone is written to a temporary directory. The tiny UNet is so
small that per-call overheads dominate: read the throughput figures as pipeline overhead, not as a
prediction for real backbones (an SD-1.x UNet: 8-10 s per guided step at 512² on this CPU).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def regen_batch(b: int, size: int = 64):
    from diffusion_hpc.generate.base import GenerationBatch, format_prompt

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
    depth = np.zeros((b, size, size), np.float32)
    depth[:, 12:52, 22:42] = 3.0
    mask = depth > 0
    return GenerationBatch(seeds=list(range(b)), prompts=[format_prompt("doing a handstand", i) for i in range(b)],
                           start_images=images, person_masks=mask, silhouettes=mask, depth=depth)  # fmt: skip


def timed(gen, batch, repeats: int):
    gen.generate(batch)  # warm-up
    totals, unet = [], []
    for _ in range(repeats):
        out = gen.generate(batch)
        totals.append(out.seconds["total"])
        unet.append(out.seconds["unet"])
    t = float(np.median(totals))
    u = float(np.median(unet))
    return len(batch) / t, 1.0 - u / t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", help="backbone dir (default: write the tiny one to a temp dir)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from diffusion_hpc.generate.base import ORIGINAL_UNET_EVALS, PRESETS, GenerationBatch
    from diffusion_hpc.generate.diffusion import DepthRegenerator, Text2ImageGenerator

    tmp = None
    backbone = args.backbone
    if backbone is None:
        from diffusion_hpc.generate.tiny import write_tiny_backbone

        tmp = tempfile.TemporaryDirectory()
        backbone = write_tiny_backbone(os.path.join(tmp.name, "tiny"))
    print(f"torch {torch.__version__}, {args.threads} thread(s); backbone {backbone}; peak RSS {peak_mb():.0f} MB")

    # 1. throughput and time outside the UNet
    t2i = Text2ImageGenerator(backbone, preset="default")
    gens = {
        "txt2img": t2i,
        "depth2img": DepthRegenerator(backbone, method="depth2img", preset="default"),
        "controlnet": DepthRegenerator(backbone, method="controlnet", preset="default", share_with=t2i),
    }
    print(f"models loaded; peak RSS {peak_mb():.0f} MB\n")
    print("| generator (default preset) | batch | samples/s | time outside UNet | UNet evals/sample | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, gen in gens.items():
        for b in (1, 8):
            batch = (GenerationBatch(seeds=list(range(b)), prompts=["a photo of an athlete diving"] * b, size=(64, 64))
                     if name == "txt2img" else regen_batch(b))  # fmt: skip
            rate, outside, out = timed(gen, batch, args.repeats)
            print(f"| {name} | {b} | {rate:.1f} | {outside:.0%} | {int(out.unet_evals[0])} | {peak_mb():.0f} |")

    # 2. UNet evaluations per sample per preset and mode (measured), vs the original
    print("\n| preset | scheduler | T: txt2img + regen | R: regen | D: regen from noise | vs original T 170 / R 70 |")
    print("|---|---|---:|---:|---:|---|")
    for preset, scheduler in [(p, None) for p in PRESETS] + [("fast", "tcd")]:
        t = Text2ImageGenerator(backbone, preset=preset, scheduler=scheduler)
        r = DepthRegenerator(backbone, method="depth2img", preset=preset, scheduler=scheduler)
        ti = int(t.generate(GenerationBatch(seeds=[0], prompts=["a"], size=(64, 64))).unet_evals[0])
        ri = int(r.generate(regen_batch(1)).unet_evals[0])
        b = regen_batch(1)
        b.start_images = None
        di = int(r.generate(b).unet_evals[0])
        mode_t = ti + ri
        print(f"| {preset} | {scheduler or PRESETS[preset].scheduler} | {ti} + {ri} = {mode_t} | {ri} | {di} | "
              f"T {mode_t / ORIGINAL_UNET_EVALS['T']:.0%}, R {ri / ORIGINAL_UNET_EVALS['R']:.0%} |")  # fmt: skip
    print(f"\npeak RSS {peak_mb():.0f} MB")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
