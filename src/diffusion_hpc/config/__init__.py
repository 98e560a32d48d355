"""One config system: a typed, validated config per command, YAML in and out.

Each command's config is a pydantic model (:class:`~diffusion_hpc.config.base.CommandConfig`);
the CLI's flags and the Python API's defaults both come from its fields, and ``--config FILE``
loads any of them from YAML (flags given on the command line win).
"""

from diffusion_hpc.config.base import CommandConfig, Strict, build
from diffusion_hpc.config.generate import (
    DEFAULT_PROMPT,
    DEFAULT_SHARD_SIZE,
    DIFFUSION_GENERATORS,
    PRESETS,
    SCHEDULERS,
    CameraConfig,
    GenerateConfig,
    Preset,
    RenderBaselineConfig,
    SamplerConfig,
    ShapeConfig,
)

__all__ = [
    "CommandConfig", "Strict", "build", "GenerateConfig", "SamplerConfig", "CameraConfig", "ShapeConfig",
    "RenderBaselineConfig", "Preset", "PRESETS", "SCHEDULERS", "DEFAULT_PROMPT", "DEFAULT_SHARD_SIZE",
    "DIFFUSION_GENERATORS",
]
