"""The config of ``dhpc convert`` (:func:`diffusion_hpc.data.convert.convert_dataset`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator

from diffusion_hpc.config.base import CommandConfig
from diffusion_hpc.runtime.device import check_device_name


class ConvertConfig(CommandConfig):
    """Every sample of a dataset labelled with a second body model, stored beside its own parameters."""

    dataset: Path
    """dataset folder written by dhpc generate (its shards are rewritten in place, one at a time)"""
    to: Literal["smpl", "smplx", "anny"]
    """body model to fit to each sample's body: smpl, smplx (need --smpl-path) or anny (for SMPL datasets)"""
    smpl_path: Optional[Path] = None
    """SMPL / SMPL-X model file or folder (.npz), for --to smpl|smplx or an SMPL dataset"""
    prior_path: Optional[Path] = None
    """the target's pose prior: VPoser v2 weights for smpl / smplx (optional); anny uses the shipped prior"""
    batch_size: int = Field(64, ge=1, le=1024)
    """bodies fitted at once"""
    device: str = "cpu"
    """torch device of the fit: cpu, cuda, cuda:N, mps or auto"""
    dtype: Literal["auto", "float32", "float64"] = "auto"
    """precision of the fit's parameters and energy (auto: float32; the body models compute in float32)"""

    _device = field_validator("device")(check_device_name)
