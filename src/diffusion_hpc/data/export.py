"""Export a Diffusion-HPC dataset to the formats HMR training code reads.

=================  ==============================================  =====================================
format             file                                            read by (reader code matched)
=================  ==============================================  =====================================
``spin-npz``       ``<out>.npz`` + ``images/``                     SPIN (``datasets/base_dataset.py``)
                                                                   and loaders built on it
``bedlam-npz``     ``<out>.npz`` + ``images/``                     CameraHMR, BEDLAM-CLIFF's SMPL
                                                                   trainer (:mod:`.export_bedlam`)
``4dhumans-wds``   ``<out>-000000.tar`` ... (WebDataset shards)     4D-Humans / HMR 2.0, TokenHMR
                                                                   (:mod:`.export_4dhumans`)
``coco-json``      ``<out>.json`` + ``images/``                    COCO keypoint tools
=================  ==============================================  =====================================

One row (annotation) per person: every format walks the persons of each sample through
:func:`~diffusion_hpc.data.schema.persons_of` and builds each row with
:func:`~diffusion_hpc.data.export_persons.person_row`, so they share the box, the SMPL / SMPL-X label
(:func:`~diffusion_hpc.data.export_persons.body_label`: native parameters first, converted labels
second) and the keypoints (the label's joints when there is a label, projected with ``K``).

The npz / json formats write the images as PNG files into an ``images/`` folder beside the output file
(``images/<sample key>.png``; existing files of the same name are replaced) and reference them by that
relative path. Every file is written atomically, the annotation file last, so an interrupted export
never leaves an annotation file pointing at missing images.

``spin-npz`` per row (pixels of the saved image unless stated):

- box: the person mask's bounding box, side = ``box_expand`` x its longer side (SPIN's 1.2),
  ``center`` (2,) and ``scale`` = side / 200. An empty mask falls back to the labelled keypoints.
- ``S`` (24, 4): camera-frame 3D joints in metres in ``spin24`` order
  (:data:`~diffusion_hpc.data.benchmarks.SPIN24`; from ``h36m17`` then ``coco17`` and
  :data:`~diffusion_hpc.data.benchmarks.SPIN24_ALIASES`), 4th column 1 where known
  (``mpii_thorax`` is never known).
- ``part`` (24, 3): ``S`` projected with K, confidence 1 where known, in front of the camera and inside
  the image (one definition per joint in 2D and 3D: an Anny row's shoulders, elbows, wrists, hips,
  knees and ankles are its H36M joints, its face joints the COCO ones).
- SMPL labels (native SMPL datasets, or converted ``labels["smpl"]``): ``pose`` (72,) =
  global_orient + body_pose axis-angle (camera frame), ``shape`` (10,) betas, ``has_smpl`` 1,
  ``smpl_transl`` (3,); rows without a label (or whose fit is flagged) have zeros and ``has_smpl`` 0,
  which SPIN's loss skips. A dataset without any SMPL label writes ``has_smpl`` 0 and no ``pose`` /
  ``shape``. Non-SMPL native parameters (Anny, SMPL-X) go under ``<body_model>_<name>`` keys
  (``anny_global_orient``, ``anny_body_pose``, ``anny_phenotype``, ``anny_transl``).
- crop conventions, computed here only (never stored as the truth): for SPIN's 224-px crop with
  focal 5000 and principal point at the crop centre, ``crop_cam_t`` (3,) is the pelvis position
  (metres) that reproduces the pelvis's crop pixel with depth z x 5000 / f_crop, and ``crop_cam``
  (3,) the weak-perspective camera ``[s, tx, ty]`` with ``s = 2 * 5000 / (224 * z)`` (SPIN's
  ``pred_cam`` convention: translation = ``[tx, ty, 2 * 5000 / (224 * s)]``), for the
  pelvis-centred body.
- ``openpose`` (25, 3): OpenPose BODY_25 keypoints by the same rule (SPIN reads ``openpose`` + ``part``;
  the toes and heels have confidence 0).
- ``K`` (3, 3), ``key``, ``person``, ``image_size`` [H, W].
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_hpc.body.joint_sets import BODY25, COCO17
from diffusion_hpc.config.export import FORMAT_SUFFIX, ExportConfig
from diffusion_hpc.data import open_dataset
from diffusion_hpc.data.benchmarks import SPIN24
from diffusion_hpc.data.export_4dhumans import export_4dhumans_wds
from diffusion_hpc.data.export_bedlam import export_bedlam_npz
from diffusion_hpc.data.export_persons import (  # noqa: F401  (_write_images: part of this module's API)
    IMAGE_DIR,
    ExportResult,
    PersonRow,
    _write_images,
    joints_in_order,
    no_rows_error,
    rows_of,
)
from diffusion_hpc.errors import ConfigError, InputError
from diffusion_hpc.geometry.boxes import BOX_EXPAND
from diffusion_hpc.geometry.camera import SPIN_CROP, SPIN_FOCAL
from diffusion_hpc.runtime.atomic import atomic_write_bytes

EXPORT_FORMATS = tuple(FORMAT_SUFFIX)
#: COCO person skeleton (1-based joint indices into COCO-17), as in the COCO keypoint annotations.
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Per-sample geometry (pure functions).


def coco_bbox(mask: np.ndarray) -> tuple[list[float], int]:
    """COCO ``[x, y, w, h]`` of a mask (as pycocotools computes it) and its pixel area; zeros if empty."""
    ys, xs = np.nonzero(np.asarray(mask, bool))
    if xs.size == 0:
        return [0.0, 0.0, 0.0, 0.0], 0
    x0, y0 = float(xs.min()), float(ys.min())
    return [x0, y0, float(xs.max()) - x0 + 1, float(ys.max()) - y0 + 1], int(xs.size)


def mask_rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE of a (H, W) mask: column-major run lengths, starting with background."""
    flat = np.asarray(mask, bool).flatten(order="F")
    if flat.size == 0:
        return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": []}
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def spin24_joints3d(joints3d: dict[str, np.ndarray]) -> np.ndarray:
    """(24, 4) SPIN-24 camera-frame joints (x, y, z metres, confidence) from a sample's ``joints3d``."""
    return joints_in_order(joints3d, SPIN24)


def crop_camera(
    root: np.ndarray, K: np.ndarray, center: np.ndarray, side: float, *, focal: float = SPIN_FOCAL, crop: int = SPIN_CROP
) -> tuple[np.ndarray, np.ndarray]:
    """SPIN crop camera for a body whose root (pelvis) is at camera-frame ``root`` (3,) metres.

    The crop of side ``side`` px centred on ``center`` is resized to ``crop`` px and viewed with
    ``focal`` and the principal point at the crop centre. Returns ``cam_t`` (3,): the root position
    that puts the root at the same crop pixel, depth scaled by ``focal`` / f_crop (f_crop = the
    image focal x crop / side); and ``cam`` (3,) = ``[s, tx, ty]`` weak perspective, s = 2 focal /
    (crop x z).
    """
    root = np.asarray(root, np.float64)
    K = np.asarray(K, np.float64)
    uvw = K @ root
    uv = uvw[:2] / uvw[2]
    f_img = (K[0, 0] + K[1, 1]) / 2.0
    f_crop = f_img * crop / side
    z = root[2] * focal / f_crop
    offset = (uv - np.asarray(center, np.float64)) * crop / side  # crop pixels from the crop centre
    cam_t = np.array([offset[0] * z / focal, offset[1] * z / focal, z])
    cam = np.array([2.0 * focal / (crop * z), cam_t[0], cam_t[1]])
    return cam_t, cam


def spin_fields(row: PersonRow) -> dict[str, np.ndarray]:
    """SPIN's per-row arrays: ``S`` (24, 4), ``part`` (24, 3), ``openpose`` (25, 3), ``crop_cam_t`` / ``crop_cam`` (3,)
    (NaN when the pelvis is unknown or behind the camera)."""
    S, part = row.keypoints(SPIN24)
    pelvis = S[SPIN24.index("pelvis")]
    if pelvis[3] > 0 and pelvis[2] > 0:
        cam_t, cam = crop_camera(pelvis[:3], row.K, row.center, row.side)
    else:
        cam_t = cam = np.full(3, np.nan)
    return {"S": S, "part": part, "openpose": row.keypoints(BODY25)[1], "crop_cam_t": cam_t, "crop_cam": cam}


# --------------------------------------------------------------------------------------------
# Writers.


def _json_vector(v: np.ndarray) -> list[float] | None:
    """A finite vector as a list, ``None`` when unknown (strict JSON has no NaN)."""
    return v.tolist() if np.isfinite(v).all() else None


def _native_params(rows: list[PersonRow]) -> dict[str, np.ndarray]:
    """``<body_model>_<name>`` arrays of the native parameters of a non-SMPL dataset."""
    models = {r.body_model for r in rows}
    if len(models) > 1:
        raise InputError(f"the dataset mixes body models {sorted(models)}; export one body model at a time")
    model = models.pop()
    if model == "smpl":
        return {}
    out = {}
    for k in sorted(rows[0].params):
        try:
            out[f"{model}_{k}"] = np.stack([r.params[k] for r in rows])
        except (KeyError, ValueError) as exc:
            raise InputError(f"samples disagree on body parameter {k!r} ({exc}); export one body model's dataset at a time") from exc
    return out


def _smpl_columns(rows: list[PersonRow]) -> dict[str, np.ndarray]:
    """SPIN's ``pose`` / ``shape`` / ``has_smpl`` (+ ``smpl_transl``); only ``has_smpl`` 0 if no row has a label."""
    has = np.array([r.label is not None for r in rows], np.float64)
    if not has.any():
        return {"has_smpl": has}
    pose, shape, transl = np.zeros((len(rows), 72)), np.zeros((len(rows), 10)), np.zeros((len(rows), 3))
    for i, r in enumerate(rows):
        if r.label is not None:
            pose[i], shape[i, : r.label.betas.size], transl[i] = r.label.pose, r.label.betas, r.label.transl
    return {"pose": pose, "shape": shape, "has_smpl": has, "smpl_transl": transl}


def export_spin_npz(samples: Iterable[dict[str, Any]], out: Path, *, box_expand: float = BOX_EXPAND) -> ExportResult:
    """Write decoded ``samples`` as a SPIN-style npz at ``out`` (images into ``out.parent/images``),
    one row per person (see the module docstring for the fields)."""
    image_dir = out.parent / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    rows, imgnames, spin = [], [], []
    for item in rows_of(samples, box_expand, ("smpl",), image_dir=image_dir):
        for row in item.rows:
            rows.append(row)
            imgnames.append(item.imgname)
            spin.append(spin_fields(row))
    if not rows:
        raise no_rows_error()
    arrays: dict[str, np.ndarray] = {
        "imgname": np.array(imgnames, dtype=str),
        "center": np.stack([r.center for r in rows]),
        "scale": np.array([r.scale for r in rows]),
        **{k: np.stack([f[k] for f in spin]) for k in ("part", "S", "openpose")},
        "K": np.stack([r.K for r in rows]),
        "key": np.array([r.key for r in rows], dtype=str),
        "person": np.array([r.person for r in rows], dtype=np.int64),
        "image_size": np.array([r.image_hw for r in rows], dtype=np.int64),
        **{k: np.stack([f[k] for f in spin]) for k in ("crop_cam_t", "crop_cam")},
    }
    arrays.update(_smpl_columns(rows))
    arrays.update(_native_params(rows))
    buf = io.BytesIO()
    np.savez(buf, **arrays)

    atomic_write_bytes(out, buf.getvalue())
    return ExportResult(path=out, images=image_dir, count=len(rows), format="spin-npz", files=(out,))


def _label_json(row: PersonRow) -> dict[str, Any] | None:
    label = row.label
    if label is None:
        return None
    return {"body_model": label.body_model, "pose": label.pose.tolist(), "betas": label.betas.tolist(),
            "transl": label.transl.tolist(), "source": label.source, "fit": label.fit,
            "joints3d": {k: v.tolist() for k, v in label.joints3d.items()}}


def export_coco_json(samples: Iterable[dict[str, Any]], out: Path, *, box_expand: float = BOX_EXPAND) -> ExportResult:
    """Write decoded ``samples`` as COCO keypoint annotations at ``out`` (images into ``out.parent/images``).

    One image per sample and one person annotation per person; ``keypoints`` are the dataset's
    COCO-17 ``[u, v, visibility]`` unchanged (coordinates are kept for visibility 0, which means outside
    the image here). Extra annotation fields: ``key``, ``person``, ``K``, ``body_model``, ``params``,
    ``joints3d`` ({joint set: (J, 3) metres}), ``center``, ``scale``, ``part`` (spin24), ``crop_cam_t``,
    ``crop_cam``, and ``smpl``: the person's SMPL label (``body_model``, ``pose`` (72,), ``betas``,
    ``transl``, ``source`` native / converted, ``fit``, ``joints3d``) or null.
    """
    image_dir = out.parent / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for item in rows_of(samples, box_expand, ("smpl",), image_dir=image_dir):
        file_name = item.imgname
        h, w = int(item.sample["image"].shape[0]), int(item.sample["image"].shape[1])
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for row in item.rows:
            bbox, area = coco_bbox(row.mask)
            kp = row.keypoints2d
            spin = spin_fields(row)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "keypoints": [float(x) for x in kp[:, :3].reshape(-1)],
                    "num_keypoints": int((kp[:, 2] > 0).sum()),
                    "bbox": bbox,
                    "area": area,
                    "segmentation": mask_rle(row.mask) if area else [],
                    "key": row.key,
                    "person": row.person,
                    "K": row.K.tolist(),
                    "body_model": row.body_model,
                    "params": {k: v.tolist() for k, v in row.params.items()},
                    "joints3d": {k: v.tolist() for k, v in row.own_joints3d.items()},
                    "center": row.center.tolist(),
                    "scale": float(row.scale),
                    "part": spin["part"].tolist(),
                    "crop_cam_t": _json_vector(spin["crop_cam_t"]),
                    "crop_cam": _json_vector(spin["crop_cam"]),
                    "smpl": _label_json(row),
                }
            )
    if not images:
        raise no_rows_error()
    doc = {
        "info": {"description": "Diffusion-HPC synthetic dataset", "joint_sets": {"part": list(SPIN24)}},
        "images": images,
        "annotations": annotations,
        "categories": [
            {
                "id": 1,
                "name": "person",
                "supercategory": "person",
                "keypoints": list(COCO17),
                "skeleton": [list(p) for p in COCO_SKELETON],
            }
        ],
    }

    atomic_write_bytes(out, json.dumps(doc, allow_nan=False).encode())
    return ExportResult(path=out, images=image_dir, count=len(annotations), format="coco-json", files=(out,))


def export_dataset(config: ExportConfig) -> ExportResult:
    """Python API of ``dhpc export``: the dataset ``config.dataset`` written to ``config.out`` in
    ``config.format`` (see :data:`EXPORT_FORMATS`).

    ``config.out`` is the annotation file (``.npz`` for ``spin-npz`` / ``bedlam-npz``, ``.json`` for
    ``coco-json``, ``.tar`` for ``4dhumans-wds``, whose shards are ``<stem>-000000.tar``, ...); images go
    to ``images/`` beside it (into the shards for ``4dhumans-wds``). Returns what was written.

    Example::

        export_dataset(ExportConfig(dataset="runs/d1", format="bedlam-npz", out="d1/train.npz"))
    """
    out = config.out
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; pass a file path such as "
                          f"{out / ('train' + FORMAT_SUFFIX[config.format])}")
    dataset = open_dataset(config.dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    box_expand = BOX_EXPAND if config.box_expand is None else config.box_expand
    if config.format == "bedlam-npz":
        return export_bedlam_npz(iter(dataset), out, box_expand=box_expand, label_model=config.label_model)
    if config.format == "4dhumans-wds":
        return export_4dhumans_wds(iter(dataset), out, box_expand=box_expand, shard_size=config.shard_size)
    writer = export_spin_npz if config.format == "spin-npz" else export_coco_json
    return writer(iter(dataset), out, box_expand=box_expand)


__all__ = [
    "EXPORT_FORMATS",
    "ExportResult",
    "coco_bbox",
    "crop_camera",
    "export_4dhumans_wds",
    "export_bedlam_npz",
    "export_coco_json",
    "export_dataset",
    "export_spin_npz",
    "mask_rle",
    "rows_of",
    "spin24_joints3d",
    "spin_fields",
]
