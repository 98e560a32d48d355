"""Joints the detector does not see: with :attr:`FitWeights.unseen_3d` the fit's 3D term places the
ones inside the image where the 3D target (a lifter's joints) puts them; their 2D term stays 0 and
joints out of the frame stay out of both terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_hpc.body.anny import AnnyReducedForward
from diffusion_hpc.body.joint_sets import COCO17
from diffusion_hpc.estimate.fit import COCO17_FLIP, FitWeights, stack_targets

from helpers_fit import fit_from_start, observations_of

K = np.array([[500.0, 0.0, 127.5], [0.0, 500.0, 127.5], [0.0, 0.0, 1.0]])
HIDDEN = [COCO17.index("right_elbow"), COCO17.index("right_wrist")]


def test_unseen_joints_inside_the_image_enter_only_the_3d_term():
    keypoints = np.concatenate([np.random.default_rng(0).uniform(20, 230, (17, 2)), np.full((17, 1), 0.9)], 1)
    keypoints[HIDDEN[0], 2] = 0.1  # not seen, inside the image
    keypoints[HIDDEN[1]] = (300.0, 120.0, 0.1)  # not seen, right of a 256 px wide image
    world = np.zeros((17, 3))
    targets = stack_targets([(keypoints, world, K)], ("base", "swap"), 0.3, unseen_3d=0.25, sizes=[(256, 256)])
    base, swap = targets.conf_3d
    assert base[HIDDEN[0]] == 0.25 and base[HIDDEN[1]] == 0.0
    assert np.all(targets.conf[0, HIDDEN] == 0.0) and np.all(targets.conf[1, COCO17_FLIP[HIDDEN]] == 0.0)  # no 2D term
    seen = np.setdiff1d(np.arange(17), HIDDEN)
    np.testing.assert_array_equal(base[seen], targets.conf[0, seen])
    np.testing.assert_array_equal(swap, base[COCO17_FLIP])  # the swapped labels carry their joints' weights
    assert stack_targets([(keypoints, world, K)], ("base",), 0.3).conf_3d is None  # the default: no change
    with pytest.raises(ValueError, match="sizes"):
        stack_targets([(keypoints, world, K)], ("base",), 0.3, unseen_3d=0.25)


def test_an_unseen_arm_follows_the_3d_target(anny_body):
    """A body whose right elbow and wrist the detector misses (inside the image): fitted with them in
    the 3D term, they land nearer their true place than without."""
    fast = AnnyReducedForward(anny_body)
    truth = anny_body.neutral_params(1)
    pose = torch.zeros(1, 30, 3, dtype=truth["body_pose"].dtype)
    pose[0, 19:21] = torch.tensor([[0.0, 0.6, 0.9], [0.0, 1.2, 0.0]])  # the right arm raised, its elbow bent
    truth.update(body_pose=pose, global_orient=torch.tensor([[np.pi / 2, 0.2, 0.0]]), transl=torch.tensor([[0.0, 0.0, 4.5]]))
    [(keypoints, world, _)] = observations_of(fast, truth, K)
    keypoints[HIDDEN, 2] = 0.0
    assert ((keypoints[:, :2] > 0) & (keypoints[:, :2] < 255)).all()
    errors = []
    for unseen in (0.0, 0.25):
        weights = FitWeights(w_3d=6.0, iters_global=10, iters_full=45, hypotheses=("base",), unseen_3d=unseen)
        targets = stack_targets([(keypoints, world, K)], weights.checked_hypotheses(), 0.3, unseen, [(256, 256)])
        result = fit_from_start(anny_body, fast.keypoints, targets, weights, None, (fast.rest_skeleton, fast.keypoints))
        with torch.no_grad():
            fitted = fast.keypoints(result.params)[0].double().numpy()
        rel = fitted - fitted[[11, 12]].mean(0)
        errors.append(np.linalg.norm(rel[HIDDEN] - world[HIDDEN], axis=1).mean())
    assert errors[1] < 0.25 * errors[0], errors  # measured 262 -> 8 mm
