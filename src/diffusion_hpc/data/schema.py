"""The sample record (schema version 2: a list of persons per image) and its encoding as WebDataset
tar members.

One sample is stored in a shard as members sharing a key (``<key>.<ext>``):

- ``image.png``    (H, W, 3) uint8 RGB
- ``depth.png``    (H, W) uint16, camera-frame z in millimetres of the nearest surface of any person,
  0 = background
- ``mask.png``     (H, W) uint8, 255 = a person (the union of all persons; exactly ``depth > 0``)
- ``instance.png`` (H, W) uint8, 0 = background, p + 1 = person p (disjoint by construction)
- ``params.npz``   each person's body parameters under the body model's own names, with a leading
  person axis: (P, ...) arrays (no pickles)
- ``<model>.npz``  (optional, one per label model: ``smpl.npz``, ``smplx.npz``, ``anny.npz``) every
  person's body converted to another body model (``dhpc convert``, ``--label-models``): arrays only,
  each with a leading person axis: ``params.<name>`` (P, ...), ``joints3d.<set>`` (P, J, 3),
  ``fit.surface_mm``, ``fit.joints_mm``, ``fit.flagged`` (P,) (see :func:`encode_labels`)
- ``image_mask.png`` (optional) (H, W) uint8, 255 = person as the segmenter sees it in the final
  image (written when label verification ran); ``mask`` is always the label meshes' silhouette
- ``json``         the image-level fields: ``schema``, ``key``, ``index``, ``seed``, ``K`` (3x3),
  ``mode``, ``prompt``, ``generator``, ``scores``, ``unet_evals``, ``timings``, ``image_size``, and
  ``persons``: one dict per person with ``body_model``, ``joints3d`` ({joint-set name: (J, 3)
  camera-frame metres}), ``keypoints2d`` (COCO-17, (17, 3): u, v in pixels and COCO visibility 0 =
  outside the image, 1 = in the image but hidden (by its own body or by another person), 2 =
  visible), ``scores`` (that person's), ``pose_source`` and ``visible_fraction`` (the share of the
  person's own silhouette that is visible in ``instance``: 1.0 when nobody hides it).

Schema 1 (datasets written before persons) stored one person: the same image-level members without
``instance.png``, unbatched ``params.npz`` and label members, and the person's ``body_model``,
``joints3d``, ``keypoints2d`` and ``pose_source`` at the top of ``json``. :func:`decode` reads both;
:func:`persons_of` lists the persons of either.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 2
#: schema versions :func:`decode` reads
READABLE_SCHEMAS = (1, 2)
DEPTH_SCALE = 1000.0  # depth.png units per metre (millimetres)
#: most persons one sample can hold (``instance.png`` is uint8: 0 is the background)
MAX_PERSONS = 254


@dataclass
class PersonLabel:
    """One person of a sample: its body and labels. Arrays are numpy, camera frame OpenCV, metres.

    Attributes:
        body_model: the body model of ``params`` (``"anny"``, ``"smpl"``, ``"smplx"``).
        params: body parameters, unbatched, under the body model's own names.
        joints3d: joint-set name -> (J, 3) camera-frame joints.
        keypoints2d: (17, 3) COCO-17 u, v pixels and visibility (0 outside, 1 hidden, 2 visible).
        scores: this person's scores (prior score, mask area, ...).
        pose_source: where its pose comes from (pose file entry, guide image, ...).
        visible_fraction: share of its own silhouette pixels visible in the image (1.0: unoccluded).
        labels: label model -> its body converted to that model (see :func:`encode_label`).
    """

    body_model: str
    params: dict[str, np.ndarray]
    joints3d: dict[str, np.ndarray]
    keypoints2d: np.ndarray
    scores: dict[str, float] = field(default_factory=dict)
    pose_source: str = ""
    visible_fraction: float = 1.0
    labels: dict[str, dict] = field(default_factory=dict)


@dataclass(kw_only=True)
class SampleRecord:
    """One labelled sample: an image and its persons. Arrays are numpy; the camera frame is OpenCV
    (x right, y down, z forward).

    ``persons`` lists the persons; ``None`` is the one-person shorthand: the record's own
    ``body_model``, ``params``, ``joints3d``, ``keypoints2d``, ``pose_source`` and ``labels`` are its
    one person (:meth:`people`). Either is written as schema 2.
    """

    key: str
    index: int
    seed: int
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool, union of the persons
    depth: np.ndarray  # (H, W) float32 metres, nearest surface, 0 = background
    K: np.ndarray  # (3, 3)
    mode: str
    persons: list[PersonLabel] | None = None
    instance: np.ndarray | None = None  # (H, W) int person index per pixel, -1 = background
    prompt: str = ""
    generator: str = ""
    scores: dict[str, float] = field(default_factory=dict)  # image-level
    unet_evals: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    image_mask: np.ndarray | None = None  # (H, W) bool, segmenter's person mask of the final image
    # the one-person shorthand (``persons`` None)
    body_model: str = ""
    params: dict[str, np.ndarray] = field(default_factory=dict)
    joints3d: dict[str, np.ndarray] = field(default_factory=dict)  # joint-set name -> (J, 3)
    keypoints2d: np.ndarray | None = None  # (17, 3) COCO-17 u, v, visibility
    pose_source: str = ""
    labels: dict[str, dict] = field(default_factory=dict)  # label model -> label (see encode_label)

    def people(self) -> list[PersonLabel]:
        """The persons of the record (``persons``, or the one person of the shorthand fields)."""
        if self.persons is not None:
            return list(self.persons)
        keypoints = np.zeros((17, 3)) if self.keypoints2d is None else self.keypoints2d
        return [PersonLabel(self.body_model, self.params, self.joints3d, keypoints, pose_source=self.pose_source,
                            labels=self.labels)]  # fmt: skip

    def instance_map(self) -> np.ndarray:
        """(H, W) int16 person index per pixel, -1 on background (``instance``; one person: ``mask``)."""
        if self.instance is not None:
            return np.asarray(self.instance, np.int16)
        if self.persons is not None and len(self.persons) != 1:
            raise ValueError(f"sample {self.key}: {len(self.persons)} persons need an instance map; set "
                             "record.instance ((H, W) person index, -1 background)")
        return np.where(np.asarray(self.mask, bool), 0, -1).astype(np.int16)


#: body models a sample can carry a converted label of (tar member ``<model>.npz``)
LABEL_MODELS = ("anny", "smpl", "smplx")


def label_member(model: str) -> str:
    """The tar member extension of a label model's label: ``smpl`` -> ``smpl.npz``."""
    if model not in LABEL_MODELS:
        raise ValueError(f"unknown label model {model!r}; choose one of {LABEL_MODELS}")
    return f"{model}.npz"


def encode_label(label: dict) -> bytes:
    """The npz bytes of one label (arrays only; no pickles).

    A label is ``{"body_model": str, "params": {name: array}, "joints3d": {set: (J, 3)},
    "fit": {"surface_mm": float, "joints_mm": float, "flagged": bool}}``: the sample's body
    fitted with ``body_model`` (:mod:`diffusion_hpc.data.convert`), parameters in the camera frame
    with the body model's own names (``body_pose`` flattened: (69,) SMPL, (63,) SMPL-X, (90,)
    Anny), joints in metres. The member's name carries ``body_model``.
    """
    buf = io.BytesIO()
    np.savez(buf, **_label_arrays(label))
    return buf.getvalue()


def decode_label(model: str, data: bytes) -> dict:
    """Inverse of :func:`encode_label` for the label of ``model`` (schema 1's one person)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return _label_of(model, {k: npz[k] for k in npz.files})


def _label_arrays(label: dict) -> dict[str, np.ndarray]:
    """The arrays of one label under their member names (see :func:`encode_label`)."""
    arrays = {f"params.{k}": np.asarray(v, np.float32) for k, v in label["params"].items()}
    arrays.update({f"joints3d.{k}": np.asarray(v, np.float64) for k, v in label["joints3d"].items()})
    fit = label["fit"]
    arrays.update({"fit.surface_mm": np.float64(fit["surface_mm"]), "fit.joints_mm": np.float64(fit["joints_mm"]),
                   "fit.flagged": np.bool_(fit["flagged"])})
    return arrays


def _label_of(model: str, arrays: dict[str, np.ndarray]) -> dict:
    """A label dict from its arrays (one person's)."""
    group = lambda prefix: {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}  # noqa: E731
    fit = group("fit.")
    return {"body_model": model, "params": group("params."), "joints3d": group("joints3d."),
            "fit": {"surface_mm": float(fit["surface_mm"]), "joints_mm": float(fit["joints_mm"]),
                    "flagged": bool(fit["flagged"])}}


def encode_labels(labels: list[dict]) -> bytes:
    """The npz bytes of the labels of P persons (schema 2's ``<model>.npz``): the arrays of
    :func:`encode_label`, each stacked over the persons (a leading person axis: ``fit.*`` are (P,)).

    Raises:
        ValueError: no label, or persons whose labels hold different arrays or shapes.
    """
    if not labels:
        raise ValueError("encode_labels needs the label of at least one person")
    per_person = [_label_arrays(label) for label in labels]
    names = set(per_person[0])
    for p, arrays in enumerate(per_person):
        if set(arrays) != names or any(np.shape(arrays[k]) != np.shape(per_person[0][k]) for k in names):
            raise ValueError(f"person {p}'s label holds other arrays than person 0's ({sorted(arrays)} vs "
                             f"{sorted(names)}); every person of a sample is labelled with the same body model")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.stack([arrays[k] for arrays in per_person]) for k in sorted(names)})
    return buf.getvalue()


def decode_labels(model: str, data: bytes) -> list[dict]:
    """Inverse of :func:`encode_labels`: the label of ``model`` of every person, in order."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    count = len(arrays["fit.surface_mm"])
    return [_label_of(model, {k: v[p] for k, v in arrays.items()}) for p in range(count)]


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) RGB or (H, W) grey uint8/uint16 array.

    zlib level 1 with one fixed row filter instead of libpng's per-row choice among all five, which
    costs most of the time: no filter for (H, W) uint8 maps (masks, instance maps: about 1 ms at
    512 x 512 instead of 5-7, 20 % larger, a few KB), the "sub" filter for images and depth (about 2-3x
    faster, 10-15 % larger). Lossless either way."""
    import cv2

    if array.ndim == 3:
        array = array[..., ::-1]  # RGB -> BGR for OpenCV
    grey8 = array.ndim == 2 and array.dtype == np.uint8
    row_filter = cv2.IMWRITE_PNG_FILTER_NONE if grey8 else cv2.IMWRITE_PNG_FILTER_SUB
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array),
                           [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, row_filter])  # fmt: skip
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_png` (RGB order); ``ValueError`` if not a PNG."""
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError("not a PNG image")
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., ::-1])
    return array




def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _stacked_params(people: list[PersonLabel], key: str) -> dict[str, np.ndarray]:
    """Every person's parameters stacked with a leading person axis (float32)."""
    names = list(people[0].params)
    for p, person in enumerate(people):
        if list(person.params) != names or any(np.shape(person.params[k]) != np.shape(people[0].params[k])
                                                for k in names):  # fmt: skip
            raise ValueError(f"sample {key}: person {p}'s parameters ({sorted(person.params)}) differ from person 0's "
                             f"({sorted(names)}); the persons of a sample share one body model")
    return {k: np.stack([np.asarray(person.params[k], np.float32) for person in people]) for k in names}


def _person_meta(person: PersonLabel) -> dict[str, Any]:
    return {
        "body_model": person.body_model,
        "joints3d": {k: np.asarray(v, np.float64).tolist() for k, v in person.joints3d.items()},
        "keypoints2d": np.asarray(person.keypoints2d, np.float64).tolist(),
        "scores": person.scores,
        "pose_source": person.pose_source,
        "visible_fraction": float(person.visible_fraction),
    }


def encode(record: SampleRecord) -> dict[str, bytes]:
    """Tar members (extension -> bytes) of a record, schema 2 (see the module docstring).

    Raises:
        ValueError: no person, more than :data:`MAX_PERSONS`, persons with different parameter names,
            an instance map naming a person the record lacks, or label models on some persons only.
    """
    people = record.people()
    if not 1 <= len(people) <= MAX_PERSONS:
        raise ValueError(f"sample {record.key} has {len(people)} persons; a sample holds 1..{MAX_PERSONS}")
    mask = np.asarray(record.mask, bool)
    instance = record.instance_map()
    if instance.max(initial=-1) >= len(people) or instance.min(initial=-1) < -1:
        raise ValueError(f"sample {record.key}: the instance map names persons {sorted(set(np.unique(instance)) - {-1})}"
                         f" but the record has {len(people)}")
    if instance.shape != mask.shape or not np.array_equal(instance >= 0, mask):
        raise ValueError(f"sample {record.key}: the instance map's persons are not the mask (their union must be "
                         "exactly the mask)")
    depth_mm = np.round(np.asarray(record.depth, np.float64) * DEPTH_SCALE)
    depth_mm = np.where(mask, np.clip(depth_mm, 1, 65535), 0).astype(np.uint16)
    meta = {
        "schema": SCHEMA_VERSION,
        "key": record.key,
        "index": record.index,
        "seed": record.seed,
        "K": np.asarray(record.K, np.float64).tolist(),
        "mode": record.mode,
        "prompt": record.prompt,
        "generator": record.generator,
        "scores": record.scores,
        "unet_evals": record.unet_evals,
        "timings": record.timings,
        "image_size": [int(record.image.shape[0]), int(record.image.shape[1])],
        "persons": [_person_meta(person) for person in people],
    }
    members = {
        "image.png": encode_png(np.asarray(record.image, np.uint8)),
        "mask.png": encode_png(mask.astype(np.uint8) * 255),
        "depth.png": encode_png(depth_mm),
        "instance.png": encode_png((instance + 1).astype(np.uint8)),
        "params.npz": _npz(_stacked_params(people, record.key)),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }
    for model in LABEL_MODELS:
        labelled = [model in person.labels for person in people]
        if any(labelled) and not all(labelled):
            raise ValueError(f"sample {record.key}: persons {[p for p, ok in enumerate(labelled) if not ok]} lack the "
                             f"{model} label the others have; label every person of a sample or none")
        if all(labelled):
            members[label_member(model)] = encode_labels([person.labels[model] for person in people])
    if record.image_mask is not None:
        members["image_mask.png"] = encode_png(np.asarray(record.image_mask, bool).astype(np.uint8) * 255)
    return members


def _decode_images(members: dict[str, bytes], meta: dict) -> dict[str, Any]:
    """The image-level arrays every schema shares."""
    return {
        "image": decode_png(members["image.png"]),
        "mask": decode_png(members["mask.png"]) > 127,
        "depth": decode_png(members["depth.png"]).astype(np.float32) / np.float32(DEPTH_SCALE),
        "K": np.asarray(meta["K"], np.float64),
        "image_mask": decode_png(members["image_mask.png"]) > 127 if "image_mask.png" in members else None,
    }


def _read_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _decode_v1(members: dict[str, bytes], meta: dict) -> dict[str, Any]:
    """A schema-1 sample: one person's fields at the top (as this reader returned them before persons)."""
    record = dict(meta)
    record.update(
        _decode_images(members, meta),
        params=_read_npz(members["params.npz"]),
        joints3d={k: np.asarray(v, np.float64) for k, v in meta["joints3d"].items()},
        keypoints2d=np.asarray(meta["keypoints2d"], np.float64),
        labels={m: decode_label(m, members[label_member(m)]) for m in LABEL_MODELS if label_member(m) in members},
    )
    return record


def _decode_v2(members: dict[str, bytes], meta: dict) -> dict[str, Any]:
    """A schema-2 sample: image-level fields and ``persons``."""
    if "instance.png" not in members:
        raise ValueError("schema-2 sample lacks member instance.png")
    people = meta["persons"]
    count = len(people)
    params = _read_npz(members["params.npz"])
    wrong = {k: v.shape for k, v in params.items() if v.ndim == 0 or len(v) != count}
    if wrong:
        raise ValueError(f"params.npz arrays {wrong} lack the leading person axis of the sample's {count} persons")
    instance = decode_png(members["instance.png"]).astype(np.int16) - 1
    labels = {m: decode_labels(m, members[label_member(m)]) for m in LABEL_MODELS if label_member(m) in members}
    for model, per_person in labels.items():
        if len(per_person) != count:
            raise ValueError(f"{label_member(model)} holds {len(per_person)} persons, the sample {count}")
    record = {k: v for k, v in meta.items() if k != "persons"}
    record.update(_decode_images(members, meta), instance=instance)
    record["persons"] = [
        {
            "body_model": person["body_model"],
            "params": {k: v[p] for k, v in params.items()},
            "joints3d": {k: np.asarray(v, np.float64) for k, v in person["joints3d"].items()},
            "keypoints2d": np.asarray(person["keypoints2d"], np.float64),
            "mask": instance == p,
            "scores": person.get("scores", {}),
            "pose_source": person.get("pose_source", ""),
            "visible_fraction": float(person.get("visible_fraction", 1.0)),
            "labels": {m: per_person[p] for m, per_person in labels.items()},
        }
        for p, person in enumerate(people)
    ]
    return record


def decode(members: dict[str, bytes]) -> dict[str, Any]:
    """A sample dict from tar members (inverse of :func:`encode`, depth rounded to 1 mm).

    Schema 2: the image-level fields (``image``, ``depth``, ``mask`` (the union), ``instance`` (H, W)
    int16 person index (-1 background), ``K``, ``image_mask``, ``key``, ``scores``, ...) and
    ``persons``, one dict per person: ``body_model``, ``params`` {name: unbatched array},
    ``joints3d``, ``keypoints2d``, ``mask`` (H, W) bool (``instance == p``), ``scores``,
    ``pose_source``, ``visible_fraction``, ``labels`` {model: label}. Schema 1: one person's fields
    at the top, no ``persons`` (as before schema 2). :func:`persons_of` lists the persons of either.
    """
    missing = {"image.png", "mask.png", "depth.png", "params.npz", "json"} - set(members)
    if missing:
        raise ValueError(f"sample lacks members {sorted(missing)}")
    meta = json.loads(members["json"])
    version = meta.get("schema")
    if version not in READABLE_SCHEMAS:
        raise ValueError(f"sample schema {version!r} is not supported (this version reads "
                         f"{', '.join(map(str, READABLE_SCHEMAS))}); update diffusion-hpc to read it")
    return _decode_v1(members, meta) if version == 1 else _decode_v2(members, meta)


def persons_of(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The persons of a decoded sample, each a dict with the sample's image-level fields (``key``,
    ``image``, ``K``, ...) and its own ``mask``, ``keypoints2d``, ``joints3d``, ``body_model``,
    ``params``, ``labels`` and ``person`` (its number).

    A sample without ``persons`` (schema 1) is one person (the sample's own fields); a sample with
    ``persons`` (schema 2) gives one dict per entry, its fields over the sample's.
    """
    people = sample.get("persons")
    if people is None:
        return [{**sample, "person": 0}]
    shared = {k: v for k, v in sample.items() if k != "persons"}
    return [{**shared, **person, "person": i} for i, person in enumerate(people)]
