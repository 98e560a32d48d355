"""The config of ``dhpc quality`` (:func:`diffusion_hpc.eval.quality.quality`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator

from diffusion_hpc.config.base import CommandConfig
from diffusion_hpc.runtime.device import check_device_name


class QualityConfig(CommandConfig):
    """FID / KID of generated sets against one real set, whole images and human-only (the report's
    ``settings`` record the values that matter for its numbers)."""

    real: str
    """a folder of real images or one of our datasets"""
    generated: list[str] = Field(min_length=1)
    """dataset folders (or image folders) to compare, one table row each"""
    out: Path
    """report folder (quality.json, quality.html)"""
    human_only: bool = True
    """also compute H-FID / H-KID on human-only images (dataset masks; the segmenter for image folders)"""
    fid_weights: Optional[Path] = None
    """Inception-v3 FID weights file (default: $DHPC_FID_WEIGHTS, else DHPC_CACHE_DIR/fid/)"""
    kid_subsets: int = Field(100, ge=1)
    """KID subsets"""
    kid_subset_size: int = Field(1000, ge=2)
    """images per KID subset (capped at the smaller set)"""
    batch_size: int = Field(32, ge=1)
    """images per Inception forward pass"""
    limit: Optional[int] = Field(None, ge=1)
    """at most this many images per set"""
    segmenter: str = "mediapipe"
    """person segmenter for real image folders: mediapipe or a transformers instance-segmentation checkpoint"""
    hard_threshold: Optional[float] = None
    """pose-prior score counted as a hard pose (default: each row's recorded hard flag, else the
    threshold of the prior the dataset was made with)"""
    seed: int = Field(0, ge=0)
    """seed of the KID subsets"""
    device: str = "auto"
    """torch device of the Inception network: auto (the first CUDA device, else the CPU), cpu, cuda, cuda:N or mps"""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """precision of the Inception network: auto (float32; FID statistics are float64 either way), float32,
    float16 (GPU only) or bfloat16"""
    fid_method: Literal["auto", "sqrtm", "lowrank"] = "auto"
    """matrix square root of the FID: auto (low-rank trace when N < 2048, else scipy sqrtm), sqrtm or lowrank"""

    _device = field_validator("device")(check_device_name)
