"""Pose metrics (MPJPE, PA-MPJPE, PCK) and the benchmark protocols built on them.

All functions are pure and batched: joints are (N, J, 3) (3D) or (N, J, 2) (2D), numpy arrays or
torch tensors (converted to float64 numpy; torch is never imported here). A single (J, D) sample
is treated as N = 1. Metrics return **one value per sample**, shape (N,); the caller averages
(``np.nanmean``, since samples with nothing to score are NaN).

Protocols are data (:class:`Protocol3D`, :class:`Protocol2D`) naming a joint set, a root joint and
the scored joints by name; :func:`evaluate_3d` / :func:`evaluate_2d` take predictions and labels in
any named joint set and convert by name (:func:`diffusion_hpc.data.benchmarks.convert_joints`).

- :data:`SKIPOSE_PROTOCOL`: SkiPose 3D. H36M-17 order; each skeleton root-centred on its own joint 0
  (``pelvis``); joint 9 (``neck``, H36M's neck/nose point) dropped, 16 joints scored; metres -> mm;
  MPJPE and PA-MPJPE. The SkiPose labels' leg swap (their joints 1-3 are the left leg, 4-6 the
  right) is undone by :func:`diffusion_hpc.data.benchmarks.load_skipose`
  (``label_joint_set="skipose17"`` records the raw order).
- :data:`SMART_PROTOCOL`: SMART 2D. PCK at 0.1 x the crop side (22.4 px for a 224-px crop; in
  image pixels, 0.1 x ``scale`` x 200), visible joints only, averaged per image. Scored: the 13
  OpenPose BODY_25 joints the Diffusion-HPC SMART preprocessing keeps in SPIN's 24-joint labels —
  nose, shoulders, elbows, wrists, hips, knees, ankles (``neck`` and ``mid_hip`` have no SPIN-24
  counterpart; eyes, ears and feet are unlabelled there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffusion_hpc.body.joint_sets import H36M17
from diffusion_hpc.data.benchmarks import convert_joints, joint_names


def as_array(x, *, name: str = "array") -> np.ndarray:
    """A float64 numpy copy of a numpy array, torch tensor or nested list."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric (numpy array or torch tensor), got {type(x).__name__}") from exc


def _batched(x, dims: tuple[int, ...], name: str) -> np.ndarray:
    """(N, J, D) float64 with D in ``dims``; a (J, D) input becomes (1, J, D)."""
    a = as_array(x, name=name)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] not in dims:
        want = " or ".join(f"(N, J, {d})" for d in dims)
        raise ValueError(f"{name} must be {want} (or unbatched (J, D)), got shape {a.shape}")
    return a


def _pair(pred, gt, dims: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    p, g = _batched(pred, dims, "pred"), _batched(gt, dims, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must have the same shape (convert joint sets first)")
    return p, g


def _mask(visible, shape: tuple[int, int], name: str = "visible") -> np.ndarray:
    """(N, J) bool; ``None`` -> all True; numeric -> ``> 0``."""
    if visible is None:
        return np.ones(shape, dtype=bool)
    v = as_array(visible, name=name)
    if v.ndim == 1 and shape[0] == 1:
        v = v[None]
    if v.shape != shape:
        raise ValueError(f"{name} must be (N, J) = {shape}, got {v.shape}")
    return v > 0


def _mean_over(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-row mean of ``values`` (N, J) over ``mask``; NaN for rows with no selected entries."""
    count = mask.sum(axis=1)
    total = np.where(mask, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# --------------------------------------------------------------------------------------------
# Similarity (Procrustes) alignment.


@dataclass(frozen=True)
class SimilarityTransform:
    """Per-sample similarity ``x -> scale * R x + t``: ``scale`` (N,), ``rotation`` (N, 3, 3), ``translation`` (N, 3)."""

    scale: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray

    def apply(self, points) -> np.ndarray:
        """Transform (N, J, 3) points."""
        p = _batched(points, (3,), "points")
        return self.scale[:, None, None] * np.einsum("nab,njb->nja", self.rotation, p) + self.translation[:, None, :]


def similarity_transform(src, dst, *, weights=None) -> SimilarityTransform:
    """Least-squares similarity mapping ``src`` onto ``dst`` per sample (Umeyama / SPIN's
    ``compute_similarity_transform``).

    ``src``, ``dst``: (N, J, 3); ``weights``: optional (N, J) (e.g. visibility; 0 = ignored). The
    rotation is proper (det = +1): the SVD's last singular direction is flipped when the optimum
    would be a reflection. Samples whose weighted ``src`` has no spread get scale 0 (every point maps
    to ``dst``'s centroid); samples with zero total weight get NaN.
    """
    s, d = _pair(src, dst, (3,))
    w = _mask(None, s.shape[:2]).astype(np.float64) if weights is None else as_array(weights, name="weights")
    if w.shape != s.shape[:2]:
        raise ValueError(f"weights must be (N, J) = {s.shape[:2]}, got {w.shape}")
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu_s = np.einsum("nj,nja->na", w, s) / total[:, None]
        mu_d = np.einsum("nj,nja->na", w, d) / total[:, None]
    x, y = s - mu_s[:, None], d - mu_d[:, None]
    var = np.einsum("nj,nja,nja->n", w, x, x)
    cov = np.einsum("nj,nja,njb->nab", w, x, y)  # sum_j w x y^T
    cov = np.nan_to_num(cov)
    u, _, vh = np.linalg.svd(cov)
    v = np.swapaxes(vh, -1, -2)
    sign = np.where(np.linalg.det(v @ np.swapaxes(u, -1, -2)) < 0, -1.0, 1.0)
    z = np.broadcast_to(np.eye(3), cov.shape).copy()
    z[:, 2, 2] = sign
    rot = v @ z @ np.swapaxes(u, -1, -2)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(var > 0, np.einsum("nab,nba->n", rot, cov) / np.where(var > 0, var, 1.0), 0.0)
    scale = np.where(total > 0, scale, np.nan)
    trans = mu_d - scale[:, None] * np.einsum("nab,nb->na", rot, mu_s)
    return SimilarityTransform(scale=scale, rotation=rot, translation=trans)


def procrustes_align(src, dst, *, weights=None) -> np.ndarray:
    """``src`` (N, J, 3) after the similarity transform that best maps it onto ``dst``."""
    return similarity_transform(src, dst, weights=weights).apply(src)


# --------------------------------------------------------------------------------------------
# Metrics.


def mpjpe(pred, gt, *, visible=None, root_index: int | None = None, scale: float = 1000.0) -> np.ndarray:
    """Mean per-joint position error per sample, (N,), in input units x ``scale`` (metres -> mm).

    ``pred``, ``gt``: (N, J, 3) in the same joint order. ``root_index``: when given, each skeleton
    is first centred on its own joint ``root_index``. ``visible``: optional (N, J) mask of joints
    to average over (NaN for samples with none).
    """
    p, g = _pair(pred, gt, (3,))
    if root_index is not None:
        if not -p.shape[1] <= root_index < p.shape[1]:
            raise ValueError(f"root_index {root_index} is outside the {p.shape[1]} joints")
        r = root_index % p.shape[1]
        p = p - p[:, r : r + 1]
        g = g - g[:, r : r + 1]
    err = np.linalg.norm(p - g, axis=-1) * scale
    return _mean_over(err, _mask(visible, p.shape[:2]))


def pa_mpjpe(pred, gt, *, visible=None, scale: float = 1000.0) -> np.ndarray:
    """MPJPE after per-sample similarity Procrustes alignment of ``pred`` to ``gt``, (N,).

    Rotation (proper), translation and scale are fitted on the ``visible`` joints (default all),
    and the error is averaged over them. Invariant to any similarity applied to ``pred``; always
    at most :func:`mpjpe` on the same joints.
    """
    p, g = _pair(pred, gt, (3,))
    vis = _mask(visible, p.shape[:2])
    aligned = procrustes_align(p, g, weights=vis.astype(np.float64))
    err = np.linalg.norm(aligned - g, axis=-1) * scale
    return _mean_over(err, vis)


def pck(pred2d, gt2d, visible, threshold) -> np.ndarray:
    """Percentage of correct keypoints per image, (N,), in [0, 1].

    ``pred2d``, ``gt2d``: (N, J, 2) pixels (a third column is ignored); ``visible``: (N, J) mask —
    only visible joints count; ``threshold``: scalar or (N,) pixels. A joint is correct when its
    distance is ``<= threshold``; non-finite predictions are wrong. Images without visible joints
    give NaN (excluded by ``np.nanmean``).
    """
    p = _batched(pred2d, (2, 3), "pred2d")[..., :2]
    g = _batched(gt2d, (2, 3), "gt2d")[..., :2]
    if p.shape != g.shape:
        raise ValueError(f"pred2d {p.shape} and gt2d {g.shape} must have the same shape (convert joint sets first)")
    vis = _mask(visible, p.shape[:2])
    thr = as_array(threshold, name="threshold").reshape(-1)
    if thr.size not in (1, p.shape[0]):
        raise ValueError(f"threshold must be a scalar or (N,) = ({p.shape[0]},), got {thr.size} values")
    dist = np.linalg.norm(p - g, axis=-1)
    with np.errstate(invalid="ignore"):
        correct = (dist <= thr[:, None]).astype(np.float64)
    return _mean_over(correct, vis)


# --------------------------------------------------------------------------------------------
# Protocols.


@dataclass(frozen=True)
class Protocol3D:
    """A 3D benchmark protocol: joints in ``joint_set``, each skeleton centred on its ``root`` joint,
    errors over the ``scored`` joints, input units x ``scale`` (metres -> mm).

    ``label_joint_set`` is the order of the benchmark's raw label file (the loader converts it).
    """

    name: str
    joint_set: str
    root: str
    scored: tuple[str, ...]
    scale: float = 1000.0
    label_joint_set: str | None = None


@dataclass(frozen=True)
class Protocol2D:
    """A 2D PCK protocol: ``scored`` joints of ``joint_set``, threshold ``threshold_fraction`` x the
    person crop's side (``reference_crop`` px at the network input: 0.1 x 224 = 22.4 px)."""

    name: str
    joint_set: str
    scored: tuple[str, ...]
    threshold_fraction: float = 0.1
    reference_crop: int = 224


#: SkiPose 3D: H36M-17, root-centred on joint 0 (pelvis), joint 9 ("neck") dropped -> 16 scored, mm.
SKIPOSE_PROTOCOL = Protocol3D(
    name="skipose",
    joint_set="h36m17",
    root=H36M17[0],
    scored=tuple(n for i, n in enumerate(H36M17) if i != 9),
    scale=1000.0,
    label_joint_set="skipose17",
)

#: SMART 2D: PCK@0.1 x crop side over 13 BODY_25 joints (visible only, per image).
SMART_PROTOCOL = Protocol2D(
    name="smart",
    joint_set="body25",
    scored=(
        "nose",
        "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
        "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    ),  # fmt: skip
    threshold_fraction=0.1,
    reference_crop=224,
)


def _to_protocol_set(joints: np.ndarray, source: str, target: str, needed: tuple[str, ...], what: str) -> np.ndarray:
    names = joint_names(source)
    missing = [n for n in needed if n not in names]
    if missing:
        raise ValueError(f"{what} in joint set {source!r} lacks joints {missing} needed by the protocol ({target})")
    if joints.shape[1] != len(names):
        raise ValueError(f"{what} has {joints.shape[1]} joints but joint set {source!r} has {len(names)}")
    return convert_joints(joints, source, target)


def prepare_3d(joints, protocol: Protocol3D = SKIPOSE_PROTOCOL, joint_set: str | None = None) -> np.ndarray:
    """(N, S, 3) scored joints of (N, J, 3) ``joints`` (in ``joint_set``, default the protocol's),
    centred on the protocol's root, in input units (no scaling)."""
    j = _batched(joints, (3,), "joints")
    source = joint_set or protocol.joint_set
    needed = (protocol.root, *protocol.scored)
    j = _to_protocol_set(j, source, protocol.joint_set, needed, "joints")
    names = list(_names(protocol.joint_set))
    root = names.index(protocol.root)
    j = j - j[:, root : root + 1]
    keep = np.array([names.index(n) for n in protocol.scored])
    return j[:, keep]


def _names(joint_set: str) -> tuple[str, ...]:
    return joint_names(joint_set)


def evaluate_3d(
    pred,
    gt,
    protocol: Protocol3D = SKIPOSE_PROTOCOL,
    *,
    pred_joint_set: str | None = None,
    gt_joint_set: str | None = None,
) -> dict[str, np.ndarray]:
    """Per-sample ``{"mpjpe": (N,), "pa_mpjpe": (N,)}`` in mm under a 3D protocol.

    ``pred``, ``gt``: (N, J, 3) metres in ``pred_joint_set`` / ``gt_joint_set`` (default the
    protocol's joint set; SkiPose labels from :func:`~diffusion_hpc.data.benchmarks.load_skipose`
    are already in true H36M-17 order). Each skeleton is centred on its own root, then only the
    scored joints count.
    """
    p = prepare_3d(pred, protocol, pred_joint_set)
    g = prepare_3d(gt, protocol, gt_joint_set)
    if p.shape != g.shape:
        raise ValueError(f"pred has {p.shape[0]} samples and gt {g.shape[0]}")
    return {"mpjpe": mpjpe(p, g, scale=protocol.scale), "pa_mpjpe": pa_mpjpe(p, g, scale=protocol.scale)}


def evaluate_2d(
    pred2d,
    gt2d,
    box_size,
    protocol: Protocol2D = SMART_PROTOCOL,
    *,
    visible=None,
    pred_joint_set: str | None = None,
    gt_joint_set: str | None = None,
) -> np.ndarray:
    """Per-image PCK (N,) in [0, 1] under a 2D protocol (NaN for images with no visible scored joint).

    ``pred2d`` (N, J, 2|3) and ``gt2d`` (N, J, 2|3) pixels in ``pred_joint_set`` / ``gt_joint_set``
    (default the protocol's); ``box_size`` scalar or (N,) crop side in the same pixels (``scale`` x
    200 in image pixels, or 224 for keypoints in crop pixels); ``visible`` (N, J_gt) mask, default
    ``gt2d[..., 2] > 0``. Threshold = ``protocol.threshold_fraction`` x ``box_size``.
    """
    g = _batched(gt2d, (2, 3), "gt2d")
    if visible is None:
        if g.shape[-1] != 3:
            raise ValueError("gt2d has no visibility column; pass visible=(N, J) explicitly")
        visible = g[..., 2]
    vis = _mask(visible, g.shape[:2]).astype(np.float64)
    g3 = np.concatenate([g[..., :2], vis[..., None]], axis=-1)
    g3 = _to_protocol_set(g3, gt_joint_set or protocol.joint_set, protocol.joint_set, protocol.scored, "gt2d")
    p = _batched(pred2d, (2, 3), "pred2d")[..., :2]
    p = _to_protocol_set(p, pred_joint_set or protocol.joint_set, protocol.joint_set, protocol.scored, "pred2d")
    names = list(_names(protocol.joint_set))
    keep = np.array([names.index(n) for n in protocol.scored])
    threshold = protocol.threshold_fraction * as_array(box_size, name="box_size")
    return pck(p[:, keep], g3[:, keep, :2], g3[:, keep, 2], threshold)


__all__ = [
    "Protocol2D",
    "Protocol3D",
    "SKIPOSE_PROTOCOL",
    "SMART_PROTOCOL",
    "SimilarityTransform",
    "as_array",
    "evaluate_2d",
    "evaluate_3d",
    "mpjpe",
    "pa_mpjpe",
    "pck",
    "prepare_3d",
    "procrustes_align",
    "similarity_transform",
]
