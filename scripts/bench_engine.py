"""Benchmark the engines: samples/s of ``--engine local`` and of Ray with 1 and 2 workers, and Ray's
overhead per shard.

Two workloads, mode D: the render baseline (512 px by default) and depth2img with the tiny random
backbone (``dhpc backbone tiny``, 64 px, the default sampler preset: 40 UNet evaluations per sample,
label verification on). For each engine the table gives

- ``end-to-end``: samples / wall time of the whole ``generate`` call (Ray: starting the workers and
  loading their models included; Ray itself is started once, beforehand, as a cluster would be);
- ``shards``: samples / the time the shards took (local: the run's stage + write time; Ray: first
  shard submitted to last shard back), i.e. the steady rate without start-up;
- ``ready s``: Ray's start-up per run (actors created, models loaded).

Ray's overhead per shard, two ways: (a) with 1 worker, (driver time of the shards - the worker's
own time making them) / shards: scheduling, the call, the result back and the idle gap between
shards; (b) the round trip of an empty actor call (ms).

    .venv/bin/python scripts/bench_engine.py                   # both workloads
    .venv/bin/python scripts/bench_engine.py --n 128 --image-size 512 --skip-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _run(config, out: Path) -> dict:
    from diffusion_hpc.engine import generate

    start = time.perf_counter()
    result = generate(config, out, progress=False)
    wall = time.perf_counter() - start
    run = json.loads((out / "run.json").read_text())
    ex = run["execution"]
    n = result.accepted + result.failed
    if ex["engine"] == "ray":
        shards_s = ex["shards_seconds"]
        overhead = (shards_s - ex["worker_shard_seconds"]) / run["shards"] if ex["workers"] == 1 else None
    else:
        shards_s = run["stage_seconds_this_session"] + (run["write_seconds_per_sample"] or 0) * n
        overhead = None
    return {"engine": ex["engine"] + (f" x{ex['workers']}" if ex["engine"] == "ray" else ""), "n": n,
            "wall_s": wall, "end_to_end": n / wall, "shards_rate": n / shards_s,
            "ready_s": ex.get("ready_seconds"), "overhead_ms_per_shard": None if overhead is None else 1000 * overhead}


def _empty_call_ms(repeats: int = 200) -> float:
    import ray

    @ray.remote(num_cpus=1)
    class Empty:
        def ping(self, x):
            return x

    actor = Empty.remote()
    ray.get(actor.ping.remote(0))
    start = time.perf_counter()
    for i in range(repeats):
        ray.get(actor.ping.remote(i))
    ms = 1000 * (time.perf_counter() - start) / repeats
    ray.kill(actor)
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=96, help="render baseline: samples per run")
    parser.add_argument("--shard-size", type=int, default=16, help="render baseline: samples per shard")
    parser.add_argument("--image-size", type=int, default=512, help="render baseline: image side")
    parser.add_argument("--tiny-n", type=int, default=24, help="tiny backbone: samples per run")
    parser.add_argument("--tiny-shard-size", type=int, default=4)
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the local engine, and so of every Ray worker (the driver's count; "
                        "default 1: two-thread torch on a shared 2-core machine is erratic)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray
    import torch

    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.generate.tiny import write_tiny_backbone

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="dhpc-bench-engine-"))
    cpus = os.cpu_count() or 1
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    try:
        workloads = [("render", dict(n=args.n, shard_size=args.shard_size, batch_size=16,
                                     image_size=(args.image_size, args.image_size)))]
        if not args.skip_tiny:
            bb = write_tiny_backbone(tmp / "tiny", seed=0) or (tmp / "tiny")
            workloads.append(("tiny depth2img", dict(n=args.tiny_n, shard_size=args.tiny_shard_size, batch_size=4,
                                                     image_size=(64, 64), generator="depth2img", backbone=str(bb))))
        # warm-up: the body model and the pose set are loaded (and cached on disk) once
        _run(GenerateConfig(n=2, image_size=(64, 64)), tmp / "warm")
        rows = []
        for name, kw in workloads:
            for engine, workers in (("local", None), ("ray", 1), ("ray", 2)):
                extra = {} if engine == "local" else {"engine": "ray", "workers": workers}
                r = _run(GenerateConfig(**kw, **extra), tmp / f"{name.split()[0]}-{engine}-{workers}")
                rows.append({"workload": name, **r})
        empty = _empty_call_ms()
        print(f"{cpus} CPUs, {args.threads} torch thread(s) per process; Ray started once in {ray_start:.1f} s")
        print(f"{'workload':<15} {'engine':<8} {'n':>4} {'end-to-end/s':>12} {'shards/s':>9} {'ready s':>8} "
              f"{'overhead ms/shard':>18}")
        for r in rows:
            ready = "" if r["ready_s"] is None else f"{r['ready_s']:.1f}"
            over = "" if r["overhead_ms_per_shard"] is None else f"{r['overhead_ms_per_shard']:.1f}"
            print(f"{r['workload']:<15} {r['engine']:<8} {r['n']:>4} {r['end_to_end']:>12.2f} {r['shards_rate']:>9.2f} "
                  f"{ready:>8} {over:>18}")
        print(f"empty actor call round trip: {empty:.2f} ms")
        print(json.dumps({"runs": rows, "empty_call_ms": empty, "ray_start_s": ray_start}))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
