"""Metrics equal their definitions on hand-made cases; protocols score the documented joints."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from diffusion_hpc.body.joint_sets import BODY25, H36M17
from diffusion_hpc.data.benchmarks import SPIN24, convert_joints
from diffusion_hpc.eval.metrics import (
    SKIPOSE_PROTOCOL,
    SMART_PROTOCOL,
    evaluate_2d,
    evaluate_3d,
    mpjpe,
    pa_mpjpe,
    pck,
    prepare_3d,
    similarity_transform,
)


def skeletons(n: int = 5, j: int = 17, seed: int = 0) -> np.ndarray:
    """(n, j, 3) random body-sized point sets in metres, in front of a camera."""
    rng = np.random.default_rng(seed)
    return rng.normal(scale=0.4, size=(n, j, 3)) + np.array([0.0, 0.0, 4.0])


def test_pa_mpjpe_is_zero_for_any_similarity():
    gt = skeletons(8)
    rng = np.random.default_rng(1)
    rot = Rotation.random(8, random_state=2).as_matrix()
    scale = rng.uniform(0.2, 5.0, size=8)
    trans = rng.normal(scale=3.0, size=(8, 3))
    pred = scale[:, None, None] * np.einsum("nab,njb->nja", rot, gt) + trans[:, None]
    assert np.all(pa_mpjpe(pred, gt) <= 1e-6)
    assert np.all(mpjpe(pred, gt) > 1.0)  # the transform really moved the joints


def test_similarity_transform_recovers_parameters_and_is_proper():
    src = skeletons(4)
    rot = Rotation.random(4, random_state=3).as_matrix()
    dst = 2.5 * np.einsum("nab,njb->nja", rot, src) + np.array([1.0, -2.0, 0.5])
    tf = similarity_transform(src, dst)
    np.testing.assert_allclose(tf.scale, 2.5, atol=1e-9)
    np.testing.assert_allclose(tf.rotation, rot, atol=1e-9)
    np.testing.assert_allclose(tf.translation, np.broadcast_to([1.0, -2.0, 0.5], (4, 3)), atol=1e-9)
    # A mirror image is not a similarity: the fitted rotation stays proper and the error stays > 0.
    mirrored = src * np.array([-1.0, 1.0, 1.0])
    tf = similarity_transform(src, mirrored)
    np.testing.assert_allclose(np.linalg.det(tf.rotation), 1.0, atol=1e-9)
    assert np.all(pa_mpjpe(src, mirrored) > 1.0)


def test_pa_mpjpe_never_exceeds_mpjpe():
    gt = skeletons(20)
    pred = gt + np.random.default_rng(4).normal(scale=0.05, size=gt.shape) + 0.03
    assert np.all(pa_mpjpe(pred, gt) <= mpjpe(pred, gt) + 1e-9)


def test_mpjpe_known_offset_and_units():
    gt = skeletons(3)
    pred = gt + np.array([0.006, 0.0, 0.008])  # 10 mm on every joint
    np.testing.assert_allclose(mpjpe(pred, gt), 10.0, atol=1e-9)
    np.testing.assert_allclose(mpjpe(pred, gt, scale=1.0), 0.010, atol=1e-12)
    # Root-centred, a global offset disappears.
    np.testing.assert_allclose(mpjpe(pred, gt, root_index=0), 0.0, atol=1e-9)


def test_mpjpe_root_centring_is_the_same_as_centring_both_sides():
    gt = skeletons(6)
    pred = gt + np.random.default_rng(5).normal(scale=0.05, size=gt.shape)
    centred = mpjpe(pred - pred[:, :1], gt - gt[:, :1])
    np.testing.assert_allclose(mpjpe(pred, gt, root_index=0), centred)
    # Already centred on both sides: centring again changes nothing.
    np.testing.assert_allclose(mpjpe(pred - pred[:, :1], gt - gt[:, :1], root_index=0), centred)


def test_mpjpe_visible_mask_and_nan_for_empty():
    gt = skeletons(2, j=4)
    pred = gt.copy()
    pred[:, 3] += np.array([1.0, 0.0, 0.0])  # 1000 mm on joint 3 only
    visible = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], bool)
    out = mpjpe(pred, gt, visible=visible)
    assert out[0] == pytest.approx(0.0)
    assert np.isnan(out[1])
    np.testing.assert_allclose(mpjpe(pred, gt), 250.0)


def test_metrics_accept_torch_and_unbatched():
    import torch

    gt = skeletons(1)[0]
    pred = gt + np.array([0.0, 0.01, 0.0])
    out = mpjpe(torch.tensor(pred, dtype=torch.float32), torch.tensor(gt))
    assert out.shape == (1,) and out[0] == pytest.approx(10.0, abs=1e-3)
    with pytest.raises(ValueError, match="same shape"):
        mpjpe(np.zeros((2, 17, 3)), np.zeros((2, 16, 3)))


def test_pck_counts_visible_joints_only():
    gt = np.zeros((1, 4, 2))
    pred = gt.copy()
    pred[0, 1] = [3.0, 4.0]  # 5 px off
    visible = np.array([[1, 1, 1, 0]])
    base = pck(pred, gt, visible, threshold=2.0)
    np.testing.assert_allclose(base, [2 / 3])
    pred[0, 3] = [100.0, 100.0]  # an invisible joint far off does not change the score
    np.testing.assert_allclose(pck(pred, gt, visible, threshold=2.0), base)
    pred[0, 3] = np.nan
    np.testing.assert_allclose(pck(pred, gt, visible, threshold=2.0), base)


def test_pck_threshold_boundary_and_per_image_thresholds():
    gt = np.zeros((3, 1, 2))
    pred = np.zeros((3, 1, 2))
    pred[:, 0, 0] = 5.0
    visible = np.ones((3, 1))
    # Distance exactly at the threshold counts as correct; just above does not.
    np.testing.assert_allclose(pck(pred, gt, visible, threshold=np.array([5.0, 4.999, 6.0])), [1.0, 0.0, 1.0])
    # No visible joints -> NaN, excluded by nanmean.
    out = pck(pred, gt, np.zeros((3, 1)), threshold=10.0)
    assert np.isnan(out).all()


def test_skipose_protocol_drops_joint_9_and_root_centres():
    assert SKIPOSE_PROTOCOL.joint_set == "h36m17" and SKIPOSE_PROTOCOL.root == H36M17[0]
    assert len(SKIPOSE_PROTOCOL.scored) == 16 and H36M17[9] not in SKIPOSE_PROTOCOL.scored
    gt = skeletons(4)
    prepared = prepare_3d(gt)
    expected = np.delete(gt - gt[:, :1], 9, axis=1)
    np.testing.assert_allclose(prepared, expected)
    # A model that predicts the ground truth scores 0 mm, whatever its global position.
    perfect = evaluate_3d(gt + np.array([0.3, -0.2, 1.0]), gt)
    np.testing.assert_allclose(perfect["mpjpe"], 0.0, atol=1e-9)
    np.testing.assert_allclose(perfect["pa_mpjpe"], 0.0, atol=1e-6)
    # An error on joint 9 alone is not scored; on joint 10 it is (1/16 of the offset).
    pred = gt.copy()
    pred[:, 9] += [0.16, 0.0, 0.0]
    np.testing.assert_allclose(evaluate_3d(pred, gt)["mpjpe"], 0.0, atol=1e-9)
    pred = gt.copy()
    pred[:, 10] += [0.16, 0.0, 0.0]
    np.testing.assert_allclose(evaluate_3d(pred, gt)["mpjpe"], 10.0, atol=1e-9)


def test_skipose_protocol_converts_joint_sets_by_name():
    gt = skeletons(3)
    # Raw SkiPose label order (legs swapped) is recognised by name.
    raw = convert_joints(gt, "h36m17", "skipose17")
    out = evaluate_3d(gt, raw, gt_joint_set="skipose17")
    np.testing.assert_allclose(out["mpjpe"], 0.0, atol=1e-9)
    # Evaluating the raw labels as if they were H36M order penalises the swap.
    assert np.all(evaluate_3d(gt, raw)["mpjpe"] > 1.0)
    with pytest.raises(ValueError, match="lacks joints"):
        evaluate_3d(np.zeros((3, 17, 3)), gt, pred_joint_set="coco17")


def test_smart_protocol_pck():
    assert SMART_PROTOCOL.joint_set == "body25" and len(SMART_PROTOCOL.scored) == 13
    assert set(SMART_PROTOCOL.scored) <= set(BODY25) and set(SMART_PROTOCOL.scored) <= set(SPIN24)
    rng = np.random.default_rng(6)
    gt = np.concatenate([rng.uniform(0, 200, size=(2, 25, 2)), np.ones((2, 25, 1))], axis=-1)
    box = np.array([200.0, 100.0])  # thresholds 20 px and 10 px
    # Perfect predictions, given in another joint set (SPIN-24, as an HMR outputs them): PCK 1.
    pred_spin = convert_joints(gt[..., :2], "body25", "spin24", fill=0.0)
    np.testing.assert_allclose(evaluate_2d(pred_spin, gt, box, pred_joint_set="spin24"), 1.0)
    pred = gt[..., :2].copy()
    pred[:, BODY25.index("neck")] += 50  # unscored joint
    np.testing.assert_allclose(evaluate_2d(pred, gt, box), 1.0)
    pred[:, BODY25.index("nose")] += [15.0, 0.0]  # within 20 px, beyond 10 px
    np.testing.assert_allclose(evaluate_2d(pred, gt, box), [1.0, 12 / 13])
    gt[1, BODY25.index("nose"), 2] = 0  # an invisible joint is not scored
    np.testing.assert_allclose(evaluate_2d(pred, gt, box), [1.0, 1.0])
