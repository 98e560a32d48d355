"""The config of ``dhpc export`` (:func:`diffusion_hpc.data.export.export_dataset`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from diffusion_hpc.config.base import CommandConfig

#: file suffix of each export format's annotation file
FORMAT_SUFFIX = {"spin-npz": ".npz", "coco-json": ".json", "bedlam-npz": ".npz", "4dhumans-wds": ".tar"}


class ExportConfig(CommandConfig):
    """A dataset written for other people's training code; images go to ``images/`` beside ``out``
    (into the tar shards for 4dhumans-wds)."""

    dataset: Path
    """dataset folder written by dhpc generate"""
    format: Literal["spin-npz", "coco-json", "bedlam-npz", "4dhumans-wds"]
    """spin-npz (SPIN and loaders built on its dataset), bedlam-npz (CameraHMR, BEDLAM-CLIFF's SMPL trainer), 4dhumans-wds
    (4D-Humans / HMR 2.0 and TokenHMR WebDataset shards) or coco-json (COCO keypoints)"""
    out: Path
    """annotation file to write: .npz for spin-npz / bedlam-npz, .json for coco-json, .tar for 4dhumans-wds
    (shards <stem>-000000.tar, ...)"""
    box_expand: float | None = Field(None, gt=0.0, le=10.0)
    """person box = the mask's bounding box x this (default: the expansion of every person box in the
    project, geometry.boxes.BOX_EXPAND)"""
    label_model: Literal["smpl", "smplx"] = "smpl"
    """bedlam-npz: the body model whose parameters pose_cam holds (smpl: 72 values, smplx: 165); persons
    without such a label are left out. spin-npz and 4dhumans-wds always carry SMPL"""
    shard_size: int = Field(1000, ge=1, le=1_000_000)
    """4dhumans-wds: images per tar shard"""

    @model_validator(mode="after")
    def _suffix(self):
        suffix = FORMAT_SUFFIX[self.format]
        if self.out.suffix != suffix:
            raise ValueError(f"out: {self.out} must end with {suffix} for format {self.format}, "
                             f"e.g. {self.out.with_suffix(suffix)}")
        return self
