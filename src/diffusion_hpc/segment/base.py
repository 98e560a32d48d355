"""The segmenter interface: images -> person mask, the people in it, and occluder mask.

Every backend also splits its person mask into people (:attr:`Segmentation.instances`): an instance
segmenter by its person instances, a mask-only backend (MediaPipe) by the mask's connected regions
(:func:`split_people`), so people who touch in the image count as one there. A person counts when its
region spans at least ``min_height`` of the image height (:data:`MIN_PERSON_HEIGHT`); smaller regions
stay in the person mask (the regeneration noises them) without a person number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, runtime_checkable

import numpy as np

from diffusion_hpc.config.generate import MIN_PERSON_HEIGHT


@dataclass
class Segmentation:
    """Masks for a batch of B images of size H x W.

    Attributes:
        person: (B, H, W) bool, union of the person instances.
        occluders: (B, H, W) bool, non-person objects overlapping the person's box (never person pixels).
        person_found: (B,) bool, False where no person was found (the sample should be rejected).
        scores: (B,) float32 best person score per image (NaN where the backend has none).
        info: backend facts (model, thresholds).
        instances: (B, H, W) int16 person number of each pixel (0 the largest person, 1 the next, ...;
            -1 background and person regions too small to count), inside ``person``; None when the
            backend does not split people.
    """

    person: np.ndarray
    occluders: np.ndarray
    person_found: np.ndarray
    scores: np.ndarray
    info: dict = field(default_factory=dict)
    instances: Optional[np.ndarray] = None

    def people(self, i: int) -> int:
        """How many people image ``i`` holds (its instances; 1 when found and not split, else 0)."""
        if self.instances is None:
            return int(bool(self.person_found[i]))
        return int(self.instances[i].max()) + 1


@runtime_checkable
class Segmenter(Protocol):
    """``segment(images (B, H, W, 3) uint8 RGB) -> Segmentation``."""

    name: str

    def segment(self, images: np.ndarray) -> Segmentation: ...


def as_batch(images: np.ndarray) -> np.ndarray:
    """(H, W, 3) or (B, H, W, 3) uint8 -> (B, H, W, 3) uint8, with a clear error otherwise."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (B, H, W, 3) uint8 RGB, got {images.shape} {images.dtype}")
    return images



def number_people(masks: np.ndarray, min_height: float = MIN_PERSON_HEIGHT) -> np.ndarray:
    """Person numbers from per-person masks: the largest (most pixels) is 0, regions spanning fewer
    than ``min_height`` x H rows get none; overlapping pixels go to the lower number.

    Args:
        masks: (N, H, W) bool, one region per candidate person (any order).
    Returns:
        (H, W) int16 person number per pixel, -1 elsewhere.
    """
    masks = np.asarray(masks, bool)
    h, w = masks.shape[1:] if masks.ndim == 3 else (0, 0)
    out = np.full((h, w), -1, np.int16)
    if not len(masks):
        return out
    rows = masks.any(axis=2)  # (N, H)
    first, last = rows.argmax(axis=1), h - 1 - rows[:, ::-1].argmax(axis=1)
    tall = rows.any(axis=1) & ((last - first + 1) >= min_height * h)
    order = [n for n in np.argsort(-masks.reshape(len(masks), -1).sum(axis=1), kind="stable") if tall[n]]
    for number, n in reversed(list(enumerate(order))):  # lower numbers painted last: they win overlaps
        out[masks[n]] = number
    return out


def split_people(person: np.ndarray, min_height: float = MIN_PERSON_HEIGHT) -> np.ndarray:
    """A person mask's people as its connected regions (8-connected), numbered by :func:`number_people`.

    Args:
        person: (H, W) bool union mask.
    Returns:
        (H, W) int16 person number per pixel, -1 elsewhere.
    """
    from scipy import ndimage

    person = np.asarray(person, bool)
    regions, count = ndimage.label(person, structure=np.ones((3, 3), bool))
    boxes = ndimage.find_objects(regions)
    tall = [n + 1 for n, box in enumerate(boxes) if box[0].stop - box[0].start >= min_height * person.shape[0]]
    return number_people(regions[None] == np.array(tall, regions.dtype)[:, None, None], min_height)
