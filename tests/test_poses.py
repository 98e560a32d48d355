"""Pose files, the packaged CMU pose set, the BVH parser and retargeting to Anny."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from diffusion_hpc.errors import InputError
from diffusion_hpc.poses import PoseSet, builtin_poses, import_bvh, load_pose_file, save_pose_file
from diffusion_hpc.poses.bvh import end_site_positions, forward_kinematics, load_bvh, parse_bvh
from diffusion_hpc.poses.retarget import (
    ANNY_BONES,
    ANNY_PARENTS,
    ANNY_REST_HEADS,
    anny_joint_positions,
    direction_errors,
    retarget_bvh,
)

TINY_BVH = """\
HIERARCHY
ROOT root
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT a
  {
    OFFSET 0 1 0
    CHANNELS 3 Xrotation Zrotation Yrotation
    JOINT b
    {
      OFFSET 0 1 0
      CHANNELS 3 Zrotation Yrotation Xrotation
      End Site
      {
        OFFSET 1 0 0
      }
    }
  }
}
MOTION
Frames: 3
Frame Time: 0.0333333
0 0 0 0 0 0 0 0 0 0 0 0
1 2 3 90 0 0 90 0 0 0 0 0
0 0 0 -720 0 0 30 40 50 0 0 0
"""


def _angle(u, v):
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip((u * v).sum(-1), -1, 1)))


# ---------------------------------------------------------------- BVH parser / FK


def test_parse_tiny_bvh_and_fk(tmp_path):
    path = tmp_path / "tiny.bvh"
    path.write_text(TINY_BVH)
    m = load_bvh(path)
    assert m.joint_names == ["root", "a", "b"]
    assert m.parents.tolist() == [-1, 0, 1]
    assert m.channels[1] == ("Xrotation", "Zrotation", "Yrotation")
    assert m.channel_start.tolist() == [0, 6, 9]
    assert m.frames.shape == (3, 12) and m.num_frames == 3
    assert m.frame_time == pytest.approx(0.0333333)
    assert m.end_site_parents.tolist() == [2] and np.allclose(m.end_site_offsets, [[1, 0, 0]])
    assert m.column("a", "zrotation") == 7

    rot, pos = forward_kinematics(m)
    ends = end_site_positions(m, rot, pos)
    # frame 0: rest pose, a straight chain up Y
    assert np.allclose(pos[0], [[0, 0, 0], [0, 1, 0], [0, 2, 0]])
    assert np.allclose(ends[0, 0], [1, 2, 0])
    # frame 1: root at (1,2,3) turned 90 deg about Z ((0,1,0) -> (-1,0,0)); a turned 90 deg about X
    # ((0,1,0) -> (0,0,1)), so b sits one unit along +Z from a; the end site (1,0,0) -> (0,1,0) under Rz.
    assert np.allclose(pos[1], [[1, 2, 3], [0, 2, 3], [0, 2, 4]], atol=1e-9)
    assert np.allclose(ends[1, 0], [0, 3, 4], atol=1e-9)
    # frame 2: unwrapped root angle (-720 = 0) and the listed order X, Z, Y for joint a
    from scipy.spatial.transform import Rotation

    expected = Rotation.from_euler("XZY", [30, 40, 50], degrees=True).as_matrix()
    assert np.allclose(rot[2, 0], np.eye(3), atol=1e-9)
    assert np.allclose(rot[2, 1], expected, atol=1e-9)
    assert np.allclose(pos[2, 2], [0, 1, 0] + expected @ [0, 1, 0], atol=1e-9)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda t: t.replace("HIERARCHY", "HIERARCHI"), "line 1"),
        (lambda t: t.replace("Zrotation Yrotation Xrotation\n      End", "Zrotation Yrotation Qrotation\n      End"), "line 13"),
        (lambda t: t.replace("OFFSET 0 1 0\n    CHANNELS", "OFFSET 0 one 0\n    CHANNELS"), "line 8"),
        (lambda t: t.replace("1 2 3 90 0 0 90 0 0 0 0 0", "1 2 3 90 0 0 90 0 0 0 0"), "line 25"),
        (lambda t: t.replace("1 2 3 90", "1 2 x 90"), "line 25"),
        (lambda t: t.replace("Frames: 3", "Frames: 4"), "4"),
        (lambda t: t.split("MOTION")[0].rstrip()[:-1], "end of file"),
    ],
)
def test_malformed_bvh_names_file_and_line(tmp_path, mutate, fragment):
    path = tmp_path / "broken.bvh"
    path.write_text(mutate(TINY_BVH))
    with pytest.raises(InputError) as info:
        load_bvh(path)
    message = str(info.value)
    assert "broken.bvh" in message and fragment in message


def test_missing_bvh(tmp_path):
    with pytest.raises(InputError, match="nothere.bvh"):
        load_bvh(tmp_path / "nothere.bvh")


# ---------------------------------------------------------------- synthetic CMU skeleton

# A CMU-like 31-joint skeleton (offsets of 01_09.bvh, legs made straight and vertical so that
# the knee angle is known exactly), as (name, parent, offset).
_CMU = [
    ("Hips", None, (0, 0, 0)), ("LHipJoint", "Hips", (0, 0, 0)), ("LeftUpLeg", "LHipJoint", (1.36, -1.79, 0.84)),
    ("LeftLeg", "LeftUpLeg", (0, -7.2, 0)), ("LeftFoot", "LeftLeg", (0, -7.4, 0)),
    ("LeftToeBase", "LeftFoot", (0.16, -0.43, 2.32)), ("RHipJoint", "Hips", (0, 0, 0)),
    ("RightUpLeg", "RHipJoint", (-1.31, -1.79, 0.84)), ("RightLeg", "RightUpLeg", (0, -7.2, 0)),
    ("RightFoot", "RightLeg", (0, -7.4, 0)), ("RightToeBase", "RightFoot", (-0.16, -0.45, 2.36)),
    ("LowerBack", "Hips", (0, 0, 0)), ("Spine", "LowerBack", (0.03, 2.04, -0.19)),
    ("Spine1", "Spine", (0.06, 2.05, -0.04)), ("Neck", "Spine1", (0, 0, 0)), ("Neck1", "Neck", (-0.05, 1.75, 0.17)),
    ("Head", "Neck1", (0.10, 1.76, -0.12)), ("LeftShoulder", "Spine1", (0, 0, 0)),
    ("LeftArm", "LeftShoulder", (3.36, 1.20, -0.31)), ("LeftForeArm", "LeftArm", (4.98, 0, 0)),
    ("LeftHand", "LeftForeArm", (3.48, 0, 0)), ("LeftFingerBase", "LeftHand", (0, 0, 0)),
    ("LeftHandIndex1", "LeftFingerBase", (0.72, 0, 0)), ("LThumb", "LeftHand", (0, 0, 0)),
    ("RightShoulder", "Spine1", (0, 0, 0)), ("RightArm", "RightShoulder", (-3.14, 1.37, -0.40)),
    ("RightForeArm", "RightArm", (-5.24, 0, 0)), ("RightHand", "RightForeArm", (-3.44, 0, 0)),
    ("RightFingerBase", "RightHand", (0, 0, 0)), ("RightHandIndex1", "RightFingerBase", (-0.62, 0, 0)),
    ("RThumb", "RightHand", (0, 0, 0)),
]  # fmt: skip
_END_SITES = {"LeftToeBase": (0, 0, 1.19), "RightToeBase": (0, 0, 1.21), "Head": (0.04, 1.77, -0.06),
              "LeftHandIndex1": (0.58, 0, 0), "LThumb": (0.59, 0, 0.59), "RightHandIndex1": (-0.5, 0, 0),
              "RThumb": (-0.51, 0, 0.51)}  # fmt: skip
_NAMES = [n for n, _, _ in _CMU]


def _cmu_bvh_text(frames: list[dict[str, tuple[float, float, float]]], root_pos=(0, 16, 0)) -> str:
    """CMU-format BVH (root: positions + ZYX; joints: ZYX) with the given (Z, Y, X) degrees per joint."""
    children: dict[str | None, list[str]] = {}
    offsets = {}
    for name, parent, off in _CMU:
        children.setdefault(parent, []).append(name)
        offsets[name] = off
    lines = ["HIERARCHY"]

    def emit(name, depth):
        pad = "  " * depth
        kind = "ROOT" if depth == 0 else "JOINT"
        lines.append(f"{pad}{kind} {name}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}  OFFSET {' '.join(map(str, offsets[name]))}")
        if depth == 0:
            lines.append(f"{pad}  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation")
        else:
            lines.append(f"{pad}  CHANNELS 3 Zrotation Yrotation Xrotation")
        for child in children.get(name, []):
            emit(child, depth + 1)
        if name in _END_SITES:
            lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {' '.join(map(str, _END_SITES[name]))}", f"{pad}  }}"])
        lines.append(f"{pad}}}")

    emit("Hips", 0)
    lines += ["MOTION", f"Frames: {len(frames)}", "Frame Time: 0.00833333"]
    for frame in frames:
        values = list(root_pos)
        for name in _NAMES:  # hierarchy order == _CMU order (depth first)
            values += list(frame.get(name, (0.0, 0.0, 0.0)))
        lines.append(" ".join(f"{v:g}" for v in values))
    return "\n".join(lines) + "\n"


SYNTHETIC_FRAMES = [
    {},  # T-pose
    {"LeftLeg": (0, 0, 90), "RightUpLeg": (0, 0, -90)},  # left knee bent 90 deg, right hip flexed 90 deg
    {"Hips": (0, 0, 180), "LeftArm": (0, 0, 0)},  # upside down (rotated 180 deg about X)
    {"Hips": (30, -40, 20), "Spine": (5, 10, 15), "LeftArm": (-60, 20, 10), "RightForeArm": (10, -70, 0),
     "Neck1": (10, 20, -10), "LeftUpLeg": (0, 30, -45), "RightLeg": (0, 0, 60)},  # fmt: skip
]


@pytest.fixture(scope="module")
def anny():
    from diffusion_hpc.body import get_body_model

    return get_body_model("anny")


def _anny_joints(model, global_orient, body_pose):
    import torch

    params = model.neutral_params(len(global_orient))
    params["global_orient"] = torch.as_tensor(np.asarray(global_orient, dtype=np.float32))
    params["body_pose"] = torch.as_tensor(np.asarray(body_pose, dtype=np.float32))
    with torch.no_grad():
        out = model(params)
    return out.joints["anny_cmu31"].numpy().astype(np.float64), out.joints["h36m17"].numpy()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("bvh") / "synthetic.bvh"
    path.write_text(_cmu_bvh_text(SYNTHETIC_FRAMES))
    motion = load_bvh(path)
    go, bp = retarget_bvh(motion)
    return path, motion, go, bp


def test_anny_constants_match_model(anny):
    import torch

    from diffusion_hpc.body.joint_sets import ANNY_CMU31

    assert ANNY_BONES == ANNY_CMU31
    assert list(ANNY_PARENTS) == [int(p) for p in anny._core.bone_parents]
    params = anny.neutral_params(1)
    with torch.no_grad():
        out = anny._core(pose_parameters=anny.pose_transforms(params), phenotype_kwargs=params["phenotype"])
    assert np.allclose(out["rest_bone_heads"][0].numpy(), ANNY_REST_HEADS, atol=1e-4)


def test_retarget_tpose_arms_horizontal(anny, synthetic):
    _, motion, go, bp = synthetic
    joints, _ = _anny_joints(anny, go[:1], bp[:1])
    for side, sign in (("Left", 1), ("Right", -1)):
        upper = joints[0, ANNY_BONES.index(f"{side}ForeArm")] - joints[0, ANNY_BONES.index(f"{side}Arm")]
        upper /= np.linalg.norm(upper)
        assert abs(upper[2]) < 0.1, upper  # horizontal, not Anny's A-pose (z ~ -0.75)
        assert sign * upper[0] > 0.95  # pointing to the body's own side
        fore = joints[0, ANNY_BONES.index(f"{side}Hand")] - joints[0, ANNY_BONES.index(f"{side}ForeArm")]
        assert abs(fore[2] / np.linalg.norm(fore)) < 0.1
    # head straight above the hips, legs straight down
    assert joints[0, ANNY_BONES.index("Head"), 2] > 0.5
    shin = joints[0, ANNY_BONES.index("LeftFoot")] - joints[0, ANNY_BONES.index("LeftLeg")]
    assert shin[2] / np.linalg.norm(shin) < -0.99


def test_retarget_knee_and_hip_90_degrees(anny, synthetic):
    _, motion, go, bp = synthetic
    joints, _ = _anny_joints(anny, go[1:2], bp[1:2])
    j = {n: joints[0, i] for i, n in enumerate(ANNY_BONES)}
    thigh, shin = j["LeftLeg"] - j["LeftUpLeg"], j["LeftFoot"] - j["LeftLeg"]
    assert _angle(thigh, shin) == pytest.approx(90.0, abs=1.0)
    assert shin[1] / np.linalg.norm(shin) > 0.99  # the foot goes backwards (+Y: the body faces -Y)
    right_thigh = j["RightLeg"] - j["RightUpLeg"]
    assert right_thigh[1] / np.linalg.norm(right_thigh) < -0.99  # hip flexion: thigh forward (-Y)


def test_retarget_directions_match_fk(anny, synthetic):
    _, motion, go, bp = synthetic
    joints, h36m = _anny_joints(anny, go, bp)
    _, pos = forward_kinematics(motion)
    errors = np.concatenate(list(direction_errors(joints, pos, motion.joint_names).values()))
    assert errors.max() < 0.5
    # upside-down frame: head below the hips
    assert h36m[2, 10, 2] < h36m[2, 0, 2] - 0.3 and h36m[0, 10, 2] > h36m[0, 0, 2] + 0.3
    # numpy FK of the rest heads agrees with the model
    assert np.allclose(anny_joint_positions(go, bp), joints, atol=2e-3)


def test_retarget_rejects_non_cmu_skeleton(tmp_path):
    path = tmp_path / "tiny.bvh"
    path.write_text(TINY_BVH)
    with pytest.raises(InputError, match="tiny.bvh.*CMU"):
        import_bvh([str(path)], str(tmp_path / "out.npz"))


def test_import_bvh(tmp_path, synthetic):
    path, motion, go, bp = synthetic
    out = tmp_path / "imported.npz"
    ps = import_bvh([str(path)], str(out), every=2, max_frames=5)
    assert len(ps) == 2
    assert ps.source.tolist() == ["synthetic.bvh:0", "synthetic.bvh:2"]
    assert np.allclose(ps.body_pose, bp[[0, 2]], atol=1e-6)
    loaded = load_pose_file(out)
    assert loaded.body_model == "anny" and len(loaded) == 2
    assert np.array_equal(loaded.body_pose, ps.body_pose)
    assert len(import_bvh([str(path)], str(out), max_frames=1)) == 1


# ---------------------------------------------------------------- built-in pose set


def test_builtin_poses():
    ps = builtin_poses()
    assert ps.body_model == "anny"
    assert len(ps) >= 700
    assert ps.global_orient.shape == (len(ps), 3) and ps.global_orient.dtype == np.float32
    assert ps.body_pose.shape == (len(ps), 30, 3) and ps.body_pose.dtype == np.float32
    assert np.isfinite(ps.global_orient).all() and np.isfinite(ps.body_pose).all()
    assert np.abs(ps.body_pose).max() <= np.pi + 1e-3
    for key in ("name", "source", "description", "subject"):
        assert getattr(ps, key) is not None and len(getattr(ps, key)) == len(ps)
    assert len(set(ps.name.tolist())) == len(ps)
    assert all(s.endswith(".bvh") for s in ps.source)
    assert len(set(ps.source.tolist())) >= 90
    sub = ps.subset([0, 5, 7])
    assert len(sub) == 3 and sub.name.tolist() == ps.name[[0, 5, 7]].tolist()
    path = Path(__file__).resolve().parents[1] / "src" / "diffusion_hpc" / "poses" / "data" / "cmu_builtin.npz"
    if path.exists():
        assert path.stat().st_size < 1_000_000


def test_builtin_hard_resolves_and_is_hard_for_the_prior(tmp_path):
    import hashlib

    import torch

    from diffusion_hpc.errors import ConfigError
    from diffusion_hpc.poses import BUILTIN_SETS, load_pose_set
    from diffusion_hpc.poses.io import builtin_set_selection
    from diffusion_hpc.prior import get_prior
    from diffusion_hpc.prior.anny_prior import default_prior_path, label_easy_hard

    assert BUILTIN_SETS == ("builtin", "builtin-hard")
    every, hard = load_pose_set("builtin"), load_pose_set("builtin-hard")
    assert len(every) == len(builtin_poses()) and hard.body_model == "anny"
    assert 100 <= len(hard) < len(every) // 2 and set(hard.name) < set(every.name)
    # Chosen with the shipped prior (same file) at its recorded corpus threshold: every pose is hard.
    prior = get_prior("anny")
    sel = builtin_set_selection("builtin-hard")
    assert sel["prior_sha256"] == hashlib.sha256(default_prior_path().read_bytes()).hexdigest()
    assert sel["threshold"] == prior.corpus_hard_threshold == prior.metadata["calibration"]["in_sample_hard_threshold"]
    assert sel["n_poses"] == len(hard)
    with torch.no_grad():
        scores = prior.score(torch.as_tensor(hard.body_pose)).numpy()
        rest = prior.score(torch.as_tensor(every.body_pose[~np.isin(every.name, hard.name)])).numpy()
    assert (scores >= prior.corpus_hard_threshold).all() and (rest < prior.corpus_hard_threshold).all()
    # It is the hard activities the set gathers, not the everyday ones.
    labels = label_easy_hard(hard.description)
    assert (labels == 1).sum() > 5 * (labels == 0).sum()
    # A pose file path still works; a typo of a set name is refused with the choices.
    path = save_pose_file(tmp_path / "few.npz", every.subset([0, 1]))
    assert len(load_pose_set(path)) == 2 and len(load_pose_set(str(path))) == 2
    for bad in ("builtin_hard", "builtin-easy"):
        with pytest.raises(ConfigError, match="builtin-hard"):
            load_pose_set(bad)
    with pytest.raises(ConfigError, match=r"'hardest'.*builtin, builtin-hard"):
        builtin_poses("hardest")


def test_builtin_poses_upright_in_anny(anny):
    ps = builtin_poses()
    _, h36m = _anny_joints(anny, ps.global_orient, ps.body_pose)
    head_above = h36m[:, 10, 2] - h36m[:, 0, 2]
    assert (head_above > 0.2).mean() > 0.8  # most mocap poses are standing people
    assert (head_above < 0).sum() >= 10  # cartwheels, flips, breakdance


def test_reading_poses_does_not_load_the_body_model():
    code = textwrap.dedent(
        """
        import sys
        import diffusion_hpc.poses as poses
        ps = poses.builtin_poses()
        assert len(ps) >= 700
        import diffusion_hpc.poses.bvh, diffusion_hpc.poses.retarget
        bad = [m for m in ("anny", "warp") if m in sys.modules]
        assert not bad, bad
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ---------------------------------------------------------------- pose files


def _small_set(n=4, body_model="anny"):
    rng = np.random.default_rng(0)
    joints = 30 if body_model == "anny" else 23
    extra = {"phenotype": rng.uniform(0, 1, (n, 6))} if body_model == "anny" else {"betas": rng.normal(size=(n, 10))}
    return PoseSet(
        body_model=body_model,
        global_orient=rng.normal(size=(n, 3)),
        body_pose=rng.normal(size=(n, joints, 3)) * 0.3,
        name=np.array([f"p{i}" for i in range(n)]),
        source=np.array([f"x.bvh:{i}" for i in range(n)]),
        description=np.array(["ünïcode text"] * n),
        subject=np.arange(n),
        **extra,
    )


@pytest.mark.parametrize("body_model", ["anny", "smpl"])
def test_save_load_round_trip(tmp_path, body_model):
    ps = _small_set(body_model=body_model)
    path = tmp_path / "poses.npz"
    save_pose_file(path, ps)
    assert [p.name for p in tmp_path.iterdir()] == ["poses.npz"]  # no temporary file left behind
    back = load_pose_file(path)
    assert back.body_model == body_model and len(back) == len(ps)
    for key in ("global_orient", "body_pose", "phenotype", "betas"):
        a, b = getattr(ps, key), getattr(back, key)
        assert (a is None and b is None) or np.array_equal(a, b)
    for key in ("name", "source", "description", "subject"):
        assert getattr(back, key).tolist() == getattr(ps, key).tolist()
    with np.load(path, allow_pickle=False) as npz:  # plain arrays only
        assert str(npz["format"]) == "dhpc-poses/1"
    save_pose_file(path, ps.subset([1, 2]))  # overwrite
    assert len(load_pose_file(path)) == 2


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _valid_arrays(n=3):
    return {
        "format": np.array("dhpc-poses/1"),
        "body_model": np.array("anny"),
        "global_orient": np.zeros((n, 3), np.float32),
        "body_pose": np.zeros((n, 30, 3), np.float32),
    }


def test_load_errors(tmp_path):
    cases = {}
    cases["missing file"] = (tmp_path / "absent.npz", "not found")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00\x01 this is not a zip file" * 10)
    cases["garbage"] = (garbage, "not a zip")
    truncated = tmp_path / "truncated.npz"
    save_pose_file(truncated, _small_set())
    truncated.write_bytes(truncated.read_bytes()[:-200])
    cases["truncated"] = (truncated, "truncated.npz")
    a = _valid_arrays()
    del a["body_pose"]
    cases["missing key"] = (_write_npz(tmp_path / "nokey.npz", **a), "'body_pose'")
    a = _valid_arrays()
    a["body_pose"] = np.zeros((3, 23, 3), np.float32)
    cases["wrong shape"] = (_write_npz(tmp_path / "shape.npz", **a), "shape")
    a = _valid_arrays()
    a["global_orient"][1, 2] = np.nan
    cases["nan"] = (_write_npz(tmp_path / "nan.npz", **a), "NaN")
    a = _valid_arrays()
    a["body_model"] = np.array("smplx")
    cases["body model"] = (_write_npz(tmp_path / "model.npz", **a), "body_model")
    a = _valid_arrays()
    a["format"] = np.array("other/2")
    cases["format"] = (_write_npz(tmp_path / "format.npz", **a), "format")
    a = _valid_arrays()
    a["name"] = np.array(["a", "b"])
    cases["names"] = (_write_npz(tmp_path / "names.npz", **a), "'name'")
    a = _valid_arrays()
    a["description"] = np.array([{"x": 1}] * 3, dtype=object)
    cases["pickle"] = (_write_npz(tmp_path / "pickle.npz", **a), "pickle")
    for label, (path, fragment) in cases.items():
        with pytest.raises(InputError) as info:
            load_pose_file(path)
        message = str(info.value)
        assert path.name in message, (label, message)
        assert fragment in message, (label, message)


def test_cli_import_then_generate_from_the_pose_file(tmp_path, synthetic):
    """A user's BVH -> `dhpc poses import` -> `dhpc generate --poses FILE`: the generated samples use
    exactly the imported poses (in the camera frame, only the root orientation changes)."""
    from conftest import run_cli

    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.schema import persons_of

    path, motion, go, bp = synthetic
    poses_file = tmp_path / "mine.npz"
    proc = run_cli("poses", "import", str(path), "--out", str(poses_file))
    assert proc.returncode == 0 and "4 poses" in proc.stdout, proc.stderr
    proc = run_cli("poses", "show", str(poses_file))
    assert proc.returncode == 0 and "4 poses" in proc.stdout
    out = tmp_path / "d"
    proc = run_cli("generate", "--poses", str(poses_file), "-n", "3", "--image-size", "64", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    for (person,) in map(persons_of, open_dataset(out)):
        frame = int(person["pose_source"].rsplit("_f", 1)[1])  # pose names are <file>_f<frame>
        assert np.allclose(person["params"]["body_pose"], bp[frame], atol=1e-5)
