"""Which way a person faces: cues independent of the detector's left/right labels, and the choice
between the fit's ``base`` and ``swap`` hypotheses they gate.

A fit to left/right-swapped keypoints reprojects as well as the unswapped one (the body turns
round), so the fit's energy alone cannot tell a frontal person from one facing away. The cues:

- **face depth** (:func:`face_depth_cue`): in the detector's world landmarks (metres, camera-aligned
  axes, z away from the camera) the nose and eyes lie in front of the shoulders for a person facing
  the camera and behind them for one facing away. Independent of the labels (the nose has no
  side), though not of the detector's own belief about the person.
- **a face** (:func:`face_detector_cue`): a face detector (its own network) finding a face with both
  eyes around the pose's head: the person faces the camera or is at most side-on.
- **label-dependent facing** (:func:`torso_facing`): the direction the fitted torso faces, given its
  labels. With a person facing the camera, the person's left shoulder lies on the image right, so
  the torso normal ``(left - right) x up`` points at the camera; under the swapped labels it points
  away. This is the sign of the 3D alignment (a proper rotation maps the labelled rest torso onto
  the landmarks only one way round) and, in the image, the 2D cue.

- **anatomical plausibility** (:func:`plausibility_cue`): the pose prior's score of each
  hypothesis's fitted pose. Turning a body round while its limbs stay where the image puts them
  bends a knee that bent forward backwards (and an elbow the wrong way): the turned-round fit is the
  less plausible one when limbs are bent, and the two score alike when they are straight, so the
  cue is the relative gap of the two scores (0 when they agree).

:func:`choose_hypotheses` combines them: the facing score ``f`` in [-1, 1] (+1: facing the camera)
weighs the two independent cues; each hypothesis's fitted body faces ``c_h`` (cosine to the camera
direction); the swapped hypothesis wins only if its relative energy advantage beats a margin
plus the cues' preference for the unswapped body:

    prefer_swap = (E_base - E_swap) / max(E_base, E_swap) - margin + w_cue * f * (c_swap - c_base) / 2
                  [+ w_lifter * min(2 p - 1, 0), p the lifter's probability that the detector swapped left and right]
                  [+ w_plausible * (s_base - s_swap) / (s_base + s_swap), s_h the prior's score of hypothesis h's pose]

Tuned on renders with known poses (``scripts/bench_estimate.py``) and the real photos that ship in
wheels; the constants are :class:`FacingWeights`.

What the cues can and cannot see (64 renders a seed, segmenter's masks, shipped lifter): where the
detector's labels are right, the swapped fit is the less plausible pose in 93-98 % of the renders
(median prior-score gap 18-20, seeds 2024 / 2026 / 2027) and in 89-96 % the worse 2D fit. The
swaps left (17 over four seeds) are of two kinds. Most are coherent misreadings by the detector of
small people over photo backgrounds (heads 5-11 px across at 256 px): its labels, its world
landmarks' face depth (the face-depth cue points the wrong way in every front or back view among
them) and the lifter fed with them agree on the wrong facing, and the wrong body is then the depth
mirror of the truth, as plausible (its prior score minus the right pose's: -38 to +3, mostly -7 to
+3) and as good a 2D fit; no face detector
fires on such heads (MediaPipe's short-range detector on an 8x head crop finds faces on 40-75 % of
the front views and 10-26 % of the back views at about 3 ms CPU a crop, but on none of these; its
full-range model on 10-30 % of the front views at 9 ms). Four are fits to the wrong person (the
astronaut of a background photo). The lifter's swap probability as a two-sided cue adds a swap on
seed 2024 before it fixes one and turns the astronaut photo round at weights above 0.3. So the
plausibility cue is a veto on swaps that win on energy with a less plausible pose: on the tuning
seeds it changes no decision at weights up to 1 (at 2 one more swap); on the held-out seed 2025 it
vetoes one of the two swapped hypotheses that won (a fit to the background astronaut): swaps
7.8 -> 6.2 %, limb PA-MPJPE 89.9 / 70.5 -> 89.8 / 70.5 mm (lifter off: 10.9 -> 9.4 %, 100.7 -> 99.8
mm mean); seed 2024 unchanged (66.8 / 53.0 mm, 4.8 %, lifter off 71.5 / 63.2 mm). The real photos'
margins: astronaut 0.100 -> 0.128, Grace Hopper 0.406 -> 0.385, cameraman 0.81 -> 0.98. It costs one
batched prior call over all hypotheses (0.8 ms CPU for 16 images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffusion_hpc.body.joint_sets import COCO17

_I = COCO17.index
#: COCO-17 indices of the face points whose depth is compared with the shoulders'
FACE_FRONT = np.array([_I("nose"), _I("left_eye"), _I("right_eye")])
SHOULDERS = np.array([_I("left_shoulder"), _I("right_shoulder")])
HIPS = np.array([_I("left_hip"), _I("right_hip")])
#: COCO-17 (left, right) limb pairs: shoulders, elbows, wrists, hips, knees, ankles
LIMB_PAIRS = tuple((_I(f"left_{j}"), _I(f"right_{j}")) for j in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"))

#: facing labels by the cosine between the body's forward direction and the direction to the camera
FACING_LABELS = ("front", "side", "back")


@dataclass(frozen=True)
class FacingWeights:
    """Constants of the facing decision (module docstring)."""

    #: face depth in front of the shoulders, in shoulder widths, that counts as a full +1 cue
    depth_full: float = 0.3
    #: weights of the face-depth and face-detector cues in the facing score
    w_depth: float = 0.5
    w_face: float = 0.5
    #: relative energy advantage the swapped hypothesis needs before any cue
    margin: float = 0.05
    #: weight of the cues' preference in the decision
    w_cue: float = 0.3
    #: |cos| of the body's forward direction to the camera direction below which it is "side" (60 deg)
    side_cos: float = 0.5
    #: weight of the lifter's swap probability p (:mod:`~diffusion_hpc.estimate.lifter`) in the
    #: decision, as ``w_lifter * min(2 p - 1, 0)``: a veto on swapping only (its "swapped" finds a
    #: fifth of the detector's swaps on renders and fires on the astronaut photo, trained as it is
    #: on faceless renders); used only when the fit runs with a lifter
    w_lifter: float = 0.1
    #: weight of :func:`plausibility_cue` (the pose prior's relative score gap of the two fitted
    #: poses); used only when the fit runs with a pose prior. Every weight up to 1 leaves the
    #: decisions on the tuning renders unchanged (seeds 2024, 2026, 2027) and 2 adds a swap: 0.5
    w_plausible: float = 0.5


def torso_facing(coco17: np.ndarray) -> np.ndarray:
    """(...,) cosine between the torso's forward direction and the direction to the camera.

    Forward is ``(left - right) x up`` with left - right the sum of the shoulder and hip vectors and
    up the hip-to-shoulder midpoint vector; the camera looks along +z, so the direction to it is -z.
    +1: the body faces the camera with its left on the image right; -1: it faces away.

    Args:
        coco17: (..., 17, 3) COCO-17 joints in the camera frame (x right, y down, z forward).
    """
    j = np.asarray(coco17, np.float64)
    left = (j[..., SHOULDERS[0], :] - j[..., SHOULDERS[1], :]) + (j[..., HIPS[0], :] - j[..., HIPS[1], :])
    up = j[..., SHOULDERS, :].mean(-2) - j[..., HIPS, :].mean(-2)
    forward = np.cross(left, up)
    return -forward[..., 2] / np.maximum(np.linalg.norm(forward, axis=-1), 1e-9)


def facing_label(cos: float, side_cos: float = FacingWeights.side_cos) -> str:
    """"front", "side" or "back" for a cosine of :func:`torso_facing`."""
    return "front" if cos >= side_cos else "back" if cos <= -side_cos else "side"


def face_depth_cue(world: np.ndarray, depth_full: float = FacingWeights.depth_full) -> float:
    """Face-in-front-of-torso cue in [-1, 1] from hip-centred world landmarks (+1: facing the camera).

    The mean depth of nose and eyes minus that of the shoulders' midpoint, in shoulder widths (at
    least 10 cm), negated (z points away from the camera) and divided by ``depth_full``, clipped.
    Label-free: exchanging left and right leaves it unchanged.

    Args:
        world: (17, 3) COCO-17 world landmarks (metres, camera-aligned axes, z away from the camera).
    """
    w = np.asarray(world, np.float64)
    width = max(float(np.linalg.norm(w[SHOULDERS[0]] - w[SHOULDERS[1]])), 0.1)
    ahead = -(w[FACE_FRONT, 2].mean() - w[SHOULDERS, 2].mean()) / width
    return float(np.clip(ahead / depth_full, -1.0, 1.0))


def face_detector_cue(faces: np.ndarray, nose_uv: np.ndarray) -> float:
    """Face cue in [0, 1]: the best score of the detected faces whose box holds the pose's nose.

    A face detector finds faces seen from the front or side-on with both eyes; none around the head
    is no evidence either way (a small or blurred face), so the cue is 0, not negative.

    Args:
        faces: (F, 5) detected faces: score, x0, y0, x1, y1 (pixels), F >= 0.
        nose_uv: (2,) the pose detector's nose in pixels.
    """
    faces = np.asarray(faces, np.float64).reshape(-1, 5)
    u, v = float(nose_uv[0]), float(nose_uv[1])
    inside = (faces[:, 1] <= u) & (u <= faces[:, 3]) & (faces[:, 2] <= v) & (v <= faces[:, 4])
    return float(faces[inside, 0].max()) if inside.any() else 0.0


def facing_score(depth_cue: np.ndarray, face_cue: np.ndarray, weights: FacingWeights = FacingWeights()) -> np.ndarray:
    """(B,) the facing score in [-1, 1] (+1: facing the camera) from (B,) face-depth and face cues."""
    return np.clip(weights.w_depth * np.asarray(depth_cue) + weights.w_face * np.asarray(face_cue), -1.0, 1.0)


def plausibility_cue(keep_score: np.ndarray, swap_score: np.ndarray) -> np.ndarray:
    """(...,) in [-1, 1]: how much more plausible the swapped hypothesis's fitted pose is than the
    kept one's, ``(s_keep - s_swap) / (s_keep + s_swap)`` (+: the swapped pose is the likelier).

    Relative, so it is 0 when both poses are alike (straight limbs: facing cannot change
    plausibility) and near +-1 when one of them bends a joint against its range.

    Args:
        keep_score, swap_score: (...,) pose-prior scores (``PosePrior.score``: >= 0, 0 at the
            prior's peak, larger is less plausible) of the kept and the swapped hypothesis's poses.
    """
    keep, swap = np.asarray(keep_score, np.float64), np.asarray(swap_score, np.float64)
    return np.clip((keep - swap) / np.maximum(keep + swap, 1e-9), -1.0, 1.0)


def choose_hypotheses(energy: np.ndarray, fitted_facing: np.ndarray, score: np.ndarray, hypotheses: tuple[str, ...],
                      weights: FacingWeights = FacingWeights(), swap_prob: np.ndarray | None = None,
                      pose_score: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(best (B,) index into ``hypotheses``, margin (B,) >= 0) per image.

    Among the non-swapped hypotheses the lowest energy is kept (``base`` or ``depth``); ``swap``
    replaces it only when ``prefer_swap`` (module docstring) is positive. The margin is
    ``|prefer_swap|``: how clearly the decision was made (without a ``swap`` row: the relative energy
    gap to the runner-up, or 0 with a single hypothesis).

    Args:
        energy: (M, B) final energies per hypothesis and image; fitted_facing: (M, B) :func:`torso_facing`
            of each fitted body; score: (B,) :func:`facing_score`; hypotheses: the M names;
            swap_prob: (B,) the lifter's swap probability, or None (no lifter term);
            pose_score: (M, B) the pose prior's score of each hypothesis's fitted pose, or None
            (no plausibility term, :func:`plausibility_cue`).
    """
    energy, fitted_facing = np.asarray(energy, np.float64), np.asarray(fitted_facing, np.float64)
    M, B = energy.shape
    plain = [h for h, name in enumerate(hypotheses) if name != "swap"]
    best = np.array(plain)[energy[plain].argmin(0)] if plain else np.zeros(B, np.int64)
    margin = np.zeros(B)
    if len(plain) > 1:
        part = np.sort(energy[plain], axis=0)
        margin = (part[1] - part[0]) / np.maximum(part[1], 1e-12)
    if "swap" in hypotheses and plain:
        s, cols = hypotheses.index("swap"), np.arange(B)
        e_keep, e_swap = energy[best, cols], energy[s]
        cue = np.asarray(score, np.float64) * (fitted_facing[s] - fitted_facing[best, cols]) / 2.0
        prefer = (e_keep - e_swap) / np.maximum(np.maximum(e_keep, e_swap), 1e-12) - weights.margin + weights.w_cue * cue
        if swap_prob is not None:
            prefer = prefer + weights.w_lifter * np.minimum(2.0 * np.asarray(swap_prob, np.float64) - 1.0, 0.0)
        if pose_score is not None:
            pose_score = np.asarray(pose_score, np.float64)
            prefer = prefer + weights.w_plausible * plausibility_cue(pose_score[best, cols], pose_score[s])
        best = np.where(prefer > 0, s, best)
        margin = np.abs(prefer)
    return best.astype(np.int64), margin


def left_right_accuracy(fitted: np.ndarray, true: np.ndarray) -> float:
    """Share of the :data:`LIMB_PAIRS` whose fitted left joint lies nearer the true left joint than
    the true right one (a swap-aware figure for benchmarks and tests).

    Both skeletons are hip-centred first, with no rotation alignment (a Procrustes rotation would
    turn a body that faces the wrong way round and hide the swap).

    Args:
        fitted, true: (17, 3) COCO-17 joints in the same camera frame.
    """
    fitted = np.asarray(fitted, np.float64) - np.asarray(fitted, np.float64)[HIPS].mean(0)
    true = np.asarray(true, np.float64) - np.asarray(true, np.float64)[HIPS].mean(0)
    near = [np.linalg.norm(fitted[lt] - true[lt]) < np.linalg.norm(fitted[lt] - true[rt]) for lt, rt in LIMB_PAIRS]
    return float(np.mean(near))
