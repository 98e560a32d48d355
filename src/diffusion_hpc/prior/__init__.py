"""Pose priors behind one interface (:class:`~diffusion_hpc.prior.base.PosePrior`).

``get_prior("anny")`` is the default, learned from CMU mocap and shipped in the package
(:mod:`.anny_prior`); ``get_prior("vposer", path)`` wraps the user's VPoser v2 weights
(:mod:`.vposer`). Heavy modules import lazily; importing this package loads nothing.
"""

from __future__ import annotations

import os

from diffusion_hpc.prior.base import PosePrior, as_generator

PRIORS = ("anny", "vposer")

_LAZY = {
    "AnnyPosePrior": "anny_prior", "load_default_prior": "anny_prior", "load_prior_file": "anny_prior",
    "label_easy_hard": "anny_prior", "EASY_KEYWORDS": "anny_prior", "HARD_KEYWORDS": "anny_prior",
    "VPoserPrior": "vposer", "augment_orientation": "vposer", "augment_betas": "vposer", "augment_latent": "vposer",
    "augment_poses": "augment", "AugmentedPoses": "augment", "fit_prior": "fit",
}  # fmt: skip

__all__ = ["PRIORS", "PosePrior", "as_generator", "get_prior", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"diffusion_hpc.prior.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_prior(name: str = "anny", path: str | os.PathLike | None = None) -> PosePrior:
    """The pose prior ``name``.

    Args:
        name: ``"anny"`` (default; the shipped prior, or a file from ``fit_prior`` given by
            ``path``) or ``"vposer"`` (``path``: V02_05 ``.ckpt``/folder, ``.pt`` or ``.safetensors``).
        path: weights file; required for VPoser.
    Raises:
        ValueError for an unknown name; :class:`~diffusion_hpc.errors.MissingModelError` when
        the weights file is missing.
    """
    if name == "anny":
        from diffusion_hpc.prior import anny_prior

        return anny_prior.load_default_prior() if path is None else anny_prior.load_prior_file(path)
    if name == "vposer":
        from diffusion_hpc.prior.vposer import VPoserPrior

        return VPoserPrior(path)
    raise ValueError(f"unknown pose prior {name!r}; choose one of {PRIORS}")
