"""The fit's optional compiled stage 2 (``optimise(compiled_energy=True)``, ``MediaPipeFitter(compile_fit=True)``):
the same fitted joints as the eager fit, and one compilation serves every batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_hpc.body.anny import AnnyReducedForward
from diffusion_hpc.estimate.fit import (
    FitWeights,
    free_joint_mask,
    initial_pose,
    optimise,
    stack_targets,
    unmodelled_joint_mask,
)

from helpers_fit import fit_from_start, observations_of


def posed_observations(body, fast, n: int, seed: int):
    """COCO-17 keypoints (visibility 1), hip-centred world landmarks and K of ``n`` upright bodies
    facing the camera, in random poses and shapes."""
    gen = torch.Generator().manual_seed(seed)
    truth = body.neutral_params(n)
    truth["body_pose"] = torch.randn(n, 30, 3, generator=gen) * 0.3
    truth["global_orient"] = torch.tensor([[np.pi / 2, 0.0, 0.0]]) + 0.2 * torch.randn(n, 3, generator=gen)
    truth["phenotype"] = torch.rand(n, 6, generator=gen)
    truth["transl"] = torch.tensor([[0.0, 0.0, 4.0]]) + 0.3 * torch.randn(n, 3, generator=gen)
    return observations_of(fast, truth, np.array([[500.0, 0.0, 128.0], [0.0, 500.0, 128.0], [0.0, 0.0, 1.0]]))


def fit(body, fast, prior, observations, compiled: bool):
    weights = FitWeights(iters_global=10, iters_full=15)
    targets = stack_targets(observations, weights.checked_hypotheses(), 0.3)
    result = fit_from_start(body, fast.keypoints, targets, weights, prior, (fast.rest_skeleton, fast.keypoints),
                            compiled_energy=compiled)  # fmt: skip
    with torch.no_grad():
        return fast.keypoints(result.params), result.energy


@pytest.mark.slow  # the first compilation in a process with an empty inductor cache takes minutes on 2 cores
def test_compiled_fit_lands_where_the_eager_fit_lands_at_any_batch_size(anny_body):
    from torch._dynamo.utils import counters

    from diffusion_hpc.prior import get_prior

    fast, prior = AnnyReducedForward(anny_body), get_prior()
    observations = posed_observations(anny_body, fast, 3, seed=4)
    graphs = None
    for batch in (observations[:2], observations[:3]):  # 4 then 6 rows (two hypotheses each)
        fast = AnnyReducedForward(anny_body)  # as a new fitter would hold
        eager_joints, eager_energy = fit(anny_body, fast, prior, batch, compiled=False)
        joints, energy = fit(anny_body, fast, prior, batch, compiled=True)
        assert (joints - eager_joints).norm(dim=-1).max() < 1e-4  # metres: float rounding of 25 Adam steps
        np.testing.assert_allclose(energy.numpy(), eager_energy.numpy(), rtol=1e-3, atol=1e-5)
        if graphs is None:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs  # another batch size (and fitter) reused the compiled graphs


def test_compiled_fit_needs_annys_bone_chain(anny_body):
    fast = AnnyReducedForward(anny_body)
    observations = posed_observations(anny_body, fast, 1, seed=5)
    weights = FitWeights(iters_global=1, iters_full=1)
    targets = stack_targets(observations, weights.checked_hypotheses(), 0.3)
    free = free_joint_mask(anny_body)
    with pytest.raises(ValueError, match="compiled_energy=False"):
        optimise(anny_body, fast.keypoints, targets, np.zeros((2, 3)), np.zeros((2, 3)) + [0, 0, 4], initial_pose(anny_body, None),
                 free, unmodelled_joint_mask(anny_body, None, free), None, weights, None, compiled_energy=True)


def test_the_fitter_records_whether_its_fit_was_compiled():
    from diffusion_hpc.estimate.mediapipe_fit import MediaPipeFitter

    assert MediaPipeFitter(prior=None, lifter="off").describe()["compile_fit"] is False
    assert MediaPipeFitter(prior=None, lifter="off", compile_fit=True).describe()["compile_fit"] is True
