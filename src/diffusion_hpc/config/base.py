"""The pieces every command's config is made of: strict pydantic models, YAML in and out, and one
validation error format (:func:`build`)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from diffusion_hpc.errors import ConfigError

C = TypeVar("C", bound="CommandConfig")


class Strict(BaseModel):
    """Unknown keys are errors, and assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_range(name: str):
    def check(value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if lo > hi:
            raise ValueError(f"{name} range must be (low, high) with low <= high, got {value}")
        return value

    return check


class CommandConfig(Strict):
    """A command's whole config: YAML in (``--config FILE``) and out (stored beside what it wrote)."""

    def to_yaml(self) -> str:
        """Canonical YAML (sorted keys)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_yaml(cls: type[C], path: str | Path, **overrides) -> C:
        """Load a YAML config file; ``overrides`` (top-level keys; None = not given) win over the file."""
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
