"""Several views of one person read by MediaPipe Pose and merged into one reading.

MediaPipe's landmarks of a person over a cluttered photo are often grossly wrong (a wrist on the
background's edges, a leg read on a shadow), and a slightly different view of the same image often
reads her differently. :class:`~diffusion_hpc.estimate.mediapipe_fit.MediaPipeFitter` (``views``;
``--landmark-views`` in ``dhpc estimate`` and ``dhpc generate``) can read the views of
:data:`VIEWS` and merge them per landmark (the median, :func:`median_reading`):

- ``image``: the image as it is (always read; the default reads it alone, :data:`DEFAULT_VIEWS`);
- ``mirror``: the image flipped left to right, read as the image is (the person detector, then the
  mask's regions), its landmarks mapped back (:func:`mirrored_detection`: u -> W - 1 - u, world
  x -> -x, left and right exchanged, so the person's left stays her left);
- ``grey``: the image painted grey away from the first reading's own person mask (the landmark
  model's segmentation, tighter than the segmenter's instance: mean IoU with the truth 0.86-0.88
  against 0.60-0.63 over photos) grown by :data:`GREY_GROW` of her height (:func:`grey_outside`),
  read once on the region the first reading's landmarks give (as label-box verification reads a
  label's person); only where the first reading found her.

Measured with ``scripts/bench_estimate.py --seeds 2024 2025 2026 2027 2028 2029 --n 32`` (the
pipeline's reading, 384 renders over procedural and real-photo backgrounds; limb PA-MPJPE mean /
median mm, left/right swaps, recall of people >= 10 % of the height), ``image`` -> ``image mirror
grey``: 73.3 / 55.1, 5.4 % of 370 fitted, 93.2 % -> 72.7 / 53.6, 4.8 % of 375, 94.3 %; over photos
88.9 / 66.2 -> 85.7 / 62.8. Paired render by render (``--seeds-rows``): -1.2 mm, bootstrap 95 %
interval -4.2 to +1.8 (photos -4.0, -9.2 to +0.4; procedural +1.5, -1.7 to +5.6): not a gain the
six seeds can tell from noise, hence not the default. Detection 36 -> 91 CPU ms per image with
MediaPipe's graph (a whole decision for the mirror, one region for the grey view); modes R / T (``scripts/bench_modes.py --n 48
--photo-finals``, eager fit, 128 px, loaded machine) 90.5 -> 106.5 and 90.8 -> 113.4 CPU ms per
accepted sample.

Variants measured on the same renders and not kept: the grey view read through the whole decision
(person detector, mask regions) with hard edges, 71.3 / 53.8, 5.1 %, 95.1 % (paired -2.6, -5.2 to
-0.2), and with soft edges 71.9 / 53.2 but 5.9 % swapped; by the mean of the seeds' means (today
73.2), the mirror alone 74.9, image + mirrored grey + grey 72.1, four views (+ a mirrored grey) 74.0,
five (+ a blurred background) 72.2, and on seeds 2024 / 2025 ``image mirror`` (the mean of two)
68.4 / 81.8 against 63.2 / 83.4; the grey view alone helps photos and hurts procedural backgrounds.
The two landmark runtimes' person masks, and so their painted images, differ by float noise:
through the whole decision they then read the wheels' photos up to 16 px apart (fits 8 cm apart, where one reading agrees within a millimetre);
read on the region with hard edges, 2 cm apart; as here, with :data:`GREY_RAMP`, 4 mm (median) and
9 mm at most.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import cv2
import numpy as np

from diffusion_hpc.config.estimate import DEFAULT_LANDMARK_VIEWS, LANDMARK_VIEWS, check_landmark_views
from diffusion_hpc.errors import InputError
from diffusion_hpc.estimate.landmarks import Detection
from diffusion_hpc.estimate.lifter import mirror_landmarks

#: the views :class:`~diffusion_hpc.estimate.mediapipe_fit.MediaPipeFitter` can read (module docstring)
VIEWS = LANDMARK_VIEWS
#: the views read by default
DEFAULT_VIEWS = DEFAULT_LANDMARK_VIEWS
#: the ``grey`` view keeps the first reading's person mask grown by this share of the mask's height
#: (read alone, a growth of 0.05 read the bench's photos worse than no grey at all)
GREY_GROW = 0.02
#: the ``grey`` view's paint (uint8 RGB level)
GREY_LEVEL = 128
#: the ``grey`` view blends image and paint where the grown mask lies within this width about 0.5
GREY_RAMP = 0.4


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """``views`` in reading order (:data:`VIEWS`).

    Raises:
        InputError: a view not in :data:`VIEWS`, a repeated one, or no ``image``.
    """
    try:
        return tuple(check_landmark_views(list(views)))
    except ValueError as exc:
        raise InputError(f"views={list(views)!r} (GenerateConfig / EstimateConfig landmark_views): {exc}") from exc


def mirror_image(image: np.ndarray) -> np.ndarray:
    """(H, W, ...) ``image`` flipped left to right (a contiguous copy)."""
    return np.ascontiguousarray(np.asarray(image)[:, ::-1])


def mirrored_detection(det: Detection | None, width: int) -> Detection | None:
    """A reading of the mirrored image (:func:`mirror_image`) mapped back to the image of ``width``
    px: landmarks and world as :func:`~diffusion_hpc.estimate.lifter.mirror_landmarks` gives them,
    its mask flipped back; None stays None."""
    if det is None:
        return None
    landmarks2d, world = mirror_landmarks(det.landmarks2d, det.world, width)
    mask = None if det.mask is None else mirror_image(det.mask)
    return replace(det, landmarks2d=landmarks2d, world=world, mask=mask, crop=None)


def grey_outside(image: np.ndarray, mask: np.ndarray, grow: float = GREY_GROW, level: int = GREY_LEVEL) -> np.ndarray:
    """(H, W, 3) uint8 copy of ``image`` painted ``level`` away from a person mask ((H, W) probabilities
    in [0, 1], or bool), the mask grown by ``grow`` x its height (above 0.5) first: each pixel keeps
    the share ``clip((p - 0.5) / GREY_RAMP + 0.5, 0, 1)`` of itself, ``p`` the grown mask's value
    there (the largest within the growth's disc). A bool mask paints hard edges; a probability near
    0.5 blends, so masks that differ by float noise (the landmark model on two runtimes) paint
    nearly the same image. The image unchanged when no pixel is above 0.5.

    Raises:
        InputError: ``mask`` not (H, W) of ``image``.
    """
    image = np.asarray(image)
    prob = np.asarray(mask, np.float32)
    if prob.shape != image.shape[:2]:
        raise InputError(f"grey_outside: mask {prob.shape} is not the (H, W) of the image {image.shape}")
    rows = np.nonzero((prob > 0.5).any(axis=1))[0]
    if rows.size == 0:
        return image.copy()
    radius = max(1, int(grow * (rows[-1] - rows[0] + 1)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    keep = np.clip((cv2.dilate(prob, kernel) - 0.5) / GREY_RAMP + 0.5, 0.0, 1.0)[..., None]
    return np.rint(keep * image + (1.0 - keep) * level).astype(np.uint8)


def median_reading(readings: Sequence[Detection | None]) -> Detection | None:
    """The readings of one person's views merged: per landmark the median image position (u, v) and
    world position, the mean visibility, the first reading's mask and ``crop``, the passes of all;
    None when no view found her. With two readings the median is their mean."""
    found = [r for r in readings if r is not None]
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    landmarks = np.stack([r.landmarks2d for r in found])
    merged = landmarks.mean(axis=0)
    merged[:, :2] = np.median(landmarks[..., :2], axis=0)
    world = np.median(np.stack([r.world for r in found]), axis=0)
    return replace(found[0], landmarks2d=merged, world=world, passes=sum(r.passes for r in found))
