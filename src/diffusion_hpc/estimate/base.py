"""The mesh-estimator interface: photos in, one fitted body per photo out.

An estimator takes a list of RGB images and returns one :class:`Estimate` per image, for the most
prominent person in it. Estimates follow the dataset conventions (DESIGN §4): parameters and 3D
joints in the OpenCV camera frame (x right, y down, z forward; metres), intrinsics ``K`` in pixels
of the input image, COCO-17 keypoints in pixels with a confidence.

A photo without a person gives ``Estimate(ok=False, reason="no person found")``, never an
exception; malformed input (not an (H, W, 3) uint8 array, an unreadable file) raises
:class:`~diffusion_hpc.errors.InputError`.

Label verification needs only a person's COCO-17 2D keypoints: an estimator that can read them
without estimating a body (the MediaPipe fit: its detector's landmarks, without the fit) sets
:attr:`MeshEstimator.reads_keypoints` and implements :meth:`MeshEstimator.read_keypoints`;
:func:`keypoints_of` turns any other estimator's estimates into the same :class:`KeypointReading`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np


@dataclass
class Estimate:
    """The fitted body for one image.

    Attributes:
        ok: True when a person was found and fitted.
        reason: why ``ok`` is False ("no person found", ...); "" when ok.
        body_model: body-model name, e.g. ``"anny"``.
        params: body parameters, camera frame, unbatched numpy float32 arrays, e.g. for Anny
            global_orient (3,), body_pose (30, 3), phenotype (6,), transl (3,). Empty when not ok.
        K: (3, 3) intrinsics assumed for the image (pixels).
        joints3d: joint-set name -> (J, 3) camera-frame joints in metres of the fitted body.
        keypoints2d: (17, 3) COCO-17 of the fitted body projected with ``K``: u, v in pixels and the
            detector's confidence of the joint in [0, 1] (0 where it did not see it).
        confidence: overall confidence in [0, 1] (detector confidence times fit agreement).
        landmarks2d: the detector's own 2D landmarks, (L, 3) u, v pixels + visibility (MediaPipe:
            L = 33), for diagnostics; zeros when not ok.
        landmarks3d: the detector's 3D landmarks (L, 3) if it has them (MediaPipe: metres, hip-centred,
            camera-aligned axes), else zeros.
        person_mask: (H, W) float32 in [0, 1], the detector's person segmentation, or None.
        fit_error_px: median distance in pixels between the fitted COCO keypoints and the detector's
            (confident joints only); NaN when not ok.
        image_size: (height, width) of the input image.
        fit_hypothesis: which initial hypothesis of the fit won (MediaPipe fitter: ``"base"``, or
            ``"swap"`` when the detector's left/right labels were exchanged; see
            :data:`~diffusion_hpc.estimate.fit.HYPOTHESES`); "" when not ok.
        facing: which way the fitted body faces the camera: ``"front"``, ``"side"`` or ``"back"``
            (:func:`~diffusion_hpc.estimate.facing.facing_label` of its torso); "" when not ok or the
            estimator does not decide it.
        facing_score: the label-free facing cues combined, in [-1, 1] (+1: facing the camera;
            :func:`~diffusion_hpc.estimate.facing.facing_score`); NaN when not decided.
        facing_margin: how clearly the kept hypothesis beat the left/right-swapped one, >= 0 (in the
            units of :func:`~diffusion_hpc.estimate.facing.choose_hypotheses`; small: a close call);
            NaN when not decided.
    """

    ok: bool
    reason: str = ""
    body_model: str = ""
    params: dict[str, np.ndarray] = field(default_factory=dict)
    K: np.ndarray = field(default_factory=lambda: np.eye(3))
    joints3d: dict[str, np.ndarray] = field(default_factory=dict)
    keypoints2d: np.ndarray = field(default_factory=lambda: np.zeros((17, 3)))
    confidence: float = 0.0
    landmarks2d: np.ndarray = field(default_factory=lambda: np.zeros((33, 3)))
    landmarks3d: np.ndarray = field(default_factory=lambda: np.zeros((33, 3)))
    person_mask: np.ndarray | None = None
    fit_error_px: float = float("nan")
    image_size: tuple[int, int] = (0, 0)
    fit_hypothesis: str = ""
    facing: str = ""
    facing_score: float = float("nan")
    facing_margin: float = float("nan")


@dataclass
class KeypointReading:
    """A person's COCO-17 2D keypoints in one image, read with or without a fitted body.

    Attributes:
        ok: True when a person was found (and, for an estimator that fits, would be fitted).
        reason: why ``ok`` is False; "" when ok.
        keypoints2d: (17, 3) u, v in pixels and the detector's confidence of the joint in [0, 1].
    """

    ok: bool
    reason: str = ""
    keypoints2d: np.ndarray = field(default_factory=lambda: np.zeros((17, 3)))


def keypoints_of(estimates: Sequence[Estimate]) -> list[KeypointReading]:
    """The 2D keypoints of full estimates (their fitted or regressed body's, projected)."""
    return [KeypointReading(e.ok, e.reason, np.asarray(e.keypoints2d)) for e in estimates]


class MeshEstimator:
    """Interface of a mesh estimator. Subclasses implement :meth:`estimate`.

    An estimator that can use person masks (a segmenter's, one per image) sets :attr:`uses_masks`
    and takes ``estimate(images, masks=None)``; :func:`estimate_with_masks` (and calling the
    estimator) hands the masks only to those, so callers holding masks need not know which kind
    they have.
    """

    #: registry name
    name: str = ""
    #: body model the estimates are expressed in
    body_model: str = ""
    #: :meth:`estimate` takes ``masks=``: per image an (H, W) person mask (bool or [0, 1]) or None
    uses_masks: bool = False
    #: :meth:`estimate` takes ``boxes=``: per image a square person box ``(centre (2,) px, side px)`` or None
    uses_boxes: bool = False
    #: :meth:`read_keypoints` reads a person's 2D keypoints without estimating a body (cheaper than
    #: :meth:`estimate`); estimators without it give their estimates' keypoints (:func:`keypoints_of`)
    reads_keypoints: bool = False

    def estimate(self, images: Sequence[np.ndarray]) -> list[Estimate]:  # pragma: no cover
        """One :class:`Estimate` per image (the most prominent person), batched internally.

        Args:
            images: list of (H, W, 3) uint8 RGB arrays (sizes may differ).
        """
        raise NotImplementedError

    def read_keypoints(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None,
                       labels: Sequence[np.ndarray] | None = None) -> list[KeypointReading]:  # pragma: no cover
        """One :class:`KeypointReading` per image (the person :meth:`estimate` would read, on its mask
        when given; with ``labels``, (17, >=2) COCO-17 joints per image, the person where that label
        says), without estimating a body; only when :attr:`reads_keypoints`."""
        raise NotImplementedError(f"estimator {self.name!r} reads keypoints only through estimate(); "
                                  "use keypoints_of(estimate(...))")

    def __call__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None) -> list[Estimate]:
        return estimate_with_masks(self, images, masks)


def estimate_with_masks(estimator, images: Sequence[np.ndarray],
                        masks: Sequence[np.ndarray | None] | None = None) -> list[Estimate]:
    """``estimator.estimate(images, masks=masks)`` when it uses person masks (:attr:`MeshEstimator.uses_masks`),
    else ``estimator.estimate(images)``: a regressor that does not look at masks is called as before.

    Args:
        estimator: any object with ``estimate(images)`` (a :class:`MeshEstimator` or a stand-in).
        images: (H, W, 3) uint8 RGB arrays; masks: per image an (H, W) person mask or None; None: none.
    """
    if masks is not None and getattr(estimator, "uses_masks", False):
        return estimator.estimate(images, masks=masks)
    return estimator.estimate(images)


def rebase_estimate(estimate: Estimate, K: np.ndarray) -> Estimate:
    """The estimate's body seen through the intrinsics ``K`` instead of its own: moved so its root
    joint (the pelvis, ``h36m17`` joint 0; else ``transl``) projects to the same pixel and the body keeps
    its size in the image (depth scaled by the focal lengths' ratio), as 4D-Humans' ``cam_crop_to_full``
    takes a crop's camera to the full image's. Exact at the root; elsewhere off by about the body's
    depth extent over its distance. Several people of one image estimated with different cameras (a
    regressor's focal follows each person's box) share one ``K`` this way.

    Args:
        estimate: an ok estimate; K: (3, 3) the target intrinsics (pixels of the same image).
    Returns:
        the estimate with ``K``, ``params["transl"]``, ``joints3d`` and ``keypoints2d`` moved.
    """
    K_from, K_to = np.asarray(estimate.K, np.float64), np.asarray(K, np.float64)
    if not estimate.ok or np.allclose(K_from, K_to):
        return replace(estimate, K=K_to) if estimate.ok else estimate
    joints = estimate.joints3d
    root = np.asarray(joints["h36m17"][0] if "h36m17" in joints else estimate.params["transl"], np.float64)
    pixel = (K_from @ root)[:2] / root[2]
    depth = root[2] * (K_to[0, 0] + K_to[1, 1]) / (K_from[0, 0] + K_from[1, 1])
    moved = np.array([(pixel[0] - K_to[0, 2]) * depth / K_to[0, 0], (pixel[1] - K_to[1, 2]) * depth / K_to[1, 1], depth])
    delta = moved - root
    params = dict(estimate.params, transl=(np.asarray(estimate.params["transl"], np.float64) + delta).astype(np.float32))
    joints = {name: np.asarray(j) + delta.astype(np.asarray(j).dtype) for name, j in joints.items()}
    keypoints = np.array(estimate.keypoints2d, np.float64, copy=True)
    if "coco17" in joints:
        coco = joints["coco17"] @ K_to.T
        keypoints[:, :2] = coco[:, :2] / coco[:, 2:3]
    return replace(estimate, K=K_to, params=params, joints3d=joints, keypoints2d=keypoints)
