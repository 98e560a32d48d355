"""HMR / SPIN checkpoint adapters: camera conversion crop -> full image, batching, failures.

Tiny networks with random weights and the synthetic SMPL file of ``test_body`` (no licensed data).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_hpc.errors import ConfigError, MissingModelError

CROP = 64


@pytest.fixture(scope="module")
def hmr_checkpoint(tmp_path_factory):
    from diffusion_hpc.hmr.model import HMRRegressor, export_regressor

    torch.manual_seed(0)
    model = HMRRegressor("smpl", backbone="tiny")
    with torch.no_grad():  # a camera away from the mean one, so the conversion is exercised
        model.dec_cam.bias.copy_(torch.tensor([0.2, 0.15, -0.1]))
        model.dec_pose.bias.normal_(0.0, 0.05)
    out = tmp_path_factory.mktemp("hmr")
    export_regressor(model, out)
    return out


@pytest.fixture(scope="module")
def estimator(hmr_checkpoint, fake_smpl):
    from diffusion_hpc.estimate.hmr_adapter import HMREstimator

    return HMREstimator(hmr_checkpoint, detector=None, crop_size=CROP, model_path=fake_smpl)


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (300, 420, 3), dtype=np.uint8), rng.integers(0, 255, (200, 160, 3), dtype=np.uint8)]


BOXES = [(np.array([310.0, 110.0]), 130.0), (np.array([70.0, 120.0]), 90.0)]


def _crop_space_pixels(est, image, box):
    """COCO-17 from the crop camera (project_normalised), mapped back to image px by the crop transform."""
    from diffusion_hpc.estimate.hmr_adapter import crop_image
    from diffusion_hpc.hmr.data import denormalise_keypoints
    from diffusion_hpc.hmr.model import project_normalised

    crop, A = crop_image(image, box[0], box[1], est.crop_size)
    pred = est.regress_crops(crop[None])
    params = {"global_orient": torch.as_tensor(pred["global_orient"]), "body_pose": torch.as_tensor(pred["body_pose"]),
              est.shape_key: torch.as_tensor(pred["shape"]), "transl": torch.zeros(1, 3)}
    with torch.no_grad():
        joints = est.body(params).joints["coco17"]
    cam_t = torch.as_tensor(pred["cam_t"])
    uv_crop = denormalise_keypoints(project_normalised(joints, cam_t, est.normalised_focal)[0].numpy(), est.crop_size)
    uv_img = (np.c_[uv_crop, np.ones(17)] @ np.linalg.inv(A).T)[:, :2]
    depth = (joints[0] + cam_t[0]).numpy()[:, 2]
    return uv_img, depth, float(cam_t[0, 2])


def test_keypoints_are_the_projection_of_joints3d(estimator):
    from diffusion_hpc.geometry.camera import project

    for est, image, box in zip(estimator.estimate(_images(), boxes=BOXES), _images(), BOXES):
        assert est.ok and est.body_model == "smpl" and est.image_size == image.shape[:2]
        assert est.params["transl"].shape == (3,) and est.params["body_pose"].shape == (23, 3)
        assert est.params["betas"].shape == (10,)
        np.testing.assert_allclose(est.keypoints2d[:, :2], project(est.joints3d["coco17"], est.K), atol=1e-3)
        h, w = image.shape[:2]
        assert est.K[0, 0] == pytest.approx(5000.0 * box[1] / 224.0)  # f = 5000 b / 224 (f_n b / 2)
        assert est.K[0, 2] == pytest.approx((w - 1) / 2) and est.K[1, 2] == pytest.approx((h - 1) / 2)
        # the params reproduce joints3d
        p = {k: torch.as_tensor(v)[None] for k, v in est.params.items()}
        with torch.no_grad():
            again = estimator.body(p).joints["coco17"][0].numpy()
        np.testing.assert_allclose(again, est.joints3d["coco17"], atol=1e-4)


def test_image_camera_agrees_with_crop_camera(estimator):
    images = _images()
    for est, image, box in zip(estimator.estimate(images, boxes=BOXES), images, BOXES):
        crop_uv, depth, tz = _crop_space_pixels(estimator, image, box)
        diff = est.keypoints2d[:, :2] - crop_uv
        assert np.abs(diff).max() <= 0.5, np.abs(diff).max()
        # and the residual is exactly the documented one: (c - p)(z - z') / z' (exact at the root depth)
        p = est.K[:2, 2]
        expected = (box[0] - p)[None] * ((tz - depth) / depth)[:, None]
        np.testing.assert_allclose(diff, expected, atol=2e-3)


def test_box_principal_point_is_exact(hmr_checkpoint, fake_smpl):
    from diffusion_hpc.estimate.hmr_adapter import HMREstimator

    est = HMREstimator(hmr_checkpoint, detector=None, crop_size=CROP, model_path=fake_smpl, principal_point="box")
    image, box = _images()[0], BOXES[0]
    [e] = est.estimate([image], boxes=[box])
    np.testing.assert_allclose(e.K[:2, 2], box[0])
    np.testing.assert_allclose(e.keypoints2d[:, :2], _crop_space_pixels(est, image, box)[0], atol=2e-3)


def test_batched_equals_single(estimator):
    images = _images()
    both = estimator.estimate(images, boxes=BOXES)
    one = estimator.estimate(images[1:], boxes=BOXES[1:])[0]
    np.testing.assert_allclose(both[1].keypoints2d, one.keypoints2d, atol=1e-3)
    np.testing.assert_allclose(both[1].params["transl"], one.params["transl"], atol=1e-5)


def test_regressor_on_a_device_and_precision(hmr_checkpoint, fake_smpl, estimator):
    from diffusion_hpc.estimate.hmr_adapter import HMREstimator

    est = HMREstimator(hmr_checkpoint, detector=None, crop_size=CROP, model_path=fake_smpl, device="cpu",
                       dtype="bfloat16")  # fmt: skip
    assert next(est.regressor.parameters()).dtype == torch.bfloat16 and est.placement.names["dtype"] == "bfloat16"
    [half] = est.estimate(_images()[:1], boxes=BOXES[:1])
    [full] = estimator.estimate(_images()[:1], boxes=BOXES[:1])
    assert half.ok and half.params["body_pose"].dtype == np.float32
    np.testing.assert_allclose(half.keypoints2d[:, :2], full.keypoints2d[:, :2], atol=0.05 * CROP)
    with pytest.raises(ConfigError, match="float16 on --device cpu"):
        HMREstimator(hmr_checkpoint, detector=None, model_path=fake_smpl, device="cpu", dtype="float16")


def test_missing_checkpoint_fails_before_any_image(tmp_path, fake_smpl):
    from diffusion_hpc.estimate import get_estimator
    from diffusion_hpc.estimate.hmr_adapter import HMREstimator

    with pytest.raises(MissingModelError):
        HMREstimator(tmp_path / "nothing", detector=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingModelError):
        get_estimator("hmr", checkpoint=tmp_path / "empty", detector=None)


def test_registry_and_no_person(hmr_checkpoint, fake_smpl):
    from diffusion_hpc.estimate import get_estimator

    est = get_estimator("hmr", checkpoint=hmr_checkpoint, crop_size=CROP, model_path=fake_smpl)  # MediaPipe boxes
    [blank] = est.estimate([np.full((120, 160, 3), 128, np.uint8)])
    assert not blank.ok and blank.reason == "no person found"
    with pytest.raises(ValueError, match="boxes"):
        get_estimator("hmr", checkpoint=hmr_checkpoint, detector=None, model_path=fake_smpl).estimate(_images()[:1])


# ---------------------------------------------------------------------------------------------
# SPIN checkpoints

#: a few (key, shape) pairs of SPIN's models/hmr.py state dict (ResNet-50 + IEF head)
SPIN_KEYS = {
    "conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,), "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.0.downsample.1.bias": (256,), "layer2.3.conv2.weight": (128, 128, 3, 3),
    "layer3.5.bn3.weight": (1024,), "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "fc1.weight": (1024, 2048 + 144 + 13), "fc2.bias": (1024,), "decpose.weight": (144, 1024),
    "decshape.bias": (10,), "deccam.weight": (3, 1024), "init_pose": (1, 144), "init_shape": (1, 10), "init_cam": (1, 3),
}  # fmt: skip
#: torchvision ResNet-50 state dict (320 keys) minus its fc (2) + fc1, fc2, decpose, decshape, deccam (10) + 3 buffers
SPIN_KEY_COUNT = 331


@pytest.fixture(scope="module")
def spin_files(tmp_path_factory):
    from diffusion_hpc.hmr.spin import SPINHMR

    out = tmp_path_factory.mktemp("spin")
    rest = np.tile(np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0], np.float32), 24)
    rest[:6] = [1.0, 0.0, 0.0, -1.0, 0.0, 0.0]  # root: pi about x (SMPL upright in the y-down camera)
    np.savez(out / "smpl_mean_params.npz", pose=rest, shape=np.linspace(-0.5, 0.5, 10), cam=np.array([0.9, 0.0, 0.0]))
    torch.manual_seed(1)
    net = SPINHMR(out / "smpl_mean_params.npz")
    torch.save({"model": net.state_dict(), "optimizer": {}, "epoch": 0}, out / "model_checkpoint.pt")
    return out / "model_checkpoint.pt", out / "smpl_mean_params.npz", net


def test_spin_layout_and_mean_state(spin_files):
    from diffusion_hpc.hmr.spin import SPINHMR, load_spin

    ckpt, mean, _ = spin_files
    state = torch.load(ckpt, weights_only=True)["model"]
    assert len(state) == SPIN_KEY_COUNT
    for key, shape in SPIN_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    net = load_spin(ckpt)
    for layer in (net.decpose, net.decshape, net.deccam):  # no correction: the output is the mean state
        torch.nn.init.zeros_(layer.weight), torch.nn.init.zeros_(layer.bias)
    with torch.no_grad():
        out = net(torch.rand(2, 3, CROP, CROP))
    np.testing.assert_allclose(out["rotmat"][:, 0].numpy(), [np.diag([1.0, -1.0, -1.0])] * 2, atol=1e-5)  # pi about x
    assert out["body_pose"].shape == (2, 23, 3) and out["body_pose"].abs().max() < 1e-6
    np.testing.assert_allclose(out["betas"][0].numpy(), np.linspace(-0.5, 0.5, 10), atol=1e-6)
    np.testing.assert_allclose(out["cam_t"][0].numpy(), [0, 0, 2 * 5000 / (224 * 0.9)], rtol=1e-5)
    # a bare state dict with a DataParallel prefix and without the mean buffers loads with mean_params
    bare = {"module." + k: v for k, v in state.items() if not k.startswith("init_")}
    torch.save(bare, ckpt.parent / "bare.pt")
    with pytest.raises(MissingModelError, match="mean"):
        load_spin(ckpt.parent / "bare.pt")
    again = load_spin(ckpt.parent / "bare.pt", mean_params=mean)
    assert torch.equal(again.init_pose, net.init_pose)
    # 6D convention: the first two columns of the rotation, (3, 2) row-major (SPIN's rot6d_to_rotmat)
    import roma

    from diffusion_hpc.geometry.rotations import rot6d_to_rotmat

    R = roma.random_rotmat(5)
    assert torch.allclose(rot6d_to_rotmat(R[:, :, :2].reshape(5, 6)), R, atol=1e-5)
    # built without mean parameters the network's mean state is zero; load_spin fills it from the file
    fixture_net = spin_files[2]
    assert not SPINHMR().init_pose.any() and net.init_pose.any()
    assert torch.equal(net.init_pose, fixture_net.init_pose) and torch.equal(net.init_cam, fixture_net.init_cam)


def test_spin_estimator(spin_files, fake_smpl, tmp_path):
    from diffusion_hpc.estimate import get_estimator
    from diffusion_hpc.geometry.camera import project

    ckpt, mean, _ = spin_files
    with pytest.raises(MissingModelError):
        get_estimator("spin", checkpoint=tmp_path / "none.pt", smpl_path=fake_smpl)
    with pytest.raises(MissingModelError):
        get_estimator("spin", checkpoint=ckpt, smpl_path=tmp_path / "no_smpl")
    est = get_estimator("spin", checkpoint=ckpt, smpl_path=fake_smpl, mean_params=mean, detector=None, crop_size=CROP)
    images = _images()
    results = est.estimate(images, boxes=BOXES)
    for e, image, box in zip(results, images, BOXES):
        assert e.ok and e.body_model == "smpl" and e.params["body_pose"].shape == (23, 3)
        np.testing.assert_allclose(e.keypoints2d[:, :2], project(e.joints3d["coco17"], e.K), atol=1e-3)
        crop_uv, _, _ = _crop_space_pixels(est, image, box)
        assert np.abs(e.keypoints2d[:, :2] - crop_uv).max() <= 0.5


def test_dhpc_estimate_with_a_regressor(hmr_checkpoint, fake_smpl, tmp_path):
    """``dhpc estimate --estimator hmr`` on a real photo: MediaPipe finds the person, the regressor's
    mesh lands in the npz with the checkpoint's body model, a preview is written; a missing
    --checkpoint is one clear error."""
    import skimage.data as skdata
    from conftest import run_cli

    from diffusion_hpc.data.schema import encode_png

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "astronaut.png").write_bytes(encode_png(skdata.astronaut()))
    out = tmp_path / "est.npz"
    proc = run_cli("estimate", "--images", str(tmp_path / "photos"), "--out", str(out), "--estimator", "hmr",
                   "--checkpoint", str(hmr_checkpoint), "--smpl-path", str(fake_smpl))
    assert proc.returncode == 0, proc.stderr
    with np.load(out, allow_pickle=False) as arrays:
        assert arrays["ok"].tolist() == [True] and str(arrays["body_model"]) == "smpl"
        assert arrays["params/body_pose"].shape == (1, 23, 3) and arrays["keypoints2d"].shape == (1, 17, 3)
        box_side = 224.0 * arrays["K"][0, 0, 0] / 5000.0  # f = 5000 b / 224 for a person box of b px
        assert 100 < box_side < 600  # the astronaut fills much of the 512 px photo
    assert (tmp_path / "est_preview" / "astronaut.png").is_file()
    proc = run_cli("estimate", "--images", str(tmp_path / "photos"), "--out", str(out), "--estimator", "spin")
    assert proc.returncode != 0 and "--checkpoint" in proc.stderr
    proc = run_cli("estimate", "--images", str(tmp_path / "photos"), "--out", str(out), "--estimator", "hmr",
                   "--checkpoint", str(hmr_checkpoint), "--body-model", "anny")  # the checkpoint's is SMPL
    assert proc.returncode != 0 and "--body-model" in proc.stderr


# ---------------------------------------------------------------------------------------------
# HMR 2.0 checkpoints


def test_hmr2_estimator(fake_smpl, tmp_path):
    """A 4D-Humans checkpoint (tiny, HMR 2.0's names) estimates SMPL bodies through its own crop
    size and focal: keypoints are the projection of joints3d, and agree with its crop camera."""
    from helpers_hmr import tiny_hmr2, write_hmr2_lightning

    from diffusion_hpc.estimate import get_estimator
    from diffusion_hpc.estimate.hmr_adapter import checkpoint_fingerprint
    from diffusion_hpc.geometry.camera import project

    net = tiny_hmr2()
    ckpt = write_hmr2_lightning(net, tmp_path / "epoch=1-step=10.ckpt")
    with pytest.raises(MissingModelError):
        get_estimator("hmr2", checkpoint=tmp_path / "none.ckpt", smpl_path=fake_smpl)
    est = get_estimator("hmr2", checkpoint=ckpt, smpl_path=fake_smpl, detector=None)
    assert est.crop_size == net.crop_size == 64 and est.normalised_focal == pytest.approx(net.normalised_focal)
    assert est.normalised_focal != pytest.approx(2 * 5000 / 224)  # HMR 2.0's camera, not SPIN's
    images = _images()
    for e, image, box in zip(est.estimate(images, boxes=BOXES), images, BOXES):
        assert e.ok and e.body_model == "smpl" and e.params["body_pose"].shape == (23, 3)
        assert e.K[0, 0] == pytest.approx(net.normalised_focal * box[1] / 2)
        np.testing.assert_allclose(e.keypoints2d[:, :2], project(e.joints3d["coco17"], e.K), atol=1e-3)
        crop_uv, _, _ = _crop_space_pixels(est, image, box)
        assert np.abs(e.keypoints2d[:, :2] - crop_uv).max() <= 0.5
    assert est.describe() == {"name": "hmr2", "body_model": "smpl", "architecture": "hmr2", "checkpoint": ckpt.name,
                              "fingerprint": checkpoint_fingerprint([ckpt])}  # fmt: skip


def test_dhpc_estimate_with_hmr2(fake_smpl, tmp_path):
    """``dhpc estimate --estimator hmr2`` reads a 4D-Humans checkpoint and writes SMPL fits of a real
    photo; without --smpl-path it stops before any work, naming the option."""
    import skimage.data as skdata
    from conftest import run_cli
    from helpers_hmr import tiny_hmr2, write_hmr2_lightning

    from diffusion_hpc.data.schema import encode_png

    ckpt = write_hmr2_lightning(tiny_hmr2(), tmp_path / "epoch=1-step=10.ckpt")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "astronaut.png").write_bytes(encode_png(skdata.astronaut()))
    out = tmp_path / "est.npz"
    proc = run_cli("estimate", "--images", str(tmp_path / "photos"), "--out", str(out), "--estimator", "hmr2",
                   "--checkpoint", str(ckpt), "--smpl-path", str(fake_smpl))
    assert proc.returncode == 0, proc.stderr
    with np.load(out, allow_pickle=False) as arrays:
        assert arrays["ok"].tolist() == [True] and str(arrays["body_model"]) == "smpl"
        assert arrays["params/body_pose"].shape == (1, 23, 3)
    proc = run_cli("estimate", "--images", str(tmp_path / "photos"), "--out", str(out), "--estimator", "hmr2",
                   "--checkpoint", str(ckpt))
    assert proc.returncode == 2 and "--smpl-path" in proc.stderr
