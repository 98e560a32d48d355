"""The estimator's fit runs Anny's bone chain on rotation matrices (:func:`chain_keypoints`) instead of
the reduced forward's 4x4 kinematics: the same keypoints and gradients, and the same fitted bodies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_hpc.body.anny import AnnyReducedForward
from diffusion_hpc.estimate.fit import (
    BoneChain,
    FitWeights,
    chain_keypoints,
    initial_placement,
    initial_pose,
    rest_joints_camera,
    stack_targets,
)

from helpers_fit import fit_from_start, observations_of


@pytest.fixture(scope="module")
def fast(anny_body):
    return AnnyReducedForward(anny_body)


def random_params(body, n: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = body.neutral_params(n)
    params["body_pose"] = torch.randn(n, 30, 3, generator=gen) * 0.4
    params["global_orient"] = torch.randn(n, 3, generator=gen)
    params["phenotype"] = torch.rand(n, 6, generator=gen)
    params["transl"] = torch.randn(n, 3, generator=gen) + torch.tensor([0.0, 0.0, 4.0])
    return params


def test_chain_keypoints_and_gradients_equal_the_reduced_forward(anny_body, fast):
    chain = BoneChain.of(fast.keypoints)
    assert chain is not None
    params = {k: v.requires_grad_(True) for k, v in random_params(anny_body, 3, seed=1).items()}
    reference = fast.keypoints(params)
    ours = chain_keypoints(chain, params, fast.rest_skeleton(params["phenotype"]))
    assert (ours - reference).norm(dim=-1).max() < 1e-5  # metres: float rounding only
    weights = torch.randn(3, 17, 3, generator=torch.Generator().manual_seed(2))
    grads = [torch.autograd.grad((j * weights).sum(), list(params.values())) for j in (reference, ours)]
    for key, a, b in zip(params, *grads):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max() + 1e-6, key


def test_the_chain_is_used_only_for_the_reduced_forwards_keypoints(anny_body, fast):
    assert BoneChain.of(lambda p, s=None: fast.keypoints(p, s)) is None  # an unknown callable: run as given
    assert BoneChain.of(fast.rest_skeleton) is None
    assert BoneChain.of(anny_body.forward) is None


def test_fit_through_the_chain_lands_where_the_reduced_forward_fit_lands(anny_body, fast):
    """The same fit (both stages, shape held two iterations out of three) on the keypoints and world
    landmarks of two posed bodies, once through :func:`chain_keypoints` and once through
    ``AnnyReducedForward.keypoints`` (wrapped so the chain is not recognised), ends at the same joints."""
    truth = random_params(anny_body, 2, seed=5)
    truth["global_orient"] = torch.tensor([[np.pi / 2, 0.0, 0.0], [np.pi / 2, 0.3, 0.0]])  # upright, facing the camera
    truth["transl"] = torch.tensor([[0.1, -0.2, 4.0], [-0.2, 0.1, 5.0]])
    K = np.array([[500.0, 0.0, 128.0], [0.0, 500.0, 128.0], [0.0, 0.0, 1.0]])
    observations = observations_of(fast, truth, K)
    uv = np.stack([keypoints[:, :2] for keypoints, _, _ in observations])
    weights = FitWeights(iters_global=10, iters_full=24)
    targets = stack_targets(observations, weights.checked_hypotheses(), 0.3)
    results = []
    for keypoints in (fast.keypoints, lambda p, s=None: fast.keypoints(p, s)):
        torch.manual_seed(0)
        results.append(fit_from_start(anny_body, keypoints, targets, weights, None, (fast.rest_skeleton, keypoints)))
    with torch.no_grad():
        joints = [fast.keypoints(r.params) for r in results]
    assert (joints[0] - joints[1]).norm(dim=-1).max() < 5e-4  # metres
    np.testing.assert_allclose(results[0].energy.numpy(), results[1].energy.numpy(), rtol=1e-3, atol=1e-5)
    # and the fit did fit: the base hypothesis reprojects onto the keypoints within a few pixels
    base = joints[0][:2].double().numpy() @ K.T
    assert np.median(np.linalg.norm(base[..., :2] / base[..., 2:] - uv, axis=-1)) < 5.0


def test_the_chains_skeleton_is_the_rest_skeletons_heads_and_basis(anny_body, fast):
    """The fit's bone chain reads the rest skeleton without anny's 4x4 kinematics (no tails, no rest
    poses): the heads and keypoint basis it gets are those of the whole rest skeleton, bit for bit,
    and so are their gradients."""
    chain = BoneChain.of(fast.keypoints)
    phenotype = torch.rand(3, 6, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    lean, whole = chain.skeleton(phenotype), fast.rest_skeleton(phenotype)
    assert set(lean) == {"heads", "basis"} and {"tails", "rest_poses"} <= set(whole)
    for key in lean:
        assert torch.equal(lean[key], whole[key]), key
        weights = torch.randn(lean[key].shape, generator=torch.Generator().manual_seed(4))
        grads = [torch.autograd.grad((s[key] * weights).sum(), phenotype, retain_graph=True)[0] for s in (lean, whole)]
        assert torch.equal(*grads), key


def test_initial_placement_of_a_batch_is_each_rows_placement(anny_body, fast):
    """One batched call places every row (one rotation solve for all) as a call per row does: to
    float64 rounding, and identically once in float32, the fit's precision."""
    rng = np.random.default_rng(7)
    rest, root_to_hips = rest_joints_camera(anny_body, fast.keypoints, initial_pose(anny_body, None))
    c2c = anny_body.canonical_to_camera.double().numpy()
    n = 24
    world = rest + rng.normal(scale=0.05, size=(n, 17, 3))
    turn = np.stack([np.eye(3)] * n)
    turn[:, [0, 0, 2, 2], [0, 2, 0, 2]] = np.stack([np.cos(a := rng.uniform(-3, 3, n)), np.sin(a), -np.sin(a), np.cos(a)], 1)
    world = world @ np.swapaxes(turn, 1, 2)  # people turned any way about the vertical
    K = np.tile(np.array([[400.0, 0.0, 128.0], [0.0, 400.0, 128.0], [0.0, 0.0, 1.0]]), (n, 1, 1))
    uv = rng.uniform(40, 216, size=(n, 17, 2))
    conf = rng.uniform(0.0, 1.0, size=(n, 17))
    orient, transl = initial_placement(rest, root_to_hips, c2c, uv, conf, world, K)
    rows = [initial_placement(rest, root_to_hips, c2c, uv[i], conf[i], world[i], K[i]) for i in range(n)]
    assert orient.shape == transl.shape == (n, 3) and rows[0][0].shape == (3,)
    for got, want in ((orient, np.stack([r[0] for r in rows])), (transl, np.stack([r[1] for r in rows]))):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        assert np.array_equal(got.astype(np.float32), want.astype(np.float32))
    batched = initial_placement(rest, root_to_hips, c2c, uv.reshape(4, 6, 17, 2), conf.reshape(4, 6, 17),
                                world.reshape(4, 6, 17, 3), K.reshape(4, 6, 3, 3))
    assert np.array_equal(batched[0].reshape(n, 3), orient) and np.array_equal(batched[1].reshape(n, 3), transl)
