"""Benchmark ``dhpc generate`` (mode D, render baseline): samples/second at several batch sizes.

Measures the whole per-sample path (requests, body model, camera placement, render, image
generator, labels, PNG encoding and the shard write), after a warm-up run that loads the models,
plus the mean time per stage from the manifest and the process's peak resident memory.

    .venv/bin/python scripts/bench_generate.py --n 64 --batch-sizes 1 16 --image-size 512
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="samples per measured run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--renderer", default="auto")
    args = parser.parse_args()

    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.pipeline.generate import Generator

    tmp = Path(tempfile.mkdtemp(prefix="dhpc-bench-"))
    size = (args.image_size, args.image_size)
    try:
        warm = Generator(GenerateConfig(n=4, batch_size=4, image_size=size, renderer=args.renderer), progress=False)
        warm.run(tmp / "warm")
        rows = []
        for bs in args.batch_sizes:
            config = GenerateConfig(n=args.n, batch_size=bs, shard_size=max(args.n, bs), image_size=size, renderer=args.renderer)
            gen = Generator(config, progress=False)
            start = time.perf_counter()
            gen.run(tmp / f"b{bs}")
            seconds = time.perf_counter() - start
            manifest = open_dataset(tmp / f"b{bs}").manifest()
            stages = {k: 1000 * sum(r["timings"][k] for r in manifest) / len(manifest) for k in manifest[0]["timings"]}
            rows.append({"batch_size": bs, "samples_per_s": args.n / seconds, "ms_per_sample": 1000 * seconds / args.n,
                         "stage_ms": stages})
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"mode D, render baseline, {args.image_size}x{args.image_size}, {args.n} samples per run, renderer {args.renderer}")
        print(f"{'batch':>5} {'samples/s':>10} {'ms/sample':>10}  stages (ms/sample)")
        for r in rows:
            stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stage_ms"].items())
            print(f"{r['batch_size']:>5} {r['samples_per_s']:>10.1f} {r['ms_per_sample']:>10.1f}  {stages}")
        print(f"peak resident memory: {peak_mb:.0f} MB")
        print(json.dumps({"runs": rows, "peak_rss_mb": peak_mb}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
