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
    """Unknown keys are errors, and assignments are validated. A field's docstring is its
    description (``model_fields[name].description``), which the CLI shows as the flag's help.
    No float field (tuples such as ``fov_deg`` included) accepts NaN or infinity."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True,
                              allow_inf_nan=False)


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
        """Load a YAML config file; ``overrides`` (None = not given) win over the file.

        An override that is a mapping updates the file's mapping of that key (``sampler={"steps":
        8}`` keeps the file's other sampler keys). Errors are one :class:`ConfigError` line naming
        the field, and the file when the bad value came from it.
        """
        data = read_yaml(path)
        given = {k: v for k, v in overrides.items() if v is not None}
        return build(cls, merge(data, given), source=str(path), overridden=set(given))


def read_yaml(path: str | Path) -> dict:
    """The mapping a YAML config file holds (as written: nothing validated or resolved)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options, got {type(data).__name__}")
    return data


def merge(base: dict, over: dict) -> dict:
    """``base`` updated with ``over``; mappings present in both are merged key by key (recursively)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = merge(out[key], value)
        out[key] = value
    return out


def build(model: type[BaseModel], data: dict, source: str = "options", overridden: set[str] = frozenset()):
    """Validate ``data`` into ``model``; errors become one :class:`ConfigError` line naming the field.

    ``source`` names where ``data`` came from (a config file's path, or "options"); an error in a
    top-level key of ``overridden`` (given as a flag) is reported as coming from the options.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        where = ".".join(loc) or "config"
        if loc and loc[0] in overridden:
            source = "options"
        value = first.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        msg = first["msg"]
        if where == "config" and msg.startswith("Value error, "):  # cross-field checks name their field
            raise ConfigError(f"invalid {source}: {msg[len('Value error, '):]}") from None
        if first["type"] == "missing":
            flag = "--" + loc[-1].replace("_", "-")
            raise ConfigError(f"invalid {source}: {where} is required: pass {flag} (or set {where} in a --config "
                              "file)") from None
        if first["type"] == "extra_forbidden":
            fields = ", ".join(_field_names(model, loc[:-1]))
            raise ConfigError(f"invalid {source}: unknown option {where!r}; the options are: {fields}") from None
        raise ConfigError(f"invalid {source}: {where}: {msg}{shown}") from None


def _field_names(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of ``model`` or of the nested model at ``loc`` (for unknown-key errors)."""
    for name in loc:
        info = model.model_fields.get(name)
        sub = getattr(info, "annotation", None)
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return []
        model = sub
    return sorted(model.model_fields)
