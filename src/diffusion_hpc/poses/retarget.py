"""Retarget CMU-skeleton BVH motion to Anny's ``cmu_mb`` rig (``global_orient`` + ``body_pose``).

Method (all in numpy, no torch):

1. BVH forward kinematics of the local rotations gives each joint's global rotation ``G_j``. The
   BVH rest pose (all channels zero) is a T-pose with identity rotations, so ``G_j`` *is* the
   joint's rotation relative to the rest pose.
2. Change of basis BVH (Y up, facing +Z, left +X) -> Anny (Z up, facing -Y, left +X):
   ``x_anny = C @ x_bvh`` with ``C = [[1,0,0],[0,0,-1],[0,1,0]]``, so ``G'_j = C G_j C^T``.
3. Rest alignment (T-pose vs Anny's A-pose): for each Anny bone ``c``, ``A_c`` is the smallest
   rotation taking Anny's rest bone direction (head to the head of a chosen descendant, or to its
   tail for leaves) to the BVH rest direction of the same bone (``C`` times the rest offsets), in
   Anny's frame. The root has ``A = I``.
4. Anny's world rotation of bone ``c`` relative to its rest pose is ``W_c = G'_c A_c``, so the posed
   Anny bone direction ``W_c a_c = G'_c b_c`` is the mocap's, and the twist about the bone follows
   the mocap's ``G'_c``.
5. Anny's ``local-ref`` parameters compose as ``W_0 = P_0`` and ``W_c = W_parent P_c`` (checked
   against ``anny.Anny.forward``: ``bone_poses[c] = W_c @ rest_bone_poses[c]``), hence
   ``global_orient = W_0`` and ``body_pose[c] = W_parent^T W_c``, as axis-angle.

Bones that carry no pose information in the CMU data keep Anny's rest relation to their parent
(local rotation = identity): ``LHipJoint``, ``RHipJoint``, ``LeftShoulder``, ``RightShoulder``
(constant in the data; aligning them to the CMU rest skeleton would only add a fixed shrug) and
the finger / thumb bones (``LeftFingerBase``, ``LeftHandFinger1``, ``LThumb`` and right side;
barely tracked, their channels flip). The wrists (``LeftHand`` / ``RightHand``) follow the mocap
unless their local BVH rotation exceeds ``max_hand_angle`` degrees (default 90), which is treated as
a flipped channel and replaced by the identity (the hand continues the forearm as in the BVH rest).
``hands="zero"`` keeps Anny's rest wrists instead, ``hands="follow"`` uses the channels as they are.

CMU's ``LeftHandIndex1`` / ``RightHandIndex1`` are Anny's ``LeftHandFinger1`` / ``RightHandFinger1``.
Any BVH with the CMU joint names (extra joints in between are fine), T-pose rest and Y up, +Z
facing works.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from diffusion_hpc.body.joint_sets import ANNY_CMU31 as ANNY_BONES  # pure data: imports no torch
from diffusion_hpc.poses.bvh import local_transforms

#: Parent of each Anny ``cmu_mb`` bone (-1 for the root).
ANNY_PARENTS = (
    -1, 0, 1, 2, 3, 4, 0, 6, 7, 8, 9, 10, 11, 12, 12, 14, 8, 16, 17, 8, 19, 20, 21, 22, 22, 24, 0, 26, 27, 28, 29,
)  # fmt: skip

#: Anny bone name -> CMU BVH joint name.
ANNY_TO_CMU = {name: name for name in ANNY_BONES}
ANNY_TO_CMU["LeftHandFinger1"] = "LeftHandIndex1"
ANNY_TO_CMU["RightHandFinger1"] = "RightHandIndex1"
CMU_TO_ANNY = {v: k for k, v in ANNY_TO_CMU.items()}

#: Rest bone heads / tails of Anny (``cmu_mb``, neutral phenotype 0.5, anny 0.6.2), metres, Anny frame.
ANNY_REST_HEADS = np.array([
    [-0.00000, -0.01082, 0.05041],  # Hips
    [-0.00000, -0.01082, 0.05041],  # LHipJoint
    [0.10194, -0.00793, 0.03894],  # LeftUpLeg
    [0.13506, -0.04018, -0.35006],  # LeftLeg
    [0.17662, -0.00387, -0.74858],  # LeftFoot
    [0.19029, -0.13967, -0.79564],  # LeftToeBase
    [-0.00000, 0.02227, 0.11776],  # LowerBack
    [-0.00000, 0.00763, 0.26116],  # Spine
    [0.00000, 0.03192, 0.39386],  # Spine1
    [0.02200, -0.02556, 0.49296],  # LeftShoulder
    [0.16158, -0.01713, 0.46749],  # LeftArm
    [0.32947, -0.02122, 0.27890],  # LeftForeArm
    [0.44563, -0.17882, 0.16377],  # LeftHand
    [0.44690, -0.22271, 0.15685],  # LThumb
    [0.45630, -0.20547, 0.14847],  # LeftFingerBase
    [0.47253, -0.27281, 0.12546],  # LeftHandFinger1
    [0.00000, -0.00752, 0.55969],  # Neck
    [-0.00076, -0.02746, 0.61099],  # Neck1
    [-0.00000, -0.04188, 0.65674],  # Head
    [-0.02200, -0.02556, 0.49296],  # RightShoulder
    [-0.16158, -0.01713, 0.46749],  # RightArm
    [-0.32947, -0.02122, 0.27890],  # RightForeArm
    [-0.44563, -0.17882, 0.16377],  # RightHand
    [-0.44690, -0.22271, 0.15685],  # RThumb
    [-0.45630, -0.20547, 0.14847],  # RightFingerBase
    [-0.47253, -0.27281, 0.12546],  # RightHandFinger1
    [-0.00000, -0.01082, 0.05041],  # RHipJoint
    [-0.10194, -0.00793, 0.03894],  # RightUpLeg
    [-0.13506, -0.04018, -0.35006],  # RightLeg
    [-0.17662, -0.00387, -0.74858],  # RightFoot
    [-0.19029, -0.13967, -0.79564],  # RightToeBase
])
ANNY_REST_TAILS = np.array([
    [-0.00000, 0.02227, 0.11776],  # Hips
    [0.10194, -0.00793, 0.03894],  # LHipJoint
    [0.13506, -0.04018, -0.35006],  # LeftUpLeg
    [0.17662, -0.00387, -0.74858],  # LeftLeg
    [0.19029, -0.13967, -0.79564],  # LeftFoot
    [0.19150, -0.15854, -0.79804],  # LeftToeBase
    [-0.00000, 0.00763, 0.26116],  # LowerBack
    [0.00000, 0.03192, 0.39386],  # Spine
    [0.00000, -0.00752, 0.55969],  # Spine1
    [0.16158, -0.01713, 0.46749],  # LeftShoulder
    [0.32947, -0.02122, 0.27890],  # LeftArm
    [0.44563, -0.17882, 0.16377],  # LeftForeArm
    [0.45630, -0.20547, 0.14847],  # LeftHand
    [0.42643, -0.24343, 0.14876],  # LThumb
    [0.47253, -0.27281, 0.12546],  # LeftFingerBase
    [0.47589, -0.29356, 0.11127],  # LeftHandFinger1
    [-0.00076, -0.02746, 0.61099],  # Neck
    [-0.00000, -0.04188, 0.65674],  # Neck1
    [-0.00000, -0.03693, 0.80276],  # Head
    [-0.16158, -0.01713, 0.46749],  # RightShoulder
    [-0.32947, -0.02122, 0.27890],  # RightArm
    [-0.44563, -0.17882, 0.16377],  # RightForeArm
    [-0.45630, -0.20547, 0.14847],  # RightHand
    [-0.42643, -0.24343, 0.14876],  # RThumb
    [-0.47253, -0.27281, 0.12546],  # RightFingerBase
    [-0.47589, -0.29356, 0.11127],  # RightHandFinger1
    [-0.10194, -0.00793, 0.03894],  # RHipJoint
    [-0.13506, -0.04018, -0.35006],  # RightUpLeg
    [-0.17662, -0.00387, -0.74858],  # RightLeg
    [-0.19029, -0.13967, -0.79564],  # RightFoot
    [-0.19150, -0.15854, -0.79804],  # RightToeBase
])

#: BVH (Y up, facing +Z) -> Anny (Z up, facing -Y) change of basis.
BVH_TO_ANNY_BASIS = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

#: Bones whose Anny local rotation stays the identity (see the module docstring).
RIGID_BONES = frozenset({
    "LHipJoint", "RHipJoint", "LeftShoulder", "RightShoulder",
    "LThumb", "LeftFingerBase", "LeftHandFinger1", "RThumb", "RightFingerBase", "RightHandFinger1",
})  # fmt: skip
HAND_BONES = ("LeftHand", "RightHand")

#: Rest-alignment direction of each posed bone: the descendant (Anny name) whose head the bone
#: points to, or None for "the bone's tail" (Anny) / "its End Site" (BVH).
DIRECTION_TARGET: dict[str, str | None] = {
    "LeftUpLeg": "LeftLeg", "LeftLeg": "LeftFoot", "LeftFoot": "LeftToeBase", "LeftToeBase": None,
    "RightUpLeg": "RightLeg", "RightLeg": "RightFoot", "RightFoot": "RightToeBase", "RightToeBase": None,
    "LowerBack": "Spine", "Spine": "Spine1", "Spine1": "Neck1", "Neck": "Neck1", "Neck1": "Head", "Head": None,
    "LeftArm": "LeftForeArm", "LeftForeArm": "LeftHand", "LeftHand": "LeftHandFinger1",
    "RightArm": "RightForeArm", "RightForeArm": "RightHand", "RightHand": "RightHandFinger1",
}  # fmt: skip

#: Bones checked by :func:`direction_errors`: label -> (from, to) joint, Anny names.
VALIDATION_BONES: dict[str, tuple[str, str]] = {
    "left_thigh": ("LeftUpLeg", "LeftLeg"), "right_thigh": ("RightUpLeg", "RightLeg"),
    "left_shin": ("LeftLeg", "LeftFoot"), "right_shin": ("RightLeg", "RightFoot"),
    "left_upper_arm": ("LeftArm", "LeftForeArm"), "right_upper_arm": ("RightArm", "RightForeArm"),
    "left_forearm": ("LeftForeArm", "LeftHand"), "right_forearm": ("RightForeArm", "RightHand"),
    "lower_spine": ("LowerBack", "Spine"), "upper_spine": ("Spine", "Spine1"),
    "neck": ("Neck1", "Head"),
}  # fmt: skip

HandMode = Literal["clamp", "zero", "follow"]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(3, 3) smallest rotation taking the direction ``a`` to the direction ``b``."""
    a, b = _unit(np.asarray(a, dtype=np.float64)), _unit(np.asarray(b, dtype=np.float64))
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1.0 + 1e-9:  # opposite: rotate by pi about any axis perpendicular to a
        axis = _unit(np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0]))
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    k = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + k + k @ k / (1.0 + c)


def rotmat_to_rotvec(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 3) axis-angle (scipy, robust near pi)."""
    from scipy.spatial.transform import Rotation

    shape = r.shape[:-2]
    return Rotation.from_matrix(r.reshape(-1, 3, 3)).as_rotvec().reshape(*shape, 3)


def rotvec_to_rotmat(v: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    v = np.asarray(v, dtype=np.float64)
    return Rotation.from_rotvec(v.reshape(-1, 3)).as_matrix().reshape(*v.shape[:-1], 3, 3)


def rotation_angle_deg(r: np.ndarray) -> np.ndarray:
    """Angle (degrees) of (..., 3, 3) rotation matrices."""
    tr = np.clip((np.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    return np.degrees(np.arccos(tr))


def _rest_positions(parents, offsets) -> np.ndarray:
    pos = np.zeros((len(parents), 3))
    for j, p in enumerate(parents):
        pos[j] = offsets[j] if p < 0 else pos[p] + offsets[j]
    return pos


def check_cmu_skeleton(joint_names) -> None:
    """``ValueError`` listing the CMU joints that ``joint_names`` lacks."""
    missing = [ANNY_TO_CMU[b] for b in ANNY_BONES if ANNY_TO_CMU[b] not in joint_names]
    if missing:
        raise ValueError(
            f"the skeleton lacks the CMU joints {missing}; retargeting to Anny needs the 31-joint CMU skeleton names"
        )


def rest_alignment(
    joint_names, parents, offsets, end_site_parents=(), end_site_offsets=(), anny_heads=None, anny_tails=None
) -> np.ndarray:
    """(31, 3, 3) per-Anny-bone rest alignment ``A_c`` (Anny rest direction -> BVH rest direction, Anny frame)."""
    check_cmu_skeleton(joint_names)
    heads = ANNY_REST_HEADS if anny_heads is None else np.asarray(anny_heads, dtype=np.float64)
    tails = ANNY_REST_TAILS if anny_tails is None else np.asarray(anny_tails, dtype=np.float64)
    names = list(joint_names)
    rest = _rest_positions(parents, np.asarray(offsets, dtype=np.float64)) @ BVH_TO_ANNY_BASIS.T
    end_par = list(np.asarray(end_site_parents, dtype=np.int64).reshape(-1))
    end_off = np.asarray(end_site_offsets, dtype=np.float64).reshape(-1, 3) @ BVH_TO_ANNY_BASIS.T
    align = np.broadcast_to(np.eye(3), (len(ANNY_BONES), 3, 3)).copy()
    for c, bone in enumerate(ANNY_BONES):
        if bone not in DIRECTION_TARGET:
            align[c] = align[ANNY_PARENTS[c]] if c > 0 else np.eye(3)
            continue
        j = names.index(ANNY_TO_CMU[bone])
        target = DIRECTION_TARGET[bone]
        if target is None:
            a = tails[c] - heads[c]
            b = end_off[end_par.index(j)] if j in end_par else np.zeros(3)
        else:
            a = heads[ANNY_BONES.index(target)] - heads[c]
            b = rest[names.index(ANNY_TO_CMU[target])] - rest[j]
        if np.linalg.norm(b) < 1e-8 or np.linalg.norm(a) < 1e-8:
            align[c] = align[ANNY_PARENTS[c]]
        else:
            align[c] = rotation_between(a, b)
    return align


def retarget_rotations(
    joint_names,
    parents,
    offsets,
    local_rotations: np.ndarray,
    end_site_parents=(),
    end_site_offsets=(),
    hands: HandMode = "clamp",
    max_hand_angle: float = 90.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Anny ``global_orient`` (N, 3) and ``body_pose`` (N, 30, 3) from BVH local rotations.

    Args:
        joint_names, parents, offsets: the BVH skeleton (CMU joint names; any joint order, parents first).
        local_rotations: (N, J, 3, 3) BVH local joint rotations (see :func:`bvh.local_transforms`).
        end_site_parents, end_site_offsets: BVH End Sites (used for the head and toe directions).
        hands: ``"clamp"`` (default), ``"zero"`` or ``"follow"``; see the module docstring.
        max_hand_angle: wrist rotations above this (degrees) count as flipped with ``"clamp"``.
    """
    local = np.array(local_rotations, dtype=np.float64)
    if local.ndim == 3:
        local = local[None]
    names = list(joint_names)
    parents = np.asarray(parents, dtype=np.int64)
    if local.shape[1:] != (len(names), 3, 3):
        raise ValueError(f"local_rotations have shape {local.shape}; expected (N, {len(names)}, 3, 3)")
    align = rest_alignment(names, parents, offsets, end_site_parents, end_site_offsets)
    if hands == "clamp":
        for bone in HAND_BONES:
            j = names.index(bone)
            flipped = rotation_angle_deg(local[:, j]) > max_hand_angle
            local[flipped, j] = np.eye(3)
    elif hands not in ("zero", "follow"):
        raise ValueError(f"hands must be 'clamp', 'zero' or 'follow', not {hands!r}")
    glob = np.empty_like(local)
    for j, p in enumerate(parents):
        glob[:, j] = local[:, j] if p < 0 else glob[:, p] @ local[:, j]
    basis = BVH_TO_ANNY_BASIS
    num = local.shape[0]
    world = np.empty((num, len(ANNY_BONES), 3, 3))
    rigid = set(RIGID_BONES) | (set(HAND_BONES) if hands == "zero" else set())
    for c, bone in enumerate(ANNY_BONES):
        if c > 0 and bone in rigid:
            world[:, c] = world[:, ANNY_PARENTS[c]]
            continue
        g = basis @ glob[:, names.index(ANNY_TO_CMU[bone])] @ basis.T
        world[:, c] = g @ align[c]
    rel = np.empty_like(world)
    rel[:, 0] = world[:, 0]
    par = np.asarray(ANNY_PARENTS[1:])
    rel[:, 1:] = np.swapaxes(world[:, par], -1, -2) @ world[:, 1:]
    rotvec = rotmat_to_rotvec(rel)
    return rotvec[:, 0], rotvec[:, 1:]


def retarget_bvh(
    motion, frames: np.ndarray | None = None, hands: HandMode = "clamp", max_hand_angle: float = 90.0
) -> tuple[np.ndarray, np.ndarray]:
    """Retarget a :class:`~diffusion_hpc.poses.bvh.BvhMotion` (all frames, or ``frames`` (F, C))."""

    values = motion.frames if frames is None else np.asarray(frames, dtype=np.float64)
    local, _ = local_transforms(motion.channels, motion.channel_start, motion.offsets, values)
    return retarget_rotations(
        motion.joint_names,
        motion.parents,
        motion.offsets,
        local,
        motion.end_site_parents,
        motion.end_site_offsets,
        hands=hands,
        max_hand_angle=max_hand_angle,
    )


def anny_joint_positions(global_orient: np.ndarray, body_pose: np.ndarray, rest_heads=None) -> np.ndarray:
    """(N, 31, 3) posed Anny bone heads (root at the origin), numpy FK of the rest heads.

    Matches ``get_body_model("anny")(...).joints["anny_cmu31"]`` at the phenotype of ``rest_heads``
    (default neutral); handy for checks without torch.
    """
    heads = ANNY_REST_HEADS if rest_heads is None else np.asarray(rest_heads, dtype=np.float64)
    rel = rotvec_to_rotmat(np.concatenate([np.asarray(global_orient)[:, None], np.asarray(body_pose)], axis=1))
    num = rel.shape[0]
    world = np.empty_like(rel)
    pos = np.zeros((num, len(ANNY_BONES), 3))
    for c, p in enumerate(ANNY_PARENTS):
        if p < 0:
            world[:, c] = rel[:, c]
        else:
            world[:, c] = world[:, p] @ rel[:, c]
            pos[:, c] = pos[:, p] + world[:, p] @ (heads[c] - heads[p])
    return pos


def direction_errors(anny_joints: np.ndarray, bvh_positions: np.ndarray, bvh_joint_names) -> dict[str, np.ndarray]:
    """Angle (degrees, (N,) per bone of :data:`VALIDATION_BONES`) between Anny's posed bone
    directions (``anny_joints`` (N, 31, 3), Anny frame) and the BVH's (``bvh_positions`` (N, J, 3)
    from forward kinematics, BVH frame; rotated to Anny's frame here)."""
    names = list(bvh_joint_names)
    bvh = np.asarray(bvh_positions, dtype=np.float64) @ BVH_TO_ANNY_BASIS.T
    anny = np.asarray(anny_joints, dtype=np.float64)
    out = {}
    for label, (a, b) in VALIDATION_BONES.items():
        da = _unit(anny[:, ANNY_BONES.index(b)] - anny[:, ANNY_BONES.index(a)])
        db = _unit(bvh[:, names.index(ANNY_TO_CMU[b])] - bvh[:, names.index(ANNY_TO_CMU[a])])
        out[label] = np.degrees(np.arccos(np.clip((da * db).sum(-1), -1.0, 1.0)))
    return out
