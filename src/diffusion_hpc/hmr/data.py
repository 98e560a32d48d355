"""Crops, augmentation and datasets for HMR training.

Crop and camera conventions (pixel centres at integers, as :mod:`diffusion_hpc.geometry.camera`):

- A square box (centre ``c`` px, side ``b`` px) maps to an ``S x S`` crop by the similarity
  ``A: u -> (S / b) R2(theta) (u - c) + (S - 1) / 2`` (3x3, image px -> crop px).
- An in-plane rotation ``theta`` of the crop equals rotating the body by ``Rz(theta)`` about the
  optical axis (camera centre): we rotate the 3D labels (joints, ``global_orient``, ``transl``)
  and give the crop the intrinsics ``K_crop = A K Rz^T``, so ``project(K_crop, Rz X) = A project(K, X)``
  exactly (for ``fx = fy`` ``K_crop`` is again an upper-triangular pinhole matrix).
- A horizontal flip maps crop ``u -> S - 1 - u`` and mirrors the 3D world in the camera's
  x = 0 plane (``M = diag(-1, 1, 1)``): joints ``X -> M X`` with left/right labels exchanged,
  axis-angle rotations ``(x, y, z) -> (x, -y, -z)`` with left/right joints exchanged (Anny's local
  rotations live in world-aligned frames whose sagittal plane is x = 0, and its rest pose is
  symmetric; SMPL likewise), ``transl -> M (p + t) - p`` (p: the rest root, 0 for Anny) and
  ``K_crop -> F K_crop M`` with ``F: u -> S - 1 - u``.
- 2D labels are returned in normalised crop coordinates: ``(u - (S - 1) / 2) / (S / 2)``, so the
  crop spans [-1, 1]; the regressor's weak-perspective projection uses the same coordinates.

Synthetic datasets train on person crops: every person of a sample (schema v2 ``persons``; a v1
sample is one person) is its own item, cropped around that person with that person's parameters and
joints (:meth:`SyntheticShards.convert`). Persons too hidden to learn from (fewer than
:data:`MIN_VISIBLE_KEYPOINTS` visible COCO keypoints, or less than :data:`MIN_VISIBLE_FRACTION` of
their silhouette visible) are skipped and counted (:class:`PersonCounts`, :func:`count_persons`).

Datasets yield dicts of float32 tensors with identical keys (so the default collate works):
``image`` (3, S, S) in [0, 1], ``keypoints2d`` (17, 3) COCO-17 normalised + confidence,
``joints3d`` (17, 4) H36M-17 camera frame metres + confidence, ``global_orient`` (3,),
``body_pose`` (J, 3), ``shape`` (D,), ``transl`` (3,), ``K`` (3, 3) crop intrinsics, and the
per-sample masks ``has_2d``, ``has_3d``, ``has_params``, ``is_real`` (0-d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from diffusion_hpc.body.joint_sets import flip_permutation
from diffusion_hpc.config.train import MIN_VISIBLE_FRACTION, MIN_VISIBLE_KEYPOINTS
from diffusion_hpc.data import benchmarks, open_dataset
from diffusion_hpc.data.benchmarks import box_from_keypoints as spin_box
from diffusion_hpc.data.benchmarks import convert_joints
from diffusion_hpc.data.export_persons import iter_sample_meta
from diffusion_hpc.data.schema import persons_of
from diffusion_hpc.data.reader import iter_shard
from diffusion_hpc.errors import InputError
from diffusion_hpc.geometry.boxes import BOX_EXPAND, SPIN_SCALE_UNIT, crop_matrix, mask_box
from diffusion_hpc.geometry.camera import rotation_z
from diffusion_hpc.hmr.model import body_spec

KEYPOINT_SET = "coco17"
JOINTS3D_SET = "h36m17"
MIRROR = np.diag([-1.0, 1.0, 1.0])


@dataclass
class AugmentConfig:
    """Training augmentation (DESIGN §2 / SPIN): rotation, scale, colour noise, flips."""

    rotation_deg: float = 30.0  # uniform in [-r, r] ...
    rotation_prob: float = 0.6  # ... applied with this probability (SPIN)
    scale: float = 0.25  # box side x uniform [1 - s, 1 + s]
    colour_noise: float = 0.4  # per-channel gain uniform [1 - c, 1 + c]
    flip_prob: float = 0.5


@dataclass
class Augmentation:
    """One draw of the augmentation parameters (identity by default)."""

    rotation_deg: float = 0.0
    scale: float = 1.0
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    flip: bool = False


def sample_augmentation(rng: np.random.Generator, cfg: AugmentConfig) -> Augmentation:
    """Draw augmentation parameters from ``cfg``."""
    rot = float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)) if rng.random() < cfg.rotation_prob else 0.0
    scale = float(rng.uniform(1.0 - cfg.scale, 1.0 + cfg.scale))
    colour = tuple(float(c) for c in rng.uniform(1.0 - cfg.colour_noise, 1.0 + cfg.colour_noise, size=3))
    return Augmentation(rot, scale, colour, bool(rng.random() < cfg.flip_prob))


# ----------------------------------------------------------------------------------------------
# Pure geometry.


def box_from_keypoints(keypoints2d: np.ndarray, joint_set: str = KEYPOINT_SET, expand: float = BOX_EXPAND) -> tuple[np.ndarray, float]:
    """Square box around visible (J, 3) keypoints (SPIN rule, see ``data.benchmarks.box_from_keypoints``)."""
    center, scale = spin_box(np.asarray(keypoints2d, np.float64)[None], joint_set, expand=expand)
    return center[0], float(max(scale[0] * SPIN_SCALE_UNIT, 1.0))


def flip_matrix(size: int) -> np.ndarray:
    """(3, 3) crop px -> flipped crop px (u -> size - 1 - u)."""
    return np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def normalise_keypoints(uv: np.ndarray, size: int) -> np.ndarray:
    """Crop pixels -> normalised crop coordinates (crop spans [-1, 1])."""
    return (np.asarray(uv, np.float64) - (size - 1) / 2.0) / (size / 2.0)


def denormalise_keypoints(uv: np.ndarray, size: int) -> np.ndarray:
    """Inverse of :func:`normalise_keypoints`."""
    return np.asarray(uv, np.float64) * (size / 2.0) + (size - 1) / 2.0


def _pose_flip_permutation(body_model: str) -> np.ndarray:
    spec = body_spec(body_model)
    perm = flip_permutation(spec.pose_joint_set)[: spec.pose_joint_count]
    if perm.max() >= spec.pose_joint_count:  # pragma: no cover - guards a new joint-set layout
        raise ValueError(f"flip pairs of {spec.pose_joint_set} leave the first {spec.pose_joint_count} joints")
    return perm


def mirror_rotvecs(rotvecs: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """(..., R, 3) axis-angle rotations of a body mirrored in x: swap left/right, negate y and z."""
    out = np.asarray(rotvecs, np.float64)[..., permutation, :].copy()
    out[..., 1:] *= -1.0
    return out


def mirror_params(params: Mapping[str, np.ndarray], body_model: str = "anny", pivot: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Unbatched body parameters of the mirror image (in the camera's x = 0 plane) of the body.

    ``global_orient`` (3,), ``body_pose`` (J, 3), optional ``transl`` (3,); other keys (shape) kept.
    ``pivot``: rest position of the root joint (0 for Anny; SMPL's depends on the shape).
    """
    perm = _pose_flip_permutation(body_model)
    rv = np.concatenate([np.asarray(params["global_orient"], np.float64)[None], np.asarray(params["body_pose"], np.float64)])
    rv = mirror_rotvecs(rv, perm)
    out = dict(params)
    out["global_orient"], out["body_pose"] = rv[0], rv[1:]
    if "transl" in params:
        p = np.zeros(3) if pivot is None else np.asarray(pivot, np.float64)
        out["transl"] = MIRROR @ (p + np.asarray(params["transl"], np.float64)) - p
    return out


def rotate_params(params: Mapping[str, np.ndarray], rotation: np.ndarray, pivot: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Unbatched parameters of the body rotated by ``rotation`` (3, 3) about the camera centre."""
    from scipy.spatial.transform import Rotation

    out = dict(params)
    r_g = Rotation.from_rotvec(np.asarray(params["global_orient"], np.float64)).as_matrix()
    out["global_orient"] = Rotation.from_matrix(rotation @ r_g).as_rotvec()
    if "transl" in params:
        p = np.zeros(3) if pivot is None else np.asarray(pivot, np.float64)
        out["transl"] = rotation @ (p + np.asarray(params["transl"], np.float64)) - p
    return out


# ----------------------------------------------------------------------------------------------
# One sample.


def crop_sample(
    image: np.ndarray,
    keypoints2d: np.ndarray,
    joints3d: np.ndarray | Mapping[str, np.ndarray] | None = None,
    params: Mapping[str, np.ndarray] | None = None,
    K: np.ndarray | None = None,
    bbox_from: str = "mask",
    size: int = 224,
    augment: AugmentConfig | Augmentation | None = None,
    *,
    mask: np.ndarray | None = None,
    bbox: tuple[np.ndarray, float] | None = None,
    rng: np.random.Generator | None = None,
    body_model: str = "anny",
    keypoint_set: str = KEYPOINT_SET,
    joints3d_set: str = JOINTS3D_SET,
    pivot: np.ndarray | None = None,
    expand: float = BOX_EXPAND,
) -> dict[str, torch.Tensor]:
    """Crop (and augment) one sample around the person; labels follow the crop (module docstring).

    Args:
        image: (H, W, 3) uint8 RGB.
        keypoints2d: (J, 3) u, v px of ``image`` + visibility / confidence (COCO 0/1/2 -> 0/1/1).
        joints3d: (J3, 3) or (J3, 4) camera-frame metres in ``joints3d_set``, or a dict of joint
            sets (``joints3d_set`` is taken from it); ``None`` if unknown.
        params: unbatched body parameters (``global_orient``, ``body_pose``, shape key, optional
            ``transl``) in the camera frame, or ``None``.
        K: (3, 3) intrinsics of ``image`` (only used for the output ``K``; identity-free default).
        bbox_from: ``"mask"`` (needs ``mask``; falls back to keypoints) or ``"keypoints"``.
        size: crop side S in pixels.
        augment: an :class:`AugmentConfig` (drawn with ``rng``), fixed :class:`Augmentation`, or
            ``None`` (no augmentation).
        bbox: explicit ``(centre (2,), side px)`` box (real benchmarks), overriding ``bbox_from``.
        body_model: names the pose layout for flips and the shape key.
    Returns:
        dict of float32 tensors: ``image`` (3, S, S), ``keypoints2d`` (J, 3) normalised,
        ``joints3d`` (J3, 4), ``global_orient`` (3,), ``body_pose`` (Jb, 3), ``shape`` (D,),
        ``transl`` (3,), ``K`` (3, 3) crop intrinsics, ``crop_matrix`` (3, 3) image px -> crop px
        (flip included), ``has_2d``, ``has_3d``, ``has_params`` (0-d).
    """
    import cv2


    spec = body_spec(body_model)
    if isinstance(augment, AugmentConfig):
        aug = sample_augmentation(rng if rng is not None else np.random.default_rng(), augment)
    else:
        aug = augment or Augmentation()
    kp = np.asarray(keypoints2d, np.float64)
    if bbox_from not in ("mask", "keypoints"):
        raise ValueError(f"bbox_from must be 'mask' or 'keypoints', got {bbox_from!r}")
    if bbox is None:
        box = mask_box(mask, expand) if (bbox_from == "mask" and mask is not None) else None
        bbox = box if box is not None else box_from_keypoints(kp, keypoint_set, expand)
    center, side = np.asarray(bbox[0], np.float64), float(bbox[1]) * aug.scale
    A = crop_matrix(center, side, size, aug.rotation_deg)
    R = rotation_z(math.radians(aug.rotation_deg))

    crop = cv2.warpAffine(np.ascontiguousarray(image), A[:2], (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    crop = crop.astype(np.float32) / 255.0 * np.asarray(aug.colour, np.float32)
    uv = (np.c_[kp[:, :2], np.ones(len(kp))] @ A.T)[:, :2]
    conf = np.clip(kp[:, 2], 0.0, 1.0)
    K_img = np.eye(3) if K is None else np.asarray(K, np.float64)
    K_crop = A @ K_img @ R.T

    if isinstance(joints3d, Mapping):
        joints3d = joints3d.get(joints3d_set)
    has_3d = joints3d is not None
    j3 = np.zeros((17 if not has_3d else len(joints3d), 4))
    if has_3d:
        j = np.asarray(joints3d, np.float64)
        j3[:, 3] = j[:, 3] if j.shape[1] == 4 else 1.0
        j3[:, :3] = np.nan_to_num(j[:, :3]) @ R.T
        j3[~np.isfinite(j[:, :3]).all(axis=1), 3] = 0.0
        has_3d = bool((j3[:, 3] > 0).any())

    has_params = params is not None
    if has_params:
        p = {k: np.asarray(v, np.float64) for k, v in params.items()}
        p = rotate_params(p, R, pivot)
    else:
        p = {"global_orient": np.zeros(3), "body_pose": np.zeros((spec.num_body_joints, 3)),
             spec.shape_key: np.full(spec.shape_dim, spec.neutral_shape), "transl": np.zeros(3)}  # fmt: skip

    F = np.eye(3)
    if aug.flip:
        F = flip_matrix(size)
        crop = crop[:, ::-1]
        perm = flip_permutation(keypoint_set)
        uv = (np.c_[uv, np.ones(len(uv))] @ F.T)[perm, :2]
        conf = conf[perm]
        j3 = j3[flip_permutation(joints3d_set)] if has_3d else j3
        j3[:, 0] *= -1.0
        if has_params:
            p = mirror_params(p, body_model, pivot)
        K_crop = F @ K_crop @ MIRROR

    shape = p.get(spec.shape_key, np.full(spec.shape_dim, spec.neutral_shape))
    as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    return {
        "image": as_t(np.clip(crop, 0.0, 1.0).transpose(2, 0, 1)),
        "keypoints2d": as_t(np.c_[normalise_keypoints(uv, size), conf]),
        "joints3d": as_t(j3),
        "global_orient": as_t(p["global_orient"]),
        "body_pose": as_t(np.asarray(p["body_pose"]).reshape(spec.num_body_joints, 3)),
        "shape": as_t(shape),
        "transl": as_t(p.get("transl", np.zeros(3))),
        "K": as_t(K_crop),
        "crop_matrix": as_t(F @ A),
        "has_2d": torch.tensor(float(conf.any())),
        "has_3d": torch.tensor(float(has_3d)),
        "has_params": torch.tensor(float(has_params)),
    }


def crop_person(person: Mapping[str, Any], size: int = 224, augment: AugmentConfig | Augmentation | None = None, *,
                rng: np.random.Generator | None = None, body_model: str = "anny", bbox_from: str = "mask",
                with_params: bool = True) -> dict[str, torch.Tensor]:
    """The crop of one person of one of our samples (:func:`crop_sample`; a person from
    :func:`~diffusion_hpc.data.schema.persons_of`): around that person, with its keypoints,
    joints and, when its body model is ``body_model`` and ``with_params``, its parameters.

    The box (``bbox_from="mask"``) is the person's own silhouette's when the person is unoccluded
    (``visible_fraction`` 1, every v1 sample), else its keypoints' (all in the image, those hidden
    behind another person too), so a partly hidden person's crop still holds all of it.
    """
    same_model = with_params and person.get("body_model", body_model) == body_model
    whole = float(person.get("visible_fraction", 1.0)) >= 1.0
    return crop_sample(
        person["image"], person["keypoints2d"], person["joints3d"], person["params"] if same_model else None,
        person["K"], bbox_from=bbox_from if whole else "keypoints", size=size, augment=augment,
        mask=person.get("mask"), rng=rng, body_model=body_model,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Datasets.


def consumer_id() -> tuple[int, int]:
    """(index, count) of this data consumer over distributed ranks x dataloader workers."""
    import os

    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    info = torch.utils.data.get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * nw + wid, world * nw


def list_shards(dirs: Sequence[str | Path]) -> list[Path]:
    """Shard files of our datasets (``DIR/shards/shard-*.tar``), in order; ``InputError`` if none."""
    shards = []
    for d in dirs:
        found = sorted((Path(d) / "shards").glob("shard-*.tar"))
        if not found:
            raise InputError(f"{d} holds no shards (expected {Path(d) / 'shards' / 'shard-*.tar'}); run `dhpc generate` first")
        shards.extend(found)
    return shards


def visible_keypoints(person: Mapping[str, Any]) -> int:
    """How many of a person's COCO-17 keypoints are visible (COCO visibility 2)."""
    return int((np.asarray(person["keypoints2d"])[:, 2] == 2).sum())


def trainable(person: Mapping[str, Any], min_keypoints: int = MIN_VISIBLE_KEYPOINTS,
              min_fraction: float = MIN_VISIBLE_FRACTION) -> bool:
    """True when a person (:func:`~diffusion_hpc.data.schema.persons_of`; decoded or the raw
    JSON of a sample) shows enough of itself to train on: at least ``min_keypoints`` visible COCO
    keypoints and ``visible_fraction`` (absent: 1.0, a v1 sample) at least ``min_fraction``."""
    return (visible_keypoints(person) >= min_keypoints
            and float(person.get("visible_fraction", 1.0)) >= min_fraction)


@dataclass
class PersonCounts:
    """Images and persons read, and the persons used (training crops) or skipped (too hidden)."""

    images: int = 0
    used: int = 0
    skipped: int = 0
    per_image: dict[int, int] = field(default_factory=dict)  # persons in an image -> images

    @property
    def persons(self) -> int:
        return self.used + self.skipped

    def add(self, kept: int, dropped: int) -> None:
        """Count one image with ``kept`` usable and ``dropped`` skipped persons."""
        self.images += 1
        self.used += kept
        self.skipped += dropped
        self.per_image[kept + dropped] = self.per_image.get(kept + dropped, 0) + 1

    def __str__(self) -> str:
        return (f"{self.images} images, {self.persons} persons: {self.used} training crops, {self.skipped} skipped "
                f"(fewer than the visible keypoints or silhouette share a crop needs)")


def count_persons(dirs: Sequence[str | Path], min_keypoints: int = MIN_VISIBLE_KEYPOINTS,
                  min_fraction: float = MIN_VISIBLE_FRACTION) -> PersonCounts:
    """:class:`PersonCounts` of datasets ``dirs`` as :class:`SyntheticShards` would read them, from
    the samples' JSON alone (no image is decoded)."""
    counts = PersonCounts()
    for shard in list_shards(dirs):
        for meta in iter_sample_meta(shard):
            usable = [trainable(p, min_keypoints, min_fraction) for p in persons_of(meta)]
            counts.add(sum(usable), len(usable) - sum(usable))
    return counts


class SyntheticShards(torch.utils.data.IterableDataset):
    """Streaming person crops from our WebDataset shards (read with plain ``tarfile``).

    Every person of a sample is one item (:meth:`convert`); persons that are not
    :func:`trainable` (``min_visible_keypoints``, ``min_visible_fraction``) are skipped and counted
    in :attr:`counts` (this process's reads; :func:`count_persons` counts a whole dataset up front).

    Sharding: with at least as many shards as consumers (ranks x workers), each consumer reads its
    own shards; otherwise every consumer reads all shards and keeps every n-th sample. Shard order
    and a person buffer are shuffled per pass with a seed from (``seed``, pass, consumer,
    :attr:`start`); ``repeat`` loops forever (training is bounded by steps).
    """

    def __init__(
        self,
        dirs: Sequence[str | Path],
        size: int = 224,
        augment: AugmentConfig | None = AugmentConfig(),
        bbox_from: str = "mask",
        body_model: str = "anny",
        shuffle_buffer: int = 256,
        seed: int = 0,
        repeat: bool = True,
        min_visible_keypoints: int = MIN_VISIBLE_KEYPOINTS,
        min_visible_fraction: float = MIN_VISIBLE_FRACTION,
    ) -> None:
        super().__init__()
        self.shards = list_shards(dirs)
        self.size, self.augment, self.bbox_from, self.body_model = size, augment, bbox_from, body_model
        self.shuffle_buffer, self.seed, self.repeat = shuffle_buffer, seed, repeat
        self.min_visible_keypoints, self.min_visible_fraction = min_visible_keypoints, min_visible_fraction
        #: offset for the random streams (the trainer sets it to the global step on resume)
        self.start = 0
        #: images and persons this process has read (per pass and consumer, summed)
        self.counts = PersonCounts()

    def _records(self, rng: np.random.Generator, cid: int, count: int) -> Iterator[dict]:
        split_by_shard = len(self.shards) >= count
        shards = self.shards[cid::count] if split_by_shard else list(self.shards)
        order = rng.permutation(len(shards)) if self.shuffle_buffer > 1 else range(len(shards))
        n = 0
        for i in order:
            for rec in iter_shard(shards[i]):
                if split_by_shard or n % count == cid:
                    yield rec
                n += 1

    def _persons(self, rng: np.random.Generator, cid: int, count: int) -> Iterator[dict]:
        """The :func:`trainable` persons of :meth:`_records`, counted in :attr:`counts`."""
        for rec in self._records(rng, cid, count):
            people = persons_of(rec)
            kept = [p for p in people if trainable(p, self.min_visible_keypoints, self.min_visible_fraction)]
            self.counts.add(len(kept), len(people) - len(kept))
            yield from kept

    def convert(self, person: dict, rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
        """One person (:func:`~diffusion_hpc.data.schema.persons_of`) -> training sample
        (:func:`crop_person`)."""
        out = crop_person(person, self.size, self.augment, rng=rng, body_model=self.body_model, bbox_from=self.bbox_from)
        out["is_real"] = torch.tensor(0.0)
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        cid, count = consumer_id()
        epoch = 0
        while True:
            rng = np.random.default_rng([self.seed, self.start, epoch, cid])
            buffer: list[dict] = []
            before = PersonCounts(self.counts.images, self.counts.used, self.counts.skipped)
            for rec in self._persons(rng, cid, count):
                buffer.append(rec)
                if len(buffer) >= max(self.shuffle_buffer, 1):
                    yield self.convert(buffer.pop(int(rng.integers(len(buffer)))), rng)
            while buffer:
                yield self.convert(buffer.pop(int(rng.integers(len(buffer)))), rng)
            if self.counts.used == before.used and self.counts.skipped > before.skipped:
                raise InputError(
                    f"none of the {self.counts.skipped - before.skipped} persons read from {len(self.shards)} shard file(s) "
                    f"is visible enough to train on (min_visible_keypoints {self.min_visible_keypoints}, "
                    f"min_visible_fraction {self.min_visible_fraction}); lower them or generate more data")
            epoch += 1
            if not self.repeat:
                return


def dataset_person_crops(path: str | Path, size: int = 224, limit: int | None = None, body_model: str = "anny",
                         min_keypoints: int = MIN_VISIBLE_KEYPOINTS,
                         min_fraction: float = MIN_VISIBLE_FRACTION) -> list[dict[str, torch.Tensor]]:
    """Unaugmented crops (:func:`crop_person`, no parameters) of the :func:`trainable` persons of the
    dataset at ``path``, in order, the first ``limit``: what a regressor is scored on (``dhpc
    evaluate --data DATASET``, training's validation)."""
    items: list[dict[str, torch.Tensor]] = []
    for sample in open_dataset(path):
        for person in persons_of(sample):
            if limit is not None and len(items) >= limit:
                return items
            if trainable(person, min_keypoints, min_fraction):
                items.append(crop_person(person, size, None, body_model=body_model, with_params=False))
    return items


def load_real_source(spec) -> Any:
    """A :class:`diffusion_hpc.data.benchmarks.BenchmarkSet` from a source description.

    ``spec``: a ``BenchmarkSet``; ``"spin:PATH"`` / ``"skipose:PATH"`` / ``"smart:PATH"``; or a
    path whose form tells: ``*.npz`` SPIN, ``*.h5`` or a folder with ``train/labels.h5`` SkiPose
    (train split), ``*.json`` or a folder of them SMART.
    """

    if isinstance(spec, benchmarks.BenchmarkSet):
        return spec
    text = str(spec)
    kind, _, rest = text.partition(":")
    if kind in ("spin", "skipose", "smart") and rest:
        path = Path(rest)
    else:
        kind, path = "", Path(text)
        if path.suffix == ".npz":
            kind = "spin"
        elif path.suffix == ".h5" or (path / "train" / "labels.h5").is_file():
            kind = "skipose"
        elif path.suffix == ".json" or (path.is_dir() and any(path.glob("*.json"))):
            kind = "smart"
    if not path.exists():
        raise InputError(f"real data source {path} does not exist")
    if kind == "spin":
        return benchmarks.load_spin_npz(path)
    if kind == "skipose":
        return benchmarks.load_skipose(path, "train")
    if kind == "smart":
        return benchmarks.load_smart(path)
    raise InputError(
        f"cannot tell the format of real data source {text!r}: use spin:PATH (SPIN npz), "
        "skipose:PATH (SkiPose root or labels.h5) or smart:PATH (SMART JSON file or folder)"
    )


class RealDataset(torch.utils.data.Dataset):
    """Map-style crops of a real benchmark (boxes from the benchmark), with 2D (and 3D if given).

    SMPL pseudo-ground truth (SPIN npz ``pose`` / ``shape``) is used as parameters only when
    training SMPL (``body_model="smpl"``); other body models train on the keypoints alone.
    """

    def __init__(self, source, size: int = 224, augment: AugmentConfig | None = AugmentConfig(), body_model: str = "anny", seed: int = 0) -> None:
        super().__init__()
        self.data = load_real_source(source)
        self.size, self.augment, self.body_model, self.seed = size, augment, body_model, seed
        self.keypoints = self.data.keypoints_in(KEYPOINT_SET)
        self.joints3d = None
        if self.data.joints3d is not None:
            j = convert_joints(self.data.joints3d, self.data.joints3d_set, JOINTS3D_SET)
            conf = np.ones(j.shape[:2]) if self.data.joints3d_conf is None else convert_joints(
                np.asarray(self.data.joints3d_conf, np.float64)[..., None], self.data.joints3d_set, JOINTS3D_SET, fill=0.0
            )[..., 0]  # fmt: skip
            self.joints3d = np.concatenate([j, np.where(np.isfinite(j).all(-1), conf, 0.0)[..., None]], axis=-1)
        self.calls = 0

    def __len__(self) -> int:
        return len(self.data)

    def params(self, i: int) -> dict[str, np.ndarray] | None:
        smpl = self.data.smpl
        if self.body_model != "smpl" or smpl is None or not bool(np.asarray(smpl.get("has_smpl", [1] * len(self)))[i]):
            return None
        pose = np.asarray(smpl["pose"][i], np.float64)
        return {"global_orient": pose[:3], "body_pose": pose[3:72].reshape(23, 3), "betas": np.asarray(smpl["shape"][i])}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        import cv2

        path = self.data.image_paths[i]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"cannot read image {path} of real source {self.data.name!r}")
        rng = np.random.default_rng([self.seed, i, self.calls])
        self.calls += 1
        out = crop_sample(
            image[..., ::-1], self.keypoints[i], None if self.joints3d is None else self.joints3d[i], self.params(i),
            None, size=self.size, augment=self.augment, rng=rng, body_model=self.body_model,
            bbox=(self.data.center[i], float(self.data.box_size[i])),
        )  # fmt: skip
        out["is_real"] = torch.tensor(1.0)
        return out


class MixedStream(torch.utils.data.IterableDataset):
    """Each sample from ``real`` with probability ``real_ratio``, else from ``synthetic``.

    Either side may be ``None`` (then the other is used always). The draw is per sample, so batch
    compositions vary around ``real_ratio`` (as in the original); every sample carries its masks.
    """

    def __init__(self, synthetic: SyntheticShards | None, real: torch.utils.data.Dataset | None, real_ratio: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if synthetic is None and real is None:
            raise InputError("no training data: give synthetic dataset folders and/or real sources")
        if not 0.0 <= real_ratio <= 1.0:
            raise ValueError(f"real_ratio must lie in [0, 1], got {real_ratio}")
        self.synthetic, self.real, self.real_ratio, self.seed = synthetic, real, real_ratio, seed
        self.start = 0

    def set_start(self, step: int) -> None:
        """Offset the random streams (e.g. by the global step when resuming)."""
        self.start = int(step)
        if self.synthetic is not None:
            self.synthetic.start = int(step)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        cid, _ = consumer_id()
        rng = np.random.default_rng([self.seed, self.start, cid, 7])
        syn = iter(self.synthetic) if self.synthetic is not None else None
        ratio = 1.0 if syn is None else (0.0 if self.real is None else self.real_ratio)
        while True:
            if rng.random() < ratio:
                yield self.real[int(rng.integers(len(self.real)))]
            else:
                try:
                    yield next(syn)
                except StopIteration:
                    return
