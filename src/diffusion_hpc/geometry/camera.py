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


def rotate_points(rotation: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(..., N, 3) float64: ``rotation @ p`` for every point p, bit-identical to
    ``np.einsum("...ij,...nj->...ni", rotation, points)`` and several times faster.

    Computed on contiguous coordinate planes, each row summed in the order numpy's einsum kernel
    sums a length-3 contraction of contiguous rows, ``(r0 x + r2 z) + r1 y`` (two SIMD lanes, then
    their sum), so replacing that einsum changes no output bit.

    Args:
        rotation: (..., 3, 3); points: (..., N, 3) (batch shapes broadcast).
    """
    r = np.asarray(rotation, np.float64)[..., None]  # (..., 3, 3, 1): each entry broadcasts over the N points
    p = np.asarray(points, np.float64)
    x, y, z = (np.ascontiguousarray(p[..., k]) for k in range(3))  # (..., N) each
    return np.stack([(r[..., i, 0, :] * x + r[..., i, 2, :] * z) + r[..., i, 1, :] * y for i in range(3)], -1)


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


def _project_coords(x: np.ndarray, y: np.ndarray, z: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, v), each (B, M): :func:`project` of points given as (B, M) coordinate arrays with (B, 3, 3)
    intrinsics. Coordinate arrays keep every reduction over the points contiguous (reducing a
    (B, M, 3) array over M is several times slower)."""
    k = K[:, :, :, None]  # (B, 3, 3, 1): each entry broadcasts over the M points
    w = k[:, 2, 0] * x + k[:, 2, 1] * y + k[:, 2, 2] * z
    return (k[:, 0, 0] * x + k[:, 0, 1] * y + k[:, 0, 2] * z) / w, (k[:, 1, 0] * x + k[:, 1, 1] * y + k[:, 1, 2] * z) / w


def fit_translations(
    points: np.ndarray, K: np.ndarray, width: int, height: int, fill, offset=(0.0, 0.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Translations that put each of B point sets fully in frame, spanning ``fill`` of the limiting
    image side; batched (no loop over the samples).

    Each point set (camera orientation already applied) is moved to the depth at which its
    projected bounding box spans ``fill`` of the image width or height (whichever binds first),
    then shifted within the remaining slack by ``offset`` (each in [-1, 1], a fraction of the
    slack on either side). If depth relief pushes a point outside the image, that sample's
    ``fill`` shrinks (x 0.95, at most 50 times) until everything is inside.

    Args:
        points: (B, N, 3) vertices in camera orientation.
        K: (B, 3, 3) intrinsics (or (3, 3), shared).
        width, height: image size in pixels.
        fill: (B,) or scalar, in (0, 1], share of the limiting image side the body spans.
        offset: (B, 2) or (2,), (horizontal, vertical) placement in the slack, in [-1, 1].
    Returns:
        translations (B, 3) such that every ``points[b] + t[b]`` projects inside the image with
        z > 0, and ok (B,) bool: False where no fill fitted (that sample's translation is NaN).
    """
    points = np.asarray(points, dtype=np.float64)
    B, N = points.shape[:2]
    K = np.broadcast_to(np.asarray(K, dtype=np.float64), (B, 3, 3))
    fill = np.broadcast_to(np.asarray(fill, dtype=np.float64), (B,)).copy()
    offset = np.broadcast_to(np.asarray(offset, dtype=np.float64), (B, 2))
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    focal = np.stack([fx, fy], -1)  # (B, 2)
    extremes = np.concatenate([points.argmin(1), points.argmax(1)], axis=1)  # (B, 6): min and max along x, y, z
    ends = np.take_along_axis(points, extremes[..., None], 1)  # (B, 6, 3)
    low = np.stack([ends[:, i, i] for i in range(3)], -1)  # (B, 3): the min (a reduce over N is slow)
    centre = (low + np.stack([ends[:, 3 + i, i] for i in range(3)], -1)) / 2.0  # (B, 3)
    # (B, N) coordinate arrays relative to the centre; solve on a subsample plus the extreme
    # points (fast), check containment on all points
    local = [np.ascontiguousarray(points[:, :, i]) - centre[:, i, None] for i in range(3)]
    step = max(1, N // 2000)
    probe = [np.concatenate([c[:, ::step], np.take_along_axis(c, extremes, 1)], 1) for c in local]
    nearest = 0.1 - (low[:, 2] - centre[:, 2])  # (B,) depth that keeps every point 0.1 m in front
    limit = np.array([width - 1, height - 1], np.float64)
    out = np.full((B, 3), np.nan)
    todo = np.arange(B)
    for _ in range(50):
        px, py, pz = (c[todo] for c in probe)
        f, k = focal[todo], K[todo]
        z = np.full(len(todo), 3.0)
        for _ in range(30):  # fixed point: depth at which the box spans `fill`
            depth = z[:, None] + pz
            span_u = np.ptp(fx[todo, None] * px / depth, axis=1) / (width - 1)
            span_v = np.ptp(fy[todo, None] * py / depth, axis=1) / (height - 1)
            z = z * (np.maximum(span_u, span_v) / fill[todo])
        z = np.maximum(z, nearest[todo])
        t = np.zeros((len(todo), 3))
        t[:, 2] = z
        for _ in range(10):  # shift the projected box centre to its target
            u, v = _project_coords(px + t[:, 0, None], py + t[:, 1, None], pz + t[:, 2, None], k)
            lo, hi = np.stack([u.min(1), v.min(1)], -1), np.stack([u.max(1), v.max(1)], -1)
            slack = (limit - (hi - lo)) / 2.0
            target = np.stack([cx[todo], cy[todo]], -1) + offset[todo] * np.maximum(slack, 0.0) * 0.98
            t[:, :2] += (target - (lo + hi) / 2.0) * z[:, None] / f
        u, v = _project_coords(*(c[todo] + t[:, i, None] for i, c in enumerate(local)), k)
        inside = (u.min(1) >= 0.0) & (v.min(1) >= 0.0) & (u.max(1) <= limit[0]) & (v.max(1) <= limit[1])
        out[todo[inside]] = t[inside] - centre[todo[inside]]
        todo = todo[~inside]
        if not len(todo):
            break
        fill[todo] *= 0.95
    ok = np.ones(B, bool)
    ok[todo] = False
    return out, ok


def fit_translation(
    points: np.ndarray, K: np.ndarray, width: int, height: int, fill: float, offset: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """:func:`fit_translations` of one point set: points (N, 3), K (3, 3) -> (3,) translation.

    Raises:
        RuntimeError: no fill fits the points in the image.
    """
    t, ok = fit_translations(np.asarray(points)[None], np.asarray(K)[None], width, height, fill, offset)
    if not ok[0]:
        raise RuntimeError("could not fit the body in frame")
    return t[0]


def fit_group_translations(
    points: np.ndarray, K: np.ndarray, width: int, height: int, fill, offset=(0.0, 0.0),
    framed: np.ndarray | None = None, present: np.ndarray | None = None, near: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """One camera translation per scene of P people: :func:`fit_translations` of the people that must
    be in frame (``framed``), the others (present, not framed) may be cut by the image border.

    Every framed person is fully inside the image and the framed group's box spans ``fill`` of the
    limiting side; a present person who is not framed only has to be in front of the camera
    (z >= ``near`` for all its points), else the scene is not ok.

    Args:
        points: (B, P, N, 3) each person's points in camera orientation, in one shared frame per scene.
        K: (B, 3, 3) or (3, 3) intrinsics.
        width, height: image size in pixels.
        fill, offset: as in :func:`fit_translations`, for the framed group.
        framed: (B, P) bool, the people that must be fully in frame (at least one per scene);
            default all present people.
        present: (B, P) bool, the people in each scene (absent ones are ignored); default all.
        near: smallest camera z of a present person's points, metres.
    Returns:
        translations (B, 3) added to every person's points of the scene, and ok (B,) bool (False:
        no fill fits the framed group, or a present person would be behind ``near``; NaN translation).

    Raises:
        ValueError: a scene with no framed person (name the scene; frame at least one person).
    """
    points = np.asarray(points, dtype=np.float64)
    B, P, N = points.shape[:3]
    present = np.ones((B, P), bool) if present is None else np.asarray(present, bool)
    framed = present.copy() if framed is None else np.asarray(framed, bool) & present
    empty = np.flatnonzero(~framed.any(1))
    if len(empty):
        raise ValueError(f"scene(s) {empty.tolist()} frame nobody; mark at least one present person in `framed`")
    # people not framed take the first framed person's points: the framed group's extremes are unchanged
    first = framed.argmax(1)  # (B,)
    source = np.where(framed, np.arange(P)[None], first[:, None])  # (B, P)
    group = np.take_along_axis(points, source[:, :, None, None], 1).reshape(B, P * N, 3)
    translations, ok = fit_translations(group, K, width, height, fill, offset)
    z = np.where(present[:, :, None], points[..., 2], np.inf).min((1, 2))  # (B,) nearest present point
    ok &= z + np.nan_to_num(translations[:, 2], nan=-np.inf) >= near
    translations[~ok] = np.nan
    return translations, ok
