"""Drawing a sample's labels for previews (``dhpc inspect``, a run's ``preview.png``): each person's
silhouette outline and COCO-17 skeleton in its own colour, over the union silhouette in grey.

Pure functions of arrays (uint8 RGB canvases); no file I/O. A v1 sample is one person; a schema v2
sample gives one entry per person (:func:`~diffusion_hpc.data.schema.persons_of`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# COCO-17 skeleton edges (pairs of joint indices) for drawing.
COCO_EDGES = (
    (0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (5, 11), (6, 12),
    (11, 12), (11, 13), (13, 15), (12, 14), (14, 16),
)  # fmt: skip

#: one RGB colour per person, in order (then repeated): well apart in hue, bright on grey and black
PERSON_COLOURS = (
    (60, 220, 60), (255, 150, 0), (70, 170, 255), (240, 70, 200), (250, 230, 60), (0, 220, 210), (255, 90, 90),
    (170, 120, 255),
)  # fmt: skip


def person_colour(person: int) -> tuple[int, int, int]:
    """The RGB colour of person number ``person`` (:data:`PERSON_COLOURS`, repeated)."""
    return PERSON_COLOURS[person % len(PERSON_COLOURS)]


def draw_person(canvas: np.ndarray, mask: np.ndarray | None, keypoints2d: np.ndarray,
                colour: tuple[int, int, int]) -> np.ndarray:
    """Draw one person onto ``canvas`` (H, W, 3) uint8 in place and return it: the outline of its
    silhouette ``mask`` (H, W) bool (None: no outline), its COCO skeleton between joints in the image
    and its joints (``keypoints2d`` (17, 3) u, v px, COCO visibility): visible (2) filled, hidden (1)
    as rings."""
    import cv2

    radius = max(2, canvas.shape[0] // 128)
    thickness = max(1, radius // 2)
    if mask is not None and np.asarray(mask).any():
        contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colour, thickness, cv2.LINE_8)  # exact colour: tells persons apart
    kp = np.asarray(keypoints2d, np.float64)
    pts = [(int(round(u)), int(round(v))) for u, v in kp[:, :2]]
    for a, b in COCO_EDGES:
        if kp[a, 2] > 0 and kp[b, 2] > 0:
            cv2.line(canvas, pts[a], pts[b], colour, thickness, cv2.LINE_AA)
    for (u, v), vis in zip(pts, kp[:, 2]):
        if vis > 0:
            cv2.circle(canvas, (u, v), radius, colour, -1 if vis == 2 else thickness, cv2.LINE_AA)
    return canvas


def overlay_persons(union: np.ndarray, persons: Sequence[dict[str, Any]]) -> np.ndarray:
    """(H, W, 3) uint8: the union silhouette ``union`` (H, W) bool in grey, then each person (dicts
    with ``mask`` and ``keypoints2d``) drawn in its colour (:func:`person_colour` of its position)."""
    canvas = np.where(np.asarray(union, bool)[..., None], 150, 30).astype(np.uint8).repeat(3, axis=2)
    for i, person in enumerate(persons):
        draw_person(canvas, person.get("mask"), person["keypoints2d"], person_colour(i))
    return canvas


__all__ = ["COCO_EDGES", "PERSON_COLOURS", "draw_person", "overlay_persons", "person_colour"]
