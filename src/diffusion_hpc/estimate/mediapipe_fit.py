"""Default mesh estimator: MediaPipe Pose landmarks -> body-model fit by batched optimisation.

The estimator glues two parts: the detector (:mod:`diffusion_hpc.estimate.landmarks`: MediaPipe
Pose's 33 image and world landmarks, mapped to COCO-17) and the fit
(:mod:`diffusion_hpc.estimate.fit`: the energy, its initialisation and the batched Adam
optimisation over every image of a call and every start hypothesis at once). The pose prior is
``prior.penalty`` (default: the shipped Anny prior, :func:`resolve_prior`) or, with ``prior=None``,
:func:`~diffusion_hpc.estimate.fit.fallback_pose_penalty`.

Measured with ``scripts/bench_estimate.py`` (112 renders, seed 2024, 105 easy; PA-MPJPE mean /
median, H36M-17): the old defaults (no prior, rest-pose start, w_3d 10) 82 / 74 mm; + prior and
mean-pose start 73 / 65; w_pose 0.01 66 / 60; + w_3d 3 64 / 56; + reliability weights 63 / 55;
w_pose 0.03 62 / 52 (MediaPipe's own world landmarks: 80 / 75 on COCO-17). A robust 3D loss,
the depth-mirrored hypothesis, scale alignment, more iterations and cosine schedules did not help.

Facing: the fit runs a ``base`` and a left/right-``swap`` hypothesis side by side; the swapped one
reprojects about as well with the body turned round, so it is kept only with a margin and when the
label-free facing cues (:mod:`~diffusion_hpc.estimate.facing`: the face's depth against the
shoulders in the world landmarks, and MediaPipe's face detector, :class:`MediaPipeFaceDetector`)
do not say otherwise. Each estimate records ``facing`` (front / side / back of the fitted torso),
``facing_score`` and ``facing_margin``. Swap-aware figures (``scripts/bench_estimate.py``, 224
renders, half over real photos; limb PA-MPJPE against the true joints): the fit 84 / 64 mm mean /
median against MediaPipe's own world landmarks 103 / 82; left/right pairs right 0.90, 6.8 % of
the renders swapped (2.7 % over procedural backgrounds, 13 % over photos: mostly back views the
detector labels as frontal, which no label-free cue of the detector itself can catch). On the real
photos that ship in wheels (astronaut, cameraman, Grace Hopper) every fit faces the right way; the
energy alone kept the astronaut's swapped fit.

Person masks: ``estimate(images, masks=...)`` (per image an (H, W) mask, e.g. the segmenter's the
pipeline already holds) adds the fit's mask terms (:mod:`~diffusion_hpc.estimate.fit`: body points
off the mask, mask medial lines far from the bones, landmarks off the mask down-weighted). On 64
renders (``scripts/bench_estimate.py --n 32``, same detections) limb PA-MPJPE mean / median 69.1 /
58.6 mm without masks, 65.6 / 60.8 with MediaPipe's selfie-segmenter masks (over real-photo
backgrounds 81.5 -> 72.7 mean), 66.2 / 58.6 with the true masks; swaps unchanged (3.6 %: the
mask cannot tell front from back). The pose detector's own mask helps less (68.0: it shares the
landmarks' mistakes), so it is not used by default. Fit time at batch 16 about 1.1x.

Lifter (default ``lifter="on"``): the fit's 3D target is the learned lifter's joints
(:mod:`~diffusion_hpc.estimate.lifter`, trained by ``scripts/train_lifter.py`` on renders of the 575
built-in poses the bench does not evaluate on and of the pose prior's variants of them) in place of
MediaPipe's world landmarks, with the 3D term weighted :data:`LIFTER_W_3D` (6) instead of
:class:`FitWeights`' 3 (only when no ``weights`` are passed), and its swap probability can veto the
swapped hypothesis (:attr:`FacingWeights.w_lifter`); the other facing cues keep reading the world
landmarks. ``scripts/bench_estimate.py --n 32 --lifter on FILE --w-3d 3 6`` (segmenter's masks,
limb PA-MPJPE mean / median, swaps; 64 renders per seed, half over photos; one run per seed):

============================  ======================  ======================
fit's 3D target               seed 2024               seed 2025 (held out)
============================  ======================  ======================
world landmarks (lifter off)  71.5 / 63.2 mm, 4.8 %   100.7 / 78.1 mm, 10.9 %
first lifter, w_3d 3          67.8 / 56.6 mm, 4.8 %   97.1 / 73.0 mm, 7.8 %
first lifter, w_3d 6          66.7 / 53.5 mm, 4.8 %   93.9 / 73.2 mm, 9.4 %
shipped lifter, w_3d 6        66.8 / 53.0 mm, 4.8 %   89.9 / 70.5 mm, 7.8 %
============================  ======================  ======================

Over photo backgrounds (32 per seed) the default goes from 82.5 / 65.4 to 82.8 / 61.7 mm (2024)
and from 126.5 / 110.8 to 112.2 / 99.5 mm (2025). The same recipe trained without one of its 96
variant datasets (another process still held it) gave 67.2 / 57.6 and 94.8 / 74.3 mm at w_3d 3,
67.1 / 54.2 and 93.0 / 68.6 mm at w_3d 6 (swaps as above), 66.2 / 53.5 and 93.4 / 71.8 mm (one
more swap on 2025) at w_3d 9, 65.8 / 53.3 and 93.9 / 72.9 mm at w_3d 12: a heavier 3D term helps
seed 2024 and not the held-out seed, so :data:`LIFTER_W_3D` is 6; and lifters of one recipe differ
by 1-3 mm, so smaller differences between candidates are noise. Without the veto one more front
view of seed 2024 swapped; with the swap probability as a two-sided cue the astronaut photo swapped
(0.70 on her: the lifter learned on faceless renders). ``FitWeights(world_reliability=False)`` with
the first lifter: 66.4 / 53.3 (2024), 92.7 / 73.1 (2025), one more swap on 2025; not the default.
The real photos keep facing the right way; the astronaut's facing margin is 0.161 without a lifter,
0.029 with the first one, 0.100 with the shipped one.

Plausibility: the facing decision also weighs the pose prior's score of both hypotheses' fitted poses
(:func:`~diffusion_hpc.estimate.facing.plausibility_cue`, :attr:`FacingWeights.w_plausible`; only
with a prior), a veto on a swapped body that wins on energy by bending joints against their range.
Same runs as the table (segmenter's masks, shipped lifter, w_3d 6): seed 2024 66.8 / 53.0 mm, 4.8 %
unchanged; seed 2025 (held out) 89.9 / 70.5 mm, 7.8 % -> 89.8 / 70.5 mm, 6.2 % (lifter off: 100.7 /
78.1 mm, 10.9 % -> 99.8 / 78.1 mm, 9.4 %). The swaps left are the detector's coherent misreadings
of small people and fits to a person in the background photo (:mod:`~diffusion_hpc.estimate.facing`
says why no cue of the detector's outputs can catch them); the astronaut's margin 0.100 -> 0.128.

Unseen joints (:data:`LIFTER_WEIGHTS`, the fit's weights with a lifter): the 3D term also holds the
lifted joints of the joints the detector sees below its threshold but places inside the image, at
visibility 0.25 (:attr:`FitWeights.unseen_3d`; their 2D term stays 0, and joints out of the frame
stay out), and the person mask no longer gates the 3D term (:attr:`FitWeights.mask_gate_3d`; the 2D
term keeps its gate). The lifter predicts every joint from the whole body, but the 3D term weighted
by visibility had left the hidden ones to the prior. ``bench_estimate.py --n 32 --lifter on`` setting
(segmenter's masks; limb PA-MPJPE mean / median mm, swapped renders; 64 renders a seed; 2025 held out
from all tuning before this, 2028 / 2029 first used here):

========  =========================  =========================
seed      before                     after
========  =========================  =========================
2024      66.8 / 53.0, 3 of 62       63.8 / 50.4, 3 of 62
2025      90.7 / 70.5, 4 of 64       87.5 / 62.6, 4 of 64
2026      78.3 / 59.0, 8 of 63       77.2 / 59.0, 8 of 63
2027      68.6 / 51.3, 2 of 63       66.7 / 51.3, 2 of 63
2028      74.4 / 66.6, 5 of 63       71.8 / 60.5, 4 of 63
2029      80.0 / 59.0, 4 of 63       73.8 / 51.5, 4 of 63
========  =========================  =========================

(2025's "before" is today's run of the code the table above describes: 90.7 / 70.5, 6.2 %.) Over
photo backgrounds 82.8 -> 78.8 (2024) and 113.8 -> 111.1 mm (2025). Each half alone: unseen joints
at 0.25 with the gate 64.8, 87.6, 77.2, 69.3, 72.5, 74.2 mm (seeds 2024-2029); the gate off alone
65.3, 90.4, 78.3, 66.0, 74.2, 79.7 mm. Unseen joints at 0.1 / 0.5 / 1: 2025 88.3 / 89.0 / 88.7 mm, at
0.5 and 1 one more swap on 2026. With the joints out of the frame as well the renders do the same
(within 0.4 mm) but Grace Hopper's fitted keypoints lie 6.4 px from the detector's instead of 3.1
(the lifter's guess of her legs turns the upper body), hence the frame rule. The real photos keep
facing the right way (astronaut margin 0.128 -> 0.147, Grace Hopper 0.385, cameraman 0.98). CPU ms
per image at batch 16 (``stage_timing``, 16 renders, 4 alternating rounds, load 1.2-2): fit with masks
70 -> 67, detection + faces + fit 107 -> 105 (the same work). The fit without a lifter keeps
:class:`FitWeights`' defaults: with these two changes on MediaPipe's world landmarks, 71.5 -> 69.4,
99.8 -> 98.5, 85.1 -> 85.1 and 73.1 -> 71.6 mm (seeds 2024-2027), but one more swap on 2026.

Error budget (before this change; the same detections refitted with the renders' true inputs,
segmenter's masks, shipped lifter; limb PA-MPJPE mean / median mm, seeds 2024 and 2025; the budget
of the pipeline's reading over six seeds, at 256 and 512 px, with the 2D made true for seen or
unseen joints, fine or gross misreads, and the reading on the true region, is in
``scripts/bench_estimate.py``'s docstring, item 7):

=================================================  =============  =============
fit's inputs                                       2024           2025
=================================================  =============  =============
detector's 2D + lifted 3D (shipped)                66.8 / 53.0    90.7 / 70.5
true 2D + lifted 3D                                54.9 / 42.2    63.4 / 47.9
detector's 2D + true 3D target                     48.7 / 38.6    59.9 / 51.4
true 2D + true 3D (the fit's floor)                34.2 / 27.2    39.5 / 32.9
the floor with every joint seen (visibility 1)     24.3 / 20.1    23.7 / 21.3
the 3D target alone, no fit: lifted joints         66.4 / 57.4    96.5 / 70.0
the 3D target alone: MediaPipe's world landmarks   86.5 / 74.3    116.7 / 87.3
=================================================  =============  =============

With the unseen-joint weights (``scripts/bench_estimate.py --budget``, the first five rows in order)
2024 63.8 / 50.4, 51.7 / 41.3, 41.1 / 33.0, 27.5 / 23.4, 22.8 / 19.6 and 2025 87.5 / 62.6, 62.5 /
44.8, 51.0 / 42.8, 31.6 / 25.4, 23.3 / 20.8 mm; swapped renders 3 of 62 and 4 of 64, with a true 3D
target 3 and 3, with a true 2D 0 and 3, with both 0 and 0.
So the 3D target (18 / 31 mm of the mean) and the detector's 2D (12 / 27 mm) are the largest shares,
overlapping, and with perfect inputs the fit still sits at 34-40 mm, 10-16 mm of it from joints the
detector does not see (what the unseen-joint weight above takes back in part); the assumed field of
view (the renders' 35-64 deg against 55) costs nothing measurable (floor with the true intrinsics
34.2 / 25.9, 39.4 / 32.7), more iterations lower the floor 3-4 mm (270: 31.6, 35.6). The mean is
carried by a few renders: on 2025, 10 of 64 above 150 mm make 32 mm of the 90.7 (69.5 without them),
on 2024 5 make 15 mm (56.1 without); the swapped renders 8-9 mm. They are mostly side and back views
over photo backgrounds with 8-10 of the 12 limb joints seen, whose 2D is often within 2-3 % of the
person's height while the lifted depth is wrong (a true 3D target lowers them 50-120 mm).

Tried on the same detections and not shipped (change of the mean in mm, seed 2024 / seed 2025;
swaps as before unless said): stage 2 at 120 iterations -1.4 / -1.3, 150 -1.6 / -1.7, 210 -1.9 /
+1.2 (one more swap on 2025); on top of the unseen-joint weights 150 iterations -1.4 / -1.2 (2026 0,
2027 +0.3, 2028 and 2029 -0.3) for 40-50 % more fit CPU; a cosine decay of the learning rate to 0.1
+4.2 / +2.6 (90 iterations), +0.4 / -0.7 (150); stage 1 at 60 iterations -0.1 / -0.6 (one more swap
on 2025); lr 0.04 -0.9 / -0.2; w_pose 0.02 -0.9 / -0.1, 0.045 -0.6 / +0.5 (medians -2.3 to +2.4); a
robust 3D loss, sigma_3d 0.05 / 0.1 / 0.2 m: +12.5 / +6.9, +9.2 / +6.3, +5.1 / +4.3 (two more swaps
on 2025 each); the 2D term's Geman-McClure scale 0.05 +2.1 / +5.3 (a swap fewer on 2024, one more on
2025), 0.2 -0.8 / -1.0 (three more swaps on 2025); w_mask 0.5 -0.5 / -1.3, 2 -0.9 / +1.2 (one more
swap); w_cover 0.5 / 2 within 0.9 mm (2: one more swap); the depth-mirrored third hypothesis within
0.1 mm at about 20 % more time. On top of the unseen-joint weights: w_3d 8 -0.7 / -0.3 (one more swap
on 2025 and on 2026), w_3d 4.5 +1.0 / +1.9, the 2D term weighted by visibility^2 or ^0.5 within 1.2
mm on six seeds (1-3 more swaps on 2025 and 2028), w_mask 0.5 within 0.6 mm (one more swap on 2025),
``world_reliability=False`` -1.4 / +2.1 (two more swaps on 2025), w_shape 0.003 no change; the 3D
term's reliability of elbows / knees and wrists / ankles 0.8 / 0.6 or 0.6 / 0.5 instead of 0.6 /
0.35 within 1.2 mm on six seeds (one more swap on 2025), 0.5 / 0.25 +0.8 / +1.4; the 3D term's
visibility of the seen joints 1, its square root or its square within 2.1 mm (1-2 more swaps on 2025
or 2028); ``lifter_blend`` 0.9 / 0.8 0 / +0.4 and +0.4 / +3.2 (two more swaps on 2028); three starts
turned 0 / -45 / +45 deg about the vertical, the lowest final energy kept: -0.8 / -0.1 (the best of
the three by the truth would give -3.4 / -2.7: the fit is rarely caught in a wrong basin, its error
is in its targets); the lifted limbs rebuilt with the fitted body's bone lengths (each limb bone's
direction from the target, its length from the body, no gradient through the rebuild) +0.5 / +0.6
(two more swaps on 2025; 2026-2029 -0.8 to +0.7).

Views (``views``, default ``("image",)``; :mod:`~diffusion_hpc.estimate.views`):
:meth:`MediaPipeFitter.detect` can also read each image mirrored and with the background away from
the first reading's person painted grey, and merge the readings per landmark (the median). Six
seeds' 384 renders read the pipeline's way (``scripts/bench_estimate.py --seeds``): limb PA-MPJPE
73.3 / 55.1 -> 72.7 / 53.6 mm, swaps 5.4 -> 4.8 %, recall of people >= 10 % of the height 93.2 ->
94.3 %, detection 36 -> 91 CPU ms per image; paired, -1.2 mm (95 % interval -4.2 to +1.8), so not
the default. Also measured on those seeds and not kept (each within 2 mm; where the error is, by
the six-seed budget in ``scripts/bench_estimate.py``: the 2D of the joints MediaPipe sees, the
region it reads over photos, the lifted depth): a lifter ensemble (six lifters' joints averaged), a learned per-joint uncertainty weighting the 3D term, each person re-read on her
own landmarks' region (with the shipped lifter or one retrained on such readings), and a lifter
fed the landmark model's own image features (its last encoder map, pooled or whole).

Camera: the focal length comes from an assumed field of view, :data:`DEFAULT_FOV_DEG` across the
image's longer side, principal point at the centre (a single photo does not determine the focal
length; 55 deg is typical of phone and consumer cameras and sits inside the range the render
baseline samples). Pass ``fov_deg`` to change it.

For Anny, the fit runs the reduced forward pass (:class:`~diffusion_hpc.body.anny.AnnyReducedForward`:
exact keypoints, no per-vertex work), then one full forward gives the outputs.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence

import numpy as np
import torch

from diffusion_hpc.body import check_body_model, get_body_model
from diffusion_hpc.body.anny import AnnyReducedForward
from diffusion_hpc.body.joint_sets import COCO17
from diffusion_hpc.errors import InputError, MissingModelError
from diffusion_hpc.estimate.base import Estimate, KeypointReading, MeshEstimator
from diffusion_hpc.estimate.facing import (
    FacingWeights,
    choose_hypotheses,
    face_depth_cue,
    face_detector_cue,
    facing_label,
    facing_score,
    torso_facing,
)
from diffusion_hpc.estimate.fit import (
    COCO17_FLIP,
    TORSO,
    FitTargets,
    FitWeights,
    free_joint_mask,
    initial_placement,
    initial_pose,
    optimise,
    rest_joints_camera,
    select_hypotheses,
    stack_targets,
    unmodelled_joint_mask,
)
from diffusion_hpc.estimate.landmarks import (
    MIN_VISIBILITY,
    Detection,
    MediaPipeDetector,
    coco17_from_mediapipe,
    keypoint_agreement,
)
from diffusion_hpc.estimate.lifter import LandmarkLifter, load_default_lifter, load_lifter
from diffusion_hpc.estimate.pose_detector_model import read_whole_images
from diffusion_hpc.estimate.views import (
    DEFAULT_VIEWS,
    check_views,
    grey_outside,
    median_reading,
    mirror_image,
    mirrored_detection,
)
from diffusion_hpc.geometry.boxes import square_window
from diffusion_hpc.geometry.camera import project
from diffusion_hpc.prior import get_prior
from diffusion_hpc.prior.base import PosePrior
from diffusion_hpc.runtime.images import check_image
from diffusion_hpc.runtime.native_log import MEDIAPIPE_CHATTER, filtered_native_stderr
from diffusion_hpc.runtime.threads import torch_threads

log = logging.getLogger(__name__)

DEFAULT_FOV_DEG = 55.0
#: the fit's 3D weight (:attr:`FitWeights.w_3d`) when it follows a lifter and no ``weights`` are
#: given: the lifted joints are closer to the truth than the world landmarks, so the fit leans on
#: them more (module docstring, "Lifter")
LIFTER_W_3D = 6.0
#: the fit's weights when it follows a lifter and no ``weights`` are given: the 3D term weighted
#: :data:`LIFTER_W_3D`, the lifted joints of the joints the detector does not see inside the image
#: in it at visibility 0.25 (:attr:`FitWeights.unseen_3d`), and not gated by the person mask
#: (:attr:`FitWeights.mask_gate_3d`: the 2D term still is); module docstring, "Unseen joints"
LIFTER_WEIGHTS = FitWeights(w_3d=LIFTER_W_3D, unseen_3d=0.25, mask_gate_3d=False)


def intrinsics_for_image(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> np.ndarray:
    """(3, 3) intrinsics with ``fov_deg`` across the longer image side, principal point at the centre.

    (:func:`~diffusion_hpc.geometry.camera.intrinsics_from_fov` takes the vertical field of view.)
    """
    f = (max(width, height) / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def resolve_prior(prior: PosePrior | str | None, body_model: str) -> PosePrior | None:
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


#: why a detection is not fitted (:func:`fittable`)
TOO_FEW_JOINTS = "person found but too few joints visible to fit (need both shoulders or both hips and 5 COCO joints)"


def fittable(det: Detection) -> bool:
    """Whether the fit takes a detection: at least 5 COCO-17 joints and both shoulders or both hips
    seen with :data:`~diffusion_hpc.estimate.landmarks.MIN_VISIBILITY` (else :data:`TOO_FEW_JOINTS`)."""
    vis = coco17_from_mediapipe(det.landmarks2d)[:, 2]
    seen_torso = vis[[COCO17.index(n) for n in TORSO]] >= MIN_VISIBILITY
    return bool((vis >= MIN_VISIBILITY).sum() >= 5 and (seen_torso[:2].all() or seen_torso[2:].all()))


def keypoint_reading(det: Detection | None, missing: str) -> KeypointReading:
    """A detection's COCO-17 landmarks as a :class:`~diffusion_hpc.estimate.base.KeypointReading`: not ok
    with the reason ``missing`` when there is none, or :data:`TOO_FEW_JOINTS` when the fit would not take it."""
    if det is None:
        return KeypointReading(False, missing)
    if not fittable(det):
        return KeypointReading(False, TOO_FEW_JOINTS)
    return KeypointReading(True, "", coco17_from_mediapipe(det.landmarks2d).astype(np.float64))


class MediaPipeFaceDetector:
    """MediaPipe's face detector (the short-range model, ``model_selection=0``, which ships in the
    wheel), created on first use and reused; calls are serialised. One of the facing cues
    (:func:`~diffusion_hpc.estimate.facing.face_detector_cue`)."""

    def __init__(self, min_detection_confidence: float = 0.5) -> None:
        self.min_detection_confidence = min_detection_confidence
        self._faces = None
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> np.ndarray:
        """(F, 5) faces in an (H, W, 3) uint8 RGB image: score, x0, y0, x1, y1 in pixels (F may be 0)."""
        with self._lock, filtered_native_stderr(MEDIAPIPE_CHATTER):
            if self._faces is None:
                os.environ.setdefault("GLOG_minloglevel", "2")
                import mediapipe as mp  # the pose detector has already checked it is installed

                self._faces = mp.solutions.face_detection.FaceDetection(
                    model_selection=0, min_detection_confidence=self.min_detection_confidence)
            result = self._faces.process(np.ascontiguousarray(image))
        height, width = image.shape[:2]
        rows = []
        for det in result.detections or ():
            box = det.location_data.relative_bounding_box
            x0, y0 = box.xmin * width, box.ymin * height
            rows.append([det.score[0], x0, y0, x0 + box.width * width, y0 + box.height * height])
        return np.array(rows, np.float64).reshape(-1, 5)


def resolve_lifter(lifter: LandmarkLifter | str | os.PathLike | None) -> LandmarkLifter | None:
    """The lifter a fitter uses: ``"off"`` / None -> None; ``"on"`` -> the shipped one (CPU, float32:
    the fit's tensors are CPU); any other string or path -> the lifter weights file there (made by
    ``scripts/train_lifter.py --out FILE``; CPU, float32, loaded each time); a
    :class:`LandmarkLifter` -> itself.

    Raises:
        MissingModelError: no file at the path (the message names the value and the choices).
        InputError: the file is not a lifter weights file.
    """
    if lifter is None or isinstance(lifter, LandmarkLifter):
        return lifter
    if lifter == "off":
        return None
    if lifter == "on":
        return load_default_lifter()
    if not os.path.isfile(lifter):
        raise MissingModelError(f"lifter={str(lifter)!r} is neither 'on', 'off' nor an existing lifter weights file; "
                                "make one with `python scripts/train_lifter.py --out FILE`, or pass 'on' (the shipped "
                                "lifter) or 'off' (MediaPipe's world landmarks)")
    return load_lifter(lifter)


def check_masks(masks: Sequence[np.ndarray | None] | None, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray | None]:
    """Per image an (H, W) float32 person mask in [0, 1] or None; ``masks`` None: none anywhere.

    Raises:
        InputError: not one entry per image, or a mask that is not (H, W) of its image.
    """
    if masks is None:
        return [None] * len(sizes)
    masks = list(masks)
    if len(masks) != len(sizes):
        raise InputError(f"masks: {len(masks)} entries for {len(sizes)} images; pass one (H, W) mask (or None) per image")
    out: list[np.ndarray | None] = []
    for i, (m, size) in enumerate(zip(masks, sizes)):
        if m is None:
            out.append(None)
            continue
        m = np.asarray(m)
        if m.shape != tuple(size):
            raise InputError(f"masks[{i}] has shape {m.shape} but its image is {tuple(size)}; pass an (H, W) person mask of the image")
        out.append(m.astype(np.float32))
    return out


class MediaPipeFitter(MeshEstimator):
    """MediaPipe Pose + batched body-model fit (see the module docstring).

    Args:
        body_model: body-model name (``"anny"`` default; ``"smpl"``/``"smplx"`` need ``model_path``).
        prior: a :class:`~diffusion_hpc.prior.base.PosePrior` whose ``penalty`` regularises the pose;
            ``"default"`` (default): the shipped Anny prior for Anny (:func:`resolve_prior`; other body
            models have no shipped prior and use the fallback); None:
            :func:`~diffusion_hpc.estimate.fit.fallback_pose_penalty`.
        fov_deg: assumed field of view across the longer image side.
        weights: :class:`~diffusion_hpc.estimate.fit.FitWeights` (default: its defaults, with a lifter
            :data:`LIFTER_WEIGHTS`).
        facing: :class:`~diffusion_hpc.estimate.facing.FacingWeights` (which hypothesis wins).
        model_path: SMPL model file or folder (ignored for Anny).
        lifter: the fit's 3D target: ``"on"`` (default) the shipped
            :class:`~diffusion_hpc.estimate.lifter.LandmarkLifter`'s joints lifted from MediaPipe's
            landmarks (and its swap probability as a facing cue); ``"off"`` MediaPipe's world
            landmarks; a path: a lifter weights file of ``scripts/train_lifter.py``; or a ``LandmarkLifter``.
        lifter_blend: with a lifter, the 3D target is ``blend * lifted + (1 - blend) * world``.
        compile_fit: run the fit's energies through ``torch.compile``
            (:func:`~diffusion_hpc.estimate.fit.optimise`'s ``compiled_energy``; Anny only): the
            same fits to float rounding, faster per image, after a one-off compilation per process.
        landmark_reader: a :class:`~diffusion_hpc.estimate.landmark_model.PoseLandmarkModel` that
            reads people on their labels' regions (:meth:`read_keypoints` with ``labels``) for all
            images at once on its device; None: MediaPipe's own graph, an image at a time on the CPU.
        pose_detector: with a ``landmark_reader``, a
            :class:`~diffusion_hpc.estimate.pose_detector_model.PoseDetectorModel` on the same device:
            :meth:`detect`'s whole-image pass (MediaPipe's person detector, then the landmark model on
            its region) for all images at once there, and the readings on the masks that follow
            where it finds no one large (:meth:`MediaPipeDetector.detect_all`: a round of regions a
            call); only the tile search of an image without a mask stays MediaPipe's own.
        views: the views of each image :meth:`detect` reads and merges
            (:mod:`~diffusion_hpc.estimate.views`: ``image``, ``mirror``, ``grey``; default
            :data:`~diffusion_hpc.estimate.views.DEFAULT_VIEWS`); ``("image",)``: one reading, at a
            third of the detection's cost.
    """

    name = "mediapipe"
    uses_masks = True
    reads_keypoints = True

    def __init__(self, body_model: str = "anny", prior: PosePrior | str | None = "default", fov_deg: float = DEFAULT_FOV_DEG,
                 weights: FitWeights | None = None, model_path: str | None = None,
                 facing: FacingWeights | None = None, lifter: LandmarkLifter | str | os.PathLike = "on",
                 lifter_blend: float = 1.0, compile_fit: bool = False, landmark_reader=None,
                 pose_detector=None, views: Sequence[str] = DEFAULT_VIEWS) -> None:
        check_body_model(body_model, model_path)
        self.views = check_views(views)
        if compile_fit and body_model != "anny":
            raise InputError(f"compile_fit needs the anny body model, got {body_model!r}; pass compile_fit=False")
        self.compile_fit = bool(compile_fit)
        if not (0.0 <= lifter_blend <= 1.0):
            raise InputError(f"lifter_blend must lie in [0, 1], got {lifter_blend}")
        if not (5.0 <= fov_deg <= 150.0):
            raise ValueError(f"fov_deg must lie in [5, 150] degrees, got {fov_deg}")
        self.body_model = body_model
        self.model_path = model_path
        self.prior = resolve_prior(prior, body_model)
        self.fov_deg = float(fov_deg)
        self.facing = facing or FacingWeights()
        self.detector = MediaPipeDetector()
        if pose_detector is not None and landmark_reader is None:
            raise InputError("pose_detector reads the whole image with the landmark model on its device: pass "
                             "landmark_reader (a PoseLandmarkModel) too, or leave pose_detector out")
        self.landmark_reader = landmark_reader
        self.pose_detector = pose_detector
        self.face_detector = MediaPipeFaceDetector()
        self.lifter = resolve_lifter(lifter)
        self.lifter_blend = float(lifter_blend)
        self.weights = weights or (FitWeights() if self.lifter is None else LIFTER_WEIGHTS)
        self._body = None
        self._fast: AnnyReducedForward | None = None
        self._rest: tuple[np.ndarray, np.ndarray] | None = None

    # -- models ---------------------------------------------------------------------------------

    @property
    def body(self):
        if self._body is None:
            self._body = get_body_model(self.body_model, model_path=self.model_path)
            if self._body.name == "anny":
                self._fast = AnnyReducedForward(self._body)
        return self._body

    def _joints(self, params: dict) -> torch.Tensor:
        """(B, 17, 3) COCO-17 joints: the reduced forward for Anny, else the full forward."""
        if self._fast is not None:
            return self._fast.keypoints(params)
        return self.body(params).joints["coco17"]

    def _init_pose(self) -> torch.Tensor:
        """(J-1, 3) the pose the fit starts from (:func:`~diffusion_hpc.estimate.fit.initial_pose`)."""
        return initial_pose(self.body, self.prior, self.weights.init_mean_pose)

    def _rest_joints(self) -> tuple[np.ndarray, np.ndarray]:
        """(rest COCO-17 (17, 3) in camera orientation, hip-centred; root-to-hips offset (3,)) of the
        neutral body in the initial pose (:func:`~diffusion_hpc.estimate.fit.rest_joints_camera`), cached."""
        if self._rest is None:
            self._rest = rest_joints_camera(self.body, self._joints, self._init_pose())
        return self._rest

    def world_targets(self, detections: Sequence[Detection]) -> tuple[np.ndarray, np.ndarray | None]:
        """((B, 17, 3) the fit's hip-centred 3D targets, (B,) the lifter's swap probabilities or None):
        the detections' COCO-17 world landmarks, or with a lifter its lifted joints (blended with
        them by ``lifter_blend``)."""
        world = np.stack([coco17_from_mediapipe(det.world) for det in detections]).astype(np.float64)
        world = world - world[:, [COCO17.index("left_hip"), COCO17.index("right_hip")]].mean(1, keepdims=True)
        if self.lifter is None:
            return world, None
        lifted, swap_prob = self.lifter.lift(np.stack([det.landmarks2d for det in detections]),
                                             np.stack([det.world for det in detections]))
        return self.lifter_blend * lifted + (1.0 - self.lifter_blend) * world, swap_prob

    def describe(self) -> dict:
        """What ran, without a machine path (run.json): ``name``, ``body_model`` and ``lifter``
        (``"off"``, or the lifter's weights file name and content fingerprint), ``compile_fit``,
        ``landmark_runtime`` (what reads the whole images and the labels' regions: ``"mediapipe"``, or
        ``"torch <device> <dtype>"``), ``views`` (the views each image's reading merges)."""
        lifter = "off" if self.lifter is None else f"{self.lifter.path_name} {self.lifter.fingerprint}".strip()
        runtime = "mediapipe" if self.landmark_reader is None else self.landmark_reader.describe()
        return {"name": self.name, "body_model": self.body_model, "lifter": lifter, "compile_fit": self.compile_fit,
                "landmark_runtime": runtime, "views": list(self.views)}

    # -- the API --------------------------------------------------------------------------------

    def detect(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None) -> list[Detection | None]:
        """MediaPipe detections, one per image (None: no person); a person mask per image (or None)
        lets the detector read the person on the mask's box (:meth:`MediaPipeDetector.detect`).
        Each of :attr:`views` is read (all images of a view in one batch) and the readings of an
        image merged (:func:`~diffusion_hpc.estimate.views.median_reading`); ``passes`` counts
        MediaPipe's graph calls over all views."""
        images = [check_image(im, f"images[{i}]") for i, im in enumerate(images)]
        masks = check_masks(masks, [im.shape[:2] for im in images])
        # 1. the image as it is
        first = self._read(images, masks)
        views = [first]
        # 2. the mirrored image, its landmarks mapped back
        if "mirror" in self.views:
            mirrored = self._read([mirror_image(im) for im in images], [None if m is None else mirror_image(m) for m in masks])
            views.append([mirrored_detection(det, im.shape[1]) for det, im in zip(mirrored, images)])
        # 3. the background away from the first reading's person painted grey, read on her region
        if "grey" in self.views:
            todo = [i for i, det in enumerate(first) if det is not None and det.mask is not None]
            greyed: list[Detection | None] = [None] * len(images)
            found = self._read_on_labels([grey_outside(images[i], first[i].mask) for i in todo],
                                         [coco17_from_mediapipe(first[i].landmarks2d) for i in todo])
            for i, det in zip(todo, found):
                greyed[i] = det
            views.append(greyed)
        # 4. the views merged
        return [median_reading(readings) for readings in zip(*views)]

    def _read_on_labels(self, images: list[np.ndarray], labels: Sequence[np.ndarray]) -> list[Detection | None]:
        """The landmark model alone on the region each (17, >=2) COCO-17 label gives in its image, or None
        where it reads no one there (:meth:`MediaPipeDetector.read_on_label`, or the ``landmark_reader``'s
        batched reading on its device)."""
        if self.landmark_reader is None:
            return [self.detector.read_on_label(im, kp) for im, kp in zip(images, labels)]
        return self.landmark_reader.read_on_labels(images, labels) if images else []

    def _read(self, images: list[np.ndarray], masks: list[np.ndarray | None]) -> list[Detection | None]:
        """One reading of each image (:meth:`MediaPipeDetector.detect`, or on the device
        :meth:`MediaPipeDetector.detect_all`)."""
        if not images:
            return []
        if self.pose_detector is None:
            return [self.detector.detect(im, m) for im, m in zip(images, masks)]
        wholes = read_whole_images(self.pose_detector, self.landmark_reader, images)
        return self.detector.detect_all(images, masks, wholes, self._read_regions)

    def _read_regions(self, images: list[np.ndarray], regions: list) -> list[tuple]:
        """The landmark model on one region of each image, on the device (``detect_all``'s reader)."""
        return self.landmark_reader.read_on_regions(images, regions, range(len(images)))

    def read_keypoints(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None,
                       labels: Sequence[np.ndarray] | None = None) -> list[KeypointReading]:
        """The detector's COCO-17 landmarks of the person :meth:`estimate` would fit, one
        :class:`~diffusion_hpc.estimate.base.KeypointReading` per (H, W, 3) uint8 RGB image, without
        the fit, its face detection or its left/right decision (labels as MediaPipe gives them): u,
        v in pixels and MediaPipe's visibility. Not ok where :meth:`estimate` would not fit (no
        person found, or too few joints seen: :func:`fittable`). ``masks`` as in :meth:`estimate`
        (the detector reads the person on the mask's box when the whole image misses it).

        Label verification reads these instead of the fitted body's projection
        (``GenerateConfig.verify_by``) at the cost of the detection alone: the fit's keypoints lie a
        median 1.3-1.4 px from these landmarks on 256 px renders, and both readings score right
        and wrong labels alike (:mod:`diffusion_hpc.pipeline.verify`, scripts/bench_verify.py).

        ``labels``: per image the (17, >=2) COCO-17 joints (px) of the label whose person should be
        there (``verify_by label-box``): the landmark model alone reads the region those joints give,
        without the person detector (:meth:`~diffusion_hpc.estimate.landmarks.MediaPipeDetector.read_on_label`,
        or the ``landmark_reader``'s batched reading on its device),
        and a region where MediaPipe sees nobody reads "no person on the label's region"; ``masks`` is
        then not used.

        Raises:
            InputError: ``labels`` not one per image."""
        images = [check_image(im, f"images[{i}]") for i, im in enumerate(images)]
        if labels is not None:
            if len(labels) != len(images):
                raise InputError(f"labels: {len(labels)} labels for {len(images)} images; pass one per image")
            return [keypoint_reading(det, "no person on the label's region") for det in self._read_on_labels(images, labels)]
        return [keypoint_reading(det, "no person found") for det in self.detect(images, masks)]

    def detect_faces(self, images: Sequence[np.ndarray], detections: Sequence[Detection | None]) -> list[np.ndarray]:
        """(F, 5) faces per image (:class:`MediaPipeFaceDetector`), looked for only where a person was found."""
        return [np.zeros((0, 5)) if det is None else self.face_detector.detect(im) for im, det in zip(images, detections)]

    def estimate(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None) -> list[Estimate]:
        """One :class:`Estimate` per (H, W, 3) uint8 RGB image; all found people fitted in one batch.

        ``masks``: per image an (H, W) person mask (bool or [0, 1]; None for an image without one),
        e.g. a segmenter's, for the fit's mask term (:func:`~diffusion_hpc.estimate.fit.mask_energy`);
        None: no mask term.
        """
        images = [check_image(im, f"images[{i}]") for i, im in enumerate(images)]
        detections = self.detect(images, masks)
        return self.fit(detections, [im.shape[:2] for im in images], self.detect_faces(images, detections), masks)

    def fit(self, detections: Sequence[Detection | None], sizes: Sequence[tuple[int, int]],
            faces: Sequence[np.ndarray] | None = None, masks: Sequence[np.ndarray | None] | None = None) -> list[Estimate]:
        """Fit the body to detections (one batched optimisation); None entries give ok=False.

        ``faces``: per image the (F, 5) faces of :meth:`detect_faces` (None: no face cue, the facing
        decision then rests on the landmarks' face depth and the fit's energy). ``masks``: per image
        an (H, W) person mask or None (see :meth:`estimate`).
        """
        results: list[Estimate | None] = [None] * len(detections)
        todo = []
        faces = [np.zeros((0, 5))] * len(detections) if faces is None else list(faces)
        if len(faces) != len(detections):
            raise ValueError(f"faces: {len(faces)} entries for {len(detections)} detections; pass one (F, 5) array per image")
        masks = check_masks(masks, sizes)
        for i, (det, size) in enumerate(zip(detections, sizes)):
            K = intrinsics_for_image(size[1], size[0], self.fov_deg)
            if det is None:
                results[i] = Estimate(ok=False, reason="no person found", body_model=self.body_model, K=K,
                                      image_size=tuple(size))
                continue
            if not fittable(det):
                results[i] = Estimate(ok=False, reason=TOO_FEW_JOINTS,
                                      body_model=self.body_model, K=K, landmarks2d=det.landmarks2d,
                                      landmarks3d=det.world, person_mask=det.mask, image_size=tuple(size))
                continue
            todo.append((i, det, K, tuple(size), faces[i], masks[i]))
        if todo:
            with torch_threads(1):  # tiny tensors: one thread is several times faster (see torch_threads)
                fitted = self._fit_batch(todo)
            for (i, *_), est in zip(todo, fitted, strict=True):
                results[i] = est
        return results  # type: ignore[return-value]

    # -- the optimisation -----------------------------------------------------------------------

    def _fit_batch(self, todo) -> list[Estimate]:
        body = self.body
        worlds, swap_prob = self.world_targets([det for _, det, *_ in todo])
        targets = stack_targets(
            [(coco17_from_mediapipe(det.landmarks2d), world, K) for (_, det, K, *_), world in zip(todo, worlds)],
            self.weights.checked_hypotheses(), MIN_VISIBILITY, self.weights.unseen_3d, [item[3] for item in todo])
        cw = self.weights
        if (cw.w_mask > 0 or cw.mask_gate > 0 or cw.w_cover > 0) and any(item[5] is not None for item in todo):
            windows = [square_window(det.box()[0], cw.mask_expand * det.box()[1]) for _, det, *_ in todo]
            targets = targets.with_masks([item[5] for item in todo], windows, cw.mask_size,
                                         cw.cover_points if cw.w_cover > 0 else 0)
        rest, root_to_hips = self._rest_joints()
        c2c = body.canonical_to_camera.double().numpy()
        orient0, transl0 = initial_placement(rest, root_to_hips, c2c, targets.uv, targets.conf, targets.world, targets.K)
        free = free_joint_mask(body)
        result = optimise(body, self._joints, targets, orient0, transl0, self._init_pose(), free,
                          unmodelled_joint_mask(body, self.prior, free), self.prior, self.weights,
                          None if self._fast is None else (self._fast.rest_skeleton, self._fast.keypoints),
                          compiled_energy=self.compile_fit)
        best, decision = self._decide_facing(todo, result, targets, swap_prob)
        final, best = select_hypotheses(result, targets, best)
        with torch.no_grad():
            out = body(final)
        return self._estimates(todo, final, out, targets, best, decision)

    def _decide_facing(self, todo, result, targets: FitTargets,
                       swap_prob: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(best (B,) hypothesis index, per-image decision arrays) from the facing cues
        (:mod:`~diffusion_hpc.estimate.facing`): face depth in the world landmarks, the face detector,
        the direction each hypothesis's fitted torso faces, with a lifter its swap probability and,
        with a pose prior, its score of each hypothesis's fitted pose (one batched call)."""
        M, B = len(targets.hypotheses), targets.images
        pose_score = None
        with torch.no_grad():
            fitted = torso_facing(self._joints(result.params).double().numpy()).reshape(M, B)
            if self.prior is not None and "swap" in targets.hypotheses:
                pose_score = self.prior.score(result.params["body_pose"].float()).double().numpy().reshape(M, B)
        depth = np.array([face_depth_cue(coco17_from_mediapipe(det.world)) for _, det, *_ in todo])
        face = np.array([face_detector_cue(f, coco17_from_mediapipe(det.landmarks2d)[COCO17.index("nose"), :2])
                         for _, det, _, _, f, _ in todo])
        score = facing_score(depth, face, self.facing)
        best, margin = choose_hypotheses(result.energy.reshape(M, B).numpy(), fitted, score, targets.hypotheses, self.facing,
                                         swap_prob, pose_score)
        return best, {"score": score, "margin": margin, "fitted": fitted[best, np.arange(B)]}

    def _estimates(self, todo, final: dict, out, targets: FitTargets, best: np.ndarray,
                   decision: dict[str, np.ndarray]) -> list[Estimate]:
        """One ok :class:`Estimate` per fitted image from the chosen rows ``best`` (B,) of ``targets``."""
        B = targets.images
        conf = targets.conf.reshape(len(targets.hypotheses), B, 17)[best, np.arange(B)]
        results = []
        for b, (_, det, K, size, *_) in enumerate(todo):
            hypothesis = targets.hypotheses[int(best[b])]
            joints = {name: j[b].numpy().astype(np.float32) for name, j in out.joints.items()}
            uv = project(joints["coco17"].astype(np.float64), K)
            detected = coco17_from_mediapipe(det.landmarks2d)
            if hypothesis == "swap":
                detected = detected[COCO17_FLIP]
            fit_px, confidence = keypoint_agreement(uv, detected, conf[b] > 0)
            results.append(Estimate(
                ok=True, reason="", body_model=self.body_model,
                params={k: v[b].numpy().astype(np.float32) for k, v in final.items()},
                K=K, joints3d=joints, keypoints2d=np.concatenate([uv, detected[:, 2:3]], axis=1),
                confidence=confidence, landmarks2d=det.landmarks2d, landmarks3d=det.world,
                person_mask=det.mask, fit_error_px=fit_px, image_size=size, fit_hypothesis=hypothesis,
                facing=facing_label(float(decision["fitted"][b]), self.facing.side_cos),
                facing_score=float(decision["score"][b]), facing_margin=float(decision["margin"][b]),
            ))
        return results
