"""The config of ``dhpc evaluate`` (:func:`diffusion_hpc.hmr.evaluate.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field

from diffusion_hpc.config.base import CommandConfig


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
