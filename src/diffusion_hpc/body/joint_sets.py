"""Named joint sets as data, with left/right flip pairs and maps between them.

A joint set is an ordered tuple of joint names. Metrics, loaders and exporters refer to joint sets by
name (``"coco17"``, ``"h36m17"``, ...) and convert with :func:`joint_map` / :func:`convert`, never
with index lists scattered in code.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

COCO17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

#: Human3.6M 17-joint order used by SPIN / SkiPose protocols.
H36M17 = (
    "pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "spine", "thorax", "neck", "head_top",
    "left_shoulder", "left_elbow", "left_wrist", "right_shoulder", "right_elbow", "right_wrist",
)  # fmt: skip

SMPL24 = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hand", "right_hand",
)  # fmt: skip

#: OpenPose BODY_25 (SMART / SportsCap annotations use this order).
BODY25 = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
    "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear", "left_big_toe",
    "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
)  # fmt: skip

#: Anny ``cmu_mb`` rig bones, in the model's order (the CMU mocap skeleton's 31 joints).
ANNY_CMU31 = (
    "Hips", "LHipJoint", "LeftUpLeg", "LeftLeg", "LeftFoot", "LeftToeBase", "LowerBack", "Spine",
    "Spine1", "LeftShoulder", "LeftArm", "LeftForeArm", "LeftHand", "LThumb", "LeftFingerBase",
    "LeftHandFinger1", "Neck", "Neck1", "Head", "RightShoulder", "RightArm", "RightForeArm",
    "RightHand", "RThumb", "RightFingerBase", "RightHandFinger1", "RHipJoint", "RightUpLeg",
    "RightLeg", "RightFoot", "RightToeBase",
)  # fmt: skip

#: SPIN's 24 ground-truth joints, in the order of ``part`` and 24-joint ``S`` in SPIN npz files.
#: Joints meaning the same point as ours share our names; the others are named for their source
#: (``lsp_neck``, ``mpii_thorax``, ``jaw``, ``h36m_head``).
SPIN24 = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    "lsp_neck", "head_top", "pelvis", "mpii_thorax", "spine", "jaw", "h36m_head",
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
)  # fmt: skip

_LEG_SWAP = {
    "right_hip": "left_hip", "right_knee": "left_knee", "right_ankle": "left_ankle",
    "left_hip": "right_hip", "left_knee": "right_knee", "left_ankle": "right_ankle",
}  # fmt: skip
#: SkiPose ``3D`` label order: H36M-17 with the legs exchanged (indices 1-3 hold the left leg).
SKIPOSE17 = tuple(_LEG_SWAP.get(n, n) for n in H36M17)

JOINT_SETS: dict[str, tuple[str, ...]] = {
    "coco17": COCO17,
    "h36m17": H36M17,
    "smpl24": SMPL24,
    "body25": BODY25,
    "anny_cmu31": ANNY_CMU31,
    "spin24": SPIN24,
    "skipose17": SKIPOSE17,
}

#: H36M-17 for Anny, defined from the ``cmu_mb`` rig's posed bones: joint name -> (bone, end).
#: "head" is the bone's head (its joint), "tail" its other end. The pelvis is the root (Hips) joint,
#: hips/knees/ankles the heads of UpLeg/Leg/Foot, spine the head of Spine1 (mid-back), thorax the
#: head of Neck (between the shoulders), neck the head of Head (top of the neck), head_top the tail
#: of Head, shoulders/elbows/wrists the heads of Arm/ForeArm/Hand.
ANNY_H36M17_FROM_BONES: dict[str, tuple[str, str]] = {
    "pelvis": ("Hips", "head"),
    "right_hip": ("RightUpLeg", "head"),
    "right_knee": ("RightLeg", "head"),
    "right_ankle": ("RightFoot", "head"),
    "left_hip": ("LeftUpLeg", "head"),
    "left_knee": ("LeftLeg", "head"),
    "left_ankle": ("LeftFoot", "head"),
    "spine": ("Spine1", "head"),
    "thorax": ("Neck", "head"),
    "neck": ("Head", "head"),
    "head_top": ("Head", "tail"),
    "left_shoulder": ("LeftArm", "head"),
    "left_elbow": ("LeftForeArm", "head"),
    "left_wrist": ("LeftHand", "head"),
    "right_shoulder": ("RightArm", "head"),
    "right_elbow": ("RightForeArm", "head"),
    "right_wrist": ("RightHand", "head"),
}


def get_joint_set(name: str) -> tuple[str, ...]:
    """Joint names of a named set; ``KeyError`` lists the known names."""
    try:
        return JOINT_SETS[name]
    except KeyError:
        raise KeyError(f"unknown joint set {name!r}; known: {sorted(JOINT_SETS)}") from None


def _mirror_name(name: str) -> str:
    for a, b in (("left", "right"), ("Left", "Right"), ("L", "R")):
        if name.startswith(a):
            return b + name[len(a):]
        if name.startswith(b):
            return a + name[len(b):]
    return name


def flip_permutation(name: str) -> np.ndarray:
    """(J,) index array mapping each joint to its mirror image (left <-> right), for flip augmentation."""
    names = get_joint_set(name)
    index = {n: i for i, n in enumerate(names)}
    return np.array([index.get(_mirror_name(n), i) for i, n in enumerate(names)], dtype=np.int64)


def joint_map(source: str, target: str) -> np.ndarray:
    """(J_target,) indices into ``source`` for each joint of ``target``; -1 where ``source`` lacks it."""
    src = {n: i for i, n in enumerate(get_joint_set(source))}
    return np.array([src.get(n, -1) for n in get_joint_set(target)], dtype=np.int64)


def convert(joints: np.ndarray, source: str, target: str, fill: float = np.nan) -> np.ndarray:
    """Reorder (..., J_source, D) joints to ``target`` order (float64); joints ``source`` lacks become ``fill``."""
    idx = joint_map(source, target)
    out = np.asarray(joints, dtype=np.float64)[..., np.clip(idx, 0, None), :].copy()
    out[..., idx < 0, :] = fill
    return out


def indices(names: Sequence[str], joint_set: str) -> np.ndarray:
    """Indices of ``names`` inside ``joint_set``."""
    lookup = {n: i for i, n in enumerate(get_joint_set(joint_set))}
    missing = [n for n in names if n not in lookup]
    if missing:
        raise KeyError(f"joints {missing} not in joint set {joint_set!r}")
    return np.array([lookup[n] for n in names], dtype=np.int64)
