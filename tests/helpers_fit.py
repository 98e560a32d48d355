"""Test helpers shared by the fit's test modules (a plain module, not a conftest): the observations of
known Anny bodies, and the MediaPipe fit's optimisation run from the estimator's start, as
:meth:`~diffusion_hpc.estimate.mediapipe_fit.MediaPipeFitter.fit` runs it (the start pose, the rest
joints, the batched placement, the free and unmodelled joints; the fitter caches its rest joints)."""

from __future__ import annotations

import numpy as np
import torch

from diffusion_hpc.estimate.fit import (
    FitResult,
    FitTargets,
    FitWeights,
    free_joint_mask,
    initial_placement,
    initial_pose,
    optimise,
    rest_joints_camera,
    unmodelled_joint_mask,
)


def observations_of(fast, truth: dict[str, torch.Tensor],
                    K: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:  # fmt: skip
    """Per body of ``truth`` (Anny parameters, batch B; ``fast`` an ``AnnyReducedForward``), what a perfect
    detector gives :func:`~diffusion_hpc.estimate.fit.stack_targets`: (17, 3) COCO-17 keypoints in pixels
    under the (3, 3) camera ``K``, visibility 1; (17, 3) joints centred between the hips (the world
    landmarks); ``K``."""
    with torch.no_grad():
        coco = fast.keypoints(truth).double().numpy()
    uv = coco @ K.T
    uv = uv[..., :2] / uv[..., 2:]
    world = coco - coco[:, [11, 12]].mean(1, keepdims=True)
    return [(np.concatenate([uv[i], np.ones((17, 1))], 1), world[i], K) for i in range(len(coco))]


def fit_from_start(body, keypoints, targets: FitTargets, weights: FitWeights, prior=None, chain=None,
                   **kwargs) -> FitResult:
    """:func:`~diffusion_hpc.estimate.fit.optimise` of ``targets`` from the estimator's start: ``keypoints``
    the body's COCO-17 function, ``chain`` its ``(rest_skeleton, keypoints)`` or None; ``kwargs`` to
    ``optimise`` (e.g. ``compiled_energy``)."""
    pose0 = initial_pose(body, prior, weights.init_mean_pose)
    rest, root_to_hips = rest_joints_camera(body, keypoints, pose0)
    orient0, transl0 = initial_placement(rest, root_to_hips, body.canonical_to_camera.double().numpy(),
                                         targets.uv, targets.conf, targets.world, targets.K)  # fmt: skip
    free = free_joint_mask(body)
    return optimise(body, keypoints, targets, orient0, transl0, pose0, free, unmodelled_joint_mask(body, prior, free),
                    prior, weights, chain, **kwargs)  # fmt: skip
