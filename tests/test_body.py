"""Body models: float32, batched, gradients, joint sets, placement, and the SMPL adapter on a
synthetic model file of the right array shapes (never a real SMPL file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_hpc.body import check_body_model, get_body_model, transform_params
from diffusion_hpc.body.joint_sets import COCO17, H36M17, convert, flip_permutation, joint_map
from diffusion_hpc.errors import MissingModelError

from conftest import write_fake_smpl


def test_anny_forward_batched_float32_with_gradients(anny_body):
    params = anny_body.neutral_params(3)
    params["body_pose"] = (0.3 * torch.randn(3, 30, 3)).requires_grad_(True)
    out = anny_body(params)
    assert out.vertices.shape == (3, 13718, 3) and out.vertices.dtype == torch.float32
    assert out.faces.shape == (27420, 3)
    assert out.joints["coco17"].shape == (3, 17, 3) and out.joints["h36m17"].shape == (3, 17, 3)
    out.joints["h36m17"].sum().backward()
    assert params["body_pose"].grad.abs().sum() > 0
    # batched == one by one
    with torch.no_grad():
        single = anny_body({k: v[1:2].detach() for k, v in params.items()})
    assert torch.allclose(single.vertices[0], out.vertices[1].detach(), atol=1e-5)


def test_anny_rest_pose_is_anatomical(anny_body):
    out = anny_body(anny_body.neutral_params(1))
    j = dict(zip(H36M17, out.joints["h36m17"][0].numpy()))
    # Z up: head above thorax above pelvis above knees above ankles; left at +X
    assert j["head_top"][2] > j["thorax"][2] > j["pelvis"][2] > j["left_knee"][2] > j["left_ankle"][2]
    assert j["left_hip"][0] > 0 > j["right_hip"][0]
    height = out.vertices[0, :, 2].max() - out.vertices[0, :, 2].min()
    assert 1.4 < float(height) < 2.0
    coco = dict(zip(COCO17, out.joints["coco17"][0].numpy()))
    assert coco["nose"][1] < 0  # faces -Y


def test_anny_reduced_forward_matches_the_full_forward(anny_body):
    """The reduced pass (no per-vertex work) gives the full forward's COCO-17 and bone heads, posed,
    shaped and placed anywhere: exact up to float rounding."""
    from diffusion_hpc.body.anny import AnnyReducedForward

    gen = torch.Generator().manual_seed(0)
    params = anny_body.neutral_params(2)
    params["body_pose"] = torch.randn(2, 30, 3, generator=gen) * 0.3
    params["global_orient"] = torch.randn(2, 3, generator=gen)
    params["phenotype"] = torch.rand(2, 6, generator=gen)
    params["transl"] = torch.tensor([[0.3, -0.2, 4.0], [-1.0, 0.5, 7.0]])
    with torch.no_grad():
        full = anny_body(params).joints
        coco, heads = AnnyReducedForward(anny_body)(params)
    assert (coco - full["coco17"]).norm(dim=-1).max() < 3e-4  # metres: float32 sums over the skinned vertices
    assert (heads - full["anny_cmu31"]).norm(dim=-1).max() < 1e-5


def test_phenotype_changes_height(anny_body):
    p = anny_body.neutral_params(2)
    p["phenotype"][0, 4] = 0.1
    p["phenotype"][1, 4] = 0.9
    v = anny_body(p).vertices
    heights = v[..., 2].max(1).values - v[..., 2].min(1).values
    assert heights[1] > heights[0] + 0.1


def test_transform_params_moves_the_body_rigidly(anny_body):
    import roma

    p = anny_body.neutral_params(2)
    p["global_orient"] = torch.tensor([[0.2, -0.4, 1.0], [0.0, 2.0, 0.3]])
    p["transl"] = torch.tensor([[0.1, 0.2, 0.3], [-1.0, 0.0, 2.0]])
    R, t = roma.random_rotmat(2), torch.randn(2, 3)
    before = anny_body(p).vertices
    after = anny_body(transform_params(anny_body, p, R, t)).vertices
    assert torch.allclose(after, before @ R.transpose(1, 2) + t[:, None], atol=1e-4)


def test_shape_sampling_is_deterministic_and_varied(anny_body):
    a = anny_body.sample_shape(np.random.default_rng(1))
    b = anny_body.sample_shape(np.random.default_rng(1))
    c = anny_body.sample_shape(np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (6,) and ((a >= 0) & (a <= 1)).all()


def test_joint_set_maps():
    assert joint_map("coco17", "h36m17")[H36M17.index("left_knee")] == COCO17.index("left_knee")
    assert joint_map("coco17", "h36m17")[H36M17.index("pelvis")] == -1
    flip = flip_permutation("coco17")
    assert COCO17[flip[COCO17.index("left_wrist")]] == "right_wrist" and flip[0] == 0
    assert (flip[flip] == np.arange(17)).all()
    x = np.arange(17 * 3, dtype=float).reshape(17, 3)
    y = convert(x, "coco17", "h36m17")
    assert np.isnan(y[0]).all() and np.array_equal(y[H36M17.index("left_knee")], x[COCO17.index("left_knee")])


# --- SMPL through smplx, with a synthetic model file ------------------------------------------------


def test_smpl_adapter_on_synthetic_model_file(tmp_path):
    path = write_fake_smpl(tmp_path / "SMPL_NEUTRAL.npz")
    check_body_model("smpl", tmp_path)  # a folder holding SMPL_NEUTRAL.npz is accepted
    body = get_body_model("smpl", model_path=path)
    params = body.neutral_params(2)
    params["body_pose"] = (0.2 * torch.randn(2, 23, 3)).requires_grad_(True)
    params["betas"] = torch.randn(2, 10)
    out = body(params)
    assert out.vertices.shape == (2, 6890, 3) and out.vertices.dtype == torch.float32
    assert set(out.joints) == {"coco17", "h36m17", "smpl24"}
    assert out.joints["coco17"].shape == (2, 17, 3) and out.joints["h36m17"].shape == (2, 17, 3)
    out.joints["smpl24"].sum().backward()
    assert params["body_pose"].grad.abs().sum() > 0
    # the rigid placement used for cameras holds for SMPL's pivot (the pelvis) too
    import roma

    p = {k: v.detach() for k, v in params.items()}
    p["global_orient"] = torch.tensor([[0.3, 0.1, -0.2], [1.0, 0.0, 0.0]])
    R, t = roma.random_rotmat(2), torch.randn(2, 3)
    with torch.no_grad():
        before = body(p).vertices
        after = body(transform_params(body, p, R, t)).vertices
    assert torch.allclose(after, before @ R.transpose(1, 2) + t[:, None], atol=1e-4)


@pytest.mark.parametrize("case", ["none", "missing", "pkl", "pickled", "garbage"])
def test_smpl_missing_or_unsafe_files_fail_clearly(tmp_path, case):
    if case == "none":
        path = None
    elif case == "missing":
        path = tmp_path / "SMPL_NEUTRAL.npz"
    elif case == "pkl":
        path = tmp_path / "SMPL_NEUTRAL.pkl"
        path.write_bytes(b"\x80\x04K\x01.")
    elif case == "pickled":
        path = tmp_path / "SMPL_NEUTRAL.npz"
        np.savez(path, v_template=np.array([{"evil": 1}], dtype=object))
    else:
        path = tmp_path / "SMPL_NEUTRAL.npz"
        path.write_bytes(b"not a zip")
    with pytest.raises(MissingModelError) as err:
        from diffusion_hpc.body.smpl import SMPLBody

        SMPLBody("smpl", model_path=path)
    message = str(err.value)
    assert "--smpl-path" in message or "npz" in message
