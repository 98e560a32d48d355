"""One config system: a typed, validated config per command, YAML in and out.

Each command's config is a pydantic model (:class:`~diffusion_hpc.config.base.CommandConfig`);
the CLI's flags and the Python API's defaults both come from its fields, and ``--config FILE``
loads any of them from YAML (flags given on the command line win).
"""

from diffusion_hpc.config.base import CommandConfig, Strict, build, read_yaml
from diffusion_hpc.config.estimate import EstimateConfig
from diffusion_hpc.config.evaluate import EvaluateConfig
from diffusion_hpc.config.export import ExportConfig
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
from diffusion_hpc.config.quality import QualityConfig
from diffusion_hpc.config.train import TrainConfig

__all__ = [
    "CommandConfig", "Strict", "build", "GenerateConfig", "SamplerConfig", "CameraConfig", "ShapeConfig",
    "RenderBaselineConfig", "Preset", "PRESETS", "SCHEDULERS", "DEFAULT_PROMPT", "DEFAULT_SHARD_SIZE",
    "DIFFUSION_GENERATORS", "TrainConfig", "EvaluateConfig", "EstimateConfig", "QualityConfig", "ExportConfig",
    "read_yaml",
]
