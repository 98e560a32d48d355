"""Regressors from checkpoint specs (spin:, hmr2:, dhpc:): HMR 2.0's layout, strict loads, clear errors."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from diffusion_hpc.errors import InputError, MissingModelError
from helpers_hmr import tiny_hmr2, write_hmr2_lightning, write_smart

#: shapes of entries of 4D-Humans' released HMR 2.0 (ViT-H backbone, 6-layer decoder head), from
#: hmr2/models/backbones/vit.py, heads/smpl_head.py, components/pose_transformer.py
HMR2_KEYS = {
    "backbone.pos_embed": (1, 193, 1280), "backbone.patch_embed.proj.weight": (1280, 3, 16, 16),
    "backbone.blocks.31.attn.qkv.weight": (3840, 1280), "backbone.blocks.31.attn.qkv.bias": (3840,),
    "backbone.blocks.0.mlp.fc1.weight": (5120, 1280), "backbone.blocks.0.mlp.fc2.weight": (1280, 5120),
    "backbone.blocks.0.attn.proj.weight": (1280, 1280), "backbone.last_norm.weight": (1280,),
    "smpl_head.transformer.to_token_embedding.weight": (1024, 1), "smpl_head.transformer.pos_embedding": (1, 1, 1024),
    "smpl_head.transformer.transformer.layers.5.0.fn.to_qkv.weight": (1536, 1024),
    "smpl_head.transformer.transformer.layers.5.0.fn.to_out.0.weight": (1024, 512),
    "smpl_head.transformer.transformer.layers.5.1.fn.to_kv.weight": (1024, 1280),
    "smpl_head.transformer.transformer.layers.5.1.fn.to_q.weight": (512, 1024),
    "smpl_head.transformer.transformer.layers.5.2.fn.net.0.weight": (1024, 1024),
    "smpl_head.transformer.transformer.layers.5.2.fn.net.3.weight": (1024, 1024),
    "smpl_head.transformer.transformer.layers.5.2.norm.weight": (1024,),
    "smpl_head.decpose.weight": (144, 1024), "smpl_head.decshape.weight": (10, 1024), "smpl_head.deccam.weight": (3, 1024),
    "smpl_head.init_body_pose": (1, 144), "smpl_head.init_betas": (1, 10), "smpl_head.init_cam": (1, 3),
}  # fmt: skip
#: 2 + 1 + 32 x 12 + 2 backbone entries; 3 buffers + 3 embedding + 6 x 17 decoder + 6 readout entries
HMR2_KEY_COUNT = 389 + 114


@pytest.fixture(scope="module")
def hmr2_file(tmp_path_factory):
    net = tiny_hmr2()
    return write_hmr2_lightning(net, tmp_path_factory.mktemp("hmr2") / "epoch=35-step=1000000.ckpt"), net


def test_hmr2_vit_h_has_the_released_layout():
    from diffusion_hpc.hmr.hmr2 import HMR2, HMR2_VIT_H, infer_config

    with torch.device("meta"):
        state = HMR2(HMR2_VIT_H).state_dict()
    assert len(state) == HMR2_KEY_COUNT
    for key, shape in HMR2_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert infer_config(state) == HMR2_VIT_H  # sizes read back off the weights
    assert HMR2_VIT_H.image_size == (256, 192) and HMR2_VIT_H.grid == (16, 12)


def test_hmr2_rotation_convention():
    """4D-Humans' 6D vector is (first column, second column); SPIN's interleaves them."""
    import roma

    from diffusion_hpc.hmr.hmr2 import hmr2_rot6d_to_rotmat

    R = roma.random_rotmat(7)
    assert torch.allclose(hmr2_rot6d_to_rotmat(R[..., :2].transpose(-1, -2).reshape(7, 6)), R, atol=1e-5)


def test_hmr2_checkpoint_loads_strictly_and_runs(hmr2_file):
    from diffusion_hpc.hmr.init import load_regressor_spec

    path, net = hmr2_file
    loaded = load_regressor_spec(f"hmr2:{path}")
    assert (loaded.kind, loaded.architecture, loaded.body_model, loaded.crop_size) == ("hmr2", "hmr2", "smpl", 64)
    assert loaded.normalised_focal == pytest.approx(2 * 5000 / 64)
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = loaded.network(images), net.eval()(images)
    for key in ("rotmat", "betas", "cam", "body_pose", "cam_t"):
        assert torch.equal(ours[key], theirs[key]), key
    assert ours["rotmat"].shape == (3, 24, 3, 3) and ours["body_pose"].shape == (3, 23, 3)
    # with zero read-out layers the output is the mean state: root pi about x, rest pose, mean betas
    for layer in (loaded.network.smpl_head.decpose, loaded.network.smpl_head.decshape, loaded.network.smpl_head.deccam):
        torch.nn.init.zeros_(layer.weight), torch.nn.init.zeros_(layer.bias)
    with torch.no_grad():
        mean = loaded.network(images)
    np.testing.assert_allclose(mean["rotmat"][:, 0].numpy(), [np.diag([1.0, -1.0, -1.0])] * 3, atol=1e-6)
    assert mean["body_pose"].abs().max() < 1e-6
    np.testing.assert_allclose(mean["cam_t"][0].numpy(), [0, 0, 2 * 5000 / (64 * 0.9)], rtol=1e-5)
    with pytest.raises(InputError, match="64 x 64"):
        loaded.network(torch.rand(1, 3, 96, 96))


def test_wrong_files_are_one_clear_error(hmr2_file, tmp_path):
    from diffusion_hpc.hmr.init import load_regressor_spec

    _, net = hmr2_file
    state = net.state_dict()
    bad = dict(state)
    bad["backbone.blocks.1.attn.proj.weight"] = torch.zeros(3, 3)
    bad["smpl_head.extra.weight"] = torch.zeros(1)
    del bad["smpl_head.deccam.bias"]
    torch.save({"state_dict": bad}, tmp_path / "bad.ckpt")
    with pytest.raises(InputError) as err:
        load_regressor_spec(f"hmr2:{tmp_path / 'bad.ckpt'}")
    text = str(err.value)
    assert "bad.ckpt" in text and "backbone.blocks.1.attn.proj.weight" in text and "(3, 3)" in text
    assert "smpl_head.deccam.bias" in text and "smpl_head.extra.weight" in text
    torch.save({"model": {"conv1.weight": torch.zeros(64, 3, 7, 7)}}, tmp_path / "spin.pt")
    with pytest.raises(InputError, match="not an HMR 2.0 network"):
        load_regressor_spec(f"hmr2:{tmp_path / 'spin.pt'}")
    with pytest.raises(InputError, match="spin.pt"):
        load_regressor_spec(f"spin:{tmp_path / 'spin.pt'}")
    with pytest.raises(MissingModelError, match="missing.ckpt"):
        load_regressor_spec(f"hmr2:{tmp_path / 'missing.ckpt'}")
    with pytest.raises(InputError, match="not usable here"):
        load_regressor_spec(f"imagenet:{tmp_path}")
    # a checkpoint holding objects other than plain data and the known config dicts is refused, not unpickled
    torch.save({"state_dict": state, "extra": types.SimpleNamespace(a=1)}, tmp_path / "pickled.ckpt")
    with pytest.raises(InputError, match="weights_only"):
        load_regressor_spec(f"hmr2:{tmp_path / 'pickled.ckpt'}")


def test_spin_spec_and_exported_runs_of_each_architecture(hmr2_file, tmp_path):
    from diffusion_hpc.hmr.init import load_regressor_spec
    from diffusion_hpc.hmr.model import HMRRegressor, export_regressor, load_regressor
    from diffusion_hpc.hmr.spin import SPINHMR

    torch.manual_seed(0)
    spin = SPINHMR()
    spin.init_cam.fill_(0.9)
    torch.save({"model": spin.state_dict()}, tmp_path / "model_checkpoint.pt")
    loaded = load_regressor_spec(f"spin:{tmp_path / 'model_checkpoint.pt'}", dtype=torch.float64)
    assert (loaded.architecture, loaded.body_model, loaded.crop_size) == ("spin", "smpl", 224)
    assert next(loaded.network.parameters()).dtype == torch.float64 and not loaded.network.training
    images = torch.rand(2, 3, 64, 64)
    for name, net in (("spin", spin), ("hmr2", hmr2_file[1]), ("dhpc", HMRRegressor("smpl", backbone="tiny"))):
        export_regressor(net, tmp_path / name)
        for spec in (tmp_path / name, f"dhpc:{tmp_path / name}", tmp_path / name / "regressor.safetensors"):
            again = load_regressor_spec(spec)
            assert again.kind == "dhpc" and again.architecture == name and again.body_model == "smpl"
            with torch.no_grad():
                assert torch.equal(again.network(images)["cam"], net.eval()(images)["cam"])
    with pytest.raises(InputError, match="load_regressor_spec"):
        load_regressor(tmp_path / "spin")


# ----------------------------------------------------------------------------------------------
# Fine-tuning from each network (tiny SMPL dataset, half real SMART-style images with 2D labels only).

CROP = 64


@pytest.fixture(scope="module")
def smpl_data(tmp_path_factory, fake_smpl):
    """A native SMPL dataset (8 samples, 64 px) and the same images as a 2D-only real source.

    The synthetic SMPL file's faces are random, so its renders hide every joint from the depth test:
    the tests that train on it accept persons with no visible keypoint (``min_visible_keypoints=0``)."""
    from conftest import generate_smpl_dataset

    root = tmp_path_factory.mktemp("smpl_train")
    generate_smpl_dataset(root / "d", fake_smpl, poses=8, seed=0, n=8)
    return root / "d", "smart:" + str(write_smart(root / "d", root / "smart"))


@pytest.fixture(scope="module")
def inits(tmp_path_factory, hmr2_file, smpl_data, fake_smpl):
    """A spin:, an hmr2: and a dhpc: init (an exported run of ours, SMPL, tiny backbone)."""
    from diffusion_hpc.hmr.model import HMRRegressor, export_regressor
    from diffusion_hpc.hmr.spin import SPINHMR

    root = tmp_path_factory.mktemp("inits")
    torch.manual_seed(0)
    spin = SPINHMR()
    spin.init_pose.copy_(tiny_hmr2().smpl_head.init_body_pose.reshape(24, 2, 3).transpose(1, 2).reshape(1, 144))
    spin.init_cam.fill_(0.9)
    torch.save({"model": spin.state_dict()}, root / "model_checkpoint.pt")
    export_regressor(HMRRegressor("smpl", backbone="tiny"), root / "ours")
    return {"spin": f"spin:{root / 'model_checkpoint.pt'}", "hmr2": f"hmr2:{hmr2_file[0]}", "dhpc": f"dhpc:{root / 'ours'}"}


def _fixed_batch(smpl_data):
    """Every synthetic sample and every real one, unaugmented, as one batch."""
    from diffusion_hpc.hmr.data import RealDataset, SyntheticShards

    synthetic = list(SyntheticShards([smpl_data[0]], size=CROP, augment=None, body_model="smpl", shuffle_buffer=1, repeat=False,
                                     min_visible_keypoints=0))
    real = RealDataset(smpl_data[1], size=CROP, augment=None, body_model="smpl")
    return torch.utils.data.default_collate(synthetic + [real[i] for i in range(len(real))])


def _loss(network, batch, fake_smpl, losses="paper") -> dict[str, float]:
    from diffusion_hpc.hmr.train import HMRModule

    module = HMRModule(body_model="smpl", smpl_path=str(fake_smpl), losses=losses, network=network).eval()
    with torch.no_grad():
        return {k: float(v) for k, v in module.compute_losses(batch).items()}


@pytest.mark.parametrize("kind", ["spin", "hmr2", "dhpc"])
def test_finetuning_from_each_network_lowers_the_paper_loss(kind, inits, smpl_data, fake_smpl, tmp_path, one_thread):
    from diffusion_hpc.config import TrainConfig
    from diffusion_hpc.hmr.init import load_regressor_spec
    from diffusion_hpc.hmr.train import train

    own = {"body_model": "smpl"} if kind == "dhpc" else {}  # spin: / hmr2: networks bring SMPL themselves
    config = TrainConfig(init=inits[kind], synthetic=[smpl_data[0]], real=[smpl_data[1]], losses="paper", out=tmp_path / "run",
                         smpl_path=fake_smpl, crop_size=CROP, batch_size=8, lr=1e-4, augment=False, max_steps=6,
                         accelerator="cpu", workers=0, log_every=1, min_visible_keypoints=0, **own)  # fmt: skip
    assert config.body_model == "smpl" and config.real_ratio == 0.5
    train(config, progress=False)
    batch = _fixed_batch(smpl_data)
    before = _loss(load_regressor_spec(inits[kind]).network, batch, fake_smpl)
    tuned = load_regressor_spec(tmp_path / "run")
    assert tuned.architecture == {"dhpc": "dhpc"}.get(kind, kind) and tuned.body_model == "smpl"
    after = _loss(tuned.network, batch, fake_smpl)
    assert set(after) == {"keypoints2d", "rotmat", "shape", "total"}
    assert after["total"] < 0.9 * before["total"], (before, after)


# ----------------------------------------------------------------------------------------------
# dhpc evaluate --checkpoint spin:FILE | hmr2:FILE under the SkiPose and SMART protocols.


@pytest.fixture(scope="module")
def skipose_root(smpl_data, tmp_path_factory):
    """The SMPL dataset as a SkiPose test split: 256-px images, H36M-17 2D and 3D labels."""
    import cv2
    from test_benchmarks import write_skipose

    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.schema import persons_of
    from diffusion_hpc.geometry.camera import project

    root = tmp_path_factory.mktemp("skipose")
    joints, uv01 = [], []
    for i, rec in enumerate(open_dataset(smpl_data[0])):
        folder = root / "test" / f"seq_{i + 3:03d}" / f"cam_{i % 6:02d}"
        folder.mkdir(parents=True)
        cv2.imwrite(str(folder / f"image_{i * 10:06d}.png"), cv2.resize(rec["image"][..., ::-1], (256, 256)))
        (person,) = persons_of(rec)  # SkiPose: one person per image, as this dataset has
        j3 = np.asarray(person["joints3d"]["h36m17"], np.float64)
        joints.append(j3)
        uv01.append(project(j3, rec["K"]) / 64.0)  # 64 px images
    write_skipose(root, "test", np.stack(joints), np.stack(uv01))
    return root


def _by_hand(network, images, smpl_file, h36m, crop):
    """Joints and keypoints of a network's SMPL bodies, computed here from its raw outputs."""
    from diffusion_hpc.body import get_body_model

    with torch.no_grad():
        out = network(torch.as_tensor(images))
        body = get_body_model("smpl", model_path=smpl_file)({
            "global_orient": out["global_orient"], "body_pose": out["body_pose"], "betas": out["betas"],
            "transl": torch.zeros(len(images), 3)})  # fmt: skip
    joints = np.einsum("jv,bvc->bjc", h36m, body.vertices.numpy())
    s, tx, ty = out["cam"].numpy().T
    focal = network.normalised_focal
    p = body.joints["coco17"].numpy() + np.stack([tx, ty, focal / s], axis=1)[:, None]
    uv = focal * p[..., :2] / p[..., 2:3]  # crop spans [-1, 1]
    return joints, uv * crop / 2 + (crop - 1) / 2


@pytest.mark.parametrize("kind", ["spin", "hmr2"])
def test_evaluate_pretrained_networks_equals_the_metrics_by_hand(kind, inits, skipose_root, smpl_data, fake_smpl, tmp_path):
    from diffusion_hpc.config import EvaluateConfig
    from diffusion_hpc.eval import metrics
    from diffusion_hpc.hmr.evaluate import evaluate, load_targets
    from diffusion_hpc.hmr.init import load_regressor_spec

    h36m = np.random.default_rng(3).random((17, 6890)) ** 30
    h36m = (h36m / h36m.sum(1, keepdims=True)).astype(np.float32)
    np.save(tmp_path / "J_regressor_h36m.npy", h36m)
    loaded = load_regressor_spec(inits[kind])
    crop = loaded.crop_size  # SPIN 224, the tiny HMR 2.0 64
    result = evaluate(EvaluateConfig(checkpoint=inits[kind], data=f"skipose:{skipose_root}", smpl_path=fake_smpl,
                                     h36m_regressor=tmp_path / "J_regressor_h36m.npy", batch_size=3))  # fmt: skip
    targets = load_targets(f"skipose:{skipose_root}", crop_size=crop, body_model="smpl")
    joints, uv = _by_hand(loaded.network, targets.images, fake_smpl, h36m, crop)
    per = metrics.evaluate_3d(joints, targets.joints3d, metrics.SKIPOSE_PROTOCOL, pred_joint_set="h36m17", gt_joint_set="h36m17")
    pck = metrics.evaluate_2d(uv, targets.keypoints2d, float(crop), metrics.SMART_PROTOCOL, pred_joint_set="coco17",
                              gt_joint_set="coco17")  # fmt: skip
    assert result["samples"] == 8 and result["crop_size"] == crop and result["protocol_3d"] == "skipose"
    assert result["mpjpe_mm"] == pytest.approx(per["mpjpe"].mean(), rel=1e-4)
    assert result["pa_mpjpe_mm"] == pytest.approx(per["pa_mpjpe"].mean(), rel=1e-4)
    assert result["pck"] == pytest.approx(np.nanmean(pck) * 100, abs=1e-6)
    assert result["joints_3d"].startswith("H36M joint regressor") and result["regressor"]["architecture"] == kind
    # SMART (2D only), and the documented approximation when no H36M regressor is given
    smart = evaluate(EvaluateConfig(checkpoint=inits[kind], data=smpl_data[1], smpl_path=fake_smpl))
    targets = load_targets(smpl_data[1], crop_size=crop, body_model="smpl")
    _, uv = _by_hand(loaded.network, targets.images, fake_smpl, h36m, crop)
    pck = metrics.evaluate_2d(uv, targets.keypoints2d, float(crop), metrics.SMART_PROTOCOL, pred_joint_set="coco17",
                              gt_joint_set="coco17")  # fmt: skip
    assert smart["pck"] == pytest.approx(np.nanmean(pck) * 100, abs=1e-6) and "mpjpe_mm" not in smart
    approx = evaluate(EvaluateConfig(checkpoint=inits[kind], data=f"skipose:{skipose_root}", smpl_path=fake_smpl, limit=2))
    assert approx["joints_3d"].startswith("approximation: SMPL kinematic joints")


def test_evaluate_errors_name_the_fix(inits, skipose_root, fake_smpl, tmp_path):
    from conftest import run_cli

    np.save(tmp_path / "wrong.npy", np.zeros((17, 100), np.float32))
    data = f"skipose:{skipose_root}"
    proc = run_cli("evaluate", "--checkpoint", inits["hmr2"], "--data", data, "--smpl-path", str(fake_smpl),
                   "--h36m-regressor", str(tmp_path / "wrong.npy"))  # fmt: skip
    assert proc.returncode == 2 and "(17, 6890)" in proc.stderr and "wrong.npy" in proc.stderr
    proc = run_cli("evaluate", "--checkpoint", inits["hmr2"], "--data", data, "--smpl-path", str(fake_smpl), "--crop-size", "224")
    assert proc.returncode == 2 and "64 px crops" in proc.stderr
    proc = run_cli("evaluate", "--checkpoint", "spin:" + str(tmp_path / "none.pt"), "--data", data)
    assert proc.returncode == 2 and "none.pt" in proc.stderr


def test_paper_losses_are_exactly_the_papers_terms():
    """--losses paper: 2D x5 on every sample, rotations x1 and shape x0.001 on synthetic samples only."""
    from diffusion_hpc.config import TrainConfig
    from diffusion_hpc.hmr.losses import LOSS_SETS, hmr_losses

    assert LOSS_SETS["paper"] == {"keypoints2d": 5.0, "rotmat": 1.0, "shape": 0.001}
    assert set(LOSS_SETS["dhpc"]) == {"keypoints2d", "joints3d", "rotmat", "shape", "camera"}
    pred = {"keypoints2d": torch.zeros(3, 17, 2), "joints3d": torch.zeros(3, 17, 3), "rotmat": torch.zeros(3, 24, 3, 3),
            "shape": torch.zeros(3, 10), "cam": torch.ones(3, 3)}  # fmt: skip
    batch = {  # sample 0: real with SMPL fits (a SPIN npz); 1: synthetic; 2: real, 2D only
        "keypoints2d": torch.cat([torch.ones(3, 17, 2), torch.ones(3, 17, 1)], -1) * torch.tensor([1.0, 2.0, 3.0])[:, None, None],
        "joints3d": torch.ones(3, 17, 4), "rotmat": torch.tensor([1.0, 2.0, 0.0])[:, None, None, None].expand(3, 24, 3, 3),
        "shape": torch.tensor([1.0, 2.0, 0.0])[:, None].expand(3, 10), "has_2d": torch.ones(3), "has_3d": torch.ones(3),
        "has_params": torch.tensor([1.0, 1.0, 0.0]), "is_real": torch.tensor([1.0, 0.0, 1.0]),
    }  # fmt: skip
    paper = hmr_losses(pred, batch, LOSS_SETS["paper"], losses="paper")
    assert set(paper) == {"keypoints2d", "rotmat", "shape", "total"}
    # 2D: confidence (k) x squared error (k^2) of sample k = 1, 2, 3, mean over all three samples
    assert float(paper["keypoints2d"]) == pytest.approx((1 + 8 + 27) / 3)
    assert float(paper["rotmat"]) == pytest.approx(4.0) and float(paper["shape"]) == pytest.approx(4.0)  # sample 1 only
    assert float(paper["total"]) == pytest.approx(5 * float(paper["keypoints2d"]) + 4.0 + 0.004)
    dhpc = hmr_losses(pred, batch, LOSS_SETS["dhpc"], losses="dhpc")
    assert set(dhpc) == {"keypoints2d", "joints3d", "rotmat", "shape", "camera", "total"}
    assert float(dhpc["rotmat"]) == pytest.approx(2.5)  # real fits count too: (1 + 4) / 2
    config = TrainConfig(real=["x"], out="o", losses="paper", loss_weights={"shape": 0.01})
    assert config.losses == "paper" and TrainConfig(real=["x"], out="o").losses == "dhpc"
    with pytest.raises(ValueError, match="no term joints3d"):
        TrainConfig(real=["x"], out="o", losses="paper", loss_weights={"joints3d": 1.0})


def test_smpl_body_moves_to_the_training_device_as_a_private_copy(fake_smpl):
    from diffusion_hpc.body import get_body_model
    from diffusion_hpc.hmr.model import body_device, body_on_device

    body = get_body_model("smpl", model_path=fake_smpl)
    assert body_on_device(body, "cpu") is body  # already there: no copy
    moved = body_on_device(body, "meta")  # any other device: a copy there, the shared instance stays put
    assert moved is not body and body_device(moved) == torch.device("meta") and body_device(body) == torch.device("cpu")


def test_validation_with_the_h36m_regressor_equals_evaluate(inits, smpl_data, skipose_root, fake_smpl, tmp_path, one_thread):
    """Fine-tuning HMR 2.0 with --val and --h36m-regressor: the validation of the last step is what
    dhpc evaluate --h36m-regressor reports for the exported network."""
    from diffusion_hpc.config import EvaluateConfig, TrainConfig
    from diffusion_hpc.hmr.evaluate import evaluate
    from diffusion_hpc.hmr.train import train
    from diffusion_hpc.hmr.validation import read_rows

    h36m = np.random.default_rng(4).random((17, 6890)) ** 30
    np.save(tmp_path / "J_regressor_h36m.npy", (h36m / h36m.sum(1, keepdims=True)).astype(np.float32))
    data = f"skipose:{skipose_root}"
    train(TrainConfig(init=inits["hmr2"], synthetic=[smpl_data[0]], out=tmp_path / "run", smpl_path=fake_smpl, crop_size=CROP,
                      batch_size=4, max_steps=2, val=data, val_every=2, h36m_regressor=tmp_path / "J_regressor_h36m.npy",
                      accelerator="cpu", workers=0, min_visible_keypoints=0), progress=False)  # fmt: skip
    row = read_rows(tmp_path / "run")[-1]
    result = evaluate(EvaluateConfig(checkpoint=str(tmp_path / "run"), data=data, smpl_path=fake_smpl,
                                     h36m_regressor=tmp_path / "J_regressor_h36m.npy"))  # fmt: skip
    assert row["step"] == 2 and result["crop_size"] == CROP
    for key in ("mpjpe_mm", "pa_mpjpe_mm", "pck"):
        assert result[key] == pytest.approx(row[key], rel=1e-6), key
    with pytest.raises(ValueError, match="SMPL regressors"):
        TrainConfig(synthetic=[smpl_data[0]], out=tmp_path / "r", val=data, h36m_regressor=tmp_path / "J_regressor_h36m.npy")
