"""Benchmark readers on small fixture files in each documented format (dataset export: test_export.py)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from diffusion_hpc.body.joint_sets import BODY25, H36M17
from diffusion_hpc.data.benchmarks import (
    SKIPOSE17,
    SPIN24,
    convert_joints,
    load_skipose,
    load_smart,
    load_spin_npz,
)
from diffusion_hpc.errors import InputError


def true_h36m(n: int, seed: int = 0) -> np.ndarray:
    """(n, 17, 3) H36M-17 joints, metres, with the right leg at x < 0 and the left at x > 0."""
    rng = np.random.default_rng(seed)
    joints = rng.normal(scale=0.1, size=(n, 17, 3)) + np.array([0.0, 0.0, 5.0])
    for name in ("right_hip", "right_knee", "right_ankle"):
        joints[:, H36M17.index(name), 0] = -0.2
    for name in ("left_hip", "left_knee", "left_ankle"):
        joints[:, H36M17.index(name), 0] = 0.2
    return joints


# ------------------------------------------------------------------------------------------ SPIN npz


def write_spin_npz(path: Path, n: int = 3, s_joints: int = 24) -> dict:
    rng = np.random.default_rng(1)
    arrays = {
        "imgname": np.array([f"images/im{i:03d}.jpg" for i in range(n)]),
        "center": rng.uniform(50, 150, size=(n, 2)),
        "scale": rng.uniform(0.5, 1.5, size=n),
        "part": np.concatenate([rng.uniform(0, 200, (n, 24, 2)), rng.integers(0, 2, (n, 24, 1))], -1),
        "pose": rng.normal(size=(n, 72)),
        "shape": rng.normal(size=(n, 10)),
        "S": np.concatenate([rng.normal(size=(n, s_joints, 3)), np.ones((n, s_joints, 1))], -1),
        "openpose": np.zeros((n, 25, 3)),
    }
    np.savez(path, **arrays)
    return arrays


def test_spin_npz_loader(tmp_path):
    arrays = write_spin_npz(tmp_path / "a.npz")
    data = load_spin_npz(tmp_path / "a.npz")
    assert len(data) == 3 and data.joint_set == "spin24" and data.joints3d_set == "spin24"
    assert data.image_paths[1] == tmp_path / "images/im001.jpg"
    np.testing.assert_allclose(data.keypoints2d, arrays["part"])
    np.testing.assert_allclose(data.center, arrays["center"])
    np.testing.assert_allclose(data.box_size, arrays["scale"] * 200)
    np.testing.assert_allclose(data.joints3d, arrays["S"][..., :3])
    np.testing.assert_allclose(data.smpl["pose"], arrays["pose"])
    assert data.extra["openpose"].shape == (3, 25, 3)
    sub = data.subset([2, 0])
    assert len(sub) == 2 and sub.image_paths[0] == data.image_paths[2]
    # 17-joint S is H36M-17 (the SkiPose / H36M evaluation files).
    write_spin_npz(tmp_path / "b.npz", s_joints=17)
    assert load_spin_npz(tmp_path / "b.npz", image_root="/data").joints3d_set == "h36m17"


def test_spin_npz_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_spin_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(InputError, match="junk.npz.*unreadable"):
        load_spin_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "nopart.npz", imgname=np.array(["a.jpg"]), center=np.zeros((1, 2)), scale=np.ones(1))
    with pytest.raises(InputError, match=r"lacks keys \['part'\]"):
        load_spin_npz(tmp_path / "nopart.npz")
    np.savez(
        tmp_path / "pickled.npz",
        imgname=np.array(["a.jpg", None], dtype=object),
        center=np.zeros((2, 2)),
        scale=np.ones(2),
        part=np.zeros((2, 24, 3)),
    )
    with pytest.raises(InputError, match="object arrays"):
        load_spin_npz(tmp_path / "pickled.npz")
    np.savez(tmp_path / "shape.npz", imgname=np.array(["a.jpg"]), center=np.zeros((1, 2)), scale=np.ones(1),
             part=np.zeros((1, 17, 3)))  # fmt: skip
    with pytest.raises(InputError, match="'part' has shape"):
        load_spin_npz(tmp_path / "shape.npz")


# ------------------------------------------------------------------------------------------ SkiPose


def write_skipose(root: Path, split: str, joints: np.ndarray, uv01: np.ndarray) -> Path:
    """A labels.h5 as SkiPose ships it: 3D labels with the legs swapped (``skipose17`` order)."""
    n = len(joints)
    (root / split).mkdir(parents=True, exist_ok=True)
    path = root / split / "labels.h5"
    with h5py.File(path, "w") as f:
        f["seq"] = np.arange(n) + 3
        f["cam"] = np.arange(n) % 6
        f["frame"] = np.arange(n) * 10
        f["subj"] = np.ones(n, np.int64)
        f["3D"] = convert_joints(joints, "h36m17", "skipose17").astype(np.float32)  # legs swapped on disk
        f["2D"] = uv01.astype(np.float32)
    return path


def test_skipose_loader_undoes_the_leg_swap(tmp_path):
    assert SKIPOSE17[1:4] == ("left_hip", "left_knee", "left_ankle")
    joints = true_h36m(4)
    uv01 = np.random.default_rng(2).uniform(0.2, 0.8, size=(4, 17, 2))
    write_skipose(tmp_path, "test", joints, uv01)
    data = load_skipose(tmp_path, "test")
    assert len(data) == 4 and data.joint_set == "h36m17" and data.joints3d_set == "h36m17"
    np.testing.assert_allclose(data.joints3d, joints, atol=1e-6)  # true H36M-17 order
    assert np.all(data.joints3d[:, H36M17.index("right_knee"), 0] < 0)
    np.testing.assert_allclose(data.keypoints2d[..., :2], uv01 * 256, atol=1e-4)
    assert np.all(data.keypoints2d[..., 2] == 1)
    assert data.image_paths[1] == tmp_path / "test" / "seq_004" / "cam_01" / "image_000010.png"
    np.testing.assert_array_equal(data.extra["seq"], [3, 4, 5, 6])
    assert np.all(data.scale > 0)
    # The file itself, a limit, and the raw order on request.
    direct = load_skipose(tmp_path / "test" / "labels.h5", limit=2, swap_legs_3d=False)
    assert len(direct) == 2
    np.testing.assert_allclose(direct.joints3d, convert_joints(joints[:2], "h36m17", "skipose17"), atol=1e-6)
    swapped_2d = load_skipose(tmp_path, "test", swap_legs_2d=True)
    np.testing.assert_allclose(swapped_2d.keypoints2d[..., :2], convert_joints(uv01 * 256, "skipose17", "h36m17"), atol=1e-4)


def test_skipose_errors(tmp_path):
    with pytest.raises(InputError, match="labels.h5 do not exist"):
        load_skipose(tmp_path, "train")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "labels.h5").write_bytes(b"garbage, not HDF5")
    with pytest.raises(InputError, match="labels.h5 are unreadable"):
        load_skipose(tmp_path, "train")
    with h5py.File(tmp_path / "train" / "labels.h5", "w") as f:
        f["seq"] = np.zeros(2)
        f["3D"] = np.zeros((2, 17, 3))
    with pytest.raises(InputError, match=r"lack datasets \['cam', 'frame', 'subj', '2D'\]"):
        load_skipose(tmp_path, "train")
    with pytest.raises(Exception, match="split 'val'"):
        load_skipose(tmp_path, "val")


# ------------------------------------------------------------------------------------------ SMART


def smart_frame(name: str, seed: int, flags=None) -> dict:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(100, 300, size=(25, 2))
    flags = np.zeros(25) if flags is None else np.asarray(flags)
    joints = np.concatenate([xy, flags[:, None]], -1)
    return {"img_name": name, "joints": joints.tolist(), "bbox": [90, 90, 310, 310], "img_hw": [480, 640]}


def write_smart(path: Path) -> list:
    hidden = np.zeros(25)
    hidden[BODY25.index("left_knee")] = 1
    videos = [
        {"VideoName": "v1", "action_labels": "cgt", "frames": [smart_frame("v1/0.jpg", 0), smart_frame("v1/1.jpg", 1, hidden)]},
        {"VideoName": "v2", "action_labels": "tg", "frames": [{"img_name": "v2/0.jpg", "joints": [], "bbox": [], "img_hw": [480, 640]},
                                                               smart_frame("v2/1.jpg", 2)]},
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(videos))
    return videos


def test_smart_loader(tmp_path):
    videos = write_smart(tmp_path / "annotations" / "Table_VideoInfo_test.json")
    data = load_smart(tmp_path / "annotations" / "Table_VideoInfo_test.json")
    assert len(data) == 3 and data.joint_set == "body25"  # the frame without joints is skipped
    assert data.image_paths[0] == tmp_path / "images" / "v1" / "0.jpg"
    np.testing.assert_allclose(data.keypoints2d[1, :, :2], np.asarray(videos[0]["frames"][1]["joints"])[:, :2])
    vis = data.keypoints2d[..., 2]
    assert vis[1, BODY25.index("left_knee")] == 0 and vis[1].sum() == 24 and vis[0].sum() == 25  # flag 0 = visible
    assert list(data.extra["video"]) == ["v1", "v1", "v2"]
    np.testing.assert_allclose(data.extra["bbox"][0], [90, 90, 310, 310])
    assert np.all(data.box_size >= 1.2 * 150)  # around the visible keypoints, expanded
    only = load_smart(tmp_path / "annotations", actions=["tg"])  # a folder of JSON files works too
    assert len(only) == 1 and only.extra["action"][0] == "tg"
    spin = data.keypoints_in("spin24")
    assert spin.shape == (3, 24, 3) and spin[0, SPIN24.index("lsp_neck"), 2] == 0


def test_smart_errors(tmp_path):
    with pytest.raises(InputError, match="do not exist"):
        load_smart(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(InputError, match="bad.json are not valid JSON"):
        load_smart(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text(json.dumps([{"VideoName": "v", "frames": [{"img_name": "a", "joints": [[0, 0, 0]] * 17}]}]))
    with pytest.raises(InputError, match=r"short.json.*\(17, 3\).*BODY_25"):
        load_smart(tmp_path / "short.json")
    (tmp_path / "dict.json").write_text(json.dumps({"frames": []}))
    with pytest.raises(InputError, match="must be a JSON list"):
        load_smart(tmp_path / "dict.json")
