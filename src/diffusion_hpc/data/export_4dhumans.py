"""``4dhumans-wds``: WebDataset tar shards in the layout of 4D-Humans' (HMR 2.0) training reader.

Matched against 4D-Humans ``hmr2/datasets/image_dataset.py`` (``ImageDataset.load_tars_as_webdataset``
and ``process_webdataset_tar_item``): the reader decodes ``rgb8`` images (``jpg``, ``jpeg`` or
``png`` members), and ``split_data`` yields one training item per entry of the ``data.pyd`` member
(a pickled list, one dict per person); when a ``detection.npz`` member exists, person ``i``'s mask is
``masks[extra_info["detection_npz_idx"]]``. TokenHMR's ``tokenhmr/lib/datasets/image_dataset.py``
reads these tars with the same code and keys.

Per image ``<key>`` (the sample key; plain, without dots, so WebDataset groups the members by it):

- ``<key>.png``: the image (RGB, lossless);
- ``<key>.detection.npz``: ``masks`` (P, H, W) bool, each person's exact mask;
- ``<key>.data.pyd``: a list with one dict per person, keys as the reader reads them:

  =====================  ============  =======================================================
  key                    shape         meaning
  =====================  ============  =======================================================
  ``center``             (2,)          person box centre, px
  ``scale``              (2,)          box side / 200 (width and height; the reader crops
                                       ``scale * 200`` px)
  ``keypoints_2d``       (44, 3)       u, v px, confidence, in the 44-joint order
                                       (:data:`~diffusion_hpc.data.export_persons.HMR44`:
                                       OpenPose BODY_25, then 19 SPIN joints)
  ``keypoints_3d``       (44, 4)       camera-frame x, y, z metres, confidence (the same
                                       joints; 0 for OpenPose joints 1-14, which repeat the
                                       19 SPIN joints, as ``ImageDataset`` zeroes them)
  ``body_pose``          (72,)         SMPL global_orient (3) + body_pose (69), axis-angle,
                                       camera frame
  ``betas``              (10,)         SMPL betas
  ``has_body_pose``      ()            1.0 with an SMPL label, else 0.0 (pose unsupervised)
  ``has_betas``          ()            the same for betas
  ``extra_info``         dict          ``detection_npz_idx`` (int), ``key``, ``person``, and
                                       for other trainers ``K`` (3, 3) of the image and
                                       ``smpl_transl`` (3,) (camera frame, metres)
  =====================  ============  =======================================================

  Arrays are float32. A person without a usable SMPL label
  (:func:`~diffusion_hpc.data.export_persons.body_label`) has zeros and both flags 0, so the
  reader's loss ignores its parameters and keeps its keypoints.

The ``data.pyd`` member is a pickle because the reader unpickles it (``webdataset`` decodes ``.pyd``
with ``pickle.loads``). We only write pickles, never read them; each array is written as
``numpy.ndarray(shape, dtype, bytearray)``, so the member loads in NumPy 1.x and 2.x alike and
holds nothing but plain containers, numbers, strings and arrays.

Shards hold ``shard_size`` images each, ``<stem>-000000.tar``, ``<stem>-000001.tar``, ... beside
``out``; each is written atomically. The result's ``path`` is their WebDataset URL
(``<stem>-{000000..00000N}.tar``), what 4D-Humans' dataset config takes as ``URLS``.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_hpc.body.joint_sets import BODY25
from diffusion_hpc.data.export_persons import (
    HMR44,
    ExportItem,
    ExportResult,
    PersonRow,
    no_rows_error,
    rows_of,
)
from diffusion_hpc.data.reader import check_key
from diffusion_hpc.geometry.boxes import BOX_EXPAND
from diffusion_hpc.runtime.atomic import atomic_path

#: OpenPose joints whose 3D confidence 4D-Humans' ``ImageDataset`` sets to 0 (``body_keypoints_3d[:,
#: [1, ..., 14], -1] = 0``): neck to left ankle, which the 19 SPIN joints repeat.
ZERO_3D_BODY_JOINTS = tuple(range(BODY25.index("neck"), BODY25.index("left_ankle") + 1))


class _ArrayPickler(pickle.Pickler):
    """Pickles ``numpy`` arrays as ``numpy.ndarray(shape, dtype, bytearray)`` (portable across NumPy
    versions; NumPy 2's own reduction names ``numpy._core``, which NumPy 1.x cannot import)."""

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            array = np.asarray(obj, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
            return np.ndarray, (array.shape, array.dtype.str, bytearray(array.tobytes()))
        if isinstance(obj, np.generic):
            return self.reducer_override(np.asarray(obj))
        return NotImplemented


def pickle_annotations(annotations: list[dict[str, Any]]) -> bytes:
    """The ``data.pyd`` member: ``annotations`` pickled (protocol 5) with :class:`_ArrayPickler`."""
    buf = io.BytesIO()
    _ArrayPickler(buf, protocol=5).dump(annotations)
    return buf.getvalue()


def _f32(values) -> np.ndarray:
    return np.asarray(values, np.float32)


def hmr2_annotation(row: PersonRow, detection_index: int) -> dict[str, Any]:
    """The ``data.pyd`` dict of one person (see the module docstring)."""
    joints, keypoints_2d = row.keypoints(HMR44)
    keypoints_3d = joints.copy()
    keypoints_3d[list(ZERO_3D_BODY_JOINTS), 3] = 0.0
    label = row.label
    body_pose, betas = np.zeros(72), np.zeros(10)
    if label is not None:
        body_pose[:] = label.pose
        betas[: label.betas.size] = label.betas
    has = np.float32(label is not None)
    return {
        "center": _f32(row.center),
        "scale": _f32([row.scale, row.scale]),
        "keypoints_2d": _f32(keypoints_2d),
        "keypoints_3d": _f32(keypoints_3d),
        "body_pose": _f32(body_pose),
        "betas": _f32(betas),
        "has_body_pose": np.array(has, np.float32),
        "has_betas": np.array(has, np.float32),
        "extra_info": {"detection_npz_idx": detection_index, "key": row.key, "person": row.person,
                       "K": row.K.copy(), "smpl_transl": _f32(label.transl if label is not None else np.zeros(3))},
    }


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def sample_members(item: ExportItem) -> dict[str, bytes]:
    """The tar members (name -> bytes) of one image and its persons."""
    key = check_key(item.sample["key"], "export")
    masks = io.BytesIO()
    np.savez_compressed(masks, masks=np.stack([r.mask for r in item.rows]))
    return {
        f"{key}.png": item.png,
        f"{key}.detection.npz": masks.getvalue(),
        f"{key}.data.pyd": pickle_annotations([hmr2_annotation(r, i) for i, r in enumerate(item.rows)]),
    }


def shard_url(stem: Path, count: int) -> Path:
    """WebDataset URL of shards ``<stem>-000000.tar`` .. ``count - 1`` (brace-expanded by the reader)."""
    if count == 1:
        return Path(f"{stem}-000000.tar")
    return Path(f"{stem}-{{000000..{count - 1:06d}}}.tar")


def export_4dhumans_wds(samples: Iterable[dict[str, Any]], out: Path, *, box_expand: float = BOX_EXPAND,
                        shard_size: int = 1000) -> ExportResult:
    """Write decoded ``samples`` as 4D-Humans WebDataset shards ``<out stem>-NNNNNN.tar`` (see the
    module docstring), ``shard_size`` images per shard, one ``data.pyd`` entry per person."""
    stem = out.with_suffix("")
    items = rows_of(samples, box_expand, ("smpl",))
    item = next(items, None)
    if item is None:
        raise no_rows_error()
    shards: list[Path] = []
    persons = 0
    while item is not None:
        path = Path(f"{stem}-{len(shards):06d}.tar")
        with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for _ in range(shard_size):
                for name, data in sample_members(item).items():
                    _add_member(tar, name, data)
                persons += len(item.rows)
                item = next(items, None)
                if item is None:
                    break
        shards.append(path)
    return ExportResult(path=shard_url(stem, len(shards)), images=out.parent, count=persons, format="4dhumans-wds",
                        files=tuple(shards))


__all__ = ["ZERO_3D_BODY_JOINTS", "export_4dhumans_wds", "hmr2_annotation", "pickle_annotations", "sample_members",
           "shard_url"]
