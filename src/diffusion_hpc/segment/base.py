"""The segmenter interface: images -> person mask and occluder mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class Segmentation:
    """Masks for a batch of B images of size H x W.

    Attributes:
        person: (B, H, W) bool, union of the person instances.
        occluders: (B, H, W) bool, non-person objects overlapping the person's box (never person pixels).
        person_found: (B,) bool, False where no person was found (the sample should be rejected).
        scores: (B,) float32 best person score per image (NaN where the backend has none).
        info: backend facts (model, thresholds).
    """

    person: np.ndarray
    occluders: np.ndarray
    person_found: np.ndarray
    scores: np.ndarray
    info: dict = field(default_factory=dict)


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
