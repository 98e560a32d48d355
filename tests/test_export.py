"""Exports every HMR trainer reads (spin-npz, bedlam-npz, 4dhumans-wds, coco-json).

Each format is read back by a reader written here from the trainer's own field definitions (SPIN
``datasets/base_dataset.py``, CameraHMR ``core/datasets/dataset_train.py``, BEDLAM
``train/dataset/dataset_smpl.py``, 4D-Humans ``hmr2/datasets/image_dataset.py``), and checked for what
a trainer relies on: the 3D joints reprojected with the exported camera land on the exported 2D
keypoints (<= 0.5 px), and the SMPL forward of the exported parameters (the synthetic model file,
through smplx as the trainers run it) reproduces the exported 3D joints (<= 1 mm).
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from diffusion_hpc.body.joint_sets import BODY25, COCO17, H36M17, SMPL24
from diffusion_hpc.config import ExportConfig, build
from diffusion_hpc.data.benchmarks import SPIN24, load_spin_npz
from diffusion_hpc.errors import ConfigError, InputError

# ---------------------------------------------------------------- the trainers' published layouts

#: CameraHMR core/constants.py JOINT_NAMES[:44] (= 4D-Humans' keypoint order): OpenPose 25, then 19.
HMR44_NAMES = (
    "OP Nose", "OP Neck", "OP RShoulder", "OP RElbow", "OP RWrist", "OP LShoulder", "OP LElbow", "OP LWrist",
    "OP MidHip", "OP RHip", "OP RKnee", "OP RAnkle", "OP LHip", "OP LKnee", "OP LAnkle", "OP REye", "OP LEye",
    "OP REar", "OP LEar", "OP LBigToe", "OP LSmallToe", "OP LHeel", "OP RBigToe", "OP RSmallToe", "OP RHeel",
    "Right Ankle", "Right Knee", "Right Hip", "Left Hip", "Left Knee", "Left Ankle", "Right Wrist", "Right Elbow",
    "Right Shoulder", "Left Shoulder", "Left Elbow", "Left Wrist", "Neck (LSP)", "Top of Head (LSP)",
    "Pelvis (MPII)", "Thorax (MPII)", "Spine (H36M)", "Jaw (H36M)", "Head (H36M)",
)  # fmt: skip
#: 4D-Humans hmr2/models/smpl_wrapper.py: OpenPose joint i is smplx's SMPL output joint SMPL_TO_OPENPOSE[i]
#: (24 kinematic joints, then nose, right eye, left eye, right ear, left ear, feet).
SMPL_TO_OPENPOSE = [24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34]
#: The 19 SPIN joints as an SMPL skeleton gives them (the kinematic joint, or -1 for the head-top
#: vertex 411; None: no SMPL counterpart). 4D-Humans regresses these with its SMPL_to_J19 file.
SMPL_FOR_SPIN19 = [8, 5, 2, 1, 4, 7, 21, 19, 17, 16, 18, 20, 12, -1, 0, None, 6, 15, -1]
HEAD_TOP_VERTEX = 411


def smpl_joints44(model_path, pose: np.ndarray, betas: np.ndarray, transl: np.ndarray) -> np.ndarray:
    """(N, 44, 3) the 44 keypoints of SMPL bodies, from smplx's SMPL as the trainers run it; NaN where
    the SMPL skeleton has no counterpart (the MPII thorax)."""
    import torch

    from diffusion_hpc.body import get_body_model

    smpl = get_body_model("smpl", model_path=model_path).model
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
    with torch.no_grad():
        out = smpl(global_orient=t(pose[:, :3]), body_pose=t(pose[:, 3:72]), betas=t(betas), transl=t(transl))
    joints, vertices = out.joints.double().numpy(), out.vertices.double().numpy()
    extra = np.full((len(pose), 19, 3), np.nan)
    for j, source in enumerate(SMPL_FOR_SPIN19):
        if source is not None:
            extra[:, j] = vertices[:, HEAD_TOP_VERTEX] if source < 0 else joints[:, source]
    return np.concatenate([joints[:, SMPL_TO_OPENPOSE], extra], axis=1)


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    uvw = points @ np.asarray(K).T
    return uvw[..., :2] / uvw[..., 2:]


def assert_reprojects(joints3d: np.ndarray, keypoints2d: np.ndarray, K: np.ndarray, min_count: int = 8) -> None:
    """3D joints (J, 3) projected with K land within 0.5 px of every confident 2D keypoint (J, 3)."""
    seen = keypoints2d[:, 2] > 0
    assert seen.sum() >= min_count
    err = np.linalg.norm(project(joints3d[seen], K) - keypoints2d[seen, :2], axis=-1)
    assert err.max() <= 0.5, err.max()


def read_spin_npz(path: Path) -> dict:
    """SPIN's BaseDataset fields (datasets/base_dataset.py): imgname, center, scale, part, S, pose,
    shape, has_smpl (0 when pose is absent)."""
    with np.load(path, allow_pickle=False) as data:
        n = len(data["imgname"])
        out = {k: data[k] for k in ("imgname", "center", "scale", "part", "S", "openpose")}
        out["pose"] = data["pose"] if "pose" in data else np.zeros((n, 72))
        out["shape"] = data["shape"] if "shape" in data else np.zeros((n, 10))
        out["has_smpl"] = data["has_smpl"] if "pose" in data else np.zeros(n)
        out["K"], out["files"] = data["K"], set(data.files)
    assert out["part"].shape == (n, 24, 3) and out["S"].shape == (n, 24, 4) and out["pose"].shape == (n, 72)
    assert out["center"].shape == (n, 2) and out["scale"].shape == (n,)
    return out


def read_bedlam_npz(path: Path) -> dict:
    """CameraHMR's DatasetTrain (core/datasets/dataset_train.py) and BEDLAM's dataset_smpl.py fields."""
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    n = len(out["imgname"])
    pose = out["pose_cam"][:, :72]
    assert out["cam_int"].shape == (n, 3, 3) and out["cam_ext"].shape == (n, 4, 4)
    assert out["gtkps"][:, :44].shape == (n, 44, 3) and out["shape"][:, :10].shape == (n, 10)
    translation = out["cam_ext"][:, :, 3].copy()
    translation[:, :3] += out["trans_cam"]  # item['translation'] = cam_ext[:, 3]; [:3] += trans_cam
    out.update(pose72=pose, translation=translation[:, :3], keypoints=out["gtkps"][:, :44])
    assert "betas" in out  # dataset_smpl.py reads 'shape' only when 'betas' exists
    out["spin49"] = np.concatenate([out["openpose"], out["part"]], axis=1)  # dataset_smpl.py's keypoints
    return out


class NumpyArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and ``numpy.ndarray``; every other global is refused."""

    def find_class(self, module, name):
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def numpy_only_loads(data: bytes):
    return NumpyArraysOnly(io.BytesIO(data)).load()


def read_4dhumans(url: str, monkeypatch) -> list[dict]:
    """4D-Humans' load_tars_as_webdataset: expand the URL, decode rgb8, rename jpg='jpg;jpeg;png',
    split each image's data.pyd list into items (mask from detection.npz). data.pyd goes through
    :class:`NumpyArraysOnly`; pickle.loads is made to fail, so nothing else unpickles."""
    import braceexpand
    import webdataset as wds

    def refuse(*_a, **_k):
        raise AssertionError("pickle.loads was called")

    monkeypatch.setattr(pickle, "loads", refuse)
    urls = list(braceexpand.braceexpand(url))
    dataset = (wds.WebDataset(urls, shardshuffle=False)
               .decode(wds.handle_extension("pyd", numpy_only_loads), "rgb8").rename(jpg="jpg;jpeg;png"))
    items = []
    for item in dataset:
        for data in item["data.pyd"]:
            det = data["extra_info"]["detection_npz_idx"]
            items.append({"__key__": item["__key__"], "jpg": item["jpg"], "data.pyd": data,
                          "mask": item["detection.npz"]["masks"][det]})
    return items


# ---------------------------------------------------------------- datasets


def one_person(sample: dict) -> dict:
    """A one-person sample as one flat dict (its person's fields at the top, as schema 1 read): the
    form the tests below compare exports with and build labelled variants from."""
    from diffusion_hpc.data.schema import persons_of

    (person,) = persons_of(sample)
    return {k: v for k, v in person.items() if k != "person"}


@pytest.fixture(scope="module")
def anny_dataset(tmp_path_factory):
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.pipeline.generate import generate

    out = tmp_path_factory.mktemp("export") / "anny"
    generate(GenerateConfig(n=3, image_size=(64, 64), batch_size=3), out=out, progress=False)
    return out, [one_person(s) for s in open_dataset(out)]


@pytest.fixture(scope="module")
def smpl_dataset(tmp_path_factory, fake_smpl):
    """A native SMPL dataset, made with the synthetic SMPL file and a small SMPL pose file."""
    from conftest import generate_smpl_dataset

    from diffusion_hpc.data import open_dataset

    out = generate_smpl_dataset(tmp_path_factory.mktemp("export_smpl") / "d", fake_smpl, poses=4, seed=0, n=3)
    return out, [one_person(s) for s in open_dataset(out)]


def smpl_label(fake_smpl, pelvis: np.ndarray, seed: int, flagged: bool = False) -> dict:
    """A converted SMPL label (the conversion's contract) for a body whose root is near ``pelvis``."""
    import torch

    from diffusion_hpc.body import get_body_model

    rng = np.random.default_rng(seed)
    params = {"global_orient": np.array([np.pi, 0, 0]) + 0.1 * rng.normal(size=3), "body_pose": 0.2 * rng.normal(size=69),
              "betas": rng.normal(size=10), "transl": np.asarray(pelvis, np.float64)}  # fmt: skip
    out = get_body_model("smpl", model_path=fake_smpl)(
        {k: torch.as_tensor(v, dtype=torch.float32)[None].reshape((1, 23, 3) if k == "body_pose" else (1, -1))
         for k, v in params.items()})
    joints = {k: v[0].double().numpy() for k, v in out.joints.items()}
    return {"body_model": "smpl", "params": params, "joints3d": joints,
            "fit": {"surface_mm": 30.0 if flagged else 4.0, "joints_mm": 8.0, "flagged": flagged}}


def labelled(samples, fake_smpl) -> list[dict]:
    """The Anny samples with converted SMPL labels: sample 0 good, sample 1 flagged, sample 2 none."""
    out = []
    for i, s in enumerate(samples):
        pelvis = s["joints3d"]["h36m17"][0]
        labels = {} if i == 2 else {"smpl": smpl_label(fake_smpl, pelvis, seed=i, flagged=i == 1)}
        out.append({**s, "labels": labels})
    return out


# ---------------------------------------------------------------- spin-npz / coco-json


def test_spin_npz_anny(anny_dataset, tmp_path):
    import cv2

    from diffusion_hpc.data.export import export_dataset

    path, samples = anny_dataset
    result = export_dataset(ExportConfig(dataset=path, format="spin-npz", out=tmp_path / "out" / "train.npz"))
    assert result.count == len(samples) == 3 and result.images == tmp_path / "out" / "images"
    data = load_spin_npz(result.path)  # our benchmark reader reads it too
    spin = read_spin_npz(result.path)
    assert {"anny_global_orient", "anny_body_pose", "anny_phenotype", "anny_transl", "crop_cam"} <= spin["files"]
    assert "pose" not in spin["files"] and np.all(spin["has_smpl"] == 0)  # Anny is not SMPL
    for i, sample in enumerate(samples):
        image = cv2.imread(str(result.path.parent / spin["imgname"][i]))[..., ::-1]
        np.testing.assert_array_equal(image, sample["image"])
        ys, xs = np.nonzero(sample["mask"])  # every mask pixel lies inside the box
        half = spin["scale"][i] * 200 / 2
        assert np.all(np.abs(xs - spin["center"][i, 0]) <= half) and np.all(np.abs(ys - spin["center"][i, 1]) <= half)
        for name in ("pelvis", "right_knee", "left_wrist", "head_top"):
            np.testing.assert_allclose(spin["S"][i, SPIN24.index(name), :3], sample["joints3d"]["h36m17"][H36M17.index(name)])
        np.testing.assert_allclose(spin["S"][i, SPIN24.index("nose"), :3], sample["joints3d"]["coco17"][0])
        assert spin["S"][i, SPIN24.index("mpii_thorax"), 3] == 0
        assert_reprojects(spin["S"][i, :, :3], spin["part"][i], spin["K"][i])
        # OpenPose keypoints: the same joints where the names agree; no toes or heels.
        for name in ("right_knee", "left_wrist", "nose"):
            np.testing.assert_allclose(spin["openpose"][i, BODY25.index(name)], spin["part"][i, SPIN24.index(name)])
        assert spin["openpose"][i, 19:, 2].sum() == 0 and spin["openpose"][i, BODY25.index("neck"), 2] == 1
        # The face joints are the dataset's COCO keypoints (same visibility rule: 0 outside the image).
        for name in ("nose", "left_eye", "right_ear"):
            kp = sample["keypoints2d"][COCO17.index(name)]
            np.testing.assert_allclose(spin["part"][i, SPIN24.index(name), :2], kp[:2], atol=1e-3)
            assert spin["part"][i, SPIN24.index(name), 2] == float(kp[2] > 0)
        # SPIN crop camera: the pelvis projects to the same crop pixel with focal 5000 at 224 px.
        cam_t = data.extra["crop_cam_t"][i]
        pelvis_uv = project(spin["S"][i, SPIN24.index("pelvis"), :3], spin["K"][i])
        side = spin["scale"][i] * 200
        np.testing.assert_allclose(5000 * cam_t[:2] / cam_t[2] + 112, (pelvis_uv - spin["center"][i]) * 224 / side + 112,
                                   atol=1e-6)


def test_coco_json(anny_dataset, tmp_path):
    from diffusion_hpc.data.export import export_dataset

    path, samples = anny_dataset
    result = export_dataset(ExportConfig(dataset=path, format="coco-json", out=tmp_path / "coco" / "train.json"))
    doc = json.loads(result.path.read_text())
    assert doc["categories"][0]["keypoints"] == list(COCO17)
    assert len(doc["images"]) == len(doc["annotations"]) == 3
    for image, ann, sample in zip(doc["images"], doc["annotations"], samples):
        assert (result.path.parent / image["file_name"]).is_file() and ann["image_id"] == image["id"]
        assert (image["height"], image["width"]) == sample["image"].shape[:2]
        np.testing.assert_allclose(np.reshape(ann["keypoints"], (17, 3)), sample["keypoints2d"])
        assert ann["num_keypoints"] == int((sample["keypoints2d"][:, 2] > 0).sum())
        assert ann["area"] == int(sample["mask"].sum())
        ys, xs = np.nonzero(sample["mask"])
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert sum(ann["segmentation"]["counts"][1::2]) == ann["area"]
        np.testing.assert_allclose(ann["K"], sample["K"])
        np.testing.assert_allclose(ann["joints3d"]["h36m17"], sample["joints3d"]["h36m17"])
        assert set(ann["params"]) == set(sample["params"]) and ann["body_model"] == "anny" and ann["smpl"] is None


def test_export_errors(anny_dataset, tmp_path):
    from diffusion_hpc.data.export import export_dataset, export_spin_npz

    path, samples = anny_dataset
    with pytest.raises(ConfigError, match="format: Input should be 'spin-npz', 'coco-json', 'bedlam-npz' or "
                                          "'4dhumans-wds'.*'tfrecord'"):
        build(ExportConfig, {"dataset": path, "format": "tfrecord", "out": tmp_path / "x.npz"})
    with pytest.raises(ConfigError, match=r"must end with \.npz for format spin-npz, e\.g\. .*x\.npz"):
        build(ExportConfig, {"dataset": path, "format": "spin-npz", "out": tmp_path / "x.json"})
    with pytest.raises(ConfigError, match=r"must end with \.tar for format 4dhumans-wds"):
        build(ExportConfig, {"dataset": path, "format": "4dhumans-wds", "out": tmp_path / "x.npz"})
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        export_dataset(ExportConfig(dataset=path, format="spin-npz", out=tmp_path / "dir.npz"))
    with pytest.raises(InputError, match="not a Diffusion-HPC dataset"):
        export_dataset(ExportConfig(dataset=tmp_path, format="coco-json", out=tmp_path / "x.json"))
    # BEDLAM readers have no "no label" flag: an Anny dataset without SMPL labels cannot be written.
    with pytest.raises(InputError, match=r"none of the dataset's 3 persons has a usable SMPL label.*dhpc convert"):
        export_dataset(ExportConfig(dataset=path, format="bedlam-npz", out=tmp_path / "b" / "train.npz"))
    assert not (tmp_path / "b" / "train.npz").exists()
    bad = {**samples[0], "body_model": "smpl",
           "params": {"global_orient": np.zeros(3), "body_pose": np.zeros((21, 3)), "betas": np.zeros(10)}}
    with pytest.raises(InputError, match=r"sample \S+: SMPL pose has 66 values, expected 72"):
        export_spin_npz([bad], tmp_path / "bad.npz")


def test_cli_export_exit_codes(anny_dataset, tmp_path, capsys):
    from diffusion_hpc.cli import main

    path, _ = anny_dataset
    assert main(["export", str(path), "--format", "4dhumans-wds", "--out", str(tmp_path / "w" / "train.tar")]) == 0
    assert "3 person rows" in capsys.readouterr().out and (tmp_path / "w" / "train-000000.tar").is_file()
    assert main(["export", str(path), "--format", "bedlam-npz", "--out", str(tmp_path / "b.npz")]) == 2
    assert "dhpc convert" in capsys.readouterr().err


# ---------------------------------------------------------------- native SMPL dataset, every format


def test_native_smpl_every_format(smpl_dataset, fake_smpl, tmp_path, monkeypatch):
    from diffusion_hpc.data.export import export_dataset

    path, samples = smpl_dataset
    params = [s["params"] for s in samples]
    pose = np.stack([np.concatenate([p["global_orient"], p["body_pose"].ravel()]) for p in params]).astype(np.float64)
    betas = np.stack([p["betas"] for p in params]).astype(np.float64)
    transl = np.stack([p["transl"] for p in params]).astype(np.float64)

    spin = read_spin_npz(export_dataset(ExportConfig(dataset=path, format="spin-npz", out=tmp_path / "s.npz")).path)
    np.testing.assert_allclose(spin["pose"], pose, atol=1e-6)
    np.testing.assert_allclose(spin["shape"], betas, atol=1e-6)
    assert np.all(spin["has_smpl"] == 1)
    ours44 = smpl_joints44(fake_smpl, spin["pose"], spin["shape"], transl)
    for i in range(len(samples)):
        # SPIN's S: the forward's joints at the 19 SPIN slots (<= 1 mm), and part = S reprojected.
        known = spin["S"][i, :19, 3] > 0
        np.testing.assert_allclose(spin["S"][i, :19][known, :3], ours44[i, 25:][known], atol=1e-3)
        assert_reprojects(spin["S"][i, :, :3], spin["part"][i], spin["K"][i])

    result = export_dataset(ExportConfig(dataset=path, format="bedlam-npz", out=tmp_path / "b" / "train.npz"))
    assert result.count == 3 and result.skipped == 0
    bedlam = read_bedlam_npz(result.path)
    np.testing.assert_allclose(bedlam["pose72"], pose, atol=1e-6)
    np.testing.assert_allclose(bedlam["translation"], transl, atol=1e-6)
    np.testing.assert_array_equal(bedlam["cam_ext"], np.broadcast_to(np.eye(4), (3, 4, 4)))
    assert list(bedlam["gender"]) == ["neutral"] * 3 and bedlam["pose_cam"].shape == (3, 72)
    # The trainer's SMPL forward with the exported translation, projected with cam_int, is gtkps.
    joints44 = smpl_joints44(fake_smpl, bedlam["pose72"], bedlam["shape"][:, :10], bedlam["translation"])
    for i, sample in enumerate(samples):
        assert_reprojects(joints44[i], bedlam["keypoints"][i], bedlam["cam_int"][i])
        assert bedlam["keypoints"][i, 19:25, 2].sum() == 0  # OpenPose toes / heels: no joint of ours
        np.testing.assert_allclose(bedlam["spin49"][i, 25:], spin["part"][i])
        assert (tmp_path / "b" / bedlam["imgname"][i]).is_file()
        np.testing.assert_allclose(bedlam["scale"][i], spin["scale"][i])

    result = export_dataset(ExportConfig(dataset=path, format="4dhumans-wds", out=tmp_path / "w" / "train.tar"))
    items = read_4dhumans(str(result.path), monkeypatch)
    assert [it["__key__"] for it in items] == [s["key"] for s in samples]
    for it, sample in zip(items, samples):
        data = it["data.pyd"]
        np.testing.assert_array_equal(it["jpg"], sample["image"])
        np.testing.assert_array_equal(it["mask"], sample["mask"])
        assert data["has_body_pose"] == 1 and data["has_betas"] == 1 and data["scale"].shape == (2,)
        joints = smpl_joints44(fake_smpl, data["body_pose"][None], data["betas"][None], data["extra_info"]["smpl_transl"][None])[0]
        known = np.isfinite(joints[:, 0]) & np.r_[np.ones(19), np.zeros(6), np.ones(19)].astype(bool)
        np.testing.assert_allclose(data["keypoints_3d"][known, :3], joints[known], atol=1e-3)
        assert np.all(data["keypoints_3d"][1:15, 3] == 0) and data["keypoints_3d"][25:, 3].sum() == 18
        assert_reprojects(data["keypoints_3d"][:, :3], data["keypoints_2d"], data["extra_info"]["K"])


# ---------------------------------------------------------------- converted labels, multi-person


def test_converted_labels_every_format(anny_dataset, fake_smpl, tmp_path, monkeypatch):
    from diffusion_hpc.data.export import (
        export_4dhumans_wds,
        export_bedlam_npz,
        export_spin_npz,
    )

    _, samples = anny_dataset
    samples = labelled(samples, fake_smpl)
    good = samples[0]["labels"]["smpl"]
    pose = np.concatenate([good["params"]["global_orient"], good["params"]["body_pose"]])

    spin = read_spin_npz(export_spin_npz(samples, tmp_path / "s.npz").path)
    np.testing.assert_array_equal(spin["has_smpl"], [1, 0, 0])  # good, flagged fit, none
    np.testing.assert_allclose(spin["pose"][0], pose)
    np.testing.assert_allclose(spin["shape"][0], good["params"]["betas"])
    assert np.all(spin["pose"][1:] == 0)
    # A labelled row's keypoints are the SMPL label's joints; an unlabelled row's its own (Anny) joints.
    joints44 = smpl_joints44(fake_smpl, pose[None], good["params"]["betas"][None], good["params"]["transl"][None])[0]
    known = spin["S"][0, :19, 3] > 0
    np.testing.assert_allclose(spin["S"][0, :19][known, :3], joints44[25:][known], atol=1e-3)
    np.testing.assert_allclose(spin["S"][2, SPIN24.index("pelvis"), :3], samples[2]["joints3d"]["h36m17"][0])
    for i in range(3):
        assert_reprojects(spin["S"][i, :, :3], spin["part"][i], spin["K"][i])

    result = export_bedlam_npz(samples, tmp_path / "b" / "train.npz")
    assert (result.count, result.skipped) == (1, 2)
    bedlam = read_bedlam_npz(result.path)
    assert list(bedlam["key"]) == [samples[0]["key"]]
    assert sorted(p.name for p in result.images.iterdir()) == [f"{samples[0]['key']}.png"]  # only rows' images
    np.testing.assert_allclose(bedlam["pose72"][0], pose)
    joints = smpl_joints44(fake_smpl, bedlam["pose72"], bedlam["shape"], bedlam["translation"])[0]
    assert_reprojects(joints, bedlam["keypoints"][0], bedlam["cam_int"][0])

    result = export_4dhumans_wds(samples, tmp_path / "w" / "train.tar", shard_size=2)
    assert result.path == tmp_path / "w" / "train-{000000..000001}.tar" and len(result.files) == 2
    items = read_4dhumans(str(result.path), monkeypatch)
    assert [float(it["data.pyd"]["has_body_pose"]) for it in items] == [1.0, 0.0, 0.0]
    assert [float(it["data.pyd"]["has_betas"]) for it in items] == [1.0, 0.0, 0.0]
    np.testing.assert_allclose(items[0]["data.pyd"]["body_pose"], pose, atol=1e-6)
    for it in items:
        data = it["data.pyd"]
        assert_reprojects(data["keypoints_3d"][:, :3], data["keypoints_2d"], data["extra_info"]["K"])


def test_smplx_label_in_bedlam_layout(anny_dataset, tmp_path):
    """SMPL-X labels: pose_cam has BEDLAM's 165 values (body 66, then jaw, eyes and hands at 0)."""
    from diffusion_hpc.data.export import export_bedlam_npz

    _, samples = anny_dataset
    rng = np.random.default_rng(3)
    s = samples[0]
    params = {"global_orient": rng.normal(size=3), "body_pose": rng.normal(size=63), "betas": rng.normal(size=10),
              "transl": s["joints3d"]["h36m17"][0]}  # fmt: skip
    label = {"body_model": "smplx", "params": params, "joints3d": {k: s["joints3d"][k] for k in ("coco17", "h36m17")},
             "fit": {"surface_mm": 3.0, "joints_mm": 5.0, "flagged": False}}
    data = read_bedlam_npz(export_bedlam_npz([{**s, "labels": {"smplx": label}}], tmp_path / "x.npz",
                                             label_model="smplx").path)
    assert data["pose_cam"].shape == (1, 165)
    np.testing.assert_allclose(data["pose_cam"][0, :66], np.concatenate([params["global_orient"], params["body_pose"]]))
    assert np.all(data["pose_cam"][0, 66:] == 0)
    nose = data["gtkps"][0, 0]
    np.testing.assert_allclose(nose[:2], project(label["joints3d"]["coco17"][0], s["K"]))
    with pytest.raises(InputError, match="none of the dataset's 1 persons has a usable SMPL label"):
        export_bedlam_npz([{**s, "labels": {"smplx": label}}], tmp_path / "y.npz", label_model="smpl")


def test_multi_person_samples_export_one_row_per_person(anny_dataset, fake_smpl, tmp_path, monkeypatch):
    """A sample with ``persons`` gives one row per person sharing the image, in every format."""
    from diffusion_hpc.data.export import (
        export_4dhumans_wds,
        export_coco_json,
        export_spin_npz,
    )

    _, samples = anny_dataset
    first, second = labelled(samples, fake_smpl)[0], samples[1]
    fields = ("mask", "keypoints2d", "joints3d", "body_model", "params")
    persons = [{**{k: first[k] for k in fields}, "labels": first["labels"]}, {**{k: second[k] for k in fields}, "labels": {}}]
    scene = {**{k: v for k, v in first.items() if k not in fields + ("labels",)}, "persons": persons}

    spin = read_spin_npz(export_spin_npz([scene], tmp_path / "s.npz").path)
    assert len(spin["imgname"]) == 2 and spin["imgname"][0] == spin["imgname"][1]
    np.testing.assert_array_equal(spin["has_smpl"], [1, 0])
    np.testing.assert_allclose(spin["S"][1, SPIN24.index("pelvis"), :3], second["joints3d"]["h36m17"][0])
    doc = json.loads(export_coco_json([scene], tmp_path / "c.json").path.read_text())
    assert len(doc["images"]) == 1 and [a["person"] for a in doc["annotations"]] == [0, 1]
    assert doc["annotations"][1]["area"] == int(second["mask"].sum())
    items = read_4dhumans(str(export_4dhumans_wds([scene], tmp_path / "w.tar").path), monkeypatch)
    assert len(items) == 2 and items[0]["__key__"] == items[1]["__key__"]
    np.testing.assert_array_equal(items[1]["mask"], second["mask"])
    assert [float(it["data.pyd"]["has_body_pose"]) for it in items] == [1.0, 0.0]


@pytest.fixture(scope="module")
def smpl_scenes(tmp_path_factory, fake_smpl):
    """A native SMPL mode-D dataset of 2-3 people per image (the synthetic SMPL file, render baseline)."""
    from conftest import generate_smpl_dataset

    from diffusion_hpc.data import open_dataset

    out = generate_smpl_dataset(tmp_path_factory.mktemp("export_scenes") / "d", fake_smpl, poses=6, seed=1, n=3,
                                image_size=(96, 96), people="2-3")  # fmt: skip
    return out, list(open_dataset(out))


def test_multi_person_dataset_every_format_per_person(smpl_scenes, fake_smpl, tmp_path, monkeypatch):
    """Mode D with 2-3 people per image: every format writes one row per person, in order, with that
    person's box, parameters and keypoints: the SMPL forward of its exported parameters gives its
    exported 3D joints (<= 1 mm) and these project with the image's camera onto its 2D keypoints
    (<= 0.5 px)."""
    from diffusion_hpc.data.export import export_dataset

    path, samples = smpl_scenes
    people = [(s, p) for s in samples for p in s["persons"]]
    assert [len(s["persons"]) for s in samples] != [1] * len(samples) and len(people) >= 5
    pose = np.stack([np.concatenate([p["params"]["global_orient"], p["params"]["body_pose"].ravel()]) for _, p in people])
    betas = np.stack([p["params"]["betas"] for _, p in people]).astype(np.float64)
    transl = np.stack([p["params"]["transl"] for _, p in people]).astype(np.float64)
    forward44 = smpl_joints44(fake_smpl, pose.astype(np.float64), betas, transl)

    def box_holds_mask(center, side, mask):
        ys, xs = np.nonzero(mask)
        return np.all(np.abs(xs - center[0]) <= side / 2) and np.all(np.abs(ys - center[1]) <= side / 2)

    spin = read_spin_npz(export_dataset(ExportConfig(dataset=path, format="spin-npz", out=tmp_path / "s.npz")).path)
    assert len(spin["imgname"]) == len(people) and np.all(spin["has_smpl"] == 1)
    np.testing.assert_allclose(spin["pose"], pose, atol=1e-6)
    for i, (sample, person) in enumerate(people):
        assert spin["imgname"][i] == f"images/{sample['key']}.png"
        known = spin["S"][i, :19, 3] > 0
        np.testing.assert_allclose(spin["S"][i, :19][known, :3], forward44[i, 25:][known], atol=1e-3)
        assert_reprojects(spin["S"][i, :, :3], spin["part"][i], sample["K"], min_count=4)
        np.testing.assert_allclose(spin["K"][i], sample["K"])
        assert box_holds_mask(spin["center"][i], spin["scale"][i] * 200, person["mask"])

    result = export_dataset(ExportConfig(dataset=path, format="bedlam-npz", out=tmp_path / "b" / "train.npz"))
    assert (result.count, result.skipped) == (len(people), 0)
    bedlam = read_bedlam_npz(result.path)
    np.testing.assert_allclose(bedlam["pose72"], pose, atol=1e-6)
    np.testing.assert_allclose(bedlam["translation"], transl, atol=1e-6)
    joints44 = smpl_joints44(fake_smpl, bedlam["pose72"], bedlam["shape"][:, :10], bedlam["translation"])
    for i, (sample, _) in enumerate(people):
        assert_reprojects(joints44[i], bedlam["keypoints"][i], bedlam["cam_int"][i], min_count=4)
        assert bedlam["imgname"][i] == f"images/{sample['key']}.png"

    items = read_4dhumans(str(export_dataset(ExportConfig(dataset=path, format="4dhumans-wds",
                                                          out=tmp_path / "w" / "train.tar")).path), monkeypatch)
    assert [it["__key__"] for it in items] == [s["key"] for s, _ in people]
    for i, (it, (sample, person)) in enumerate(zip(items, people)):
        data = it["data.pyd"]
        np.testing.assert_array_equal(it["mask"], person["mask"])  # each row its own person's mask
        np.testing.assert_allclose(data["body_pose"], pose[i], atol=1e-6)
        known = np.isfinite(forward44[i, :, 0]) & np.r_[np.ones(19), np.zeros(6), np.ones(19)].astype(bool)
        np.testing.assert_allclose(data["keypoints_3d"][known, :3], forward44[i][known], atol=1e-3)
        assert_reprojects(data["keypoints_3d"][:, :3], data["keypoints_2d"], sample["K"], min_count=4)
        assert box_holds_mask(data["center"], float(data["scale"][0]) * 200, person["mask"])

    doc = json.loads(export_dataset(ExportConfig(dataset=path, format="coco-json", out=tmp_path / "c.json")).path.read_text())
    assert len(doc["images"]) == len(samples) and len(doc["annotations"]) == len(people)
    for ann, (sample, person) in zip(doc["annotations"], people):
        np.testing.assert_allclose(np.reshape(ann["keypoints"], (17, 3)), person["keypoints2d"])
        assert ann["area"] == int(person["mask"].sum())
        np.testing.assert_allclose(ann["joints3d"]["smpl24"], person["joints3d"]["smpl24"])
    assert [a["person"] for a in doc["annotations"]] == [i for s in samples for i in range(len(s["persons"]))]


def test_4dhumans_pickle_holds_only_numpy_arrays(anny_dataset):
    """The data.pyd member loads with an unpickler that allows numpy.ndarray and nothing else, and the
    arrays are writable float32 (the reader edits them); a standard NumPy pickle is refused by it."""
    from diffusion_hpc.data.export_4dhumans import sample_members
    from diffusion_hpc.data.export_persons import rows_of

    _, samples = anny_dataset
    s = samples[0]
    (item,) = rows_of([s], 1.2, threads=1)
    members = sample_members(item)
    assert sorted(members) == sorted(f"{s['key']}.{ext}" for ext in ("png", "detection.npz", "data.pyd"))
    (data,) = numpy_only_loads(members[f"{s['key']}.data.pyd"])
    assert set(data) == {"center", "scale", "keypoints_2d", "keypoints_3d", "body_pose", "betas", "has_body_pose",
                         "has_betas", "extra_info"}
    assert data["keypoints_2d"].shape == (44, 3) and data["keypoints_3d"].shape == (44, 4)
    assert data["keypoints_2d"].dtype == np.float32 and data["keypoints_2d"].flags.writeable
    assert data["has_body_pose"].shape == () and float(data["has_body_pose"]) == 0.0
    assert len(HMR44_NAMES) == 44
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        numpy_only_loads(pickle.dumps(np.zeros(3)))


def test_hmr44_order_matches_the_published_names():
    """Our 44-joint order names the same joints as CameraHMR's / 4D-Humans' JOINT_NAMES."""
    from diffusion_hpc.data.export_persons import HMR44

    theirs = [n.removeprefix("OP ").lower() for n in HMR44_NAMES]
    same = {"lbigtoe": "left_big_toe", "lsmalltoe": "left_small_toe", "lheel": "left_heel", "rbigtoe": "right_big_toe",
            "rsmalltoe": "right_small_toe", "rheel": "right_heel", "midhip": "mid_hip", "neck (lsp)": "lsp_neck",
            "top of head (lsp)": "head_top", "pelvis (mpii)": "pelvis", "thorax (mpii)": "mpii_thorax",
            "spine (h36m)": "spine", "jaw (h36m)": "jaw", "head (h36m)": "h36m_head"}  # fmt: skip
    for side, full in (("r", "right_"), ("l", "left_")):
        for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle", "eye", "ear"):
            same[side + part] = full + part
    names = [same.get(n, n.replace(" ", "_")) for n in theirs]
    assert tuple(names) == HMR44
    assert [SMPL24[i] for i in SMPL_TO_OPENPOSE[1:15]] == [
        "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist", "pelvis",
        "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle"]  # fmt: skip
