"""Rotation representations and rigid registration, on roma (any batch shape, torch).

The 6D representation is the first two columns of a rotation matrix, stored row-major as a
(3, 2) matrix flattened to 6 values (Zhou et al. 2019; SPIN, VPoser and our regressor all use this
layout); it maps back to a matrix by Gram-Schmidt, the third column being their cross product.
"""

from __future__ import annotations

import roma
import torch


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) 6D rotations -> (..., 3, 3) rotation matrices (Gram-Schmidt on the two columns)."""
    return roma.special_gramschmidt(x.reshape(*x.shape[:-1], 3, 2))


def rotmat_to_rot6d(r: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 6): the first two columns, (3, 2) row-major."""
    return r[..., :, :2].reshape(*r.shape[:-2], 6)


def rotvec_to_rotmat(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle (radians) -> (..., 3, 3)."""
    return roma.rotvec_to_rotmat(v)


def rotmat_to_rotvec(r: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3) axis-angle (radians)."""
    return roma.rotmat_to_rotvec(r)


def special_procrustes_no_grad(cov: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) the proper rotation closest to ``cov`` (:func:`roma.special_procrustes`) without
    gradient: one batched SVD, several times cheaper per call than roma's differentiable solver."""
    with torch.no_grad():
        u, _, vt = torch.linalg.svd(cov)
        # det(U V^T) = det(U) det(V) = ±1: flip the last singular direction when it is a reflection
        det = (torch.linalg.cross(u[..., :, 0], u[..., :, 1]) * u[..., :, 2]).sum(-1) \
            * (torch.linalg.cross(vt[..., 0, :], vt[..., 1, :]) * vt[..., 2, :]).sum(-1)
        return torch.cat([u[..., :, :2], u[..., :, 2:] * det.sign()[..., None, None]], -1) @ vt


def rigid_rotation(source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                   centred: bool = True, differentiable: bool = True) -> torch.Tensor:
    """(..., 3, 3) rotation R minimising sum_i w_i || R s_i - t_i ||^2 (Kabsch; proper, no reflection).

    Args:
        source, target: (..., N, 3) corresponding points, N >= 3 not collinear.
        weights: (..., N) non-negative, default ones.
        centred: first remove each set's weighted centroid (the rotation of the best rigid fit);
            False: rotate about the origin.
        differentiable: False: no gradient, the cheaper :func:`special_procrustes_no_grad` (a fit
            that needs one every iteration).
    """
    w = torch.ones(source.shape[:-1], dtype=source.dtype, device=source.device) if weights is None else weights
    if centred:
        wn = (w / w.sum(-1, keepdim=True).clamp_min(1e-12))[..., None]
        source = source - (wn * source).sum(-2, keepdim=True)
        target = target - (wn * target).sum(-2, keepdim=True)
    cov = (w[..., None] * target).transpose(-1, -2) @ source  # sum_n w_n t_n s_n^T
    return roma.special_procrustes(cov) if differentiable else special_procrustes_no_grad(cov)
