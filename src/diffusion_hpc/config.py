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


#: the generators that regenerate with a diffusion backbone (``--generator``; ``render`` is the
#: baseline). The start image of mode T always comes from the backbone's text-to-image pipeline.
DIFFUSION_GENERATORS = ("depth2img", "controlnet")
#: the regeneration prompt of modes R and D when no --prompt / --prompts is given
DEFAULT_PROMPT = "a photo of a person"
#: shards hold at most this many samples by default (modes T/R: rounded down to a multiple of k)
DEFAULT_SHARD_SIZE = 256


class GenerateConfig(_Strict):
    """Everything a ``dhpc generate`` run depends on. Same config + seed = same dataset, byte for byte.

    Options left at None are resolved by mode when the config is validated (and stored resolved):
    ``generator`` (D: render; T, R: depth2img), ``k`` (D: 1; T, R: 3), ``verify`` (True for
    diffusion generators), ``shard_size`` (D: 256; T, R: the largest multiple of k <= 256).
    """

    mode: Literal["T", "R", "D"] = "D"
    """T: from text prompts; R: from the user's real images (``guides``); D: from body poses"""
    poses: str = "builtin"
    """mode D: ``builtin`` (CMU mocap retargeted to Anny) or a pose file (.npz, see diffusion_hpc.poses.io)"""
    prompt: Optional[str] = None
    """an action phrase put into the prompt templates ("doing a backflip"), or a full prompt (with
    ``{action}`` replaced, or more than one sentence-like phrase: see pipeline.requests.prompt_for_guide)"""
    prompts: Optional[Path] = None
    """a text file of prompts / action phrases, one per line (blank lines and # comments skipped)"""
    guides: Optional[Path] = None
    """mode R: folder of the user's real images (start images)"""
    n: int = Field(16, ge=1)
    seed: int = Field(0, ge=0)
    generator: Optional[Literal["render", "depth2img", "controlnet"]] = None
    backbone: Optional[str] = None
    """diffusion backbone: local directory, dhpc bundle, or hub id from the local cache (offline)"""
    controlnet: Optional[str] = None
    """ControlNet-depth model (``--generator controlnet``); overrides a bundle's"""
    lora: Optional[str] = None
    """LoRA weights of a domain-fine-tuned backbone (.safetensors file or folder; needs a diffusion generator)"""
    lora_scale: float = Field(1.0, ge=0.0, le=4.0)
    """LoRA strength (0: the plain backbone)"""
    segmenter: str = "mediapipe"
    """``mediapipe`` (person mask only) or a transformers instance-segmentation checkpoint (occluders too)"""
    preset: Literal["original", "default", "fast"] = "default"
    k: Optional[int] = Field(None, ge=1, le=64)
    """modes T, R: variants per guide (the estimate + k-1 augmented poses)"""
    hard_only: bool = False
    """modes T, R: keep only guides whose prior score >= the prior's hard threshold"""
    min_agreement: Optional[float] = Field(None, ge=0.0, le=1.0)
    """drop samples whose pck_agreement (label verification) is below this"""
    verify: Optional[bool] = None
    """run label verification on the final images (default: yes for diffusion generators)"""
    cycles: int = Field(0, ge=0, le=10)
    """extra estimate -> regenerate cycles on the output image (diffusion generators)"""
    blur_prob: float = Field(0.0, ge=0.0, le=1.0)
    """probability of the Gaussian-blur augmentation of the regenerated image"""
    body_model: Literal["anny", "smpl", "smplx"] = "anny"
    smpl_path: Optional[Path] = None
    """SMPL / SMPL-X model file or folder (``--smpl-path``), needed for body_model smpl/smplx"""
    prior_path: Optional[Path] = None
    """pose-prior weights: an Anny prior file (default: the shipped prior) or VPoser (SMPL)"""
    image_size: tuple[int, int] = (512, 512)
    """(height, width) of the saved images"""
    batch_size: int = Field(16, ge=1, le=1024)
    """samples per batch (modes T, R: max(1, batch_size // k) guides per batch)"""
    shard_size: Optional[int] = Field(None, ge=1)
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

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if v is not None and not v.strip():
            raise ValueError("prompt is empty; pass an action phrase such as 'doing a backflip'")
        return v

    @model_validator(mode="after")
    def _smpl_needs_path(self):
        if self.body_model in ("smpl", "smplx") and self.smpl_path is None:
            raise ValueError(
                f"body_model {self.body_model!r} needs the model files: pass --smpl-path PATH "
                "(register and download them from smpl.is.tue.mpg.de / smpl-x.is.tue.mpg.de)"
            )
        return self

    @model_validator(mode="after")
    def _modes(self):
        # validate_assignment would re-run this validator on each assignment: set through __dict__
        d = self.__dict__
        guided = self.mode in ("T", "R")
        if d["generator"] is None:
            d["generator"] = "depth2img" if guided else "render"
        if d["k"] is None:
            d["k"] = 3 if guided else 1
        if d["verify"] is None:
            d["verify"] = d["generator"] in DIFFUSION_GENERATORS
        if d["shard_size"] is None:
            d["shard_size"] = max(d["k"], DEFAULT_SHARD_SIZE - DEFAULT_SHARD_SIZE % d["k"])
        diffusion = d["generator"] in DIFFUSION_GENERATORS
        if self.prompt is not None and self.prompts is not None:
            raise ValueError("prompt: give either --prompt TEXT or --prompts FILE, not both")
        if self.mode == "T" and self.prompt is None and self.prompts is None:
            raise ValueError("prompt: mode T needs a text prompt: pass --prompt 'doing a backflip' or --prompts FILE")
        if self.mode == "R" and self.guides is None:
            raise ValueError("guides: mode R needs the folder of your real images: pass --guides DIR")
        if self.mode != "R" and self.guides is not None:
            raise ValueError(f"guides: --guides is for mode R (this run is mode {self.mode}); pass --mode R")
        if guided and not diffusion:
            raise ValueError(f"generator: mode {self.mode} regenerates the image with a diffusion model; "
                             "pass --generator depth2img or controlnet (render is for mode D)")
        if diffusion and self.backbone is None:
            raise ValueError(f"backbone: generator {d['generator']!r} needs a diffusion backbone: pass --backbone "
                             "DIR_OR_HUB_ID (for a smoke test: `dhpc backbone tiny --out DIR`)")
        if self.lora is not None and d["generator"] not in DIFFUSION_GENERATORS:
            raise ValueError("lora: LoRA weights adapt a diffusion backbone; pass --generator depth2img|controlnet "
                             "with --backbone, or leave --lora out")
        if self.controlnet is not None and d["generator"] != "controlnet":
            raise ValueError(f"controlnet: --controlnet is used by --generator controlnet, not {d['generator']!r}")
        if self.mode == "D" and d["k"] != 1:
            raise ValueError("k: variants per guide apply to modes T and R; mode D draws every sample's pose "
                             "from --poses (leave -k out)")
        if self.mode == "D" and self.hard_only:
            raise ValueError("hard_only: the hard-pose filter applies to modes T and R (estimated poses)")
        if guided and d["shard_size"] % d["k"]:
            raise ValueError(f"shard_size: {d['shard_size']} is not a multiple of k={d['k']}; shards hold whole "
                             f"guides so that resume remakes start images identically (e.g. {d['shard_size'] - d['shard_size'] % d['k'] or d['k']})")
        if self.cycles and not diffusion:
            raise ValueError("cycles: extra cycles regenerate with a diffusion generator, not the render baseline")
        if self.blur_prob and not diffusion:
            raise ValueError("blur_prob: applies to diffusion generators (the render baseline has its own augmentation)")
        if not diffusion and (self.prompt is not None or self.prompts is not None):
            raise ValueError("prompt: the render baseline uses no prompt; pass --generator depth2img|controlnet "
                             "with --backbone to use it, or leave --prompt out")
        if diffusion and self.render_baseline != RenderBaselineConfig():
            raise ValueError("render_baseline: --backgrounds / --no-augment apply to --generator render only")
        if self.min_agreement is not None and not d["verify"]:
            raise ValueError("min_agreement: needs label verification; pass --verify (the render baseline's image "
                             "is the render itself)")
        f = 8
        if diffusion and any(s % f for s in self.image_size):
            raise ValueError(f"image_size: {tuple(self.image_size)} must be a multiple of {f} for diffusion backbones")
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
        msg = first["msg"]
        if where == "config" and msg.startswith("Value error, "):  # cross-field checks name their field
            raise ConfigError(f"invalid {source}: {msg[len('Value error, '):]}") from None
        raise ConfigError(f"invalid {source}: {where}: {msg}{shown}") from None
