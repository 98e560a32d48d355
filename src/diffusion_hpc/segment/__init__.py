"""Person and occluder masks of start images (DESIGN §2 step 2).

Backends: ``mediapipe`` (default: selfie / pose segmentation from the mediapipe wheel, person mask
only) and ``instance`` (a transformers Mask2Former-style checkpoint from disk: person and occluder
masks). MediaPipe, torch and transformers load with the first segmenter, not with this package.
"""

from __future__ import annotations

from typing import Optional

from diffusion_hpc.errors import ConfigError
from diffusion_hpc.runtime.weights import check_models
from diffusion_hpc.segment.base import Segmentation, Segmenter
from diffusion_hpc.segment.instance import InstanceSegmenter
from diffusion_hpc.segment.mediapipe_seg import MediaPipeSegmenter


def make_segmenter(spec: Optional[str] = "mediapipe", **kwargs) -> Segmenter:
    """A segmenter from a ``--segmenter`` value.

    ``mediapipe`` / ``mediapipe:selfie`` (default) or ``mediapipe:pose``; anything else is a local
    directory or cached hub id of a transformers instance-segmentation checkpoint
    (:class:`~diffusion_hpc.segment.instance.InstanceSegmenter`).
    """
    spec = spec or "mediapipe"
    if spec.startswith("mediapipe"):
        model = spec.split(":", 1)[1] if ":" in spec else "selfie"
        if model not in ("selfie", "pose"):
            raise ConfigError(f"unknown mediapipe segmenter {spec!r}; use mediapipe:selfie or mediapipe:pose")
        return MediaPipeSegmenter(model=model, **kwargs)
    path = check_models({"segmenter": spec})["segmenter"]
    return InstanceSegmenter(path, **kwargs)


__all__ = ["Segmentation", "Segmenter", "make_segmenter"]
