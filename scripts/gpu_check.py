"""Check generation on a GPU: half precision on CUDA against float32 on the CPU, same seeds.

    .venv/bin/python scripts/gpu_check.py [--backbone PATH] [--dtype float16] [--steps 20] [--seeds 0,1]

Runs mode-D-style regeneration (the depth-conditioned generator from noise, no start image) of the
tiny random backbone (``diffusion_hpc.generate.tiny.write_tiny_backbone``, written to a temporary
folder) and, with ``--backbone``, of a full-size one, once on ``cuda`` in ``--dtype`` and once on the
CPU in float32, for the same seeds, and prints per backbone:

- the largest absolute pixel difference between the two (0..255) and the mean one: the noise of a
  seed is drawn on the CPU on both devices, so the images differ only by float rounding (float16
  drifts over the steps: expect a similar picture with differences of a few to tens of grey
  levels, not identical bytes);
- UNet evaluations per second on each device (the generator's UNet counter);
- the peak GPU memory (``torch.cuda.max_memory_allocated``) of the CUDA run.

Without CUDA it says so and exits with status 2. A full-size backbone on the CPU is slow (an
SD-1.x UNet: 8-10 s per guided step at 512²); ``--size`` and ``--steps`` shorten it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def depth_scene(b: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, S, S) float32 depth of a box-shaped "person" with a depth ramp, and its silhouette."""
    depth = np.zeros((b, size, size), np.float32)
    top, bottom, left, right = int(0.19 * size), int(0.81 * size), int(0.34 * size), int(0.66 * size)
    depth[:, top:bottom, left:right] = 3.0 + np.linspace(0.0, 0.5, right - left, dtype=np.float32)[None, None, :]
    return depth, depth > 0


def run(backbone, method: str, device: str, dtype: str, seeds: list[int], size: int, steps: int):
    """One regeneration of ``seeds`` -> (images (B, S, S, 3) uint8, UNet evaluations per second, peak GPU MB)."""
    import torch

    from diffusion_hpc.generate.base import GenerationBatch, format_prompt
    from diffusion_hpc.generate.diffusion import DepthRegenerator

    gen = DepthRegenerator(backbone, method=method, preset="default", steps=steps, device=device, dtype=dtype)
    depth, sil = depth_scene(len(seeds), size)
    batch = GenerationBatch(seeds=seeds, prompts=[format_prompt("doing a handstand", i) for i in range(len(seeds))],
                            silhouettes=sil, depth=depth)  # fmt: skip
    gen.generate(batch)  # warm-up (kernels, allocator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = gen.generate(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    rate = float(result.unet_evals.sum()) / max(result.seconds["unet"], 1e-9)
    del gen
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result.images, rate, peak


def check(name: str, backbone, args) -> None:
    from diffusion_hpc.runtime.weights import backbone_set, check_models

    found = check_models({"backbone": str(backbone)})
    methods = backbone_set(found["backbone"]).regenerators()
    method = "depth2img" if "depth2img" in methods else "controlnet"
    seeds = [int(s) for s in args.seeds.split(",")]
    size = args.size or (64 if name == "tiny" else 512)
    gpu, gpu_rate, peak = run(backbone, method, args.device, args.dtype, seeds, size, args.steps)
    cpu, cpu_rate, _ = run(backbone, method, "cpu", "float32", seeds, size, args.steps)
    diff = np.abs(gpu.astype(np.int16) - cpu.astype(np.int16))
    print(f"{name} ({method}, {size}x{size}, {args.steps} steps, seeds {seeds}): {args.device} {args.dtype} vs cpu "
          f"float32: largest pixel difference {int(diff.max())}, mean {diff.mean():.2f}; UNet evaluations/s "
          f"{gpu_rate:.1f} ({args.device}) vs {cpu_rate:.1f} (cpu); peak GPU memory {peak:.0f} MB")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", help="a full-size backbone (folder or cached hub id) to check too")
    ap.add_argument("--device", default="cuda", help="the CUDA device (default: cuda)")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                    help="precision on the GPU (default: float16)")
    ap.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    ap.add_argument("--seeds", default="0,1", help="comma-separated sample seeds, one image each (default: 0,1)")
    ap.add_argument("--size", type=int, help="image side (default: 64 for the tiny backbone, 512 otherwise)")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        built = f"CUDA {torch.version.cuda}, no GPU visible" if torch.version.cuda else "built without CUDA"
        print(f"CUDA is unavailable (torch {torch.__version__}, {built}): nothing to check on this machine",
              file=sys.stderr)  # fmt: skip
        return 2
    from diffusion_hpc.errors import DhpcError
    from diffusion_hpc.generate.tiny import write_tiny_backbone

    try:
        with tempfile.TemporaryDirectory() as tmp:
            check("tiny", write_tiny_backbone(os.path.join(tmp, "tiny"), seed=0), args)
        if args.backbone:
            check(args.backbone, args.backbone, args)
    except DhpcError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
