"""Pinhole cameras in the OpenCV convention (x right, y down, z forward; pixel centres at integers).

All functions are pure and batched over leading dimensions.
"""

from __future__ import annotations

import math

import numpy as np

#: SPIN's crop camera (the HMR field's convention): focal length in pixels of a
#: ``SPIN_CROP`` x ``SPIN_CROP`` crop; it scales with the crop size.
SPIN_FOCAL = 5000.0
SPIN_CROP = 224


def intrinsics_from_fov(fov_deg: float | np.ndarray, width: int, height: int) -> np.ndarray:
    """(..., 3, 3) intrinsics with square pixels, vertical field of view ``fov_deg``, centred.

    The principal point is the image centre ((W - 1) / 2, (H - 1) / 2) under the pixel-centre
    convention, so a point on the optical axis lands on the middle of the image.
    """
    fov = np.asarray(fov_deg, dtype=np.float64)
    f = (height / 2.0) / np.tan(np.deg2rad(fov) / 2.0)
    K = np.zeros(fov.shape + (3, 3))
    K[..., 0, 0] = f
    K[..., 1, 1] = f
    K[..., 0, 2] = (width - 1) / 2.0
    K[..., 1, 2] = (height - 1) / 2.0
    K[..., 2, 2] = 1.0
    return K


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Perspective projection of camera-frame points.

    Args:
        points: (..., N, 3) camera-frame points, z > 0.
        K: (..., 3, 3) intrinsics.
    Returns:
        (..., N, 2) pixel coordinates (u, v).
    """
    points = np.asarray(points, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    uvw = np.einsum("...ij,...nj->...ni", K, points)
    return uvw[..., :2] / uvw[..., 2:3]


def rotation_x(angle: float) -> np.ndarray:
    """(3, 3) rotation about x by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_y(angle: float) -> np.ndarray:
    """(3, 3) rotation about y by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rotation_z(angle: float) -> np.ndarray:
    """(3, 3) rotation about z by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def fit_translation(
    points: np.ndarray, K: np.ndarray, width: int, height: int, fill: float, offset: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Translation that puts ``points`` fully in frame, spanning ``fill`` of the limiting image side.

    The points (camera orientation already applied) are moved to the depth at which their
    projected bounding box spans ``fill`` of the image width or height (whichever binds first),
    then shifted within the remaining slack by ``offset`` (each in [-1, 1], a fraction of the
    slack on either side). If depth relief pushes a point outside the image, ``fill`` shrinks
    until everything is inside.

    Args:
        points: (N, 3) vertices in camera orientation.
        K: (3, 3) intrinsics.
        width, height: image size in pixels.
        fill: in (0, 1], share of the limiting image side the body spans.
        offset: (horizontal, vertical) placement in the slack, in [-1, 1].
    Returns:
        (3,) translation t such that every ``points + t`` projects inside the image with z > 0.
    """
    points = np.asarray(points, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    centre = (points.min(0) + points.max(0)) / 2.0
    local = points - centre
    # Solve on a subsample plus the extreme points (fast); check containment on all points.
    extremes = np.concatenate([local.argmin(0), local.argmax(0)])
    probe = np.concatenate([local[:: max(1, len(local) // 2000)], local[extremes]])
    for _ in range(50):
        z = 3.0
        for _ in range(30):  # fixed point: depth at which the box spans `fill`
            depth = z + probe[:, 2]
            span_u = np.ptp(fx * probe[:, 0] / depth) / (width - 1)
            span_v = np.ptp(fy * probe[:, 1] / depth) / (height - 1)
            z *= max(span_u, span_v) / fill
        z = max(z, 0.1 - local[:, 2].min())
        t = np.array([0.0, 0.0, z])
        for _ in range(10):  # shift the projected box centre to its target
            uv = project(probe + t, K)
            lo, hi = uv.min(0), uv.max(0)
            slack = np.array([(width - 1) - (hi[0] - lo[0]), (height - 1) - (hi[1] - lo[1])]) / 2.0
            target = np.array([cx, cy]) + np.asarray(offset) * np.maximum(slack, 0.0) * 0.98
            t[:2] += (target - (lo + hi) / 2.0) * z / np.array([fx, fy])
        uv = project(local + t, K)
        if uv.min() >= 0.0 and uv[:, 0].max() <= width - 1 and uv[:, 1].max() <= height - 1:
            return t - centre
        fill *= 0.95
    raise RuntimeError("could not fit the body in frame")
