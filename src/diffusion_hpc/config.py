"""One config system: typed, validated pydantic models with YAML in and out.

The CLI builds a :class:`GenerateConfig` from its flags (or ``--config FILE`` plus flags), the
Python API takes the same object, and the dataset stores it as ``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from diffusion_hpc.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _range(name: str):
    def check(value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if lo > hi:
            raise ValueError(f"{name} range must be (low, high) with low <= high, got {value}")
        return value

    return check


class CameraConfig(_Strict):
    """How cameras are sampled per sample (angles in degrees)."""

    fov_deg: tuple[float, float] = (35.0, 65.0)
    """vertical field of view"""
    yaw_deg: tuple[float, float] = (-180.0, 180.0)
    """heading of the body about the vertical axis (0 = facing the camera)"""
    elevation_deg: tuple[float, float] = (-10.0, 35.0)
    """camera height: positive looks down on the person"""
    roll_deg: tuple[float, float] = (-8.0, 8.0)
    fill: tuple[float, float] = (0.5, 0.92)
    """share of the image's limiting side the person spans (the whole body is always in frame)"""

    _fov = field_validator("fov_deg")(_range("fov_deg"))
    _fill = field_validator("fill")(_range("fill"))

    @field_validator("fov_deg")
    @classmethod
    def _fov_bounds(cls, v):
        if not (5.0 <= v[0] and v[1] <= 120.0):
            raise ValueError(f"fov_deg must lie in [5, 120], got {v}")
        return v

    @field_validator("fill")
    @classmethod
    def _fill_bounds(cls, v):
        if not (0.05 <= v[0] and v[1] <= 1.0):
            raise ValueError(f"fill must lie in [0.05, 1], got {v}")
        return v


class ShapeConfig(_Strict):
    """Body shape sampling: Anny's phenotype distribution (calibrated on WHO height/age data)."""

    age_years: tuple[float, float] = (16.0, 70.0)
    """morphological age range sampled uniformly (the distribution then gives height, weight...)"""

    _age = field_validator("age_years")(_range("age_years"))


class RenderBaselineConfig(_Strict):
    """The render-baseline generator (shaded body over a background)."""

    backgrounds: Optional[Path] = None
    """folder of background images (jpg/png/webp); default: procedural backgrounds"""
    augment: bool = True
    """blur / noise / colour augmentation"""


class GenerateConfig(_Strict):
    """Everything a ``dhpc generate`` run depends on. Same config + seed = same dataset, byte for byte."""

    mode: Literal["D"] = "D"
    poses: str = "builtin"
    """``builtin`` (CMU mocap retargeted to Anny) or a pose file (.npz, see diffusion_hpc.poses.io)"""
    n: int = Field(16, ge=1)
    seed: int = Field(0, ge=0)
    generator: Literal["render"] = "render"
    body_model: Literal["anny", "smpl", "smplx"] = "anny"
    smpl_path: Optional[Path] = None
    """SMPL / SMPL-X model file or folder (``--smpl-path``), needed for body_model smpl/smplx"""
    image_size: tuple[int, int] = (512, 512)
    """(height, width) of the saved images"""
    batch_size: int = Field(16, ge=1, le=1024)
    shard_size: int = Field(256, ge=1)
    renderer: Literal["auto", "gl", "torch"] = "auto"
    camera: CameraConfig = CameraConfig()
    shape: ShapeConfig = ShapeConfig()
    render_baseline: RenderBaselineConfig = RenderBaselineConfig()

    @field_validator("image_size")
    @classmethod
    def _size(cls, v):
        if not all(32 <= s <= 4096 for s in v):
            raise ValueError(f"image_size sides must lie in [32, 4096], got {v}")
        return v

    @model_validator(mode="after")
    def _smpl_needs_path(self):
        if self.body_model in ("smpl", "smplx") and self.smpl_path is None:
            raise ValueError(
                f"body_model {self.body_model!r} needs the model files: pass --smpl-path PATH "
                "(register and download them from smpl.is.tue.mpg.de / smpl-x.is.tue.mpg.de)"
            )
        return self

    # --- YAML in / out -------------------------------------------------------------------------

    def to_yaml(self) -> str:
        """Canonical YAML (sorted keys), stored as the dataset's ``config.yaml``."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "GenerateConfig":
        """Load a YAML config file; ``overrides`` (flat top-level keys) win over the file."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of options, got {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return build(cls, data, source=str(path))


def build(model: type[BaseModel], data: dict, source: str = "options"):
    """Validate ``data`` into ``model``; errors become one :class:`ConfigError` line naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        value = first.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        raise ConfigError(f"invalid {source}: {where}: {first['msg']}{shown}") from None
