"""Test helpers shared by the HMR test modules (a plain module, not a conftest): a tiny HMR 2.0
with 4D-Humans' parameter names and its Lightning checkpoint, and a dataset written as a SMART
benchmark."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import torch

#: a small HMR 2.0 (same names as 4D-Humans, small sizes): 64-px crops, a 4 x 3 patch grid
TINY = dict(crop_size=64, embed_dim=160, depth=2, num_heads=2, decoder_dim=64, decoder_depth=2, decoder_heads=2,
            decoder_dim_head=64, decoder_mlp_dim=64)  # fmt: skip


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



def write_smart(dataset, root):
    """The dataset's samples as a SMART (SportsCap) benchmark: ``root/images/v/I.png`` and
    ``root/annotations/test.json`` with BODY_25 joints (flag 0 = visible), one frame per person of
    each image: a source with 2D labels only."""
    import cv2

    from diffusion_hpc.body.joint_sets import convert
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.schema import persons_of

    (root / "images" / "v").mkdir(parents=True)
    frames = []
    for i, rec in enumerate(open_dataset(dataset)):
        cv2.imwrite(str(root / "images" / "v" / f"{i}.png"), rec["image"][..., ::-1])
        for person in persons_of(rec):
            kp = convert(person["keypoints2d"], "coco17", "body25", fill=0.0)
            joints = np.concatenate([kp[:, :2], np.where(kp[:, 2:] > 0, 0.0, 1.0)], axis=-1)
            frames.append({"img_name": f"v/{i}.png", "joints": joints.tolist(), "bbox": [],
                           "img_hw": list(rec["image"].shape[:2])})  # fmt: skip
    path = root / "annotations" / "test.json"
    path.parent.mkdir()
    path.write_text(json.dumps([{"VideoName": "v", "action_labels": "fixture", "frames": frames}]))
    return path
