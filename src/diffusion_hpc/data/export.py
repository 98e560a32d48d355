"""Export a Diffusion-HPC dataset to formats HMR training code reads: SPIN-style npz and COCO json.

Both formats write the images as PNG files into an ``images/`` folder beside the output file
(``images/<sample key>.png``; existing files of the same name are replaced) and reference them by
that relative path. Every file is written atomically, the npz / json last, so an interrupted export
never leaves an annotation file pointing at missing images.

Per sample (all in pixels of the saved image unless stated):

- box: the person mask's bounding box, side = ``box_expand`` x its longer side (SPIN's 1.2),
  ``center`` (2,) and ``scale`` = side / 200. An empty mask falls back to the labelled keypoints.
- ``part`` (24, 3) in ``spin24`` order (:data:`~diffusion_hpc.data.benchmarks.SPIN24`): the
  COCO-17 joints are the dataset's ``keypoints2d`` (u, v) with confidence 1 where COCO visibility
  > 0 (in the image, visible or hidden by the body) and 0 where it is 0 (outside the image); the
  other SPIN joints (pelvis, spine, head top, LSP neck, jaw, H36M head) are the H36M-17 3D joints
  projected with K, confidence 1 inside the image; ``mpii_thorax`` has confidence 0.
- ``S`` (24, 4): camera-frame 3D joints in metres in ``spin24`` order (from ``h36m17`` then
  ``coco17`` and :data:`~diffusion_hpc.data.benchmarks.SPIN24_ALIASES`), 4th column 1 where known.
- SMPL datasets: ``pose`` (72,) = global_orient + body_pose axis-angle (camera frame), ``shape``
  (10,) betas, ``has_smpl`` 1, ``smpl_transl``. Other body models (Anny, SMPL-X): their parameters
  under ``<body_model>_<name>`` keys (``anny_global_orient``, ``anny_body_pose``,
  ``anny_phenotype``, ``anny_transl``) and ``has_smpl`` 0, no ``pose`` / ``shape``.
- crop conventions, computed here only (never stored as the truth): for SPIN's 224-px crop with
  focal 5000 and principal point at the crop centre, ``crop_cam_t`` (3,) is the pelvis position
  (metres) that reproduces the pelvis's crop pixel with depth z x 5000 / f_crop, and ``crop_cam``
  (3,) the weak-perspective camera ``[s, tx, ty]`` with ``s = 2 * 5000 / (224 * z)`` (SPIN's
  ``pred_cam`` convention: translation = ``[tx, ty, 2 * 5000 / (224 * s)]``), for the
  pelvis-centred body.
- ``K`` (3, 3), ``key``, ``image_size`` [H, W].
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from diffusion_hpc.body.joint_sets import COCO17
from diffusion_hpc.config.export import FORMAT_SUFFIX, ExportConfig
from diffusion_hpc.data import open_dataset
from diffusion_hpc.data.benchmarks import SPIN24, SPIN24_ALIASES, box_from_keypoints, joint_names
from diffusion_hpc.data.reader import check_key
from diffusion_hpc.data.schema import encode_png
from diffusion_hpc.errors import ConfigError, InputError
from diffusion_hpc.geometry.boxes import BOX_EXPAND, SPIN_SCALE_UNIT, mask_box
from diffusion_hpc.geometry.camera import SPIN_CROP, SPIN_FOCAL
from diffusion_hpc.runtime.atomic import atomic_write_bytes

EXPORT_FORMATS = tuple(FORMAT_SUFFIX)
IMAGE_DIR = "images"
#: 3D joint sets used to fill SPIN-24 joints, in order of preference (same-named joints).
SPIN24_SOURCES = ("h36m17", "coco17")
#: COCO person skeleton (1-based joint indices into COCO-17), as in the COCO keypoint annotations.
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the annotation file, the image folder and the number of samples."""

    path: Path
    images: Path
    count: int
    format: str


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
    out = np.zeros((len(SPIN24), 4))
    for j, name in enumerate(SPIN24):
        sources = [(s, name) for s in SPIN24_SOURCES]
        if name in SPIN24_ALIASES:
            sources.append(SPIN24_ALIASES[name])
        for set_name, joint in sources:
            if set_name in joints3d and joint in joint_names(set_name):
                out[j, :3] = np.asarray(joints3d[set_name], np.float64)[joint_names(set_name).index(joint)]
                out[j, 3] = 1.0
                break
    return out


def spin24_part(keypoints2d: np.ndarray, S: np.ndarray, K: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """(24, 3) SPIN ``part``: COCO joints from ``keypoints2d`` (confidence = visibility > 0), the
    rest projected from ``S`` (24, 4) with ``K`` (confidence 1 when in front of the camera and inside
    the image)."""
    part = np.zeros((len(SPIN24), 3))
    kp = np.asarray(keypoints2d, np.float64)
    h, w = image_hw
    for j, name in enumerate(SPIN24):
        if name in COCO17:
            c = COCO17.index(name)
            part[j] = kp[c, 0], kp[c, 1], float(kp[c, 2] > 0)
        elif S[j, 3] > 0 and S[j, 2] > 0:
            uvw = np.asarray(K, np.float64) @ S[j, :3]
            u, v = uvw[:2] / uvw[2]
            inside = -0.5 <= u < w - 0.5 and -0.5 <= v < h - 0.5
            part[j] = u, v, float(inside)
    return part


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


def _sample_fields(sample: dict[str, Any], box_expand: float) -> dict[str, Any]:
    """Everything both formats need from one decoded sample."""
    image = sample["image"]
    h, w = int(image.shape[0]), int(image.shape[1])
    K = np.asarray(sample["K"], np.float64)
    kp = np.asarray(sample["keypoints2d"], np.float64)
    box = mask_box(sample["mask"], box_expand)
    if box is None:
        if (kp[:, 2] > 0).any():
            c, s = box_from_keypoints(kp[None], "coco17", expand=box_expand)
            box = c[0], float(s[0]) * SPIN_SCALE_UNIT
        else:
            box = np.array([(w - 1) / 2.0, (h - 1) / 2.0]), float(max(h, w))
    center, side = box
    S = spin24_joints3d(sample["joints3d"])
    part = spin24_part(kp, S, K, (h, w))
    pelvis = S[SPIN24.index("pelvis")]
    if pelvis[3] > 0 and pelvis[2] > 0:
        cam_t, cam = crop_camera(pelvis[:3], K, center, side)
    else:
        cam_t = cam = np.full(3, np.nan)
    return {
        "key": str(sample["key"]),
        "image_png": encode_png(image),
        "image_hw": (h, w),
        "K": K,
        "center": np.asarray(center, np.float64),
        "scale": side / SPIN_SCALE_UNIT,
        "part": part,
        "S": S,
        "cam_t": cam_t,
        "cam": cam,
        "keypoints2d": kp,
        "mask": np.asarray(sample["mask"], bool),
        "body_model": str(sample["body_model"]),
        "params": {k: np.asarray(v, np.float64) for k, v in sample["params"].items()},
        "joints3d": {k: np.asarray(v, np.float64) for k, v in sample["joints3d"].items()},
    }


# --------------------------------------------------------------------------------------------
# Writers.


def _json_vector(v: np.ndarray) -> list[float] | None:
    """A finite vector as a list, ``None`` when unknown (strict JSON has no NaN)."""
    return v.tolist() if np.isfinite(v).all() else None


def _write_images(fields: dict[str, Any], image_dir: Path) -> str:
    name = f"{check_key(fields['key'], 'export')}.png"  # a plain name: the file stays in image_dir
    atomic_write_bytes(image_dir / name, fields.pop("image_png"))
    return f"{IMAGE_DIR}/{name}"


def _stack_params(rows: list[dict[str, Any]], body_model: str) -> dict[str, np.ndarray]:
    if body_model == "smpl":
        pose = []
        for r in rows:
            p = r["params"]
            vec = np.concatenate([p["global_orient"].reshape(-1), p["body_pose"].reshape(-1)])
            if vec.size != 72:
                raise InputError(
                    f"sample {r['key']}: SMPL pose has {vec.size} values, expected 72 (global_orient 3 + body_pose 69)"
                )
            pose.append(vec)
        out = {
            "pose": np.stack(pose),
            "shape": np.stack([r["params"]["betas"].reshape(-1)[:10] for r in rows]),
            "has_smpl": np.ones(len(rows)),
        }
        if all("transl" in r["params"] for r in rows):
            out["smpl_transl"] = np.stack([r["params"]["transl"].reshape(3) for r in rows])
        return out
    keys = sorted(rows[0]["params"])
    out = {"has_smpl": np.zeros(len(rows))}
    for k in keys:
        try:
            out[f"{body_model}_{k}"] = np.stack([r["params"][k] for r in rows])
        except (KeyError, ValueError) as exc:
            raise InputError(f"samples disagree on body parameter {k!r} ({exc}); export one body model's dataset at a time") from exc
    return out


def export_spin_npz(samples: Iterable[dict[str, Any]], out: Path, *, box_expand: float = BOX_EXPAND) -> ExportResult:
    """Write decoded ``samples`` as a SPIN-style npz at ``out`` (images into ``out.parent/images``)."""
    image_dir = out.parent / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for sample in samples:
        fields = _sample_fields(sample, box_expand)
        fields["imgname"] = _write_images(fields, image_dir)
        rows.append(fields)
    if not rows:
        raise InputError("the dataset has no accepted samples to export; generate some first")
    models = {r["body_model"] for r in rows}
    if len(models) > 1:
        raise InputError(f"the dataset mixes body models {sorted(models)}; export one body model at a time")
    arrays: dict[str, np.ndarray] = {
        "imgname": np.array([r["imgname"] for r in rows], dtype=str),
        "center": np.stack([r["center"] for r in rows]),
        "scale": np.array([r["scale"] for r in rows]),
        "part": np.stack([r["part"] for r in rows]),
        "S": np.stack([r["S"] for r in rows]),
        "K": np.stack([r["K"] for r in rows]),
        "key": np.array([r["key"] for r in rows], dtype=str),
        "image_size": np.array([r["image_hw"] for r in rows], dtype=np.int64),
        "crop_cam_t": np.stack([r["cam_t"] for r in rows]),
        "crop_cam": np.stack([r["cam"] for r in rows]),
    }
    arrays.update(_stack_params(rows, models.pop()))
    buf = io.BytesIO()
    np.savez(buf, **arrays)

    atomic_write_bytes(out, buf.getvalue())
    return ExportResult(path=out, images=image_dir, count=len(rows), format="spin-npz")


def export_coco_json(samples: Iterable[dict[str, Any]], out: Path, *, box_expand: float = BOX_EXPAND) -> ExportResult:
    """Write decoded ``samples`` as COCO keypoint annotations at ``out`` (images into ``out.parent/images``).

    One image and one person annotation per sample; ``keypoints`` are the dataset's COCO-17
    ``[u, v, visibility]`` unchanged (coordinates are kept for visibility 0, which means outside the
    image here). Extra annotation fields: ``key``, ``K``, ``body_model``, ``params``, ``joints3d``
    ({joint set: (J, 3) metres}), ``center``, ``scale``, ``part`` (spin24), ``crop_cam_t``, ``crop_cam``.
    """
    image_dir = out.parent / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, sample in enumerate(samples):
        fields = _sample_fields(sample, box_expand)
        file_name = _write_images(fields, image_dir)
        h, w = fields["image_hw"]
        bbox, area = coco_bbox(fields["mask"])
        kp = fields["keypoints2d"]
        images.append({"id": i + 1, "file_name": file_name, "width": w, "height": h})
        annotations.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "iscrowd": 0,
                "keypoints": [float(x) for x in kp[:, :3].reshape(-1)],
                "num_keypoints": int((kp[:, 2] > 0).sum()),
                "bbox": bbox,
                "area": area,
                "segmentation": mask_rle(fields["mask"]) if area else [],
                "key": fields["key"],
                "K": fields["K"].tolist(),
                "body_model": fields["body_model"],
                "params": {k: v.tolist() for k, v in fields["params"].items()},
                "joints3d": {k: v.tolist() for k, v in fields["joints3d"].items()},
                "center": fields["center"].tolist(),
                "scale": float(fields["scale"]),
                "part": fields["part"].tolist(),
                "crop_cam_t": _json_vector(fields["cam_t"]),
                "crop_cam": _json_vector(fields["cam"]),
            }
        )
    if not images:
        raise InputError("the dataset has no accepted samples to export; generate some first")
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
    return ExportResult(path=out, images=image_dir, count=len(images), format="coco-json")


def export_dataset(config: ExportConfig) -> ExportResult:
    """Python API of ``dhpc export``: the dataset ``config.dataset`` written to ``config.out`` in
    ``config.format`` (see :data:`EXPORT_FORMATS`).

    ``config.out`` is the annotation file (``.npz`` for ``spin-npz``, ``.json`` for ``coco-json``);
    images go to ``images/`` beside it. Returns what was written.

    Example::

        export_dataset(ExportConfig(dataset="runs/d1", format="spin-npz", out="d1/train.npz"))
    """

    out = config.out
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; pass a file path such as "
                          f"{out / ('train' + FORMAT_SUFFIX[config.format])}")
    dataset = open_dataset(config.dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = export_spin_npz if config.format == "spin-npz" else export_coco_json
    return writer(iter(dataset), out, box_expand=BOX_EXPAND if config.box_expand is None else config.box_expand)


__all__ = [
    "EXPORT_FORMATS",
    "ExportResult",
    "coco_bbox",
    "crop_camera",
    "export_coco_json",
    "export_dataset",
    "export_spin_npz",
    "mask_rle",
    "spin24_joints3d",
    "spin24_part",
]
