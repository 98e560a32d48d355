"""``bedlam-npz``: the BEDLAM-style npz (one row per person) that CameraHMR and BEDLAM-CLIFF read.

Matched against the readers' code (and BEDLAM's own writer of these files):

- CameraHMR ``core/datasets/dataset_train.py`` (``DatasetTrain``): ``imgname``, ``center``, ``scale``,
  ``pose_cam[:, :72]`` (global_orient 3 + body_pose 69), ``shape[:, :10]``, ``cam_int`` (3, 3),
  ``gtkps[:, :44]`` (u, v, confidence in its 44-joint order: OpenPose BODY_25 then 19 SPIN joints,
  ``core/constants.py``), ``cam_ext`` (4, 4) and ``trans_cam`` (3,): the body's camera-frame
  translation is ``cam_ext[:3, 3] + trans_cam``; the crop is ``scale * 200`` px around ``center``.
- BEDLAM ``train/dataset/dataset_smpl.py`` (BEDLAM-CLIFF's SMPL trainer, ``hmr_trainer_smpl.py``):
  ``pose_cam``, ``shape`` (read only when a ``betas`` key exists, so ``betas`` repeats ``shape``),
  ``part`` (24, 3) and ``openpose`` (25, 3) keypoints (SPIN's 49), ``gender``.
- BEDLAM ``data_processing/df_full_body.py`` (the writer): ``pose_cam`` (165,) SMPL-X = global_orient,
  body 63, jaw, left eye, right eye, left hand 45, right hand 45; ``cam_ext`` = the camera's
  rotation and translation, ``trans_cam`` = the body's ``transl``; scale = box side / 200.

Fields written (N rows, float64 unless stated):

========================  ============  ===========================================================
key                       shape         meaning
========================  ============  ===========================================================
``imgname``               (N,) str      ``images/<sample key>.png``, relative to the npz's folder
``center``, ``scale``     (N, 2), (N,)  the person box: mask box x ``box_expand``, scale = side / 200
``pose_cam``              (N, 72|165)   SMPL (72) or SMPL-X (165; jaw, eyes, hands 0) axis-angle,
                                        camera frame (OpenCV: x right, y down, z forward)
``shape``, ``betas``      (N, 10)       betas (the same array under both names)
``trans_cam``             (N, 3)        the model's ``transl`` in the camera frame, metres
``cam_int``               (N, 3, 3)     K of the saved image
``cam_ext``               (N, 4, 4)     identity: the labels are already in the camera frame
``gtkps``                 (N, 44, 3)    u, v px, confidence (1: known, in front, inside the image),
                                        :data:`~diffusion_hpc.data.export_persons.HMR44` order
``part``, ``openpose``    (N, 24|25, 3) SPIN-24 and OpenPose BODY_25 keypoints (same rule)
``gender``                (N,) str      ``"neutral"`` (the labels use the neutral model)
``key``, ``person``       (N,)          sample key (str) and person number (int64)
========================  ============  ===========================================================

Every row needs an SMPL (``label_model="smpl"``) or SMPL-X label (native or converted; see
:func:`~diffusion_hpc.data.export_persons.body_label`): these readers have no "no label" flag, so a
person without one (or whose conversion fit is flagged) is left out, counted in
:attr:`ExportResult.skipped` and logged. BEDLAM-CLIFF's SMPL-X reader (``train/dataset/dataset.py``)
takes ``gtkps[:, :24]`` as SMPL-X joints 0-23, which this 44-joint layout does not follow; its SMPL
reader and CameraHMR's read this file as is.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_hpc.body.joint_sets import BODY25, SPIN24
from diffusion_hpc.data.export_persons import (
    HMR44,
    IMAGE_DIR,
    ExportResult,
    PersonRow,
    no_rows_error,
    rows_of,
)
from diffusion_hpc.errors import InputError
from diffusion_hpc.geometry.boxes import BOX_EXPAND
from diffusion_hpc.runtime.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

#: values of BEDLAM's ``pose_cam`` per body model (SMPL-X: body 66 + jaw 3 + eyes 6 + hands 90)
POSE_CAM_VALUES = {"smpl": 72, "smplx": 165}
GENDER = "neutral"


def bedlam_fields(row: PersonRow, label_model: str) -> dict[str, np.ndarray]:
    """One labelled row's BEDLAM arrays (see the module docstring); ``row.label`` must be set."""
    label = row.label
    pose = np.zeros(POSE_CAM_VALUES[label_model])
    pose[: label.pose.size] = label.pose
    shape = np.zeros(10)
    shape[: label.betas.size] = label.betas
    keypoints = {name: row.keypoints(names)[1] for name, names in (("gtkps", HMR44), ("part", SPIN24), ("openpose", BODY25))}
    return {
        "center": row.center,
        "scale": np.float64(row.scale),
        "pose_cam": pose,
        "shape": shape,
        "trans_cam": label.transl,
        "cam_int": row.K,
        "cam_ext": np.eye(4),
        **keypoints,
    }


def _labelled(row: PersonRow) -> bool:
    return row.label is not None


def export_bedlam_npz(samples: Iterable[dict[str, Any]], out: Path, *, box_expand: float = BOX_EXPAND,
                      label_model: str = "smpl") -> ExportResult:
    """Write decoded ``samples`` as a BEDLAM-style npz at ``out`` (images into ``out.parent/images``),
    one row per person with a ``label_model`` label ("smpl" or "smplx"); see the module docstring."""
    if label_model not in POSE_CAM_VALUES:
        raise InputError(f"label_model {label_model!r} is not one of {sorted(POSE_CAM_VALUES)}")
    image_dir = out.parent / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    seen = skipped = 0
    for item in rows_of(samples, box_expand, (label_model,), image_dir=image_dir, keep=_labelled):
        seen += len(item.rows)
        labelled = [r for r in item.rows if _labelled(r)]
        skipped += len(item.rows) - len(labelled)
        for row in labelled:
            rows.append({"imgname": item.imgname, "key": row.key, "person": row.person, **bedlam_fields(row, label_model)})
    if not seen:
        raise no_rows_error()
    if not rows:
        raise InputError(
            f"none of the dataset's {seen} persons has a usable {label_model.upper()} label, and bedlam-npz rows "
            f"need one; convert the dataset first (dhpc convert DATASET --to {label_model} --smpl-path PATH), or "
            "export spin-npz / 4dhumans-wds, whose has_smpl / has_body_pose flags mark unlabelled persons"
        )
    if skipped:
        log.warning("bedlam-npz: %d of %d persons have no usable %s label (none, or a flagged fit) and are left out",
                    skipped, seen, label_model.upper())
    arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k not in ("imgname", "key", "person")}
    arrays["betas"] = arrays["shape"]
    arrays["imgname"] = np.array([r["imgname"] for r in rows], dtype=str)
    arrays["key"] = np.array([r["key"] for r in rows], dtype=str)
    arrays["person"] = np.array([r["person"] for r in rows], dtype=np.int64)
    arrays["gender"] = np.array([GENDER] * len(rows), dtype=str)
    buf = io.BytesIO()
    np.savez(buf, **arrays)

    atomic_write_bytes(out, buf.getvalue())
    return ExportResult(path=out, images=image_dir, count=len(rows), format="bedlam-npz", skipped=skipped, files=(out,))


__all__ = ["GENDER", "POSE_CAM_VALUES", "bedlam_fields", "export_bedlam_npz"]
