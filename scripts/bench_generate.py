"""Benchmark ``dhpc generate`` (mode D, render baseline): samples/second at several batch sizes.

Measures the whole per-sample path (requests, body model, camera placement, render, image
generator, labels, PNG encoding and the shard write), after a warm-up run that loads the models,
plus the mean time per stage from the manifest and the process's peak resident memory.

``--memory N1 N2 ...``: instead, peak resident memory (ru_maxrss) of a whole ``dhpc generate`` run
of each size, each in its own subprocess, and the ratio of each to the first (flat memory: a
1,000-sample run should need about what a 100-sample run needs).

    .venv/bin/python scripts/bench_generate.py --n 64 --batch-sizes 1 16 --image-size 512
    .venv/bin/python scripts/bench_generate.py --memory 100 1000 --batch-sizes 16 --image-size 512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mb(n: int, batch_size: int, image_size: int, renderer: str, out: Path) -> tuple[float, float]:
    """(peak resident MB, seconds) of ``dhpc generate -n n`` (mode D) in a subprocess of its own."""
    command = [sys.executable, "-m", "diffusion_hpc.cli", "generate", "--out", str(out), "-n", str(n),
               "--batch-size", str(batch_size), "--image-size", str(image_size), "--renderer", renderer,
               "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench_generate: {' '.join(command)} failed ({proc.returncode})")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def memory(args) -> None:
    """Peak RSS of a run of each size in ``args.memory`` (one subprocess each), and the ratios."""
    tmp = Path(tempfile.mkdtemp(prefix="dhpc-bench-mem-"))
    bs = args.batch_sizes[0]
    try:
        rows = []
        for n in args.memory:
            mb, seconds = peak_rss_mb(n, bs, args.image_size, args.renderer, tmp / f"n{n}")
            rows.append({"n": n, "peak_rss_mb": mb, "seconds": seconds})
            shutil.rmtree(tmp / f"n{n}")
        print(f"mode D, render baseline, {args.image_size}x{args.image_size}, batch {bs}, renderer {args.renderer}: "
              "peak resident memory of `dhpc generate` (one subprocess per run)")
        for r in rows:
            print(f"n={r['n']:>6}  {r['peak_rss_mb']:>8.0f} MB  x{r['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}  "
                  f"({r['seconds']:.0f} s)")
        print(json.dumps({"memory": rows}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="samples per measured run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--renderer", default="auto")
    parser.add_argument("--memory", type=int, nargs="+", metavar="N",
                        help="measure peak resident memory of runs of these sizes instead")
    args = parser.parse_args()
    if args.memory:
        memory(args)
        return

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
