"""The facing decision's plausibility cue: a body turned round while its limbs stay where the image
puts them bends its knees backwards, and the pose prior's score of the two fitted poses keeps the
right one (:func:`diffusion_hpc.estimate.facing.plausibility_cue`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

#: knee flexion (rad, about the Anny knee's flexion axis x) of the bent-knee pose
KNEE_BEND = 0.8


@pytest.fixture(scope="module")
def prior():
    from diffusion_hpc.prior import get_prior

    return get_prior("anny")


def knee_depth(coco17: np.ndarray) -> np.ndarray:
    """(2,) each knee's depth (camera z, metres) beyond the midpoint of its hip and ankle: > 0 the
    knee points away from the camera, the image alone cannot tell which way."""
    from diffusion_hpc.body.joint_sets import COCO17

    i = COCO17.index
    return np.array([coco17[i(f"{s}_knee"), 2] - (coco17[i(f"{s}_hip"), 2] + coco17[i(f"{s}_ankle"), 2]) / 2
                     for s in ("left", "right")])


def test_turned_round_bent_knees_lose_to_the_person_seen_from_the_back(anny_body, prior):
    """A person seen from the back with bent knees (the detector's labels right, ``base``) against the
    ``swap`` hypothesis: the same image explained by a body facing the camera, whose knees then point
    away from it, i.e. bend backwards. The swapped fit is 15 % lower in energy and no face cue speaks
    (a back view): the plausibility cue keeps the person seen from the back; without it, or with its
    sign flipped, the swap wins. Straight knees score alike either way round, so the cue is silent."""
    import roma

    from diffusion_hpc.body.joint_sets import ANNY_CMU31
    from diffusion_hpc.body.scene import upright_rotations
    from diffusion_hpc.estimate.facing import FacingWeights, choose_hypotheses, plausibility_cue, torso_facing

    knees = [ANNY_CMU31.index(b) - 1 for b in ("LeftLeg", "RightLeg")]  # body_pose holds bones 1..30
    mean = prior.mean_pose()[0]
    bent, backwards, straight = mean.clone(), mean.clone(), mean.clone()
    bent[knees, 0], backwards[knees, 0], straight[knees, 0] = KNEE_BEND, -KNEE_BEND, 0.0
    # from the back (yaw pi) bent forward; facing the camera (yaw 0) bent backwards; straight both ways
    yaw = np.array([np.pi, 0.0, np.pi, 0.0])
    pose = torch.stack([bent, backwards, straight, straight])
    params = {"global_orient": roma.rotmat_to_rotvec(torch.as_tensor(upright_rotations(anny_body.canonical_to_camera, yaw),
                                                                     dtype=torch.float32)),
              "body_pose": pose, "phenotype": torch.full((4, 6), anny_body.neutral_shape_value), "transl": torch.zeros(4, 3)}
    with torch.no_grad():
        joints = anny_body(params).joints["coco17"].double().numpy()
        score = prior.score(pose).double().numpy()

    # the two explanations: one faces away, the other faces the camera; in both the knees point away
    # from the camera (what the image shows), so the one facing the camera bends them backwards
    np.testing.assert_allclose(torso_facing(joints), [-1, 1, -1, 1], atol=0.05)
    assert (knee_depth(joints[0]) > 0.05).all() and (knee_depth(joints[1]) > 0.03).all()
    assert score[1] > 3 * score[0]  # knees bent backwards are far less plausible
    assert score[2] == pytest.approx(score[3])  # turning a body round does not change its pose

    w = FacingWeights()
    energy = np.array([[1.0], [0.85]])  # the swapped fit reprojects a little better
    fitted = torso_facing(joints[:2]).reshape(2, 1)
    no_cue = np.zeros(1)
    assert choose_hypotheses(energy, fitted, no_cue, ("base", "swap"), w)[0].tolist() == [1]  # energy alone: swap
    best, margin = choose_hypotheses(energy, fitted, no_cue, ("base", "swap"), w, pose_score=score[:2, None])
    assert best.tolist() == [0], "the plausibility cue should keep the person seen from the back"
    cue = plausibility_cue(score[0], score[1])
    assert cue < -0.5
    np.testing.assert_allclose(margin, [abs(0.15 - w.margin + w.w_plausible * cue)])
    # the other way round (the detector's labels wrong, the swapped body the natural one): swap wins
    flipped = choose_hypotheses(energy[::-1], fitted[::-1], no_cue, ("base", "swap"), w, pose_score=score[1::-1, None])
    assert flipped[0].tolist() == [1]
    # straight knees: the cue is silent and the energy decides as without it
    silent = choose_hypotheses(energy, fitted, no_cue, ("base", "swap"), w, pose_score=score[2:, None])
    assert plausibility_cue(score[2], score[3]) == pytest.approx(0.0, abs=1e-6)
    assert silent[0].tolist() == [1] and silent[1] == pytest.approx(0.15 - w.margin, abs=1e-6)


def test_plausibility_cue_any_batch_shape():
    """The cue is the relative gap of the two scores in [-1, 1], 0 for equal scores, on any batch shape."""
    from diffusion_hpc.estimate.facing import plausibility_cue

    keep = np.array([[10.0, 50.0], [0.0, 30.0]])
    swap = np.array([[30.0, 50.0], [0.0, 10.0]])
    np.testing.assert_allclose(plausibility_cue(keep, swap), [[-0.5, 0.0], [0.0, 0.5]])
    assert plausibility_cue(20.0, 20.0) == 0.0
