"""The config of ``dhpc evaluate`` (:func:`diffusion_hpc.hmr.evaluate.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator

from diffusion_hpc.config.base import CommandConfig
from diffusion_hpc.runtime.device import check_device_name


class EvaluateConfig(CommandConfig):
    """A regressor scored on one source under its benchmark's protocol. Sizes in pixels.

    The results JSON (``out``) holds this config, resolved, under ``"config"``.
    """

    checkpoint: Path
    """exported regressor: a dhpc train run folder, RUN/best, or its regressor.safetensors"""
    data: str
    """skipose:PATH (test split), smart:PATH, spin:PATH or a dataset folder from dhpc generate"""
    out: Optional[Path] = None
    """results JSON (default: print only)"""
    limit: Optional[int] = Field(None, ge=1)
    """evaluate the first N samples only"""
    batch_size: int = Field(32, ge=1)
    """crops per forward pass"""
    crop_size: int = Field(224, ge=32, le=1024)
    """square person crop side in pixels (the regressor's training crop size)"""
    smpl_path: Optional[Path] = None
    """SMPL / SMPL-X model file or folder, for SMPL regressors"""
    device: str = "auto"
    """torch device of the regressor and its body model: auto (the first CUDA device, else the CPU), cpu, cuda, cuda:N or mps"""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """precision of the regressor and its body model: auto (float32), float32, float16 (GPU only) or bfloat16"""

    _device = field_validator("device")(check_device_name)
