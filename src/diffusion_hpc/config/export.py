"""The config of ``dhpc export`` (:func:`diffusion_hpc.data.export.export_dataset`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from diffusion_hpc.config.base import CommandConfig

#: file suffix of each export format's annotation file
FORMAT_SUFFIX = {"spin-npz": ".npz", "coco-json": ".json"}


class ExportConfig(CommandConfig):
    """A dataset written for other people's training code; images go to ``images/`` beside ``out``."""

    dataset: Path
    """dataset folder written by dhpc generate"""
    format: Literal["spin-npz", "coco-json"]
    """spin-npz (SPIN's npz, crop cameras at focal 5000 / 224 px) or coco-json (COCO keypoints)"""
    out: Path
    """annotation file to write: .npz for spin-npz, .json for coco-json"""
    box_expand: Optional[float] = Field(None, gt=0.0, le=10.0)
    """person box = the mask's bounding box x this (default: the expansion of every person box in the
    project, geometry.boxes.BOX_EXPAND)"""

    @model_validator(mode="after")
    def _suffix(self):
        suffix = FORMAT_SUFFIX[self.format]
        if self.out.suffix != suffix:
            raise ValueError(f"out: {self.out} must end with {suffix} for format {self.format}, "
                             f"e.g. {self.out.with_suffix(suffix)}")
        return self
