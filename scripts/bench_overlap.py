"""Benchmark what ``overlap`` gains where the UNet runs on a GPU: mode R wall ms per accepted sample
with and without it, on a machine without a GPU, the tiny backbone's UNet standing in for one.

With ``overlap`` (the default of ``dhpc generate``) the head of batch i+1 (decoding the guides,
segmentation, the estimator's fit, prior, augmentation) runs on a worker thread while the tail of
batch i (label render, regeneration, verification, records) runs. Here the tiny UNet computes on the
CPU in a few ms, so there is no idle accelerator to feed. To see the overlap where it matters, each
UNet evaluation (forward call) of the timed run also sleeps S ms: ``time.sleep`` releases the GIL, as
a CUDA kernel wait does, so the other thread's CPU stages run meanwhile. The simulation lives in this
script only; the package never sleeps.

For each S (``--sleep-ms``, default 0 20 50 150) mode R runs ``--rounds`` times without and with the
overlap, alternating (so a change of the machine's load hits both alike), each run after a
one-batch warm-up (as scripts/bench_modes.py runs it: batch 16, k = 3, MediaPipe estimator, real
photos as guides, one torch thread); the script prints the medians (and the wall time's range
over the rounds) per accepted sample:

    GPU ms     the simulated GPU time (S x UNet calls / accepted samples)
    wall ms    without the overlap and with it, and their ratio
    CPU ms     the CPU stages' time from the manifest (every stage but ``regenerate``; the run without
               the overlap, where a stage's wall time is its CPU work) and the process CPU time of
               each run (``time.process_time``: every thread; the sleeps cost none)

Without the overlap a sample costs about CPU + GPU; with it, about the larger of the head's CPU work
and the tail's (GPU + its own CPU work): the GPU time is hidden behind the next batch's CPU stages
until it exceeds them. Only batches overlap each other, so the first head and the last tail of a
shard run alone: a run needs many batches (``--n`` / (``--batch-size`` // 3) guides) for the gain
to show (with two batches only the first tail can hide behind the second head). On this 2-core
machine the two threads also compete for the cores (the segmenter and the estimator are one lock:
the head's fit and the tail's verification never run at once), so the CPU stages' wall times of the
overlapped run are longer: its CPU-stage figure is not its CPU work.

    .venv/bin/python scripts/bench_overlap.py --n 96 --rounds 3 --sleep-ms 0 20 50 150

Measured on the shared 2-core CPU (n = 48, batch 8: 8 batches, one round each, load about 1), wall
ms per accepted sample without / with the overlap:

    64 px:  S = 0: 618 / 636 (0.97x: nothing idle to fill); S = 150 (GPU 350 ms): 945 / 712 (1.33x).
            Without, CPU + GPU (604 + 350 = 954); with, about max(CPU, GPU) plus the edge batches.
    128 px: S = 0: 798 / 703; S = 50 (GPU 117): 993 / 880; S = 150 (GPU 350): 1,173 / 1,123 (1.04x).
            Here the tail's own CPU work is larger (the tiny UNet computes on the CPU: process CPU
            789 ms against 468 ms in the CPU stages), and the two threads' Python-heavy loops (the
            fit's Adam steps, the denoising loop) take turns on the GIL, so little is hidden.

The process spends 3-18 % more CPU with the overlap (GIL hand-offs between two busy threads), and
the overlapped run's CPU-stage wall times are 1.3-1.9x the series run's: hence the default, on only
when the diffusion models run on a GPU. Three alternating rounds of n = 24 (two batches) under load
4-9 spread by up to 1.7x between rounds: compare only alternating runs of many batches.

Runs under ``nice -n 10`` with one torch thread unless OMP_NUM_THREADS is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_modes import run_mode, write_guides  # noqa: E402  (the same runs as bench_modes)


class SimulatedGPU:
    """A forward pre-hook on the UNet: each evaluation sleeps ``ms`` more (the GIL released), counted."""

    def __init__(self, ms: float) -> None:
        self.ms, self.calls = float(ms), 0

    def __call__(self, module, args) -> None:
        self.calls += 1
        if self.ms > 0:
            time.sleep(self.ms / 1000)

    def attach(self, stages) -> None:
        stages.image_generator.unet.register_forward_pre_hook(self)


def measure(sleep_ms: float, overlap: bool, args, backbone: Path, guides: Path, work: Path) -> dict:
    gpu = SimulatedGPU(sleep_ms)
    run_args = argparse.Namespace(**{**vars(args), "overlap": overlap, "profile": False})
    summary = run_mode("R", run_args, backbone, guides, work, prepare=gpu.attach)
    accepted = summary["accepted"]
    summary["unet_calls"] = gpu.calls
    summary["gpu_ms_per_accepted"] = round(sleep_ms * gpu.calls / accepted, 1) if accepted else None
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=96, help="samples of each timed run (after a one-batch warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="runs without and with the overlap, alternating")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sleep-ms", type=float, nargs="+", default=[0.0, 20.0, 50.0, 150.0],
                        help="simulated GPU ms added to each UNet evaluation")
    parser.add_argument("--backbone", type=Path, help="a tiny backbone folder (default: written to a temporary folder)")
    args = parser.parse_args(argv)
    os.nice(10)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    table = []
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as tmp:
        work = Path(tmp)
        backbone = args.backbone
        if backbone is None:
            from diffusion_hpc.generate.tiny import write_tiny_backbone

            backbone = write_tiny_backbone(work / "backbone")
        guides = write_guides(work / "guides", -(-args.n // 3) + args.batch_size)  # a file per guide (k = 3)
        for sleep_ms in args.sleep_ms:
            runs = {False: [], True: []}
            for _ in range(args.rounds):
                for overlap in (False, True):
                    runs[overlap].append(measure(sleep_ms, overlap, args, backbone, guides, work))
            accepted = {r["accepted"] for rs in runs.values() for r in rs}
            assert len(accepted) == 1, f"the overlap changed the samples: accepted {accepted}"

            def median(key: str, overlap: bool) -> float:
                return round(float(np.median([r[key] for r in runs[overlap]])), 1)

            walls = {o: [r["wall_ms_per_accepted"] for r in runs[o]] for o in (False, True)}
            row = {
                "sleep_ms": sleep_ms, "accepted": accepted.pop(), "rounds": args.rounds,
                "unet_calls": runs[False][0]["unet_calls"], "gpu_ms_per_accepted": runs[False][0]["gpu_ms_per_accepted"],
                "wall_ms_per_accepted": {"series": median("wall_ms_per_accepted", False),
                                         "overlap": median("wall_ms_per_accepted", True)},
                "wall_range": {"series": [min(walls[False]), max(walls[False])],
                               "overlap": [min(walls[True]), max(walls[True])]},
                "cpu_stage_ms_per_accepted": {"series": median("cpu_ms_per_accepted", False),
                                              "overlap": median("cpu_ms_per_accepted", True)},
                "process_cpu_ms_per_accepted": {"series": median("process_cpu_ms_per_accepted", False),
                                                "overlap": median("process_cpu_ms_per_accepted", True)},
                "slowest_cpu_stages": runs[False][0]["slowest_cpu_stages"],
            }  # fmt: skip
            row["overlap_speedup"] = round(row["wall_ms_per_accepted"]["series"] / row["wall_ms_per_accepted"]["overlap"], 2)
            print(json.dumps(row), flush=True)
            table.append(row)
    print("\n| S ms | GPU ms | wall ms, series (range) | wall ms, overlap (range) | speed-up "
          "| CPU-stage ms (series / overlap) | process CPU ms (series / overlap) |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        w, c, p = r["wall_ms_per_accepted"], r["cpu_stage_ms_per_accepted"], r["process_cpu_ms_per_accepted"]
        lo, hi = r["wall_range"]["series"], r["wall_range"]["overlap"]
        print(f"| {r['sleep_ms']:g} | {r['gpu_ms_per_accepted']} | {w['series']} ({lo[0]}-{lo[1]}) | "
              f"{w['overlap']} ({hi[0]}-{hi[1]}) | {r['overlap_speedup']}x | {c['series']} / {c['overlap']} | "
              f"{p['series']} / {p['overlap']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
