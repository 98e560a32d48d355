"""One export row per person: the persons of a sample, the SMPL / SMPL-X label a row carries, and its
keypoints in the joint order a trainer reads.

Every export format (:mod:`diffusion_hpc.data.export`) builds its rows here, so they agree on the
box, the label and the keypoints of a person:

- :func:`~diffusion_hpc.data.schema.persons_of` (re-exported here) lists the persons of a decoded
  sample: schema 2's ``sample["persons"]``, or a schema-1 sample's one person.
- :func:`body_label` picks the SMPL or SMPL-X label of a person: the native parameters of an
  SMPL / SMPL-X dataset first, the converted label (``sample["labels"][model]``, written by body-model
  conversion) second. A converted label whose fit is flagged counts as no label.
- :func:`person_row` gathers what every format writes (box, camera, label, the 3D skeleton).
- :func:`joints_in_order` / :func:`project_keypoints` put the skeleton in a trainer's order.
- :func:`rows_of` (rows made and images written on worker threads) and :class:`ExportResult` are
  what the writers share.

The skeleton of a row is the label's joints when the row has a label (so the 2D / 3D keypoints a
trainer supervises with describe the same body as the SMPL parameters it regresses, with SMPL's joint
definitions), else the sample's own ``joints3d``. 2D keypoints are always the projection of these 3D
joints with the image's ``K``; a joint's confidence is 1 when the dataset stores it, it lies in front
of the camera and inside the image, else 0.
"""

from __future__ import annotations

import functools
import json
import os
import tarfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_hpc.body.joint_sets import BODY25, SPIN24
from diffusion_hpc.body.joint_sets import get_joint_set as joint_names
from diffusion_hpc.data.benchmarks import SPIN24_ALIASES, box_from_keypoints
from diffusion_hpc.data.reader import check_key
from diffusion_hpc.data.schema import encode_png, persons_of
from diffusion_hpc.errors import InputError
from diffusion_hpc.geometry.boxes import SPIN_SCALE_UNIT, mask_box
from diffusion_hpc.geometry.camera import project
from diffusion_hpc.runtime.atomic import atomic_write_bytes

#: folder of the exported images, beside the annotation file
IMAGE_DIR = "images"

#: SMPL-family models a row can carry parameters of, and their body-pose values (root excluded).
BODY_POSE_VALUES = {"smpl": 69, "smplx": 63}
#: The 44 keypoints of 4D-Humans (HMR 2.0) and CameraHMR: OpenPose BODY_25, then the first 19 of
#: SPIN's 24 ground-truth joints (4D-Humans ``hmr2/datasets/image_dataset.py``: ``body_keypoints``
#: 25 + ``extra_keypoints`` 19; CameraHMR ``core/constants.py``: ``NUM_JOINTS = 44``).
HMR44 = BODY25 + SPIN24[:19]
#: Joint sets a row's joints are looked up in by name, in order of preference.
JOINT_SOURCES = ("h36m17", "coco17", "smpl24")
#: Joints of a trainer's order that are not a same-named joint of ours -> the joints standing in for
#: them, in order of preference. OpenPose's neck is SMPL's neck joint (4D-Humans' ``smpl_to_openpose``
#: maps it to SMPL joint 12), i.e. the H36M thorax; its mid-hip is SMPL's pelvis (joint 0). SPIN's
#: LSP neck, jaw and H36M head come from :data:`~diffusion_hpc.data.benchmarks.SPIN24_ALIASES`.
#: OpenPose's toes and heels have no joint of ours: confidence 0.
JOINT_STAND_INS: dict[str, tuple[tuple[str, str], ...]] = {
    "neck": (("smpl24", "neck"), ("h36m17", "thorax")),
    "mid_hip": (("smpl24", "pelvis"), ("h36m17", "pelvis")),
    **{name: (source,) for name, source in SPIN24_ALIASES.items()},
}


@dataclass(frozen=True)
class BodyLabel:
    """The SMPL / SMPL-X parameters of one person, camera frame (OpenCV), metres.

    Attributes:
        body_model: ``"smpl"`` or ``"smplx"``.
        global_orient: (3,) axis-angle; body_pose: (69,) SMPL or (63,) SMPL-X axis-angle;
        betas: (10,); transl: (3,) (the model's ``transl``: vertices = model(...) + transl).
        joints3d: {joint set: (J, 3)} the model's joints for these parameters, camera frame.
        source: ``"native"`` (the dataset's own body model) or ``"converted"``.
        fit: the conversion's fit quality (``surface_mm``, ``joints_mm``, ``flagged``), None if native.
    """

    body_model: str
    global_orient: np.ndarray
    body_pose: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    joints3d: dict[str, np.ndarray]
    source: str
    fit: dict | None = None

    @property
    def pose(self) -> np.ndarray:
        """(72,) SMPL or (66,) SMPL-X: global_orient then body_pose, axis-angle."""
        return np.concatenate([self.global_orient, self.body_pose])


@dataclass
class PersonRow:
    """What every export format needs of one person (pixels of the saved image unless stated)."""

    key: str  # the sample's key (names the image)
    person: int  # the person's number in its sample
    image_hw: tuple[int, int]
    K: np.ndarray  # (3, 3)
    center: np.ndarray  # (2,) box centre
    side: float  # box side, px
    label: BodyLabel | None
    joints3d: dict[str, np.ndarray]  # the row's skeleton: the label's joints, else the sample's
    own_joints3d: dict[str, np.ndarray]  # the sample's own joints3d (its body model's)
    body_model: str  # the dataset's body model (native parameters)
    params: dict[str, np.ndarray]  # native parameters
    keypoints2d: np.ndarray  # (17, 3) the sample's COCO-17 u, v, visibility
    mask: np.ndarray  # (H, W) bool

    @property
    def scale(self) -> float:
        """SPIN / BEDLAM / 4D-Humans box scale: side / 200."""
        return self.side / SPIN_SCALE_UNIT

    def keypoints(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The row's skeleton in the order ``names``: (J, 4) camera-frame joints (:func:`joints_in_order`)
        and (J, 3) their projections with K (:func:`project_keypoints`)."""
        joints = joints_in_order(self.joints3d, names)
        return joints, project_keypoints(joints, self.K, self.image_hw)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the annotation file (for ``4dhumans-wds`` the shards' WebDataset URL,
    ``<stem>-{000000..00000N}.tar``), the image folder, the number of rows (persons), the number of
    persons left out (``bedlam-npz``: persons without a usable SMPL label) and every annotation file."""

    path: Path
    images: Path
    count: int
    format: str
    skipped: int = 0
    files: tuple[Path, ...] = ()


def iter_sample_meta(shard: Path) -> Iterator[dict[str, Any]]:
    """The JSON member of each sample of ``shard``, parsed, in order: what :func:`persons_of` needs to
    count a sample's persons and their visibility (``keypoints2d``, ``visible_fraction``, ``scores``)
    as lists, not arrays. Only the JSON members are read (the tar's other members are skipped, not
    read), so counting the people of a large dataset costs its JSON, not its images. A member whose
    key is not a plain name (:func:`~diffusion_hpc.data.reader.check_key`) or an unreadable shard is
    an :class:`InputError` naming it, as the reader's."""
    try:
        with tarfile.open(shard, "r") as tar:
            for info in tar:  # every member's name is checked; only the JSON ones are read
                key, _, ext = info.name.partition(".")
                check_key(key, f"shard {shard} member {info.name!r}")
                if not info.isfile() or not ext or "/" in ext or "\\" in ext:
                    raise InputError(f"shard {shard}: member {info.name!r} is not a file named <key>.<ext>; "
                                     "the shard is corrupt or hand-made: regenerate it")
                if ext == "json":
                    yield json.loads(tar.extractfile(info).read())
    except tarfile.TarError as exc:
        raise InputError(f"shard {shard} is unreadable ({exc}); regenerate it with --resume after deleting it") from exc


def _checked_label(person: dict[str, Any], model: str, params: dict, joints3d: dict, source: str,
                   fit: dict | None) -> BodyLabel:
    key = person.get("key")
    try:
        arrays = {k: np.asarray(params[k], np.float64).reshape(-1) for k in ("global_orient", "body_pose", "betas")}
    except KeyError as exc:
        raise InputError(f"sample {key}: {source} {model} label lacks {exc.args[0]!r} "
                         "(expected global_orient, body_pose, betas, transl)") from None
    pose = arrays["global_orient"].size + arrays["body_pose"].size
    expected = 3 + BODY_POSE_VALUES[model]
    if arrays["global_orient"].size != 3 or pose != expected:
        raise InputError(f"sample {key}: {model.upper()} pose has {pose} values, expected {expected} "
                         f"(global_orient 3 + body_pose {BODY_POSE_VALUES[model]})")
    transl = np.asarray(params.get("transl", np.zeros(3)), np.float64).reshape(3)
    return BodyLabel(model, arrays["global_orient"], arrays["body_pose"], arrays["betas"][:10], transl,
                     {k: np.asarray(v, np.float64) for k, v in joints3d.items()}, source, fit)


def body_label(person: dict[str, Any], models: Sequence[str] = ("smpl",)) -> BodyLabel | None:
    """The SMPL-family label of ``person`` among ``models`` (``"smpl"``, ``"smplx"``), or None.

    Native first: a person of an SMPL / SMPL-X dataset (``body_model`` in ``models``) is labelled by
    its own ``params`` and ``joints3d``. Converted second: ``person["labels"][model]`` for the first
    of ``models`` present (``{"body_model", "params", "joints3d", "fit"}``, camera frame, written by
    body-model conversion). A converted label whose ``fit["flagged"]`` is true (its fit error is above
    the conversion's threshold) counts as none: trainers would learn the fitting error.

    Raises :class:`InputError` naming the sample when a label's pose has the wrong number of values.
    """
    native = person.get("body_model")
    if native in models:
        return _checked_label(person, native, person["params"], person["joints3d"], "native", None)
    labels = person.get("labels") or {}
    for model in models:
        label = labels.get(model)
        if label is None:
            continue
        fit = dict(label.get("fit") or {})
        if fit.get("flagged", False):
            return None
        return _checked_label(person, label.get("body_model", model), label["params"], label["joints3d"], "converted", fit)
    return None


def person_row(person: dict[str, Any], box_expand: float, models: Sequence[str] = ("smpl",)) -> PersonRow:
    """A :class:`PersonRow` of one person (from :func:`persons_of`).

    Box: the person mask's bounding box, side = ``box_expand`` x its longer side; an empty mask falls
    back to the labelled keypoints, then to the whole image.
    """
    image = person["image"]
    h, w = int(image.shape[0]), int(image.shape[1])
    kp = np.asarray(person["keypoints2d"], np.float64)
    box = mask_box(person["mask"], box_expand)
    if box is None:
        if (kp[:, 2] > 0).any():
            c, s = box_from_keypoints(kp[None], "coco17", expand=box_expand)
            box = c[0], float(s[0]) * SPIN_SCALE_UNIT
        else:
            box = np.array([(w - 1) / 2.0, (h - 1) / 2.0]), float(max(h, w))
    label = body_label(person, models)
    own = {k: np.asarray(v, np.float64) for k, v in person["joints3d"].items()}
    return PersonRow(
        key=str(person["key"]),
        person=int(person.get("person", 0)),
        image_hw=(h, w),
        K=np.asarray(person["K"], np.float64),
        center=np.asarray(box[0], np.float64),
        side=float(box[1]),
        label=label,
        joints3d=label.joints3d if label is not None else own,
        own_joints3d=own,
        body_model=str(person["body_model"]),
        params={k: np.asarray(v, np.float64) for k, v in person["params"].items()},
        keypoints2d=kp,
        mask=np.asarray(person["mask"], bool),
    )


def joints_in_order(joints3d: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """(J, 4) joints ``names`` (x, y, z metres, 1 where known else 0) from ``joints3d`` ({set: (J, 3)}).

    Each name is taken from its :data:`JOINT_STAND_INS` if it has them, else from the same-named joint
    of the first of :data:`JOINT_SOURCES` that the row stores.
    """
    out = np.zeros((len(names), 4))
    for j, name in enumerate(names):
        sources = JOINT_STAND_INS.get(name) or tuple((s, name) for s in JOINT_SOURCES)
        for set_name, joint in sources:
            if set_name in joints3d and joint in joint_names(set_name):
                out[j, :3] = joints3d[set_name][joint_names(set_name).index(joint)]
                out[j, 3] = 1.0
                break
    return out


def project_keypoints(joints: np.ndarray, K: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """(J, 3) u, v pixels and confidence of (J, 4) camera-frame joints: confidence 1 where the joint is
    known (4th column > 0), in front of the camera and inside the image (pixel centres at integers)."""
    joints = np.asarray(joints, np.float64)
    h, w = image_hw
    z = joints[:, 2]
    front = (joints[:, 3] > 0) & (z > 0)
    uv = np.zeros((len(joints), 2))
    if front.any():
        uv[front] = project(joints[front, :3], K)
    inside = front & (uv[:, 0] >= -0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < h - 0.5)
    return np.concatenate([uv, inside[:, None].astype(np.float64)], axis=1)


@dataclass
class ExportItem:
    """One decoded sample ready to write: its persons' rows, its image as PNG bytes and, when the
    image was written to a file, that file's path relative to the annotation file."""

    sample: dict[str, Any]
    rows: list[PersonRow]
    png: bytes
    imgname: str | None = None


def _export_item(sample: dict[str, Any], box_expand: float, models: Sequence[str], image_dir: Path | None,
                 keep: Callable[[PersonRow], bool] | None) -> ExportItem:
    rows = [person_row(p, box_expand, models) for p in persons_of(sample)]
    item = ExportItem(sample, rows, encode_png(sample["image"]))
    if image_dir is not None and any(keep is None or keep(r) for r in rows):
        item.imgname = _write_images({"key": sample["key"], "image_png": item.png}, image_dir)
    return item


def rows_of(samples: Iterable[dict[str, Any]], box_expand: float, models: Sequence[str] = ("smpl",), *,
            image_dir: Path | None = None, keep: Callable[[PersonRow], bool] | None = None,
            threads: int | None = None) -> Iterator[ExportItem]:
    """An :class:`ExportItem` per decoded sample, in order: the :class:`PersonRow` of each of its persons
    (labels of ``models``) and its PNG-encoded image, written as ``image_dir/<key>.png`` (atomically)
    when ``image_dir`` is given and ``keep`` (default: any row) accepts one of its rows.

    The items are made on ``threads`` worker threads (default: up to 4, one per CPU) while the caller
    reads the next samples: PNG encoding and the image files' writes, most of an export's time,
    release the GIL. At most 2 x ``threads`` samples are in flight.
    """
    threads = min(4, os.cpu_count() or 1) if threads is None else threads
    make = functools.partial(_export_item, box_expand=box_expand, models=models, image_dir=image_dir, keep=keep)
    if threads <= 1:
        yield from map(make, samples)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="dhpc-export") as pool:
        pending: deque = deque()
        for sample in samples:
            pending.append(pool.submit(make, sample))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def no_rows_error() -> InputError:
    """The error of an export that found nothing to write."""
    return InputError("the dataset has no accepted samples to export; generate some first")


def _write_images(fields: dict[str, Any], image_dir: Path) -> str:
    name = f"{check_key(fields['key'], 'export')}.png"  # a plain name: the file stays in image_dir
    atomic_write_bytes(image_dir / name, fields.pop("image_png"))
    return f"{IMAGE_DIR}/{name}"


__all__ = [
    "BODY_POSE_VALUES",
    "HMR44",
    "IMAGE_DIR",
    "JOINT_SOURCES",
    "JOINT_STAND_INS",
    "BodyLabel",
    "ExportResult",
    "PersonRow",
    "body_label",
    "iter_sample_meta",
    "joints_in_order",
    "person_row",
    "persons_of",
    "project_keypoints",
    "rows_of",
]
