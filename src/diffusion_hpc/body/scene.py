"""The people of multi-person scenes, posed and turned in the group frame's orientation
(:mod:`diffusion_hpc.geometry.scene`: upright OpenCV axes, ground plane y = 0, up = -y)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from diffusion_hpc.body.base import BodyModel
from diffusion_hpc.geometry.camera import rotation_y


def upright_rotations(canonical_to_camera, yaw: np.ndarray) -> np.ndarray:
    """(..., 3, 3) the body model's canonical frame -> upright group frame, each person turned by
    ``yaw`` (..., radians) about the vertical axis (as mode D's camera_rotation turns one body)."""
    yaw = np.asarray(yaw, np.float64)
    c2c = np.asarray(canonical_to_camera, np.float64)
    turns = np.stack([rotation_y(float(a)) for a in yaw.reshape(-1)]).reshape(yaw.shape + (3, 3))
    return turns @ c2c


def posed_people(body: BodyModel, params: Mapping[str, torch.Tensor], yaw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One body forward for every person of B scenes of P people, turned into the group frame.

    Args:
        body: the body model.
        params: its parameters with a (B, P, ...) batch (no translation needed; ``transl`` may be absent).
        yaw: (B, P) each person's turn about the vertical, radians.
    Returns:
        vertices (B, P, V, 3) and joint-set name -> (B, P, J, 3), float64, upright (any translation:
        :func:`~diffusion_hpc.geometry.scene.place_group` stands them on the ground).
    """
    yaw = np.asarray(yaw, np.float64)
    B, P = yaw.shape
    flat = {k: v.reshape((B * P,) + tuple(v.shape[2:])) for k, v in params.items()}
    flat.setdefault("transl", torch.zeros(B * P, 3, dtype=flat["global_orient"].dtype))
    with torch.no_grad():
        out = body(flat)
    rot = upright_rotations(body.canonical_to_camera.numpy(), yaw)  # (B, P, 3, 3)
    turn = lambda x: np.einsum("bpij,bpkj->bpki", rot, x.numpy().astype(np.float64).reshape(B, P, -1, 3))
    return turn(out.vertices), {name: turn(j) for name, j in out.joints.items()}
