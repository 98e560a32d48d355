"""Benchmark the CPU work around the denoising in modes T and R: CPU ms per accepted sample.

Runs ``dhpc generate`` in modes T and R with the tiny random backbone (``dhpc backbone tiny``;
written to a temporary folder unless ``--backbone`` is given), then reads the manifest: every row
carries its share of each stage's wall time (``timings``, seconds). The model stages are those whose
time is the diffusion models' (UNet, VAE, text encoders): ``regenerate`` and mode T's ``start``
(txt2img); every other stage (mode R's ``start``: decoding and resizing the guide photos;
``segment``, ``estimate``, ``prior``, ``augment``, ``body``, ``render``, ``verify``, the cycles'
estimates) is CPU-side work that could overlap the denoising. The script prints, per mode:

    cpu_ms_per_accepted          sum of the CPU stages' wall time (manifest) / accepted samples
    cpu_stage_ms_per_accepted    the same per stage
    process_cpu_ms_per_accepted_in_cpu_stages, process_cpu_stage_ms_per_accepted
                                 the process CPU time spent in the CPU stages, in all and per stage
                                 (:class:`Probe`): on a machine shared with other jobs a stage's wall
                                 time grows with the load (mode R's estimate read 133 CPU ms and 1,039
                                 wall ms per sample in one run at load 9), its CPU time moves far less
    write_cpu_ms_per_accepted    the shard writer's CPU time (encoding, tar), on its own thread
    estimator_parts_ms_per_accepted, pose_passes
                                 the MediaPipe fit's detection, face detection and fit (wall ms), in
                                 the head and in verification, and MediaPipe pose passes per guide
                                 (head) and per labelled person (verification)

(goal: <= 50 CPU ms per accepted sample at batch 16). The first batch (model warm-up) is excluded: a
warm-up run of one batch runs first in the same process. The runs make each batch after the previous
one (``overlap`` off): the CPU work is the same with the overlap, but on a CPU-only host its stages'
times would also hold the other thread's competition for the cores (``--overlap`` runs them
overlapped; scripts/bench_overlap.py measures what the overlap gains).

Mode R's guides are real photos of people that ship in wheels (scikit-image's astronaut and camera,
matplotlib's grace_hopper), as in scripts/kill_storm.py, each mirrored and cropped at other spots so
that every guide of the run has a file of its own (``--reuse-guides``: the 3 photos, reused);
``--people 2``: each guide shows the astronaut beside Grace Hopper (tests/test_multiperson_guided.py's
start image; MediaPipe needs about 100 px a person: use ``--image-size 256``), so every sample labels
two people. The tiny backbone draws noise, so mode T's start images would hold no person and every
row would fail before the CPU stages that matter: mode T runs the real tiny txt2img (its cost is
counted) and then replaces each start image by one of the photos, as tests/test_pipeline_modes.py
does. The noise also reaches verification: it finds no one in the final images, so it never fits
(a real backbone's images cost a fit per person, about the head's fit per guide image) and, from
256 px up, the detector searches every image's tiles for someone (16 MediaPipe passes a person at
256 px, where a real image costs one to four).

``--memory N1 N2 ...``: instead, peak resident memory (ru_maxrss) of a whole mode-R ``dhpc generate``
run of each size, each in its own subprocess, and the ratio of each to the first (flat memory: a
1,000-sample run should need about what a 100-sample run needs; goal <= 1.1x). These runs use
k = 8 variants per guide (``--memory-k``): fewer estimator fits keep a 1,000-sample run to minutes,
and the samples held and streamed to the shards are the same.

``--profile``: also print the functions with the most time (cProfile; ``--profile-sort``, default
cumulative; ``--profile-lines``, default 25) of each mode.

    .venv/bin/python scripts/bench_modes.py --n 48 --batch-size 16 --image-size 128
    .venv/bin/python scripts/bench_modes.py --n 48 --batch-size 16 --image-size 256 --people 2
    .venv/bin/python scripts/bench_modes.py --memory 100 1000 --image-size 64

Measured on a shared 2-core CPU (batch 16, k = 3, MediaPipe estimator, one torch thread, load 5-10),
process CPU ms per accepted sample in the CPU stages (goal 50):

- one person per guide, 128 px: mode R 178 and 150 in two runs, mode T 165 and 173. The estimate is
  112-138 ms of it (75 %), and the fit about 85 % of the estimate: a batch of 16 samples holds 5
  guides, so the fit runs on 5 images a call, where its fixed cost per call dominates (one fit
  call, CPU: 1.03 s for 1 image, 1.20 s for 5, 1.46 s for 10, 1.95 s for 20, 2.87 s for 40, i.e.
  240 ms an image at 5 against 72 at 40); then verify 20-25 (the segmenter and one MediaPipe pass:
  the noise images hold no one, so no fit), render 6-7, mode R's start 5, augment 3, segment 2,
  body 2; the shard writer 3-4 ms on its own thread.
- two people per guide (``--people 2``), 256 px: mode R 664 -> 522 and mode T 731 -> 545 when the
  people of a final image share the detector's whole-image pass and tile search (verify 463 -> 309
  and 552 -> 371 ms, MediaPipe passes per person 16 -> 10 on the noise images) and the head's
  interpenetration check skips the voxels of people whose boxes lie apart (augment 16 -> 9 and 23
  -> 10 ms); estimate 141-174 ms. The earlier figure (187 / 149 ms at 128 px, wall time) was
  measured on one-person guides.

With the fit compiled (``--compile-fit``, after the fit's lean skeleton and batched placement; the
warm-up, compilation included with inductor's cache warm, 10-47 CPU s), one run each, eager ->
compiled, CPU ms per accepted sample in the CPU stages (load 1-4):

- the tiny backbone's noise finals (no verification fit), one person at 128 px: mode R 205 -> 81
  (estimate 155 -> 46), T 141 -> 93 (110 -> 61); two people at 256 px: R 511 -> 416 (estimate 160
  -> 79; verify 317 -> 307 is MediaPipe's tile search on the noise, 10 passes a person), T 652 -> 559.
- ``--photo-finals`` (verification fits every sample's people, as on a real backbone's images), one
  person at 128 px: R 282 -> 125 (verify 165 -> 73: segment 2, one MediaPipe pass 33, faces 2, the
  fit of 16 images a call 32; estimate 94 -> 36: detection 15, the fit of about 5 images a call
  19), T 229 -> 122 (verify 138 -> 71, estimate 75 -> 39); render 6-9, augment, body and segment
  2-4 each, the shard writer 3 on its own thread. Two people at 256 px: R 407 -> 274 (verify 283 ->
  180: 1.9 MediaPipe passes a person, 89 ms, and the fit 76), T 594 -> 493 (verify 433 -> 383: 3.1
  passes a person, 234 ms); render 18-24.

The goal (50) is not met. ``--estimate-batch 5 16`` (the head fitting 15 start images a call instead
of 5; one round on a loaded machine): R 119 -> 124, T 130 -> 112 (estimate 40 -> 34 and 50 -> 35).
Verification reading MediaPipe's landmarks without the fit (``--verify-by``, default landmarks; its
agreement with right and wrong labels is pipeline/verify.py's table), compiled fit, ``--photo-finals``,
estimate_batch 16, alternating runs, estimate -> landmarks:

- one person at 128 px, three rounds: mode R 134 / 109 / 106 -> 98 / 80 / 90, T 130 / 115 / 113 ->
  92 / 87 / 84. Verify 62-77 -> 37-41 (one MediaPipe pass, 32-35, and the segmenter, about 5); estimate 30-44
  (1.7 MediaPipe passes a guide in R, 2.6 in T, and the fit of 15 images a call, 14-18), render 5-7,
  body, start, augment and segment 2-3 each; the shard writer 2-3 on its own thread.
- two people at 256 px, two rounds: R 208 / 255 -> 152 / 175 (verify 140 / 166 -> 83 / 92: 1.9
  MediaPipe passes a person), T 288 / 319 -> 225 / 229 (verify 223 / 241 -> 158 / 163: 3.1 passes a
  person, the landmark model on each person's region and once more on its own landmarks' region when
  the whole image's pass read the other person); estimate 44-62, render 13-16.

Verification reading each label's person with the landmark model alone on the region its label's
joints give (``--verify-by label-box``, the default since: pipeline/verify.py's threshold table),
one person at 128 px, compiled fit, ``--photo-finals``, alternating rounds, landmarks -> label-box:
mode R (three rounds) 101 / 82 / 88 -> 89 / 77 / 74, T (two) 89 / 89 -> 80 / 77; verify 37-42 -> 26-29,
one pass a person either way (verify.read_on_label 21.7 wall ms against verify.detect 34.7; a landmark-model
pass is 19-20.5 CPU ms against 30-33 for MediaPipe's whole graph, at 128 and 256 px alike: the
person detector is about 11 of the 31). The goal (50) is still not met that way: the head's
estimate (32-43) and verification's segmenter stay.

With label-box the default, ``--n 96 --estimate-batch 16 32 --rounds 2`` (mode R, one person at 128 px,
compiled fit, ``--photo-finals``): 69.4 / 67.2 CPU ms per accepted sample at 16, 66.1 / 66.1 at 32
(estimate 28.5-30.4 -> 26.0-27.5: the fit of 30 start images a call instead of 15), verify 25-26 (one
landmark-model pass, about 20, and the segmenter, about 5), render 5.4, start 2.5, body 2.4, augment
1.8, segment 1.6. The head's 1.53 MediaPipe passes a guide (2.34 in T) are 1 for the person and 4
for a second, small region the selfie segmenter cuts off some of the mirrored astronaut photos (her
helmet, about 22 px at 128 px, which passes ``min_person_height``), read as a person and found to
be no one in one whole-image pass and three mask readings: in R 4 of 42 head detections and 16 of
59 passes, in T 16 of 54 and 64 of 97. Without such regions the head would need about 1.1 (R) and
0.8 (T) passes a guide; telling a segmenter's fragment from a small person is left to a decision on
``segment.base.split_people``.

``--verify-by keypoint-model`` (a top-down keypoint model on each label silhouette's box, on the run's
device; ``--keypoint-model``, default a tiny random ViTPose standing in for a model on the GPU as the
tiny backbone does for the UNet, its forward reported apart as ``verify.model_forward``), one round,
``--n 96 --compile-fit --photo-finals``, one person at 128 px, label-box -> keypoint-model: mode R
66.5 -> 46.6, T 70.9 -> 48.7 CPU ms per accepted sample; verify 24.7-25.5 -> 5.1 (the segmenter, about
4.5; the reader's crops and decoding 0.5 and the tiny forward 0.2; a ViTPose-B input size makes the
crops about 1.1 ms a person dearer on the CPU: scripts/bench_keypoint_model.py). That is the goal (50)
with the fit compiled and verification on the device; what it reads with real weights is unmeasured.
Two people at 256 px (``--people 2 --image-size 256``, one round): label-box R 106.8 (1.62 people a
sample), T 118.6 (2); keypoint-model R 77.1, T 68.8, i.e. 48 and 34 a labelled person.

``--landmark-runtime torch`` (label-box's landmark model, MediaPipe's own weights, as torch ops on the
run's device: estimate.landmark_model; here the CPU, its forward reported apart as
``verify.model_forward`` and left out of ``..._without_device_forward``), one round each, ``--n 96
--compile-fit --photo-finals``, one person at 128 px, mediapipe -> torch: mode R 66.1 -> 50.1, T 65.0
-> 51.1 process CPU ms per accepted sample in the CPU stages; verify 25.8 / 24.8 -> 8.1 / 8.5 (the
segmenter about 5, the crops, decoding and uploads about 3 on this CPU, on the device on a GPU). The
forward on this CPU is 36-39 ms a sample, more than MediaPipe's whole graph (20): on the CPU
MediaPipe's own graph stays the default. The head's whole-image pass (estimate.detect, 14-18) is
then the largest CPU part left.

With the person detector on the device too (estimate.pose_detector_model: the head's whole-image
pass, its forwards reported apart as ``estimate.model_forward``), three alternating runs, torch /
mediapipe / torch, ``--n 96 --compile-fit --photo-finals``, one person at 128 px: mode R 46.0 / 78.9
/ 38.1, T 43.8 / 68.0 / 44.2 process CPU ms per accepted sample in the CPU stages without the
devices' forwards (the mediapipe run on a busier machine than the 66 above). The head's MediaPipe
passes left a guide: R 1.53 -> 0.44, T 2.31 -> 1.12 (readings on the segmenter's masks where the
whole image gave no one large, mostly its small fragments: bench_modes' docstring above); verify
reads no MediaPipe pass. That is the goal (50) with the fit compiled and MediaPipe's models on the
device, the defaults of a GPU run of 10,000 samples or more.

With the readings on the masks on the device as well (``MediaPipeDetector.detect_all``: the landmark
model on every image's mask region, a round of regions a call), alternating runs torch / mediapipe /
torch on an idle machine, same options: R 39.8 / 63.0 / 37.1, T 35.1 / 65.1 / 34.4; the head's
MediaPipe passes a guide R 0.44 -> 0, T 1.12 -> 0; its CPU work besides the forwards (estimate.detect
minus estimate.model_forward) 2.6-3.1 ms a sample.

What is left is mostly MediaPipe's passes, about 32 CPU ms each at any image size (the model runs at
its own input size): one a verified person, 1.7-2.6 a guide image in the head (a third of that a
sample at k = 3). Checked and left: the pose graph's segmentation output (``enable_segmentation``) is
read by ``Estimate.person_mask`` only, not by verification, and costs nothing measurable (CPU ms a
pass with / without it, 128 px: 31.8 / 31.7, 256 px: 31.6 / 31.9; landmarks bit-identical);
verification's segmenter (``mask_iou``) is 5.5 CPU ms an image at 128 and 256 px, almost all
MediaPipe's selfie model (splitting its mask into people 0.2-0.5 ms); cProfile of the compiled mode-R
run shows no Python overhead of note in the CPU stages (MediaPipe's graph waits and the fit's kernels).

Peak RSS of mode R at 64 px: 1,093 MB for 100 samples, 1,094 MB for 1,000 (1.001x).

Runs under ``nice -n 10`` (it lowers its own priority) with one torch thread unless OMP_NUM_THREADS is set.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

#: stages whose time is the diffusion models' (per mode); every other stage is CPU-side work
MODEL_STAGES = {"T": ("start", "regenerate"), "R": ("regenerate",)}
T_PROMPT = "doing a backflip"


def photos() -> dict[str, np.ndarray]:
    """Real photos of people from installed wheels: scikit-image's astronaut and camera, matplotlib's grace_hopper."""
    import matplotlib
    import skimage.data
    from PIL import Image

    return {"astronaut": skimage.data.astronaut(), "camera": np.stack([skimage.data.camera()] * 3, -1),
            "grace_hopper": np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))}


def photo_pair(left: np.ndarray, right: np.ndarray, size: int = 512) -> np.ndarray:
    """(size, size, 3) uint8: two photos side by side, each half the image high, a grey gap between
    them (the layout of tests/test_multiperson_guided.py's astronaut + Grace Hopper start image)."""
    import cv2

    half, gap = size // 2, size // 16
    canvas = np.full((size, size, 3), 200, np.uint8)
    top = size // 4
    left, right = (cv2.resize(p, (round(p.shape[1] * half / p.shape[0]), half), interpolation=cv2.INTER_AREA)
                   for p in (left, right))  # fmt: skip
    width = min(left.shape[1], half - gap)
    canvas[top:top + half, :width] = left[:, left.shape[1] - width:]  # the left photo's right part
    width = min(right.shape[1], half - gap)
    canvas[top:top + half, half + gap:half + gap + width] = right[:, :width]
    return canvas


def write_guides(folder: Path, distinct: int = 0, people: int = 1) -> Path:
    """Guide photos of ``people`` (1 or 2) people each. One person: the 3 photos of :func:`photos`;
    two: the astronaut beside Grace Hopper (:func:`photo_pair`). With ``distinct`` > 3, that many
    different files (each photo mirrored and cropped at other spots), so no two guides of a run share
    a file, as when a user has a photo per guide."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    shots = photos()
    if people == 2:
        shots = {"pair": photo_pair(shots["astronaut"], shots["grace_hopper"])}
    if distinct <= 3:
        for i in range(3):  # three files whatever the people, so a guide index maps to the same file in both
            name, image = list(shots.items())[i % len(shots)]
            Image.fromarray(image).save(folder / f"{i}-{name}.png")
        return folder
    for i in range(distinct):
        name, image = list(shots.items())[i % len(shots)]
        variant = i // len(shots)
        h, w = image.shape[:2]
        ch, cw = int(h * 0.85), int(w * 0.85)
        y0, x0 = (variant // 2 * 7) % (h - ch), (variant // 2 * 11) % (w - cw)
        crop = image[y0:y0 + ch, x0:x0 + cw]
        Image.fromarray(np.ascontiguousarray(crop[:, ::-1] if variant % 2 else crop)).save(folder / f"{i:04d}-{name}.png")
    return folder


class PhotoStart:
    """Mode T's start stage: the real tiny txt2img (its cost counted), each image then replaced by a photo."""

    name = "txt2img"
    requires = ("prompts", "seeds")

    def __init__(self, inner, photos: list[np.ndarray]) -> None:
        self.inner, self.photos = inner, photos
        self.settings = inner.settings

    def generate(self, batch):
        result = self.inner.generate(batch)
        result.images = np.stack([self.photos[int(s) % len(self.photos)] for s in batch.seeds])
        return result


class PhotoFinal:
    """The regeneration stage: the real tiny depth-to-image (its cost counted), each final image then
    replaced by its start image, a photo of the guide's people (``--photo-finals``): verification then
    finds and fits the people of every sample, as on a real backbone's images (on the tiny
    backbone's noise it finds no one and never fits). Each final image differs from the one before
    it in one pixel's value, so the detector's reading of its last image (shared by the people of
    one image) does not answer for the next variant of the same photo, as it would not on real
    finals. The labels do not match the photos, so the agreement scores mean nothing; without
    ``--min-agreement`` no sample is dropped for them."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def generate(self, batch):
        result = self.inner.generate(batch)
        if batch.start_images is not None:
            result.images = np.array(batch.start_images, copy=True)
            result.images[:, 0, 0, 0] += np.arange(1, len(result.images) + 1, dtype=np.uint8)  # each final its own
        return result


def config(mode: str, n: int, args, backbone: Path, guides: Path, overlap: bool = False):
    """The run's GenerateConfig; ``args.estimate_batch``, ``args.verify_by`` and ``args.landmark_views`` (one
    value each, when given) set the head's fit size, what verification reads and the views the head reads."""
    from diffusion_hpc.config import GenerateConfig

    extra = {"guides": guides} if mode == "R" else {"prompt": T_PROMPT}
    if getattr(args, "estimate_batch", None) is not None:
        extra["estimate_batch"] = args.estimate_batch
    if getattr(args, "verify_by", None) is not None:
        extra["verify_by"] = args.verify_by
    if extra.get("verify_by") == "keypoint-model":
        extra["keypoint_model"] = str(args.keypoint_model)
    if getattr(args, "landmark_runtime", None) is not None:
        extra["landmark_runtime"] = args.landmark_runtime
    if getattr(args, "landmark_views", None) is not None:
        extra["landmark_views"] = args.landmark_views.split("+")
    return GenerateConfig(mode=mode, backbone=str(backbone), image_size=(args.image_size, args.image_size), n=n,
                          batch_size=args.batch_size, seed=args.seed, overlap=overlap,
                          compile_fit=bool(getattr(args, "compile_fit", False)), **extra)  # fmt: skip


class Probe:
    """Where the CPU time goes, measured in this script only (the package is unchanged):

    - each stage's process CPU time (``time.process_time`` between the stage clock's laps: every
      thread, MediaPipe's own included; without the overlap only the shard writer runs beside the
      stages, and its time is measured on its own below). On a machine shared with other jobs a
      stage's wall time (the manifest's) grows with the load; its CPU time moves far less;
    - the MediaPipe fit's detection (pose landmark passes, counted), face detection and fit (wall),
      in the head (``estimate``) and in verification (``verify``); with ``--verify-by keypoint-model``
      the reader's call (wall) and its model's forward (process CPU);
    - the shard writer's CPU time (``time.thread_time`` on its own thread: encoding the PNGs / npz /
      JSON and appending them to the tar)."""

    PARTS = ("detect", "detect_faces", "fit")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.stage_cpu: dict[str, float] = {}  # process CPU seconds between a stage's laps
        self.passes = {"estimate": 0, "verify": 0}
        self.write_cpu = 0.0
        self._where = threading.local()
        self._undo: list = []

    def _add(self, key: str, seconds: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    def install(self, stages) -> Probe:
        from diffusion_hpc.data import writer
        from diffusion_hpc.pipeline import tail
        from diffusion_hpc.pipeline.stages import StageTimer

        estimator = getattr(stages.estimator, "model", stages.estimator)  # the Serialized model's own
        detector = getattr(estimator, "detector", None)

        def timed(name: str, fn):
            def call(*a, **kw):
                where = getattr(self._where, "stage", "estimate")
                counted = detector is not None and name in ("detect", "read_on_label")
                before = detector.passes if counted else 0
                t0 = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    self._add(f"{where}.{name}", time.perf_counter() - t0)
                    if counted:
                        self.passes[where] += detector.passes - before
            return call

        def staged(fn):
            def call(*a, **kw):
                self._where.stage = "verify"
                try:
                    return fn(*a, **kw)
                finally:
                    self._where.stage = "estimate"
            return call

        def encoded(fn):
            def call(*a, **kw):
                t0 = time.thread_time()
                try:
                    return fn(*a, **kw)
                finally:
                    self.write_cpu += time.thread_time() - t0
            return call

        def restart(fn):
            def call(timer):
                fn(timer)
                timer.cpu_mark = time.process_time()
            return call

        def lap(fn):
            def call(timer, stage):
                fn(timer, stage)
                now = time.process_time()
                self.stage_cpu[stage] = self.stage_cpu.get(stage, 0.0) + now - timer.cpu_mark
                timer.cpu_mark = now
            return call

        self._patch(StageTimer, "restart", restart(StageTimer.restart))
        self._patch(StageTimer, "lap", lap(StageTimer.lap))
        for name in self.PARTS if hasattr(estimator, "detect_faces") else ():
            self._patch(estimator, name, timed(name, getattr(estimator, name)))
        if hasattr(detector, "read_on_label"):  # verify_by label-box: the landmark model alone, no detect()
            self._patch(detector, "read_on_label", timed("read_on_label", detector.read_on_label))
        from bench_keypoint_model import TimedForward

        if stages.keypoint_model is not None:  # verify_by keypoint-model: crops, forward, decoding
            reader = stages.keypoint_model
            self._patch(reader, "read_on_boxes", timed("read_on_boxes", reader.read_on_boxes))
            self._patch(reader, "model", TimedForward(reader.model, lambda s: self._add("verify.model_forward", s)))
        def device_forward(seconds: float) -> None:  # in the head (estimate) or in verification
            self._add(f"{getattr(self._where, 'stage', 'estimate')}.model_forward", seconds)

        landmarks = getattr(estimator, "landmark_reader", None)
        if landmarks is not None:  # landmark_runtime torch: crops, forwards, decoding on the device
            self._patch(landmarks, "read_on_labels", timed("read_on_labels", landmarks.read_on_labels))
            self._patch(landmarks, "model", TimedForward(landmarks.model, device_forward))
            self._patch(estimator.pose_detector, "model", TimedForward(estimator.pose_detector.model, device_forward))
        self._patch(tail, "verify", staged(tail.verify))
        self._patch(writer, "encode", encoded(writer.encode))
        self._patch(writer, "_add_members", encoded(writer._add_members))
        return self

    def _patch(self, owner, name: str, value) -> None:
        self._undo.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, value)

    def remove(self) -> None:
        for owner, name, value in reversed(self._undo):
            if value is None:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
        self._undo.clear()


def run_mode(mode: str, args, backbone: Path, guides: Path, work: Path, prepare=None) -> dict:
    """One timed run of ``mode`` after a one-batch warm-up in the same process; its manifest
    summarised, with the run's process CPU seconds per accepted sample. ``prepare(stages)`` is
    called on the warm models before the timed run (scripts/bench_overlap.py: a simulated GPU)."""
    from diffusion_hpc.pipeline.generate import Generator
    from diffusion_hpc.pipeline.inputs import GuideImages

    overlap = bool(getattr(args, "overlap", False))

    def generator(n: int) -> Generator:
        gen = Generator(config(mode, n, args, backbone, guides, overlap), progress=False)
        gen.load_models()
        if mode == "T":
            photos = [GuideImages(guides, (args.image_size,) * 2).load(i) for i in range(3)]
            gen.stages.start = PhotoStart(gen.stages.start, photos)
        if getattr(args, "photo_finals", False):
            gen.stages.image_generator = PhotoFinal(gen.stages.image_generator)
        return gen

    tag = f"{mode}-{'overlap' if overlap else 'series'}-{time.monotonic_ns()}"
    warm_cpu = time.process_time()
    warm = generator(args.batch_size)
    warm.run(work / f"{tag}-warm")  # with --compile-fit, the fit's compilation (once per process) happens here
    warm_cpu = time.process_time() - warm_cpu
    gen = Generator(config(mode, args.n, args, backbone, guides, overlap), progress=False)
    gen.stages = warm.stages  # the warm models (the start stage already swapped)
    if prepare is not None:
        prepare(gen.stages)
    probe = Probe().install(gen.stages)
    profiler = cProfile.Profile() if getattr(args, "profile", False) else None
    start, cpu = time.perf_counter(), time.process_time()
    try:
        if profiler:
            profiler.enable()
        gen.run(work / tag)
        if profiler:
            profiler.disable()
    finally:
        probe.remove()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    rows = [json.loads(line) for line in (work / tag / "manifest.jsonl").read_text().splitlines()]
    summary = summarise(mode, rows, wall)
    summary["overlap"] = overlap
    summary["compile_fit"] = bool(getattr(args, "compile_fit", False))
    summary["photo_finals"] = bool(getattr(args, "photo_finals", False))
    summary["estimate_batch"] = gen.config.estimate_batch
    summary["verify_by"] = gen.config.verify_by
    summary["landmark_views"] = gen.config.landmark_views
    summary["warm_up_cpu_s"] = round(warm_cpu, 1)  # loading the models, one batch, the fit's compilation
    summary["process_cpu_ms_per_accepted"] = round(1000 * cpu / summary["accepted"], 1) if summary["accepted"] else None
    summary.update(probe_summary(mode, probe, rows, summary["accepted"], gen.config.k))
    if profiler:
        stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats(getattr(args, "profile_sort", "cumulative"))
        print(f"--- mode {mode}: cProfile, {getattr(args, 'profile_sort', 'cumulative')} ---", file=sys.stderr)
        stats.print_stats(getattr(args, "profile_lines", 25))
    return summary


def probe_summary(mode: str, probe: Probe, rows: list[dict], accepted: int, k: int) -> dict:
    """The probe's figures per accepted sample: the estimator's parts in the head and in verification,
    MediaPipe pose passes per labelled person, the shard writer's CPU ms."""
    per = max(accepted, 1)
    persons = sum(int((r.get("scores") or {}).get("people") or 0) for r in rows)  # labelled people of the rows
    guides = len({r["index"] // k for r in rows})
    cpu = {s: t for s, t in probe.stage_cpu.items() if s not in MODEL_STAGES[mode]}
    forward = sum(t for key, t in probe.seconds.items() if key.endswith(".model_forward"))  # device models, run here
    return {
        "process_cpu_ms_per_accepted_in_cpu_stages": round(1000 * sum(cpu.values()) / per, 1),
        "process_cpu_ms_per_accepted_in_cpu_stages_without_device_forward": round(1000 * (sum(cpu.values()) - forward) / per, 1),
        "process_cpu_stage_ms_per_accepted": {s: round(1000 * t / per, 1) for s, t in sorted(cpu.items(), key=lambda x: -x[1])},
        "estimator_parts_ms_per_accepted": {k: round(1000 * v / per, 1) for k, v in sorted(probe.seconds.items())},
        "pose_passes": {"head_per_guide": round(probe.passes["estimate"] / max(guides, 1), 2),
                        "verify_per_person": round(probe.passes["verify"] / max(persons, 1), 2)},
        "people_per_row": round(persons / max(len(rows), 1), 2),
        "write_cpu_ms_per_accepted": round(1000 * probe.write_cpu / per, 1),
    }


def summarise(mode: str, rows: list[dict], wall: float) -> dict:
    """Stage ms per row, CPU ms per accepted sample (in all and per CPU stage), the three slowest CPU stages."""
    accepted = sum(r["status"] == "ok" for r in rows)
    totals: dict[str, float] = {}
    for r in rows:
        for stage, seconds in r["timings"].items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    cpu = {s: t for s, t in totals.items() if s not in MODEL_STAGES[mode]}
    cpu_total = sum(cpu.values())
    slowest = sorted(cpu, key=cpu.get, reverse=True)[:3]
    return {
        "mode": mode, "rows": len(rows), "accepted": accepted, "wall_s": round(wall, 2),
        "wall_ms_per_accepted": round(1000 * wall / accepted, 1) if accepted else None,
        "stage_ms_per_row": {s: round(1000 * t / len(rows), 2) for s, t in sorted(totals.items(), key=lambda x: -x[1])},
        "cpu_ms_per_accepted": round(1000 * cpu_total / accepted, 1) if accepted else None,
        "cpu_stage_ms_per_accepted": {s: round(1000 * cpu[s] / max(accepted, 1), 1) for s in sorted(cpu, key=cpu.get, reverse=True)},
        "model_ms_per_accepted": round(1000 * (sum(totals.values()) - cpu_total) / accepted, 1) if accepted else None,
        "slowest_cpu_stages": {s: round(1000 * cpu[s] / max(accepted, 1), 1) for s in slowest},
        "cpu_share": round(cpu_total / max(sum(totals.values()), 1e-9), 3),
    }  # fmt: skip


def peak_rss_mb(n: int, args, backbone: Path, guides: Path, out: Path) -> tuple[float, float]:
    """(peak resident MB, seconds) of a mode-R ``dhpc generate -n n`` in a subprocess of its own."""
    command = [sys.executable, "-m", "diffusion_hpc.cli", "generate", "--mode", "R", "--guides", str(guides),
               "--backbone", str(backbone), "--out", str(out), "-n", str(n), "--batch-size", str(args.batch_size),
               "--image-size", str(args.image_size), "--seed", str(args.seed), "-k", str(args.memory_k),
               "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench_modes: {' '.join(command)} failed")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=["R", "T"], choices=["R", "T"])
    parser.add_argument("--n", type=int, default=45, help="samples of the timed run (after a one-batch warm-up)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backbone", type=Path, help="a tiny backbone folder (default: written to a temporary folder)")
    parser.add_argument("--reuse-guides", action="store_true",
                        help="mode R from the 3 photos only (guides reuse files) instead of a distinct file per guide")
    parser.add_argument("--memory", type=int, nargs="+", help="peak RSS of mode-R runs of these sizes instead")
    parser.add_argument("--memory-k", type=int, default=8,
                        help="variants per guide of the --memory runs (fewer estimator fits: a short 1,000-sample run)")
    parser.add_argument("--people", type=int, default=1, choices=[1, 2],
                        help="people per guide photo: 1 (three photos) or 2 (the astronaut beside Grace Hopper)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions per mode (stderr)")
    parser.add_argument("--profile-sort", default="cumulative", help="cProfile's sort key (cumulative, tottime)")
    parser.add_argument("--profile-lines", type=int, default=25, help="cProfile's functions printed")
    parser.add_argument("--compile-fit", action="store_true",
                        help="the MediaPipe fit compiled (GenerateConfig.compile_fit); its one-off compilation "
                             "falls in the warm-up (warm_up_cpu_s), not in the timed samples")
    parser.add_argument("--photo-finals", action="store_true",
                        help="each final image is its start photo, so verification reads (--verify-by estimate: "
                             "fits) every sample's people as on a real backbone's images (the tiny backbone's noise "
                             "holds no one)")
    parser.add_argument("--estimate-batch", type=int, nargs="+", default=[None],
                        help="start images a head fits in one call (GenerateConfig.estimate_batch; default: its "
                             "default); several values: each mode runs with each, in alternating order over --rounds")
    parser.add_argument("--keypoint-model", type=Path,
                        help="--verify-by keypoint-model's checkpoint (default: a tiny random ViTPose written to a "
                             "temporary folder, standing in for a model on the device as the tiny backbone does "
                             "for the UNet: its forward is reported on its own, verify.model_forward)")
    parser.add_argument("--verify-by", nargs="+", default=[None],
                        choices=["landmarks", "label-box", "estimate", "keypoint-model"],
                        help="what verification reads (GenerateConfig.verify_by; default: its default, landmarks); "
                             "several values: each mode runs with each (and each --estimate-batch), alternating")
    parser.add_argument("--landmark-runtime", choices=["mediapipe", "torch"],
                        help="MediaPipe Pose's models (GenerateConfig.landmark_runtime): torch runs the head's "
                             "whole-image pass and label-box's readings as torch ops on the run's device (here the "
                             "CPU: their forwards are reported on their own, estimate.model_forward and "
                             "verify.model_forward, and left out of ..._without_device_forward)")
    parser.add_argument("--landmark-views", nargs="+", default=[None], metavar="VIEWS",
                        help="the views the head's estimator reads, joined by + (GenerateConfig.landmark_views, e.g. "
                             "image or image+mirror+grey; default: its default); several values: each mode runs with "
                             "each, alternating")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the runs (each round every mode and variant)")
    parser.add_argument("--overlap", action="store_true",
                        help="make the next batch's head beside the current batch's tail (default: one after the other)")
    args = parser.parse_args(argv)
    os.nice(10)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    with tempfile.TemporaryDirectory(prefix="bench-modes-") as tmp:
        work = Path(tmp)
        backbone = args.backbone
        if backbone is None:
            from diffusion_hpc.generate.tiny import write_tiny_backbone

            backbone = write_tiny_backbone(work / "backbone")
        if "keypoint-model" in args.verify_by and args.keypoint_model is None:
            from bench_keypoint_model import SHAPES, save_model

            args.keypoint_model = save_model(work / "keypoint-model", SHAPES["tiny"])
        distinct = 0 if args.reuse_guides else -(-args.n // 3) + args.batch_size  # a file per guide (k = 3)
        guides = write_guides(work / "guides", distinct, args.people)
        if args.memory:
            peaks = {n: peak_rss_mb(n, args, backbone, guides, work / f"mem-{n}") for n in args.memory}
            first = peaks[args.memory[0]][0]
            result = {"mode": "R", "batch_size": args.batch_size, "image_size": args.image_size,
                      "peak_rss_mb": {n: round(mb, 1) for n, (mb, _) in peaks.items()},
                      "seconds": {n: round(s, 1) for n, (_, s) in peaks.items()},
                      "ratio_to_first": {n: round(mb / first, 3) for n, (mb, _) in peaks.items()}}  # fmt: skip
            print(json.dumps(result, indent=1))
            return 0
        results = []
        variants = [{"estimate_batch": e, "verify_by": v, "landmark_views": w}
                    for e in args.estimate_batch for v in args.verify_by for w in args.landmark_views]
        for r in range(args.rounds):
            for mode in args.modes:
                for variant in variants if r % 2 == 0 else variants[::-1]:  # alternating order
                    results.append(run_mode(mode, argparse.Namespace(**{**vars(args), **variant}), backbone, guides,
                                            work))
                    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    for r in results:
        print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
