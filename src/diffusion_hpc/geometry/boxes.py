"""Person boxes and square crops (pure functions; pixel centres at integer coordinates).

One expansion constant for every box: the square person box is :data:`BOX_EXPAND` times the
longer side of what it is drawn around (SPIN's and Diffusion-HPC's preprocessing), and SPIN's
``scale`` is the box side over :data:`SPIN_SCALE_UNIT`.
"""

from __future__ import annotations

import math

import numpy as np

from diffusion_hpc.geometry.camera import rotation_z

#: square person box = this x the longer side of the mask / keypoints it surrounds
BOX_EXPAND = 1.2
#: SPIN box convention: ``scale`` = box side in pixels / ``SPIN_SCALE_UNIT``
SPIN_SCALE_UNIT = 200.0

Box = tuple  # (centre (2,) px, side px)


def mask_extent(mask: np.ndarray) -> float:
    """Longer side in pixels of the bounding box of a (H, W) bool mask (0 if empty)."""
    rows, cols = np.nonzero(np.asarray(mask, bool))
    if len(rows) == 0:
        return 0.0
    return float(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))


def mask_edges(mask: np.ndarray) -> np.ndarray | None:
    """(4,) float64 x0, y0, x1, y1: the edges of the bounding box of a (H, W) mask's pixels (pixel ``i``
    spans ``i - 0.5 .. i + 0.5``), or None for an empty mask."""
    ys, xs = np.nonzero(np.asarray(mask, bool))
    if xs.size == 0:
        return None
    return np.array([xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5])


def mask_box(mask: np.ndarray, expand: float = BOX_EXPAND) -> tuple[np.ndarray, float] | None:
    """Square box ``(centre (2,) px, side px)`` around a (H, W) mask, or None for an empty mask.

    A box over columns x0..x1 is centred on (x0 + x1) / 2 and spans x1 - x0 + 1 pixels; the side is
    ``expand`` x the longer span.
    """
    ys, xs = np.nonzero(np.asarray(mask, bool))
    if xs.size == 0:
        return None
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    center = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    return center, expand * float(max(x1 - x0 + 1, y1 - y0 + 1))


def points_box(points: np.ndarray, expand: float = BOX_EXPAND, min_side: float = 8.0) -> tuple[np.ndarray, float]:
    """Square box ``(centre (2,), side)`` around (N, 2) points: ``expand`` x the longer side of their
    bounding box (at least ``min_side``), same centre."""
    pts = np.asarray(points, np.float64)
    lo, hi = pts.min(0), pts.max(0)
    return (lo + hi) / 2.0, float(max(expand * (hi - lo).max(), min_side))


def keypoints_box(keypoints2d: np.ndarray, torso_pairs: tuple[tuple[int, int], ...] = (), *,
                  expand: float = BOX_EXPAND, torso_fraction: float = 1 / 3) -> tuple[np.ndarray, np.ndarray]:
    """SPIN boxes around (N, J, 3) keypoints (u, v px, visibility): ``center`` (N, 2), ``side`` (N,) px.

    The box is centred on the bounding box of the visible joints; its side is the larger of
    ``expand`` x the bounding box's longer side and the mean visible torso length / ``torso_fraction``
    (torso segments: ``torso_pairs``, joint index pairs). Samples without visible joints use all joints.
    """
    kp = np.asarray(keypoints2d, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 3:
        raise ValueError(f"keypoints2d must be (N, J, 3), got {kp.shape}")
    vis = kp[..., 2] > 0
    vis = np.where(vis.any(axis=1, keepdims=True), vis, True)
    uv = kp[..., :2]
    lo = np.where(vis[..., None], uv, np.inf).min(axis=1)
    hi = np.where(vis[..., None], uv, -np.inf).max(axis=1)
    center = (lo + hi) / 2
    side = expand * (hi - lo).max(axis=1)
    lengths, counts = np.zeros(len(kp)), np.zeros(len(kp))
    for ia, ib in torso_pairs:
        ok = vis[:, ia] & vis[:, ib]
        lengths += np.where(ok, np.linalg.norm(uv[:, ia] - uv[:, ib], axis=-1), 0.0)
        counts += ok
    torso = np.divide(lengths, counts, out=np.zeros_like(lengths), where=counts > 0)
    return center, np.maximum(side, torso / torso_fraction)


def crop_matrix(center: np.ndarray, side: float, size: int, rotation_deg: float = 0.0) -> np.ndarray:
    """(3, 3) image px -> crop px: ``(size / side) R2(theta) (u - center) + (size - 1) / 2``."""
    s = size / side
    r = rotation_z(math.radians(rotation_deg))[:2, :2] * s
    half = (size - 1) / 2.0
    A = np.eye(3)
    A[:2, :2] = r
    A[:2, 2] = half - r @ np.asarray(center, np.float64)
    return A


def frame_to_crop(points: np.ndarray, center: np.ndarray, side: float, size: int) -> np.ndarray:
    """(N, 2) frame px -> (N, 2) crop px of the square box ``(center, side)`` resized to ``size`` px
    (:func:`crop_matrix` without rotation)."""
    A = crop_matrix(np.asarray(center, np.float64), float(side), int(size))
    return np.asarray(points, np.float64) @ A[:2, :2].T + A[:2, 2]


def crop_to_frame(points: np.ndarray, center: np.ndarray, side: float, size: int) -> np.ndarray:
    """(N, 2) crop px of the square box ``(center, side)`` resized to ``size`` px -> (N, 2) frame px
    (the inverse of :func:`frame_to_crop`)."""
    A = np.linalg.inv(crop_matrix(np.asarray(center, np.float64), float(side), int(size)))
    return np.asarray(points, np.float64) @ A[:2, :2].T + A[:2, 2]


def square_window(center: np.ndarray, side: float) -> tuple[int, int, int]:
    """Integer square window ``(x0, y0, side)`` closest to the box ``(center (2,), side)``.

    The window covers columns ``x0 .. x0 + side - 1``; its exact centre ``x0 + (side - 1) / 2``
    is the box centre rounded to the pixel grid. Cutting the window out and resizing it to ``size``
    px (``cv2.resize``, any interpolation) is the map :func:`frame_to_crop` of that exact centre and
    integer side, so crop pixels map back to the frame with :func:`crop_to_frame`.
    """
    s = max(int(round(float(side))), 1)
    cx, cy = np.asarray(center, np.float64)
    return int(round(cx - (s - 1) / 2.0)), int(round(cy - (s - 1) / 2.0)), s


def window_box(window: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    """The box ``(centre (2,), side)`` of an integer window ``(x0, y0, side)`` (:func:`square_window`)."""
    x0, y0, s = window
    return np.array([x0 + (s - 1) / 2.0, y0 + (s - 1) / 2.0]), float(s)


def crop_grid(height: int, width: int, tiles: int, overlap: float) -> list[tuple[int, int, int]]:
    """Overlapping square windows ``(x0, y0, side)`` tiling an (H, W) frame, row by row.

    ``tiles`` windows span the longer side, neighbours overlapping by the fraction ``overlap`` of a
    side: ``side = L / (1 + (tiles - 1) (1 - overlap))`` with L the longer side. The shorter side
    gets as many windows as it needs at (at most) the same stride, first and last flush with the
    frame's edges; a side shorter than a window gets one window centred on it (reaching past the
    frame). With overlap 0.5, anything of at most half a side lies wholly inside some window.
    """
    if tiles < 1 or not (0.0 <= overlap < 1.0):
        raise ValueError(f"crop_grid needs tiles >= 1 and 0 <= overlap < 1, got tiles={tiles}, overlap={overlap}")
    side = max(height, width) / (1.0 + (tiles - 1) * (1.0 - overlap))
    stride = side * (1.0 - overlap)

    def starts(length: int) -> np.ndarray:
        if length <= side:
            return np.array([(length - side) / 2.0])
        count = int(math.ceil((length - side) / stride - 1e-9)) + 1
        return np.linspace(0.0, length - side, count)

    s = max(int(round(side)), 1)
    return [(int(round(x0)), int(round(y0)), s) for y0 in starts(height) for x0 in starts(width)]
