"""The config of ``dhpc evaluate`` (:func:`diffusion_hpc.hmr.evaluate.evaluate`)."""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator

from diffusion_hpc.config.base import CommandConfig
from diffusion_hpc.runtime.device import check_device_name


class EvaluateConfig(CommandConfig):
    """A regressor scored on one source under its benchmark's protocol. Sizes in pixels.

    The results JSON (``out``) holds this config, resolved, under ``"config"``.
    """

    checkpoint: str
    """regressor: a dhpc train run folder, RUN/best or its regressor.safetensors (also dhpc:RUN), spin:FILE (SPIN's
    model_checkpoint.pt) or hmr2:FILE (a 4D-Humans HMR 2.0 checkpoint)"""
    data: str
    """skipose:PATH (test split), smart:PATH, spin:PATH or a dataset folder from dhpc generate"""
    out: Optional[Path] = None
    """results JSON (default: print only)"""
    limit: Optional[int] = Field(None, ge=1)
    """evaluate the first N samples only"""
    batch_size: int = Field(32, ge=1)
    """crops per forward pass"""
    crop_size: Optional[int] = Field(None, ge=32, le=1024)
    """square person crop side in pixels (default: the network's own: SPIN 224, HMR 2.0 256, a run's training crop size)"""
    h36m_regressor: Optional[Path] = None
    """SMPL regressors: the standard H36M joint regressor J_regressor_h36m.npy (17 x 6890) for the 3D joints scored
    (default: an approximation from SMPL joints and a head-top vertex, recorded in the results)"""
    smpl_path: Optional[Path] = None
    """SMPL / SMPL-X model file or folder, for SMPL regressors"""
    device: str = "auto"
    """torch device of the regressor and its body model: auto (the first CUDA device, else the CPU), cpu, cuda, cuda:N or mps"""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """precision of the regressor and its body model: auto (float32), float32, float16 (GPU only) or bfloat16"""

    _device = field_validator("device")(check_device_name)

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _checkpoint_text(cls, v):
        return str(v) if isinstance(v, PathLike) else v
