"""Pose priors behind one interface (:class:`~diffusion_hpc.prior.base.PosePrior`).

``get_prior("anny")`` is the default, learned from CMU mocap and shipped in the package
(:mod:`.anny_prior`); ``get_prior("vposer", path)`` wraps the user's VPoser v2 weights
(:mod:`.vposer`). Weights load when a prior is created.
"""

from __future__ import annotations

import os

from diffusion_hpc.prior import anny_prior
from diffusion_hpc.prior.anny_prior import AnnyPosePrior
from diffusion_hpc.prior.augment import AugmentedPoses, augment_poses
from diffusion_hpc.prior.base import PosePrior, as_generator
from diffusion_hpc.prior.vposer import VPoserPrior

PRIORS = ("anny", "vposer")

__all__ = ["PRIORS", "PosePrior", "as_generator", "get_prior", "AnnyPosePrior", "VPoserPrior", "AugmentedPoses",
           "augment_poses"]


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
        return anny_prior.load_default_prior() if path is None else anny_prior.load_prior_file(path)
    if name == "vposer":
        return VPoserPrior(path)
    raise ValueError(f"unknown pose prior {name!r}; choose one of {PRIORS}")
