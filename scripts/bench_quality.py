"""Features per second of the FID Inception-v3 on this CPU (random weights: timing only).

Times the whole per-image path of ``dhpc quality`` (clean-fid PIL bicubic resize of a uint8 image
to 299, then the network) and the network alone, at each batch size.

    .venv/bin/python scripts/bench_quality.py [--batch 1 32] [--images 64] [--size 256] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes to time")
    ap.add_argument("--images", type=int, default=32, help="images per batch size (>= the largest batch)")
    ap.add_argument("--size", type=int, default=256, help="side of the synthetic uint8 input images")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()

    import torch

    from diffusion_hpc.eval.inception import FIDInceptionV3, init_random_
    from diffusion_hpc.eval.quality import features_of_resized, image_features, resize_clean

    if args.threads:
        torch.set_num_threads(args.threads)
    model = init_random_(FIDInceptionV3(), seed=0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images of "
          f"{args.size}x{args.size}")

    t = time.perf_counter()
    resized = np.stack([resize_clean(im) for im in images])
    resize_s = (time.perf_counter() - t) / len(images)
    print(f"resize (PIL bicubic to 299): {1 / resize_s:8.1f} images/s")
    features_of_resized(model, resized[:1])  # warm-up
    for b in args.batch:
        n = max(b, (len(images) // b) * b)
        t = time.perf_counter()
        for i in range(0, n, b):
            features_of_resized(model, resized[i % len(resized): i % len(resized) + b])
        net = n / (time.perf_counter() - t)
        t = time.perf_counter()
        image_features(model, images[:n], batch_size=b)
        full = n / (time.perf_counter() - t)
        print(f"batch {b:3d}: network {net:6.2f} features/s, resize + network {full:6.2f} features/s")


if __name__ == "__main__":
    main()
