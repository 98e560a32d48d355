"""Pose augmentation: k variants per guide (Diffusion-HPC step 4).

Variant 0 is the guide itself; variants 1..k-1 are ``prior.perturb`` of its body pose (pushed
away from the prior's mean, as the original's z · (1.5 + 0.3 N): on average harder), with
global-orientation jitter (+ N(0, 1) · 10° per axis, as in the original) and shape jitter (Anny
phenotype: + N(0, 1) · :data:`PHENOTYPE_JITTER`, clipped to [0, 1]; SMPL betas: · (1 + 0.1 N(0, 1))).
A variant whose pose is not ``prior.is_plausible`` is redrawn, at most ``max_tries`` times (then
the last draw is kept; the Anny prior's ``perturb`` already projects back to plausible poses).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffusion_hpc.prior.base import PosePrior, as_generator

PHENOTYPE_JITTER = 0.05
ORIENT_JITTER_DEG = 10.0
BETA_JITTER = 0.1


@dataclass
class AugmentedPoses:
    """k variants per guide. Arrays are float32 numpy, guide-major.

    Attributes:
        body_pose: (B, k, J, 3) axis-angle; [:, 0] is the input.
        global_orient: (B, k, 3); [:, 0] is the input.
        shape: (B, k, S) phenotype or betas; [:, 0] is the input.
        plausible: (B, k) bool, ``prior.is_plausible`` of each variant's pose.
        redraws: number of variants that had to be redrawn (summed over tries).
        scores: (B, k) float32 ``prior.score`` of each variant's pose ([:, 0]: the input's).
        hard: (B, k) bool, ``scores >= prior.hard_threshold`` (variants are new poses to the prior).
    """

    body_pose: np.ndarray
    global_orient: np.ndarray
    shape: np.ndarray
    plausible: np.ndarray
    redraws: int
    scores: np.ndarray
    hard: np.ndarray


def jitter_shape(shape: torch.Tensor, body_model: str, generator: torch.Generator) -> torch.Tensor:
    """(B, S) -> (B, S): Anny phenotype + N · 0.05 clipped to [0, 1]; SMPL betas · (1 + 0.1 N)."""
    eps = torch.randn(shape.shape, generator=generator)
    if body_model == "anny":
        return (shape + PHENOTYPE_JITTER * eps).clamp(0.0, 1.0)
    if body_model in ("smpl", "smplx"):
        return shape * (1.0 + BETA_JITTER * eps)
    raise ValueError(f"unknown body model {body_model!r}; expected 'anny', 'smpl' or 'smplx'")


def jitter_orientation(global_orient: torch.Tensor, generator: torch.Generator, degrees: float = ORIENT_JITTER_DEG) -> torch.Tensor:
    """(B, 3) axis-angle + N(0, 1) · ``degrees``° per axis."""
    return global_orient + torch.randn(global_orient.shape, generator=generator) * np.deg2rad(degrees)


def augment_poses(
    prior: PosePrior,
    body_pose,
    global_orient,
    shape,
    k: int = 3,
    generator: torch.Generator | int | None = None,
    body_model: str = "anny",
    strength: float = 1.0,
    max_tries: int = 5,
) -> AugmentedPoses:
    """k variants per guide: the estimate itself plus k − 1 perturbed ones.

    Args:
        prior: a :class:`PosePrior` for ``body_model``.
        body_pose: (1 | B, J, 3) axis-angle (one pose is shared by all B guides).
        global_orient: (B, 3) axis-angle.
        shape: (B, S) Anny phenotype or SMPL betas.
        k: variants per guide (>= 1; the original uses 3).
        generator: torch generator or seed (deterministic given it).
        body_model: "anny" or "smpl" (selects the shape jitter).
        strength: passed to ``prior.perturb``.
        max_tries: redraws per variant at most.
    Returns:
        :class:`AugmentedPoses`.
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, not {k!r}")
    k = int(k)
    g = as_generator(generator)
    go = torch.as_tensor(np.asarray(global_orient), dtype=torch.float32).reshape(-1, 3)
    b = go.shape[0]
    bp = torch.as_tensor(np.asarray(body_pose), dtype=torch.float32)
    if bp.ndim != 3 or bp.shape[0] not in (1, b):
        raise ValueError(f"body_pose must have shape (1 or {b}, J, 3) to match global_orient (B={b}); got {tuple(bp.shape)}")
    bp = bp.expand(b, -1, -1).contiguous()
    sh = torch.as_tensor(np.asarray(shape), dtype=torch.float32).reshape(b, -1)
    poses, orients, shapes = [bp], [go], [sh]
    plausible = [prior.is_plausible(bp)]
    redraws = 0
    for _ in range(k - 1):
        var = prior.perturb(bp, strength, g)
        bad = ~prior.is_plausible(var)
        for _ in range(int(max_tries)):
            if not bool(bad.any()):
                break
            redraws += int(bad.sum())
            idx = torch.nonzero(bad).squeeze(-1)
            var[idx] = prior.perturb(bp[idx], strength, g)
            bad = torch.zeros_like(bad)
            bad[idx] = ~prior.is_plausible(var[idx])
        poses.append(var)
        plausible.append(~bad)
        orients.append(jitter_orientation(go, g))
        shapes.append(jitter_shape(sh, body_model, g))
    body = torch.stack(poses, 1)
    flat = body.reshape(b * k, *body.shape[2:])
    with torch.no_grad():
        scores = prior.score(flat).reshape(b, k)
    return AugmentedPoses(
        body_pose=body.detach().numpy().astype(np.float32),
        global_orient=torch.stack(orients, 1).detach().numpy().astype(np.float32),
        shape=torch.stack(shapes, 1).detach().numpy().astype(np.float32),
        plausible=torch.stack(plausible, 1).numpy(),
        redraws=redraws,
        scores=scores.numpy().astype(np.float32),
        hard=(scores >= prior.hard_threshold).numpy(),
    )
