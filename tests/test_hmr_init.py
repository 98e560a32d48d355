"""Regressors from checkpoint specs (spin:, hmr2:, dhpc:): HMR 2.0's layout, strict loads, clear errors."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from diffusion_hpc.errors import InputError, MissingModelError

#: a small HMR 2.0 (same names as 4D-Humans, small sizes): 64-px crops, a 4 x 3 patch grid
TINY = dict(crop_size=64, embed_dim=160, depth=2, num_heads=2, decoder_dim=64, decoder_depth=2, decoder_heads=2,
            decoder_dim_head=64, decoder_mlp_dim=64)  # fmt: skip

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


def tiny_hmr2(seed: int = 0):
    from diffusion_hpc.hmr.hmr2 import HMR2, HMR2Config

    torch.manual_seed(seed)
    net = HMR2(HMR2Config(**TINY))
    rest = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]).repeat(24)  # (a1, a2) = first two columns of I
    rest[:6] = torch.tensor([1.0, 0.0, 0.0, 0.0, -1.0, 0.0])  # root: pi about x
    net.smpl_head.init_body_pose.copy_(rest[None])
    net.smpl_head.init_betas.copy_(torch.linspace(-0.5, 0.5, 10)[None])
    net.smpl_head.init_cam.copy_(torch.tensor([[0.9, 0.0, 0.0]]))
    return net


def write_hmr2_lightning(net, path):
    """``net`` saved like 4D-Humans' Lightning checkpoint: ``state_dict`` with the network, the
    discriminator, the SMPL buffers and ``initialized``; ``hyper_parameters`` holding a yacs CfgNode."""
    yacs = types.ModuleType("yacs")
    config = types.ModuleType("yacs.config")

    class CfgNode(dict):  # like yacs': a dict with instance attributes (pickled as BUILD state)
        def __init__(self, **items):
            super().__init__(items)
            self.__dict__["__immutable__"] = False

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode = CfgNode
    yacs.config = config
    sys.modules.update({"yacs": yacs, "yacs.config": config})
    try:
        state = dict(net.state_dict())
        state.update({"discriminator.D_conv1.weight": torch.zeros(32, 9, 1, 1), "smpl.shapedirs": torch.zeros(6890, 3, 10),
                      "smpl.J_regressor_extra": torch.zeros(9, 6890), "initialized": torch.tensor(True)})  # fmt: skip
        cfg = CfgNode(MODEL=CfgNode(IMAGE_SIZE=256), EXTRA=CfgNode(FOCAL_LENGTH=5000))
        torch.save({"epoch": 35, "global_step": 1000000, "state_dict": state, "hyper_parameters": {"cfg": cfg}}, path)
    finally:
        del sys.modules["yacs"], sys.modules["yacs.config"]
    return path


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
