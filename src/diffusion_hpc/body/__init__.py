"""Body models behind one interface. ``get_body_model("anny")`` is the default.

The Anny model is built (or loaded from its cache) when the first one is created; :mod:`.joint_sets`
is pure data.
"""

from __future__ import annotations

from diffusion_hpc.body.anny import AnnyBody
from diffusion_hpc.body.base import BodyModel, BodyOutput, Params, transform_params
from diffusion_hpc.body.smpl import SMPLBody, resolve_model_file

BODY_MODELS = ("anny", "smpl", "smplx")

_INSTANCES: dict[tuple, BodyModel] = {}


def check_body_model(name: str, model_path: str | None = None, gender: str = "neutral") -> None:
    """Fail fast (before any work) if the model's files are missing; cheap, loads nothing."""
    if name in ("smpl", "smplx"):
        resolve_model_file(model_path, name, gender)
    elif name != "anny":
        raise ValueError(f"unknown body model {name!r}; choose one of {BODY_MODELS}")


def get_body_model(name: str = "anny", model_path: str | None = None, gender: str = "neutral") -> BodyModel:
    """The body model ``name``, created once per process and reused.

    Args:
        name: ``"anny"`` (default, free), ``"smpl"`` or ``"smplx"`` (need ``model_path``).
        model_path: SMPL/SMPL-X model file or folder (``--smpl-path``); ignored for Anny.
        gender: SMPL gender, ``neutral``/``male``/``female``.
    """
    key = (name, str(model_path) if model_path else None, gender)
    if key in _INSTANCES:
        return _INSTANCES[key]
    if name == "anny":
        model: BodyModel = AnnyBody()
    elif name in ("smpl", "smplx"):
        model = SMPLBody(kind=name, model_path=model_path, gender=gender)
    else:
        raise ValueError(f"unknown body model {name!r}; choose one of {BODY_MODELS}")
    _INSTANCES[key] = model
    return model


__all__ = ["BodyModel", "BodyOutput", "Params", "get_body_model", "check_body_model", "transform_params", "BODY_MODELS"]
