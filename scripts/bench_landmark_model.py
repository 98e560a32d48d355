"""CPU cost of MediaPipe Pose's landmark model read as batched torch ops
(:class:`~diffusion_hpc.estimate.landmark_model.PoseLandmarkModel`) against MediaPipe's own graph
(``MediaPipeDetector._process_region``), per person.

    .venv/bin/python scripts/bench_landmark_model.py [--rounds 3] [--threads 1] [--batch 16]

Readings: the real photos that ship in wheels (astronaut, camera: 512 x 512; Grace Hopper: 512 x 600)
with the regions of tests/test_landmark_model.py (each person's tracking region, quarter-turned,
partly outside), cycled to ``--batch`` readings. Variants, alternating within each round: the torch
reader one region a call (batch 1) and all regions in one call (batch ``--batch``), with and without
the people's masks (``masks=False``: what label verification needs), and MediaPipe's graph one region
a call. For the torch reader the host work (crops, decoding, masks: everything but the forward) is
reported apart from the forward, which runs on the CPU here but is meant for a GPU, where the crops
and the decoding follow it: the host then uploads each image once and reads back the landmarks, the
next regions and the masks. Process CPU time (all threads), median of ``--rounds`` rounds.

Measured (2-core shared machine, 1 torch thread, float32, everything on the CPU; CPU ms per person,
two runs of 3 rounds each):

=====================  =====  =========  ========
variant                masks  host work  forward
=====================  =====  =========  ========
torch, batch 1         yes    8.8-8.9    32-33
torch, batch 1         no     5.4-5.6    31-33
torch, batch 16        yes    5.3-7.1    57-104
torch, batch 16        no     3.3-3.5    54
MediaPipe's graph      yes    20.5 (all of it, its XNNPACK forward included)
=====================  =====  =========  ========

The host work here is mostly the crops (float64 ``grid_sample`` of 16 x 3 x 256 x 256 samples, about
2-3 ms a person) and, with masks, their warp back to the 512 px images (about 2-4 ms a person); the
decoding is about 0.3 ms a person. On a GPU all of it runs on the device and the host keeps the
uploads, the kernel launches and the read-back. On this CPU the torch forward (one thread) costs
more than MediaPipe's whole graph, and more per person in a batch of 16 than alone: on a CPU-only
machine MediaPipe's graph stays the cheaper reader.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_keypoint_model import TimedForward, cpu_bench_parser, parse_cpu_bench  # noqa: E402  (shared bench pieces)
from bench_modes import photos  # noqa: E402


def readings(batch: int) -> tuple[list[np.ndarray], list, list[int]]:
    """The photos and ``batch`` regions on them (tests/test_landmark_model.py's, cycled)."""
    from test_landmark_model import TRACKED, regions_of

    found = photos()
    names = list(TRACKED)
    images = [found[n] for n in names]
    regions, owner, _ = regions_of(images, names)
    picks = [i % len(regions) for i in range(batch)]
    return images, [regions[i] for i in picks], [owner[i] for i in picks]


def main() -> None:
    args = parse_cpu_bench(cpu_bench_parser(__doc__, batch=16))
    from diffusion_hpc.estimate.landmark_model import PoseLandmarkModel
    from diffusion_hpc.estimate.landmarks import MediaPipeDetector

    images, regions, owner = readings(args.batch)
    model = PoseLandmarkModel()
    timed = model.model = TimedForward(model.model)
    detector = MediaPipeDetector()
    model.read_on_regions(images, regions[:2], owner[:2])  # warm-up of both
    detector._process_region(images[owner[0]], regions[0])
    n = len(regions)
    times: dict[str, list[list[float]]] = {}
    for _ in range(args.rounds):
        for batch in (1, n):
            for masks in (True, False):
                timed.seconds = 0.0
                t = time.process_time()
                for lo in range(0, n, batch):
                    model.read_on_regions(images, regions[lo:lo + batch], owner[lo:lo + batch], masks=masks)
                total = time.process_time() - t
                times.setdefault(f"torch batch {batch:2d} masks {'yes' if masks else 'no '}", []).append(
                    [total - timed.seconds, timed.seconds])
        t = time.process_time()
        for m, region in zip(owner, regions):
            detector._process_region(images[m], region)
        times.setdefault("MediaPipe graph, one a call", []).append([time.process_time() - t, float("nan")])
    print(f"CPU ms per person, {n} readings, {args.threads} torch thread(s), median of {args.rounds} rounds")
    print(f"{'variant':32} {'host work':>10} {'forward':>9}")
    for name, rows in times.items():
        med = np.median(np.array(rows), axis=0) * 1000 / n
        print(f"{name:32} {med[0]:10.2f} {med[1]:9.2f}")


if __name__ == "__main__":
    main()
