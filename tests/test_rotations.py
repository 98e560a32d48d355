"""geometry.rotations.rigid_rotation: the weighted Kabsch rotation, on any batch shape, with and without gradient."""

from __future__ import annotations

import roma
import torch

from diffusion_hpc.geometry.rotations import rigid_rotation


def noisy_rotated_points(seed: int, shape: tuple[int, ...], n: int = 17):
    """(source, target, true R, weights): target = R source + noise on ``shape``-batched point sets,
    with a few points per set moved far away and weighted 0."""
    gen = torch.Generator().manual_seed(seed)
    R = roma.rotvec_to_rotmat(torch.randn(*shape, 3, generator=gen, dtype=torch.float64))
    source = torch.randn(*shape, n, 3, generator=gen, dtype=torch.float64)
    target = source @ R.transpose(-1, -2) + 0.01 * torch.randn(*shape, n, 3, generator=gen, dtype=torch.float64)
    weights = torch.rand(*shape, n, generator=gen, dtype=torch.float64) + 0.1
    target[..., :3, :] += 5.0  # outliers that must not count
    weights[..., :3] = 0.0
    return source, target, R, weights


def test_rigid_rotation_recovers_the_rotation_and_ignores_zero_weights():
    source, target, R, weights = noisy_rotated_points(0, (2, 3))
    for differentiable in (True, False):
        found = rigid_rotation(source, target, weights, centred=False, differentiable=differentiable)
        assert found.shape == (2, 3, 3, 3)
        assert roma.rotmat_geodesic_distance(found, R).max() < 0.02  # radians, the noise's size
        assert torch.allclose(found @ found.transpose(-1, -2), torch.eye(3, dtype=found.dtype).expand_as(found), atol=1e-10)
        assert (torch.linalg.det(found) > 0).all()  # proper: no reflection


def test_rigid_rotation_is_the_weighted_procrustes_of_the_cross_covariance():
    """The cross-covariance sum_n w_n t_n s_n^T (as a matrix product) gives the same rotation as
    its definition written out, centred and not, float32 and float64."""
    source, target, _, weights = noisy_rotated_points(1, (4,))
    for dtype in (torch.float64, torch.float32):
        s, t, w = source.to(dtype), target.to(dtype), weights.to(dtype)
        for centred in (False, True):
            if centred:
                wn = (w / w.sum(-1, keepdim=True))[..., None]
                sc, tc = s - (wn * s).sum(-2, keepdim=True), t - (wn * t).sum(-2, keepdim=True)
            else:
                sc, tc = s, t
            cov = (w[..., None, None] * tc[..., :, None] * sc[..., None, :]).sum(-3)
            expected = roma.special_procrustes(cov)
            tol = 1e-12 if dtype == torch.float64 else 1e-5
            assert (rigid_rotation(s, t, w, centred=centred) - expected).abs().max() < tol
            assert (rigid_rotation(s, t, w, centred=centred, differentiable=False) - expected).abs().max() < tol


def test_rigid_rotation_has_a_gradient_only_when_asked():
    source, target, _, weights = noisy_rotated_points(2, (3,))
    source.requires_grad_(True)
    rigid_rotation(source, target, weights).sum().backward()
    assert source.grad is not None and torch.isfinite(source.grad).all() and source.grad.abs().sum() > 0
    assert not rigid_rotation(source, target, weights, differentiable=False).requires_grad
