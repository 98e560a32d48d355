"""CPU cost of MediaPipe Pose's whole-image pass read as batched torch ops
(:class:`~diffusion_hpc.estimate.pose_detector_model.PoseDetectorModel` for the person detector,
:func:`~diffusion_hpc.estimate.pose_detector_model.read_whole_images` for detector + landmark model)
against MediaPipe's own whole graph (``MediaPipeDetector._process``), per image.

    .venv/bin/python scripts/bench_pose_detector.py [--rounds 3] [--threads 1] [--batch 16]

Images: tests/test_pose_detector_model.py's 13 (the wheels' photos of people at 200-1400 px, two
people side by side, a small person on a coffee photo, coffee and a cat: 10 with someone), cycled to
``--batch``. Variants, alternating within each round: the detector alone and the whole reading (with
masks), one image a call (batch 1) and all in one call (batch ``--batch``), and MediaPipe's graph one
image a call. For the torch variants the host work (crops, decoding, suppression, regions, and for
the whole reading the landmark model's crops, decoding and masks: everything but the forwards) is
reported apart from the forwards, which run on the CPU here but are meant for a GPU. Process CPU
time (all threads), median of ``--rounds`` rounds.

Measured (2-core shared machine, 1 torch thread, float32, everything on the CPU; CPU ms per image,
three runs of 3 rounds each: batch 16 twice, batch 13 once; the landmark forward is spent on the 10
images of 13 with someone):

=============================  =========  ============  ============
variant                        host work  detector fwd  landmark fwd
=============================  =========  ============  ============
detector, batch 1              3.2-4.5    21-26         -
detector, batch 16 (13)        2.9-4.1    18-29         -
whole reading, batch 1         10.6-16.4  21-26         22-30
whole reading, batch 16 (13)   9.2-13.2   19-28         41-68
MediaPipe's whole graph        27.6-34.7 (all of it, both XNNPACK forwards included)
=============================  =========  ============  ============

The detector's host work is its crop (float64 ``grid_sample`` of 224 x 224 x 3 samples and the
image's conversion to float64, about 3 ms an image here; its 1200 x 1400 image costs the most); the
decoding, suppression and region are about 0.1 ms. The whole reading adds the landmark model's host
work (crops, and the masks warped back to each image: the larger part on these up to 1400 px
images). On a GPU all of it but the suppression and the region runs on the device. On this CPU the
two torch forwards (one thread) cost more than MediaPipe's whole graph: on a CPU-only machine
MediaPipe's graph stays the cheaper whole-image reader.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_keypoint_model import TimedForward, cpu_bench_parser, parse_cpu_bench  # noqa: E402  (shared bench pieces)


def main() -> None:
    args = parse_cpu_bench(cpu_bench_parser(__doc__, batch=16))
    from test_pose_detector_model import test_images

    from diffusion_hpc.estimate.landmark_model import PoseLandmarkModel
    from diffusion_hpc.estimate.landmarks import MediaPipeDetector
    from diffusion_hpc.estimate.pose_detector_model import PoseDetectorModel, read_whole_images

    found = list(test_images().values())
    images = [found[i % len(found)] for i in range(args.batch)]
    detector, landmarks = PoseDetectorModel(), PoseLandmarkModel()
    timed = detector.model = TimedForward(detector.model)
    timed_landmarks = landmarks.model = TimedForward(landmarks.model)
    mediapipe = MediaPipeDetector()
    read_whole_images(detector, landmarks, images[:2])  # warm-up of all
    mediapipe._process(images[0])
    n = len(images)
    times: dict[str, list[list[float]]] = {}
    for _ in range(args.rounds):
        for batch in (1, n):
            for whole in (False, True):
                timed.seconds = timed_landmarks.seconds = 0.0
                t = time.process_time()
                for lo in range(0, n, batch):
                    if whole:
                        read_whole_images(detector, landmarks, images[lo:lo + batch])
                    else:
                        detector.detect_regions(images[lo:lo + batch])
                total = time.process_time() - t
                forward = timed.seconds + timed_landmarks.seconds
                name = f"torch {'whole reading' if whole else 'detector     '} batch {batch:2d}"
                times.setdefault(name, []).append([total - forward, timed.seconds, timed_landmarks.seconds])
        t = time.process_time()
        for image in images:
            mediapipe._process(image)
        times.setdefault("MediaPipe whole graph, one a call", []).append([time.process_time() - t] + [float("nan")] * 2)
    print(f"CPU ms per image, {n} images, {args.threads} torch thread(s), median of {args.rounds} rounds")
    print(f"{'variant':36} {'host work':>10} {'detector fwd':>13} {'landmark fwd':>13}")
    for name, rows in times.items():
        med = np.median(np.array(rows), axis=0) * 1000 / n
        print(f"{name:36} {med[0]:10.2f} {med[1]:13.2f} {med[2]:13.2f}")


if __name__ == "__main__":
    main()
