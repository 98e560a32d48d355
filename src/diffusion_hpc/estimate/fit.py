"""Body-model fit to 2D keypoints and 3D world landmarks: one batched optimisation for many images.

The fit minimises per row (image x start hypothesis)

    E = w_2d   * sum_j c_j * rho(|| pi(K, J_j) - u_j || / s)        robust 2D reprojection, COCO-17
      + w_3d   * sum_j c_j r_j * || (J_j - J_hip) - R (W_j - W_hip) ||^2   relative 3D vs world landmarks
      + w_pose * P(body_pose)                                         pose prior (or the fallback)
      + w_shape * || phenotype - 0.5 ||^2                             shape prior
      + w_mask  * mean_p rho(D(pi(K, X_p)) / s)                       body points off the person mask
      + w_cover * mean_q rho(max(dist(q, bones) - r, 0) / s)           mask skeleton far from the bones

with J the model's COCO-17 joints in the camera frame, u the detected keypoints, c their
visibilities (0 below the detector's threshold), s the person's height in pixels, rho
Geman-McClure (:func:`geman_mcclure`), W the world landmarks (rotated by R, the weighted Kabsch fit
onto the model, so the 3D term constrains articulation, not the global orientation), r_j their
per-joint reliability (:data:`COCO17_WORLD_WEIGHT`: torso 1, elbows/knees 0.6, wrists/ankles 0.35,
face 0.2-0.3; in the 3D term a joint seen below the threshold inside the image gets c_j =
:attr:`FitWeights.unseen_3d`, 0.25 with a lifter, which predicts it), and P either
``prior.penalty`` (``w_pose`` 0.03, pose started from ``prior.mean_pose()``; free bones the prior
does not model, Anny's clavicles, get an L2 pull) or :func:`fallback_pose_penalty` (no prior,
``w_fallback`` 1e-3, pose started from zeros). The phenotype is kept in [0, 1] through a sigmoid.
The 3D term fixes what the 2D term cannot: depth ordering of the limbs (which elbow is in front)
and which way the person faces.

Person masks (optional, one per image, e.g. a segmenter's; :meth:`FitTargets.with_masks`): the
last two terms run in stage 2 on images with a mask. ``X_p`` are points inside the body (limb
joints and points along the bones, :func:`silhouette_points`), D the distance in pixels to the
mask (:func:`mask_distance_map`, a distance transform over the person's box, sampled bilinearly:
no renderer), ``q`` the mask's thinned medial lines (:func:`mask_skeleton_points`), r a tolerance of
3 % of the person's height. And a detected keypoint d px off the mask keeps exp(-(d / 0.1 s)^2 / 2)
of its 2D and 3D weight (:attr:`FitWeights.mask_gate`): the detector's landmarks on a background
object or another person no longer drag the body. Measured (``scripts/bench_estimate.py``, 64
renders, half over real photos, limb PA-MPJPE mean mm against the true joints): without masks
69.1, with MediaPipe's selfie-segmenter masks 65.6 (photo backgrounds 81.5 -> 72.7), with the
renders' true masks 66.2; the pose detector's own mask (it shares the landmarks' mistakes) 68.0.
The bone-direction form of the 3D term and visibility^2 / ^4 weights of the 3D term did not help.

Hypotheses: every image is fitted from :attr:`FitWeights.hypotheses` starts at once (rows of one
batch, hypothesis-major: row ``h * B + b``), by default ``base`` and ``swap`` (the detector's
left/right labels exchanged, which MediaPipe gets wrong on some back views); the final energy and
the facing cues of :mod:`~diffusion_hpc.estimate.facing` pick one per image (a swapped hypothesis
wins only with a margin; :func:`select_hypotheses` gathers the chosen rows).

Initialisation (:func:`initial_placement`): the global orientation is the Kabsch rotation from the
rest body's torso (shoulders, hips, in camera orientation) to the world landmarks' torso; the
translation is the linear least-squares solution of the projection equations given that rotation
(:func:`solve_translation`).

Optimisation (:func:`optimise`): Adam, first on the global orientation and translation with the
torso joints only (``iters_global``; the start body is moved rigidly, no forward pass), then on
everything (``iters_full``; the shape is updated every ``shape_every``-th iteration and held in
between, so its part of the forward pass is reused). Cost per image, fit only, 2-core CPU under
load, measured alternating against the previous version on the same detections: batch 1 1.79 ->
1.14 s, batch 16 0.20 -> 0.11 s; limb PA-MPJPE on 48 renders 67.1 / 58.8 -> 67.3 / 57.9 mm
(mean / median), left/right pairs right 0.983 both. The shape updated every 6th iteration: +0.8 +- 0.6 mm (paired);
fewer Adam iterations at a higher learning rate (60 at 0.045, 45 at 0.06) or L-BFGS on the batch
sum lost accuracy; the energy still falls about 1 % per 15 iterations at iteration 90, so early
stopping at a safe tolerance never triggers.

For Anny, stage 2 runs the bone chain on rotation matrices (:func:`chain_keypoints`: the reduced
forward's keypoints without its 4x4 reference-pose kinematics) and records each shape's part of the
forward pass once, with its gradient, for the held iterations and the next shape iteration: the
same fit (joints within 0.01 mm of the previous version's on the same detections; limb PA-MPJPE on
64 renders unchanged), CPU time per image in two alternating runs on 16 renders under load: batch
1 1.48 -> 1.22 and 1.49 -> 0.98 s (with masks 1.73 -> 1.29, 1.49 -> 1.36), batch 16 0.16 -> 0.11 and
0.13 -> 0.09 s. At batch 1 the fit is bound by per-operation overhead (about 1,000 small tensor
operations per iteration, forward and backward, 120 iterations), and the iterations cannot be cut
without losing accuracy: stage 2's energy after 60 / 75 iterations lies 4.1 / 1.5 % above its value
at 90 (medians over 32 renders; no render within 0.5 % at 60, 9 % at 75), 120 iterations lower it a
further 1.3 %; 15 + 45 and 20 + 60 iterations at the same or a higher learning rate lost 2-8 mm, and
per-row L-BFGS (``body.convert.lbfgs_step``, 50 iterations) ended at a higher energy (1.08 against
Adam's 0.91) and 8.9 mm worse.

Compiled (``optimise(compiled_energy=True)``, ``MediaPipeFitter(compile_fit=True)``; off by
default): the energies are pure functions of their inputs (:func:`torso_energy`,
:func:`chain_skeleton`, :func:`chain_energy`; the constants in :class:`FitTerms`, the weights baked
in) that ``torch.compile`` (inductor, a C++ compiler at run time) turns into a few fused kernels,
forward and backward, once per process (:func:`compiled`; the row dimension is dynamic, so any batch
size reuses them); the held iterations pass the shape and skeleton with a gradient that is then
dropped, so one graph serves every iteration, and Adam runs as one fused kernel. Same fit to float
rounding: limb PA-MPJPE on 64 of ``scripts/bench_estimate.py``'s renders 63.2 / 50.9 mm (mean /
median) without masks and 63.1 / 51.7 mm with the segmenter's, eager and compiled alike; joints
within 0.32 mm of the eager fit's (mean 0.005 mm), the same hypothesis kept on every render. CPU ms
per image, eager -> compiled, one process, 5 alternating rounds on 16 renders (2-core CPU, load 2-3.5):
batch 1 744 -> 272 (with masks 1028 -> 309), batch 16 76 -> 36 (101 -> 50). The compilation costs
71 s of CPU (124 s wall) in a fresh process with inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``)
empty, and about 50 s more at the first batch with masks; with the cache warm, 15 s (16 s wall). So
it pays off for runs of hundreds of images at batch 1 or thousands at batch 16, not a short one:
hence off by default.

A call's cost is nearly a + b n in the images n: the 120 iterations cost about the same at any small
batch (per-operation overhead: about 9 ms an iteration eager, 2.3 ms compiled), and each image adds
about 5 ms outside them (mask distance maps and thinning, the final full forward, the facing cues,
the outputs). CPU ms per call of ``MediaPipeFitter.fit`` with the segmenter's masks at 1 / 5 / 16 /
40 images (16 renders repeated, one process, 4 alternating rounds, load 1.5-2.5): eager 1059 / 1502 /
1816 / 3026, compiled 308 / 419 / 700 / 1361, of which 22 / 48 / 91 / 204 outside the optimisation;
before the fit read a lean rest skeleton (:attr:`BoneChain.skeleton`, about 1 ms less per shape
iteration) and placed its rows in one batched call (:func:`initial_placement`, 2 ms a row before),
eager 1064 / 1480 / 1920 / 3111 and compiled 300 / 456 / 762 / 1580, with bit-identical joints. So
a caller should fit as many images in one call as it can: an image costs 308 ms alone, 84 ms among
5 and 34 ms among 40, compiled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from diffusion_hpc.body.anny import AnnyReducedForward
from diffusion_hpc.body.base import BodyModel
from diffusion_hpc.body.joint_sets import ANNY_CMU31, COCO17, flip_permutation
from diffusion_hpc.estimate.facing import HIPS, SHOULDERS as SHOULDER_PAIR  # the 3D term is relative to the hips' midpoint
from diffusion_hpc.estimate.landmarks import cut_window
from diffusion_hpc.geometry.rotations import rigid_rotation, rotmat_to_rotvec, rotvec_to_rotmat
from diffusion_hpc.prior.anny_prior import ARTICULATED_INDEX
from diffusion_hpc.prior.base import PosePrior

#: Relative weight of each COCO-17 joint in the 2D and 3D terms: face points count less (the
#: body model's and the detector's ideas of where an ear is differ by a few centimetres).
COCO17_FIT_WEIGHT = np.array([0.5 if n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear") else 1.0
                              for n in COCO17], dtype=np.float32)

#: Reliability of the detector's world landmarks per COCO-17 joint in the 3D term (relative
#: weights): the torso (shoulders, hips) is trusted most, the extremities least (their depth is
#: what the detector gets wrong most often).
COCO17_WORLD_WEIGHT = np.array([
    {"nose": 0.3, "left_eye": 0.2, "right_eye": 0.2, "left_ear": 0.3, "right_ear": 0.3,
     "left_shoulder": 1.0, "right_shoulder": 1.0, "left_elbow": 0.6, "right_elbow": 0.6,
     "left_wrist": 0.35, "right_wrist": 0.35, "left_hip": 1.0, "right_hip": 1.0,
     "left_knee": 0.6, "right_knee": 0.6, "left_ankle": 0.35, "right_ankle": 0.35}[n] for n in COCO17
], dtype=np.float32)

#: COCO-17 index of each joint's left/right counterpart (itself for the nose)
COCO17_FLIP = flip_permutation("coco17")

#: COCO-17 bones (parent, child) of the limbs and the torso: the mask terms sample points along them
#: and measure distances to them
COCO17_BONES = tuple((COCO17.index(a), COCO17.index(b)) for a, b in (
    ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"), ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
    ("right_hip", "right_knee"), ("right_knee", "right_ankle"), ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"), ("left_shoulder", "right_shoulder"), ("left_hip", "right_hip"),
))  # fmt: skip
#: (parents, children) of the segments :func:`coverage_energy` measures to: :data:`COCO17_BONES`,
#: nose to the shoulders' midpoint (index 17) and that to the hips' midpoint (18)
COVER_SEGMENTS = tuple(np.array(ends) for ends in zip(*COCO17_BONES, (COCO17.index("nose"), 17), (17, 18)))
#: COCO-17 limb joints (shoulders, elbows, wrists, hips, knees, ankles): the mask term's joints
LIMB_JOINTS = np.arange(5, 17)
#: positions along each of :data:`COCO17_BONES` (0: parent, 1: child) where the mask term samples
BONE_SAMPLES = (0.25, 0.5, 0.75)

#: Joints used to initialise the global orientation (a rigid, well-detected quadrilateral).
TORSO = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
TORSO_INDEX = np.array([COCO17.index(n) for n in TORSO])

#: Anny cmu_mb bones the fit leaves at rest: nothing in the 17 keypoints observes them.
ANNY_FIXED_BONES = frozenset({
    "LHipJoint", "RHipJoint", "LeftFoot", "RightFoot", "LeftToeBase", "RightToeBase",
    "LeftHand", "RightHand", "LThumb", "RThumb", "LeftFingerBase", "RightFingerBase",
    "LeftHandFinger1", "RightHandFinger1",
})  # fmt: skip

#: initial hypotheses the fit can run side by side (:attr:`FitWeights.hypotheses`): ``base`` the
#: detector's keypoints as they are; ``swap`` its left/right labels exchanged; ``depth`` the world
#: landmarks' limb depths mirrored about their shoulder / hip
HYPOTHESES = ("base", "swap", "depth")


@dataclass(frozen=True)
class FitWeights:
    """Weights and schedule of the fit (see the module docstring for the energy).

    The defaults were tuned with ``scripts/bench_estimate.py`` (112 renders, seed 2024) with the
    shipped Anny prior; the figures are in :mod:`diffusion_hpc.estimate.mediapipe_fit`.
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
    #: stage 2 updates the shape every ``shape_every``-th iteration and holds it in between (the
    #: shape's part of the forward pass is then reused; see :func:`optimise`); 1: every iteration
    shape_every: int = 3
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
    #: weight of :func:`mask_energy` (body points projected outside the person mask), in stage 2,
    #: on images with a mask
    w_mask: float = 1.0
    #: Geman-McClure scale of the mask term, as a share of the person's height in pixels
    mask_sigma: float = 0.1
    #: side (px) of the distance map the mask term samples (:func:`mask_distance_map`)
    mask_size: int = 128
    #: the distance map covers the detector's person box (:meth:`Detection.box`) times this
    mask_expand: float = 1.5
    #: weight of :func:`coverage_energy` (the mask's medial lines far from the projected bones)
    w_cover: float = 1.0
    #: skeleton points of the mask per image (:func:`mask_skeleton_points`)
    cover_points: int = 64
    #: distance from a bone within which a skeleton point costs nothing, share of the person's height
    cover_tolerance: float = 0.03
    #: with a mask, a keypoint d px outside it keeps exp(-(d / (gate * s))^2 / 2) of its weight in
    #: the 2D term (and in the 3D term with ``mask_gate_3d``); 0: no gating
    mask_gate: float = 0.1
    mask_gate_3d: bool = True
    #: visibility the 3D term gives the joints the detector does not see (below its threshold) but
    #: places inside the image (:func:`stack_targets`): a lifter's 3D target predicts them from the
    #: rest of the body; 0: they leave the 3D term. Their 2D term is 0 either way, and joints out of
    #: the frame never enter it (nothing in the image tells where they are)
    unseen_3d: float = 0.0

    def checked_hypotheses(self) -> tuple[str, ...]:
        """The hypotheses to run (``("base",)`` if none); ``ValueError`` names unknown ones."""
        hyps = tuple(self.hypotheses) or ("base",)
        unknown = set(hyps) - set(HYPOTHESES)
        if unknown:
            raise ValueError(f"unknown fit hypotheses {sorted(unknown)}; choose from {HYPOTHESES}")
        return hyps


# ---------------------------------------------------------------------------------------------
# energy terms and penalties


def geman_mcclure(squared: torch.Tensor, sigma: float) -> torch.Tensor:
    """Robust penalty sigma^2 e / (e + sigma^2) of squared residuals ``e`` (≈ e for small e, ≤ sigma^2)."""
    s2 = sigma * sigma
    return s2 * squared / (squared + s2)


def fallback_pose_penalty(body_pose: torch.Tensor, max_angle: float = 2.0) -> torch.Tensor:
    """(B,) the regulariser used when no pose prior is given: L2 + a joint-limit hinge.

    ``sum_j ||theta_j||^2 + 100 * sum_j relu(||theta_j|| - max_angle)^2`` over the (B, J, 3)
    axis-angle ``body_pose``: pulls towards the rest pose, and strongly resists any single joint
    turning more than ``max_angle`` radians (≈ 115 deg) from rest.
    """
    angle = body_pose.norm(dim=-1)
    return (body_pose**2).sum(dim=(-1, -2)) + 100.0 * torch.relu(angle - max_angle).pow(2).sum(-1)


def reprojection_energy(joints: torch.Tensor, K: torch.Tensor, uv: torch.Tensor, scale: torch.Tensor,
                        weights: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N,) robust 2D term ``sum_j w_j rho(|| pi(K, J_j) - u_j || / s)`` divided by ``sigma^2``.

    Args:
        joints: (N, J, 3) camera-frame joints (depth clamped at 1 cm); K: (N, 3, 3);
        uv: (N, J, 2) target pixels; scale: (N,) person size s in pixels; weights: (N, J);
        sigma: Geman-McClure scale in units of ``scale``.
    """
    z = joints[..., 2:3].clamp(min=1e-2)
    proj = ((joints / z) @ K.transpose(1, 2))[..., :2]
    e2 = ((proj - uv) ** 2).sum(-1) / scale[:, None] ** 2
    return (weights * geman_mcclure(e2, sigma)).sum(-1) / sigma**2


def relative_3d_energy(joints: torch.Tensor, world: torch.Tensor, weights: torch.Tensor, align: bool = True,
                       align_scale: bool = False, sigma: float = 0.0) -> torch.Tensor:
    """(N,) ``sum_j w_j || (J_j - J_hip) - R (W_j - W_hip) ||^2`` (Geman-McClure with ``sigma`` > 0).

    Args:
        joints: (N, 17, 3) COCO-17 camera-frame joints; world: (N, 17, 3) hip-centred world
            landmarks; weights: (N, 17).
        align: R is the weighted Kabsch rotation of the landmarks onto the joints (no gradient,
            :func:`~diffusion_hpc.geometry.rotations.rigid_rotation`); else identity.
        align_scale: also scale the landmarks to the joints (least squares, clamped to
            [0.7, 1.4], no gradient).
    """
    rel, target = hip_centred_pair(joints, world, weights, align)
    if align and align_scale:  # the detector's body size is not the model's
        with torch.no_grad():
            num = (weights[..., None] * rel * target).sum((1, 2))
            den = (weights[..., None] * target * target).sum((1, 2)).clamp_min(1e-9)
            target = target * (num / den).clamp(0.7, 1.4)[:, None, None]
    d3 = ((rel - target) ** 2).sum(-1)
    if sigma > 0:
        d3 = geman_mcclure(d3, sigma)
    return (weights * d3).sum(-1)


def hip_centred_pair(joints: torch.Tensor, world: torch.Tensor, weights: torch.Tensor,
                     align: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, J, 3) joints minus their hips' midpoint, (N, J, 3) hip-centred ``world`` rotated onto
    them by the ``weights``-weighted Kabsch rotation, no gradient; unrotated when not ``align``)."""
    rel = joints - joints[:, HIPS].mean(1, keepdim=True)
    if not align:
        return rel, world
    return rel, world @ rigid_rotation(world, rel.detach(), weights, centred=False, differentiable=False).transpose(1, 2)


def silhouette_points(joints: torch.Tensor) -> torch.Tensor:
    """(N, P, 3) points inside the body: the :data:`LIMB_JOINTS` and :data:`BONE_SAMPLES` along each
    of :data:`COCO17_BONES` (P = 12 + 12 x 3), from (N, 17, 3) COCO-17 joints."""
    parent, child = (torch.as_tensor([b[i] for b in COCO17_BONES]) for i in (0, 1))
    t = torch.as_tensor(BONE_SAMPLES, dtype=joints.dtype)[:, None, None]
    along = joints[:, None, parent] + t * (joints[:, None, child] - joints[:, None, parent])  # (N, T, bones, 3)
    return torch.cat([joints[:, LIMB_JOINTS], along.flatten(1, 2)], dim=1)


def mask_distance_map(mask: np.ndarray, window: tuple[int, int, int], size: int) -> np.ndarray:
    """(size, size) float32 distance in image pixels from each point of the square ``window``
    ``(x0, y0, side)`` to the nearest person pixel of an (H, W) ``mask`` (> 0.5; 0 inside it;
    beyond the image the distance keeps growing), resized to ``size``. Zeros when the mask is empty.
    """
    import cv2

    person = np.asarray(mask) > 0.5
    out = np.zeros((size, size), np.float32)
    if not person.any():
        return out
    x0, y0, side = window
    height, width = person.shape
    # pad the mask so the window lies inside it: the transform then sees the image edge as background
    left, top = max(-x0, 0), max(-y0, 0)
    right, bottom = max(x0 + side - width, 0), max(y0 + side - height, 0)
    padded = np.pad(~person, ((top, bottom), (left, right)), constant_values=True).astype(np.uint8)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)
    cut = dist[y0 + top:y0 + top + side, x0 + left:x0 + left + side]
    return cv2.resize(cut, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


def mask_energy(points: torch.Tensor, K: torch.Tensor, dist: torch.Tensor, window: torch.Tensor,
                scale: torch.Tensor, weight: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N,) mean over the points of ``rho(D(pi(K, X_p)) / s)`` divided by ``sigma^2``, times ``weight``:
    how far the projected body points lie outside the person mask (D, bilinear in a distance map).

    Args:
        points: (N, P, 3) camera-frame points inside the body (:func:`silhouette_points`);
        K: (N, 3, 3); dist: (N, S, S) :func:`mask_distance_map` over ``window`` (N, 3) ``(x0, y0,
        side)``; scale: (N,) person size s in pixels; weight: (N,) 0 for rows without a mask;
        sigma: Geman-McClure scale in units of ``scale``.
    """
    z = points[..., 2:3].clamp(min=1e-2)
    d = distance_at(((points / z) @ K.transpose(1, 2))[..., :2], dist, window)
    return weight * geman_mcclure((d / scale[:, None]) ** 2, sigma).mean(-1) / sigma**2


def mask_skeleton_points(mask: np.ndarray, window: tuple[int, int, int], size: int, count: int) -> np.ndarray:
    """(P, 2) pixels, P <= ``count``: points of the thinned person mask (its medial lines, where the
    body's bones project) inside the square ``window`` ``(x0, y0, side)``, thinned at ``size`` px
    (OpenCV's Zhang-Suen ``ximgproc.thinning``), evenly spaced along the thinned pixels' order."""
    import cv2

    person = (np.asarray(mask) > 0.5).astype(np.uint8) * 255
    x0, y0, side = window
    cut = cut_window(person, window, size)
    thin = cv2.ximgproc.thinning((cut > 127).astype(np.uint8) * 255)
    v, u = np.nonzero(thin)
    if len(u) > count:
        keep = np.linspace(0, len(u) - 1, count).round().astype(np.int64)
        u, v = u[keep], v[keep]
    # window pixel (i + 0.5) / size * side - 0.5 + x0: pixel centres at integers (DESIGN §4)
    return np.stack([(u + 0.5) / size * side - 0.5 + x0, (v + 0.5) / size * side - 0.5 + y0], axis=1)


def coverage_energy(joints: torch.Tensor, K: torch.Tensor, points: torch.Tensor, point_weight: torch.Tensor,
                    scale: torch.Tensor, tolerance: float, sigma: float) -> torch.Tensor:
    """(N,) mean over the mask's skeleton points q of ``rho(max(d_q - r, 0) / s)`` divided by
    ``sigma^2``: how far the mask's medial lines lie from the projected bones (d_q: 2D distance from
    q to the nearest of :data:`COCO17_BONES` and the head and spine segments; r = ``tolerance`` x s).
    The other half of the mask term: a limb the detector missed still pulls the body into the mask.

    Args:
        joints: (N, 17, 3) camera-frame COCO-17; K: (N, 3, 3); points: (N, Q, 2) pixels
            (:func:`mask_skeleton_points`), point_weight: (N, Q) 1 / 0 for padding; scale: (N,) px.
    """
    z = joints[..., 2:3].clamp(min=1e-2)
    uv = ((joints / z) @ K.transpose(1, 2))[..., :2]
    # COCO-17, then the shoulders' (17) and the hips' (18) midpoints
    uv = torch.cat([uv, uv[:, SHOULDER_PAIR].mean(1, keepdim=True), uv[:, HIPS].mean(1, keepdim=True)], dim=1)
    a = uv[:, COVER_SEGMENTS[0]][:, None]  # (N, 1, S, 2)
    ab = uv[:, COVER_SEGMENTS[1]][:, None] - a
    aq = points[:, :, None] - a  # (N, Q, S, 2)
    t = ((aq * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-6)).clamp(0.0, 1.0)
    d = (aq - t[..., None] * ab).norm(dim=-1).min(-1).values  # (N, Q)
    e = geman_mcclure((torch.relu(d - tolerance * scale[:, None]) / scale[:, None]) ** 2, sigma) / sigma**2
    return (point_weight * e).sum(-1) / point_weight.sum(-1).clamp_min(1.0)


def distance_at(uv: torch.Tensor, dist: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """(N, P) the (N, S, S) distance maps over their windows (N, 3) ``(x0, y0, side)`` at (N, P, 2)
    pixels ``uv`` (bilinear, differentiable in ``uv``; beyond the window: its border's value)."""
    import torch.nn.functional as F

    # pixel centres are integers (DESIGN §4): the window's left edge is at x0 - 0.5
    grid = (uv + 0.5 - window[:, None, :2]) / window[:, None, 2:3] * 2.0 - 1.0
    return F.grid_sample(dist[:, None], grid[:, :, None, :].to(dist.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False)[:, 0, :, 0]


# ---------------------------------------------------------------------------------------------
# targets and initialisation


def hypothesis_targets(keypoints: np.ndarray, world: np.ndarray, hypothesis: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uv (17, 2), visibility (17,), hip-centred world landmarks (17, 3)) for one hypothesis.

    Args:
        keypoints: (17, 3) detected COCO-17 u, v (pixels) and visibility.
        world: (17, 3) the detector's COCO-17 world landmarks (metres, camera-aligned axes).
        hypothesis: one of :data:`HYPOTHESES`.
    """
    uv, vis, w3 = keypoints[:, :2], keypoints[:, 2], world
    if hypothesis == "swap":  # the detector's left/right labels swapped
        uv, vis, w3 = uv[COCO17_FLIP], vis[COCO17_FLIP], w3[COCO17_FLIP]
    centred = w3 - w3[HIPS].mean(0)
    if hypothesis == "depth":  # limb depths mirrored about their shoulder / hip
        centred = centred.copy()
        for root, chain in (("shoulder", ("elbow", "wrist")), ("hip", ("knee", "ankle"))):
            for side in ("left", "right"):
                z0 = centred[COCO17.index(f"{side}_{root}"), 2]
                for j in chain:
                    k = COCO17.index(f"{side}_{j}")
                    centred[k, 2] = 2 * z0 - centred[k, 2]
    return uv, vis, centred


@dataclass
class FitTargets:
    """What a batched fit is fitted to: ``N = M * B`` rows, hypothesis-major (row ``h * B + b`` is
    hypothesis ``hypotheses[h]`` of image ``b``).

    Attributes:
        uv: (N, 17, 2) target pixels; conf: (N, 17) visibility, 0 where a joint does not enter;
        world: (N, 17, 3) hip-centred world landmarks of the hypothesis; world_select: (N, 17, 3)
        the landmarks the hypotheses are compared on (the ``depth`` hypothesis is judged on the
        unmirrored ones); K: (N, 3, 3); scale: (N,) person size in pixels (>= 16);
        hypotheses: the M hypotheses; images: B.
        conf_3d: (N, 17) the 3D term's visibility: ``conf``, and :attr:`FitWeights.unseen_3d` for the
        joints seen below the threshold inside the image (:func:`stack_targets`); None: ``conf``.
    """

    uv: np.ndarray
    conf: np.ndarray
    world: np.ndarray
    world_select: np.ndarray
    K: np.ndarray
    scale: np.ndarray
    hypotheses: tuple[str, ...]
    images: int
    #: (N, S, S) :func:`mask_distance_map` per row and (N, 3) its window ``(x0, y0, side)``; None: no masks
    mask_dist: np.ndarray | None = None
    mask_window: np.ndarray | None = None
    #: (N,) 1 for rows whose image has a (non-empty) person mask, else 0
    has_mask: np.ndarray | None = None
    #: (N, Q, 2) the mask's skeleton points (:func:`mask_skeleton_points`) and (N, Q) 1 / 0 (padding)
    mask_points: np.ndarray | None = None
    mask_point_weight: np.ndarray | None = None
    conf_3d: np.ndarray | None = None

    def with_masks(self, masks: Sequence[np.ndarray | None], windows: Sequence[tuple[int, int, int]], size: int,
                   points: int = 0) -> "FitTargets":
        """These targets with the B images' person masks (None: that image has none) as distance maps
        over the square ``windows`` (:func:`mask_distance_map`) and, with ``points`` > 0, up to that
        many skeleton points each (:func:`mask_skeleton_points`), repeated for every hypothesis."""
        if len(masks) != self.images or len(windows) != self.images:
            raise ValueError(f"{len(masks)} masks / {len(windows)} windows for {self.images} images")
        dist = np.stack([np.zeros((size, size), np.float32) if m is None else mask_distance_map(m, w, size)
                         for m, w in zip(masks, windows)])
        has = np.array([m is not None and bool((np.asarray(m) > 0.5).any()) for m in masks], np.float32)
        M = len(self.hypotheses)
        pts, pw = np.zeros((self.images, max(points, 1), 2), np.float32), np.zeros((self.images, max(points, 1)), np.float32)
        for b, (m, w) in enumerate(zip(masks, windows)):
            if points > 0 and has[b]:
                q = mask_skeleton_points(m, w, size, points)
                pts[b, :len(q)], pw[b, :len(q)] = q, 1.0
        return replace(self, mask_dist=np.tile(dist, (M, 1, 1)), mask_window=np.tile(np.asarray(windows, np.float32), (M, 1)),
                       has_mask=np.tile(has, M), mask_points=np.tile(pts, (M, 1, 1)), mask_point_weight=np.tile(pw, (M, 1)))


def stack_targets(observations: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], hypotheses: Sequence[str],
                  min_visibility: float, unseen_3d: float = 0.0,
                  sizes: Sequence[tuple[int, int]] | None = None) -> FitTargets:
    """:class:`FitTargets` of B images under M hypotheses.

    Args:
        observations: per image (keypoints (17, 3) u, v, visibility; world (17, 3); K (3, 3)).
        hypotheses: names from :data:`HYPOTHESES`.
        min_visibility: keypoints below this visibility get confidence 0.
        unseen_3d: :attr:`FitWeights.unseen_3d`: the 3D term's visibility (``conf_3d``) of the
            keypoints below ``min_visibility`` whose pixel lies inside their image; 0: ``conf_3d`` None.
        sizes: per image (H, W); needed when ``unseen_3d`` > 0 (else ``ValueError``).
    """
    B, M = len(observations), len(hypotheses)
    N = B * M
    if unseen_3d > 0 and (sizes is None or len(sizes) != B):
        raise ValueError(f"unseen_3d={unseen_3d} needs the (H, W) of each of the {B} images (sizes={sizes!r}); "
                         "pass sizes, or unseen_3d=0")
    t = FitTargets(uv=np.zeros((N, 17, 2)), conf=np.zeros((N, 17)), world=np.zeros((N, 17, 3)),
                   world_select=np.zeros((N, 17, 3)), K=np.zeros((N, 3, 3)), scale=np.zeros(N),
                   hypotheses=tuple(hypotheses), images=B, conf_3d=np.zeros((N, 17)) if unseen_3d > 0 else None)
    for h, hyp in enumerate(hypotheses):
        for b, (keypoints, world, K) in enumerate(observations):
            n = h * B + b
            t.uv[n], vis, t.world[n] = hypothesis_targets(keypoints, world, hyp)
            t.world_select[n] = t.world[n] if hyp != "depth" else hypothesis_targets(keypoints, world, "base")[2]
            t.K[n] = K
            t.conf[n] = np.where(vis >= min_visibility, vis, 0.0)
            seen = t.conf[n] > 0
            t.scale[n] = max(np.ptp(t.uv[n][seen], axis=0).max(), 16.0)
            if t.conf_3d is not None:  # pixel centres are integers (DESIGN §4): the image spans -0.5 .. W - 0.5
                height, width = sizes[b]
                inside = ((t.uv[n] >= -0.5) & (t.uv[n] <= np.array([width, height]) - 0.5)).all(-1)
                t.conf_3d[n] = np.where(seen, t.conf[n], np.where(inside, unseen_3d, 0.0))
    return t


def solve_translation(points: np.ndarray, uv: np.ndarray, K: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(3,) translation t so that ``points + t`` projects onto ``uv`` (weighted linear least squares).

    With p = X + t, u = fx p_x / p_z + cx gives fx t_x - (u - cx) t_z = (u - cx) X_z - fx X_x, and the
    same for v: two linear equations per point. A solution closer than 0.3 m to the camera (or
    behind it) is moved to 0.3 m along z.

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
    t[2] = max(t[2], 0.3)
    return t


def initial_placement(rest: np.ndarray, root_to_hips: np.ndarray, canonical_to_camera: np.ndarray, uv: np.ndarray,
                      conf: np.ndarray, world: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(global_orient (..., 3), transl (..., 3)) the fit starts from, for each row of any batch shape.

    The rotation R is the Kabsch fit of the rest torso onto the world landmarks' torso (weights:
    the confidences, at least 0.05); the translation puts the rotated rest joints onto ``uv``
    (:func:`solve_translation`, weights ``conf * COCO17_FIT_WEIGHT``), shifted because the body's
    pivot is its root joint, not the hip midpoint. The rotations of all rows are one batched
    solve (a fit's fixed cost: one row at a time took 2 ms a row).

    Args:
        rest: (17, 3) hip-centred COCO-17 of the rest body in camera orientation.
        root_to_hips: (3,) hip midpoint relative to the root joint, canonical frame.
        canonical_to_camera: (3, 3) the body model's canonical-to-camera rotation.
        uv: (..., 17, 2); conf: (..., 17); world: (..., 17, 3) hip-centred; K: (..., 3, 3).
    """
    uv, conf, world, K = (np.asarray(a, np.float64) for a in (uv, conf, world, K))
    batch = conf.shape[:-1]
    torso = (np.broadcast_to(rest[TORSO_INDEX], (*batch, len(TORSO_INDEX), 3)).copy(), world[..., TORSO_INDEX, :],
             np.maximum(conf[..., TORSO_INDEX], 0.05))
    R = rigid_rotation(*(torch.from_numpy(np.ascontiguousarray(a, np.float64)) for a in torso)).numpy()
    orient = R @ canonical_to_camera
    rows = (a.reshape(-1, *a.shape[len(batch):]) for a in (R, uv, conf, K))
    transl = np.stack([solve_translation(rest @ r.T, u, k, c * COCO17_FIT_WEIGHT)
                       for r, u, c, k in zip(*rows)]).reshape(*batch, 3)
    return rotmat_to_rotvec(torch.from_numpy(orient)).numpy(), transl - root_to_hips @ np.swapaxes(orient, -1, -2)


# ---------------------------------------------------------------------------------------------
# the body's part: which joints move, where the pose starts


def free_joint_mask(body: BodyModel) -> np.ndarray:
    """(J-1,) 1 for body_pose joints the fit may move, 0 for those it keeps at rest (:data:`ANNY_FIXED_BONES`)."""
    if body.name == "anny":
        return np.array([0.0 if n in ANNY_FIXED_BONES else 1.0 for n in ANNY_CMU31[1:]], np.float32)
    return np.ones(body.num_body_joints, np.float32)


def unmodelled_joint_mask(body: BodyModel, prior: PosePrior | None, free: np.ndarray) -> np.ndarray:
    """(J-1,) 1 for free joints that get the L2 pull to their initial value: with a prior that has a
    mean pose, the free joints it does not model (for Anny: outside ``ARTICULATED_INDEX``); else none."""
    unmodelled = free.copy()
    if prior is None or not hasattr(prior, "mean_pose"):
        unmodelled[:] = 0.0
    elif body.name == "anny":
        unmodelled[list(ARTICULATED_INDEX)] = 0.0
    return unmodelled


def initial_pose(body: BodyModel, prior: PosePrior | None, use_mean_pose: bool = True) -> torch.Tensor:
    """(J-1, 3) the pose the fit starts from: the prior's mean pose if it has one (of this body's
    size) and ``use_mean_pose``, else zeros (the rest pose)."""
    if use_mean_pose and prior is not None and hasattr(prior, "mean_pose"):
        pose = torch.as_tensor(prior.mean_pose(), dtype=torch.float32).reshape(-1, 3)
        if pose.shape[0] == body.num_body_joints:
            return pose.detach().clone()
    return torch.zeros(body.num_body_joints, 3)


def rest_joints_camera(body: BodyModel, joints: Callable[[dict], torch.Tensor], pose: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(rest (17, 3), root_to_hips (3,)): COCO-17 of the neutral-shape body in ``pose`` (J-1, 3), in
    camera orientation (rotation only) and hip-centred; and its hip midpoint relative to the root
    joint in the canonical frame. ``joints`` maps parameters to (B, 17, 3) COCO-17."""
    params = body.neutral_params(1)
    params["body_pose"] = pose[None]
    with torch.no_grad():
        coco = joints(params)[0].double().numpy()
    root_to_hips = coco[HIPS].mean(0)
    coco = coco @ body.canonical_to_camera.double().numpy().T
    return coco - coco[HIPS].mean(0), root_to_hips


# ---------------------------------------------------------------------------------------------
# the fit's own forward pass: Anny's bone chain on rotation matrices, no 4x4 transforms


@dataclass(frozen=True)
class BoneChain:
    """Anny's kinematic tree, level by level, and the bones its contracted COCO-17 regressor reads:
    what :func:`chain_keypoints` needs (see :meth:`of`).

    Attributes:
        levels: (first, last) positions of each depth level in ``order`` (the root alone first).
        local: (Nb,) for each position in ``order``, its parent's index within the previous level.
        order: (Nb,) bones in depth order; inverse: (Nb,) its inverse permutation.
        parent: (Nb,) each bone's parent (the root: itself).
        bones: (N',) the bones that move a keypoint; const: (17, N') the keypoints' weight on each
            bone's translation (``contract_keypoint_regressor``'s ``bones`` and ``const``).
        skeleton: (B, 6) phenotype -> the rest skeleton's ``heads`` and ``basis``, all that
            :func:`chain_keypoints` reads (:meth:`AnnyReducedForward.chain_skeleton`: no tails and
            rest poses of anny's 4x4 kinematics).
    """

    levels: tuple[tuple[int, int], ...]
    local: torch.Tensor
    order: torch.Tensor
    inverse: torch.Tensor
    parent: torch.Tensor
    bones: torch.Tensor
    const: torch.Tensor
    skeleton: Callable[[torch.Tensor], dict[str, torch.Tensor]]

    @classmethod
    def of(cls, joints: Callable) -> BoneChain | None:
        """The chain behind ``joints`` when it is :meth:`AnnyReducedForward.keypoints` of a rig that
        poses bones in anny's ``local-ref`` parameterisation with the rest orientations as reference
        and the root at identity (anny 0.6.2's default rig: ``RiggedModel.get_bone_transforms``,
        ``kinematics.forward_kinematic``); None otherwise (the fit then runs ``joints`` itself)."""
        reduced = getattr(joints, "__self__", None)
        if not isinstance(reduced, AnnyReducedForward) or getattr(joints, "__name__", "") != "keypoints":
            return None
        core = reduced.core
        if (core.pose_parameterization != "local-ref" or core.reference_bone_orientations is not None
                or not core.root_identity_orientation):
            return None
        local, order, inverse, parent = core.kinematic_chain_indices
        c = reduced.contraction
        return cls(tuple((int(a), int(b)) for a, b in core.kinematic_chain_levels), local, order, inverse, parent,
                   c["bones"], c["const"], reduced.chain_skeleton)


def chain_transforms(chain: BoneChain, rotations: torch.Tensor, transl: torch.Tensor,
                     heads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, Nb, 3, 3) rotations G, (N, Nb, 3) translations t) of the skinning transforms x -> G x + t.

    In anny's ``local-ref`` parameterisation (each bone's delta rotation D_c in world-aligned axes,
    rest orientations as reference, the root's rest orientation the identity) the posed transform
    of bone c with parent p is G_c = G_p D_c, its posed head w_c = w_p + G_p (h_c - h_p), and
    t_c = w_c - G_c h_c; the root's G_0 = D_0, w_0 = ``transl``. This equals
    ``kinematics.forward_kinematic``'s transforms (anny 0.6.2) without its reference-pose products
    and rest-pose inverses: one gather and one (3, 4) x (4, 4) product per depth level, a fraction
    of the operations of a fit iteration.

    Args:
        chain: :meth:`BoneChain.of`; rotations: (N, Nb, 3, 3) D_c (the root's first);
        transl: (N, 3); heads: (N, Nb, 3) rest bone heads h_c.
    """
    # each bone's [D_c | h_c - h_p] as a 4x4 step, so a level costs one gather and one product
    n, bones = rotations.shape[:2]
    offsets = heads - heads[:, chain.parent]
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=rotations.dtype, device=rotations.device).expand(n, bones, 1, 4)
    steps = torch.cat([torch.cat([rotations, offsets[..., None]], -1), bottom], -2)[:, chain.order]
    X = [torch.cat([rotations[:, :1], transl[:, None, :, None]], -1)]  # the root's [G_0 | w_0]
    for first, last in chain.levels[1:]:
        X.append(X[-1][:, chain.local[first:last]] @ steps[:, first:last])
    posed = torch.cat(X, 1)[:, chain.inverse]  # (N, Nb, 3, 4) [G_c | w_c]
    rot = posed[..., :3]
    return rot, posed[..., 3] - (rot @ heads[..., None])[..., 0]


def chain_keypoints(chain: BoneChain, params: Mapping[str, torch.Tensor], skeleton: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(N, 17, 3) COCO-17 keypoints of Anny ``params`` (global_orient (N, 3), body_pose (N, Nb-1, 3),
    transl (N, 3)) on a rest ``skeleton`` (:meth:`AnnyReducedForward.rest_skeleton`: ``heads``,
    ``basis``): :meth:`AnnyReducedForward.keypoints` through :func:`chain_transforms` (equal up to
    float rounding; the phenotype enters through ``skeleton`` only)."""
    rotations = rotvec_to_rotmat(torch.cat([params["global_orient"][:, None], params["body_pose"]], 1))
    rot, t = chain_transforms(chain, rotations, params["transl"], skeleton["heads"])
    rot, t = rot[:, chain.bones], t[:, chain.bones]
    basis = skeleton["basis"]  # (N, 17, N', 3): k_j = sum_n R_n A_jn + c_jn t_n as two matrix products
    return basis.reshape(*basis.shape[:2], -1) @ rot.transpose(-1, -2).reshape(len(rot), -1, 3) + chain.const @ t


# ---------------------------------------------------------------------------------------------
# the optimisation


@dataclass
class FitResult:
    """Outcome of :func:`optimise`: ``params`` (N rows, detached) and their ``energy`` (N,),
    evaluated on ``world_select``."""

    params: dict[str, torch.Tensor]
    energy: torch.Tensor


@dataclass
class FitTerms:
    """The constants of the energy for one :func:`optimise` call (N rows, float32 tensors): what
    :func:`fit_energy` reads besides the parameters.

    Attributes:
        uv: (N, 17, 2) target pixels; K: (N, 3, 3); scale: (N,) person size in pixels;
        w2, w3: (N, 17) the 2D and 3D terms' joint weights (mask-gated); world: (N, 17, 3) the 3D
        term's landmarks.
        shape_key: the body's shape parameter name; neutral: (1, S) its neutral value.
        pose0: (1, J-1, 3) the start pose; free: (1, J-1, 1) 1 where the fit moves the joint;
        unmodelled: (1, J-1, 1) the joints pulled to ``pose0`` (None: no pull).
        dist, window, has_mask: the mask term's (N, S, S) distance maps, (N, 3) windows and (N,) 0 / 1
            (None: no mask term); points, point_weight: the coverage term's (N, Q, 2) skeleton
            points and (N, Q) weights (None: no coverage term).
    """

    uv: torch.Tensor
    K: torch.Tensor
    scale: torch.Tensor
    w2: torch.Tensor
    w3: torch.Tensor
    world: torch.Tensor
    shape_key: str
    neutral: torch.Tensor
    pose0: torch.Tensor
    free: torch.Tensor
    unmodelled: torch.Tensor | None = None
    dist: torch.Tensor | None = None
    window: torch.Tensor | None = None
    has_mask: torch.Tensor | None = None
    points: torch.Tensor | None = None
    point_weight: torch.Tensor | None = None


def fit_params(terms: FitTerms, orient: torch.Tensor, transl: torch.Tensor, delta: torch.Tensor,
               shape: torch.Tensor) -> dict[str, torch.Tensor]:
    """The body parameters of the iterates: (N, 3) ``orient`` and ``transl``, (N, J-1, 3) pose
    ``delta`` from ``terms.pose0`` (on the free joints only), (N, S) ``shape``."""
    return {"global_orient": orient, "body_pose": terms.pose0 + delta * terms.free, terms.shape_key: shape,
            "transl": transl}


def data_energy(terms: FitTerms, weights: FitWeights, coco: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor,
                world: torch.Tensor) -> torch.Tensor:
    """(N,) the 2D and 3D terms of (N, 17, 3) joints with (N, 17) joint weights ``w2``, ``w3`` and
    (N, 17, 3) ``world`` landmarks."""
    cw = weights
    loss = cw.w_2d * reprojection_energy(coco, terms.K, terms.uv, terms.scale, w2, cw.robust_sigma)
    if cw.w_3d:
        loss = loss + cw.w_3d * relative_3d_energy(coco, world, w3, cw.align_3d, cw.align_scale, cw.sigma_3d)
    return loss


def fit_energy(terms: FitTerms, weights: FitWeights, prior: PosePrior | None, p: Mapping[str, torch.Tensor],
               coco: torch.Tensor, delta: torch.Tensor, world: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) the whole energy of the module docstring: parameters ``p`` (:func:`fit_params`), their
    (N, 17, 3) joints ``coco``, the pose ``delta``, on ``world`` (default ``terms.world``)."""
    cw = weights
    loss = data_energy(terms, cw, coco, terms.w2, terms.w3, terms.world if world is None else world)
    if terms.dist is not None:
        loss = loss + cw.w_mask * mask_energy(silhouette_points(coco), terms.K, terms.dist, terms.window, terms.scale,
                                              terms.has_mask, cw.mask_sigma)
    if terms.points is not None:
        loss = loss + cw.w_cover * coverage_energy(coco, terms.K, terms.points, terms.point_weight, terms.scale,
                                                   cw.cover_tolerance, cw.mask_sigma)
    if prior is not None:
        loss = loss + cw.w_pose * prior.penalty(p["body_pose"])
        if terms.unmodelled is not None:
            loss = loss + cw.w_unmodelled * ((delta * terms.unmodelled) ** 2).sum((-1, -2))
    else:
        loss = loss + cw.w_fallback * fallback_pose_penalty(p["body_pose"])
    return loss + cw.w_shape * ((p[terms.shape_key] - terms.neutral) ** 2).sum(-1)


def chain_energy(chain: BoneChain, terms: FitTerms, weights: FitWeights, prior: PosePrior | None,
                 orient: torch.Tensor, transl: torch.Tensor, delta: torch.Tensor, shape: torch.Tensor,
                 heads: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """() stage 2's energy summed over the rows, through Anny's bone ``chain`` on the rest skeleton
    (``heads`` (N, Nb, 3), ``basis`` (N, 17, N', 3): :meth:`AnnyReducedForward.rest_skeleton`) of
    ``shape``: a pure function of its inputs, what ``optimise(compiled_energy=True)`` compiles."""
    p = fit_params(terms, orient, transl, delta, shape)
    coco = chain_keypoints(chain, p, {"heads": heads, "basis": basis})
    return fit_energy(terms, weights, prior, p, coco, delta).sum()


def torso_energy(terms: FitTerms, weights: FitWeights, rest: torch.Tensor, root: torch.Tensor, orient: torch.Tensor,
                 transl: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """() stage 1's energy summed over the rows: :func:`data_energy` of the rest joints ``rest`` (1, 17, 3)
    moved rigidly (:func:`rigid_joints`) with the torso's joint weights ``w2``, ``w3`` (N, 17)."""
    return data_energy(terms, weights, rigid_joints(rest, root, orient, transl), w2, w3, terms.world).sum()


def chain_skeleton(rest_skeleton: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
                   shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(heads (N, Nb, 3), basis (N, 17, N', 3)): ``rest_skeleton(shape)``
    (:attr:`BoneChain.skeleton`), what :func:`chain_energy` reads."""
    skeleton = rest_skeleton(shape)
    return skeleton["heads"], skeleton["basis"]


#: :func:`compiled` functions of this process (torch.compile compiles each once per input variant)
_COMPILED: dict[Callable, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)`` (inductor), made once per process and reused: the graphs it compiles
    (one per input variant, e.g. with / without masks) serve every later call whatever the batch
    size when the callers mark their tensors' row dimension dynamic (:func:`rows_dynamic`)."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn)
    return _COMPILED[fn]


def rows_dynamic(*tensors: torch.Tensor | None) -> None:
    """Mark the first (row) dimension of ``tensors`` dynamic for :func:`compiled` functions, so that
    another batch size reuses the compiled graph (only that dimension: marking every dimension
    dynamic would tie the rows to any other dimension of the same size and recompile later)."""
    for t in tensors:
        if t is not None:
            torch._dynamo.maybe_mark_dynamic(t, 0)


def rigid_joints(rest: torch.Tensor, root: torch.Tensor, orient: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
    """(N, J, 3) joints of a body whose pose and shape are fixed, moved by ``global_orient`` and ``transl``.

    The body's global rotation pivots about its root joint, so ``J = R(orient) (J0 - r) + r + t``.

    Args:
        rest: (N|1, J, 3) joints at zero global_orient and transl; root: (N|1, 3) root joint r there;
        orient: (N, 3) axis-angle; transl: (N, 3).
    """
    return (rest - root[:, None]) @ rotvec_to_rotmat(orient).transpose(1, 2) + (root + transl)[:, None]


def optimise(body: BodyModel, joints: Callable[[dict], torch.Tensor], targets: FitTargets, orient0: np.ndarray,
             transl0: np.ndarray, pose0: torch.Tensor, free: np.ndarray, unmodelled: np.ndarray,
             prior: PosePrior | None, weights: FitWeights,
             shape_split: tuple[Callable[[torch.Tensor], object], Callable[[dict, object], torch.Tensor]] | None = None,
             compiled_energy: bool = False) -> FitResult:
    """Minimise the energy of the module docstring for every row of ``targets`` at once (Adam).

    Stage 1 moves only the global orientation and translation, so the body's joints are computed
    once and moved rigidly (:func:`rigid_joints`), and the pose and shape terms, constant there, are
    left out. Stage 2 runs the whole energy on the reduced or full forward ``joints``; when
    ``shape_split[1]`` is :meth:`AnnyReducedForward.keypoints` it runs :func:`chain_energy`
    instead (the same joints, :meth:`BoneChain.of`).

    Args:
        body: the body model (shape key, sizes, neutral shape); joints: parameters -> (N, 17, 3)
            camera-frame COCO-17 (the full forward or a reduced one).
        targets: :func:`stack_targets`; orient0, transl0: (N, 3) :func:`initial_placement`.
        pose0: (J-1, 3) :func:`initial_pose`; free, unmodelled: (J-1,) :func:`free_joint_mask`,
            :func:`unmodelled_joint_mask`.
        prior: pose prior whose ``penalty`` regularises the pose; None: :func:`fallback_pose_penalty`.
        shape_split: ``joints`` in two parts, (shape -> its part of the forward pass, (parameters,
            that part) -> joints), so that stage 2 can hold the shape for
            :attr:`FitWeights.shape_every` - 1 iterations out of ``shape_every``; None: never held.
            Through the bone chain the shape's part is :attr:`BoneChain.skeleton` (the part of
            ``shape_split[0]`` that the chain reads).
        compiled_energy: run both stages' energies, forward and backward, through ``torch.compile``
            (:func:`compiled`: :func:`torso_energy`, :func:`chain_skeleton`, :func:`chain_energy`;
            needs Anny's bone chain, else ``ValueError``) and Adam as one fused kernel: the same fit
            to float rounding at a fraction of the per-iteration cost, after a one-off compilation
            per process (see the module docstring).
    """
    cw = weights
    N = len(targets.uv)
    def tt(a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=torch.float32)

    # 1. constants, once per call
    uv_t, K_t, scale_t = tt(targets.uv), tt(targets.K), tt(targets.scale)
    w2_t = tt(targets.conf * COCO17_FIT_WEIGHT)
    conf_3d = targets.conf if targets.conf_3d is None else targets.conf_3d
    w3_t = tt(conf_3d * (COCO17_WORLD_WEIGHT if cw.world_reliability else COCO17_FIT_WEIGHT))
    masks: dict[str, torch.Tensor] = {}
    has_masks = targets.mask_dist is not None and bool(targets.has_mask.any())
    if has_masks:
        dist_t, window_t = tt(targets.mask_dist), tt(targets.mask_window)
        if cw.w_mask > 0:
            masks.update(dist=dist_t, window=window_t, has_mask=tt(targets.has_mask))
        if cw.w_cover > 0 and targets.mask_points is not None:
            masks.update(points=tt(targets.mask_points), point_weight=tt(targets.mask_point_weight))
        if cw.mask_gate > 0:  # keypoints off the person mask lose weight
            off = distance_at(uv_t, dist_t, window_t) / (cw.mask_gate * scale_t[:, None])
            gate = torch.exp(-0.5 * off**2)
            w2_t = w2_t * gate
            if cw.mask_gate_3d:
                w3_t = w3_t * gate
    pull_unmodelled = prior is not None and cw.w_unmodelled > 0 and bool(unmodelled.any())
    terms = FitTerms(uv=uv_t, K=K_t, scale=scale_t, w2=w2_t, w3=w3_t, world=tt(targets.world), shape_key=body.shape_key,
                     neutral=body.neutral_params(1)[body.shape_key], pose0=pose0[None], free=tt(free)[None, :, None],
                     unmodelled=tt(unmodelled)[None, :, None] if pull_unmodelled else None, **masks)
    torso_mask = torch.zeros(17)
    torso_mask[TORSO_INDEX] = 1.0
    orient = tt(orient0).requires_grad_(True)
    transl = tt(transl0).requires_grad_(True)
    delta = torch.zeros(N, body.num_body_joints, 3, requires_grad=True)
    shape_logit = torch.zeros(N, body.shape_dim, requires_grad=True)

    def shape_now() -> torch.Tensor:
        return torch.sigmoid(shape_logit) if body.shape_key == "phenotype" else shape_logit * 3.0

    def params_now() -> dict[str, torch.Tensor]:
        return fit_params(terms, orient, transl, delta, shape_now())

    chain = None if shape_split is None else BoneChain.of(shape_split[1])
    skeleton_of = None if shape_split is None else shape_split[0] if chain is None else chain.skeleton
    if compiled_energy and chain is None:
        raise ValueError(f"compiled_energy needs Anny's bone chain (the reduced forward's keypoints); the "
                         f"{body.name!r} body's fit runs eagerly only: pass compiled_energy=False")
    if compiled_energy:
        rows_dynamic(orient, transl, delta, *(getattr(terms, f.name) for f in fields(terms)
                                              if f.name not in ("shape_key", "neutral", "pose0", "free", "unmodelled")))

    # 2. stage 1: global orientation and translation on the torso; the body itself does not change
    with torch.no_grad():
        start = {k: v.detach() for k, v in params_now().items()}
        start["global_orient"], start["transl"] = torch.zeros(1, 3), torch.zeros(1, 3)
        start = {k: v[:1] for k, v in start.items()}  # every row starts from the same pose and shape
        rest, root = joints(start), body.root_rest_position(start)
    w2_torso, w3_torso = w2_t * torso_mask, w3_t * torso_mask
    # one multi-tensor update, not one per tensor; compiled, one fused kernel (half the time, equal to float rounding)
    adam = {"fused": True} if compiled_energy else {"foreach": True}
    stage1 = torch.optim.Adam([orient, transl], lr=cw.lr, **adam)
    if compiled_energy:
        rows_dynamic(w2_torso, w3_torso)
    stage1_energy = compiled(torso_energy) if compiled_energy else torso_energy
    for _ in range(cw.iters_global):
        stage1.zero_grad()
        stage1_energy(terms, cw, rest, root, orient, transl, w2_torso, w3_torso).backward()
        stage1.step()
    # 3. stage 2: everything
    stage2 = torch.optim.Adam([orient, transl, delta, shape_logit], lr=cw.lr, **adam)
    skeleton = None
    for it in range(cw.iters_full):
        if cw.lr_final != 1.0:
            f = cw.lr_final + (1 - cw.lr_final) * 0.5 * (1 + math.cos(math.pi * it / max(cw.iters_full - 1, 1)))
            for g in stage2.param_groups:
                g["lr"] = cw.lr * f
        stage2.zero_grad()
        if shape_split is None:
            p = params_now()
            fit_energy(terms, cw, prior, p, joints(p), delta).sum().backward()
            stage2.step()
            continue
        shape = shape_now()
        if skeleton is None:  # the shape's part at the current phenotype, recorded for the next shape iteration
            if compiled_energy:
                rows_dynamic(shape)
                skeleton = dict(zip(("heads", "basis"), compiled(chain_skeleton)(skeleton_of, shape)))
            else:
                skeleton = skeleton_of(shape)
        if it % cw.shape_every == 0:
            part, skeleton = skeleton, None  # the shape moves now
        else:  # the shape is held (no gradient, Adam leaves it alone); its part of the forward pass is reused
            shape, part = shape.detach(), {k: v.detach() for k, v in skeleton.items()}
            if compiled_energy:  # one graph for both kinds of iteration: the held parts' gradients are dropped
                shape, part = shape.requires_grad_(True), {k: v.requires_grad_(True) for k, v in part.items()}
        if chain is None:
            p = fit_params(terms, orient, transl, delta, shape)
            loss = fit_energy(terms, cw, prior, p, shape_split[1](p, part), delta).sum()
        elif compiled_energy:
            rows_dynamic(shape, part["heads"], part["basis"])
            loss = compiled(chain_energy)(chain, terms, cw, prior, orient, transl, delta, shape, part["heads"], part["basis"])
        else:
            loss = chain_energy(chain, terms, cw, prior, orient, transl, delta, shape, part["heads"], part["basis"])
        loss.backward()
        stage2.step()
    with torch.no_grad():
        final = {k: v.detach() for k, v in params_now().items()}
        return FitResult(final, fit_energy(terms, cw, prior, final, joints(final), delta.detach(), tt(targets.world_select)))


def select_hypotheses(result: FitResult, targets: FitTargets, best: np.ndarray | None = None) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """(params of the B chosen rows, (B,) index into ``targets.hypotheses``): per image the
    hypothesis ``best`` (B,) names, by default the one with the lowest final energy (the MediaPipe
    fitter passes :func:`~diffusion_hpc.estimate.facing.choose_hypotheses`' choice)."""
    B = targets.images
    if best is None:
        best = result.energy.reshape(len(targets.hypotheses), B).argmin(0).numpy()
    rows = torch.as_tensor(np.asarray(best, np.int64)) * B + torch.arange(B)
    return {k: v[rows] for k, v in result.params.items()}, np.asarray(best, np.int64)
