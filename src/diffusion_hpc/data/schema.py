"""The sample record (schema version 1) and its encoding as WebDataset tar members.

One sample is stored in a shard as members sharing a key (``<key>.<ext>``):

- ``image.png``  (H, W, 3) uint8 RGB
- ``mask.png``   (H, W) uint8, 255 = person
- ``depth.png``  (H, W) uint16, camera-frame z in millimetres, 0 = background
- ``params.npz`` body parameters (unbatched arrays; no pickles)
- ``<model>.npz`` (optional, one per label model: ``smpl.npz``, ``smplx.npz``, ``anny.npz``) the
  sample's body converted to another body model (``dhpc convert``, ``--label-models``): arrays
  only, named ``params.<name>``, ``joints3d.<set>``, ``fit.surface_mm``, ``fit.joints_mm``,
  ``fit.flagged`` (see :func:`encode_label`)
- ``image_mask.png`` (optional) (H, W) uint8, 255 = person as the segmenter sees it in the final
  image (written when label verification ran); ``mask`` is always the label mesh's silhouette
- ``json``       everything else: ``schema``, ``key``, ``index``, ``seed``, ``K`` (3x3),
  ``body_model``, ``joints3d`` ({joint-set name: (J, 3) camera-frame metres}),
  ``keypoints2d`` (COCO-17, (17, 3): u, v in pixels and COCO visibility 0 = outside the image,
  1 = in the image but hidden by the body, 2 = visible), ``mode``, ``prompt``, ``generator``,
  ``pose_source``, ``scores``, ``unet_evals``, ``timings``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
DEPTH_SCALE = 1000.0  # depth.png units per metre (millimetres)


@dataclass
class SampleRecord:
    """One labelled sample. Arrays are numpy; the camera frame is OpenCV (x right, y down, z forward)."""

    key: str
    index: int
    seed: int
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    depth: np.ndarray  # (H, W) float32 metres, 0 = background
    K: np.ndarray  # (3, 3)
    body_model: str
    params: dict[str, np.ndarray]
    joints3d: dict[str, np.ndarray]  # joint-set name -> (J, 3)
    keypoints2d: np.ndarray  # (17, 3) COCO-17 u, v, visibility
    mode: str
    prompt: str = ""
    generator: str = ""
    pose_source: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    unet_evals: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    image_mask: np.ndarray | None = None  # (H, W) bool, segmenter's person mask of the final image
    labels: dict[str, dict] = field(default_factory=dict)  # label model -> label (see encode_label)
    schema: int = SCHEMA_VERSION


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
    arrays = {f"params.{k}": np.asarray(v, np.float32) for k, v in label["params"].items()}
    arrays.update({f"joints3d.{k}": np.asarray(v, np.float64) for k, v in label["joints3d"].items()})
    fit = label["fit"]
    arrays.update({"fit.surface_mm": np.float64(fit["surface_mm"]), "fit.joints_mm": np.float64(fit["joints_mm"]),
                   "fit.flagged": np.bool_(fit["flagged"])})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_label(model: str, data: bytes) -> dict:
    """Inverse of :func:`encode_label` for the label of ``model``."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    group = lambda prefix: {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}  # noqa: E731
    fit = group("fit.")
    return {"body_model": model, "params": group("params."), "joints3d": group("joints3d."),
            "fit": {"surface_mm": float(fit["surface_mm"]), "joints_mm": float(fit["joints_mm"]),
                    "flagged": bool(fit["flagged"])}}


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) RGB or (H, W) grey uint8/uint16 array."""
    import cv2

    if array.ndim == 3:
        array = array[..., ::-1]  # RGB -> BGR for OpenCV
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, 1])
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


def encode(record: SampleRecord) -> dict[str, bytes]:
    """Tar members (extension -> bytes) of a record."""
    depth_mm = np.round(np.asarray(record.depth, np.float64) * DEPTH_SCALE)
    depth_mm = np.where(record.mask, np.clip(depth_mm, 1, 65535), 0).astype(np.uint16)
    params = io.BytesIO()
    np.savez(params, **{k: np.asarray(v, np.float32) for k, v in record.params.items()})
    meta = {
        "schema": record.schema,
        "key": record.key,
        "index": record.index,
        "seed": record.seed,
        "K": np.asarray(record.K, np.float64).tolist(),
        "body_model": record.body_model,
        "joints3d": {k: np.asarray(v, np.float64).tolist() for k, v in record.joints3d.items()},
        "keypoints2d": np.asarray(record.keypoints2d, np.float64).tolist(),
        "mode": record.mode,
        "prompt": record.prompt,
        "generator": record.generator,
        "pose_source": record.pose_source,
        "scores": record.scores,
        "unet_evals": record.unet_evals,
        "timings": record.timings,
        "image_size": [int(record.image.shape[0]), int(record.image.shape[1])],
    }
    members = {
        "image.png": encode_png(np.asarray(record.image, np.uint8)),
        "mask.png": encode_png(np.asarray(record.mask, bool).astype(np.uint8) * 255),
        "depth.png": encode_png(depth_mm),
        "params.npz": params.getvalue(),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }
    for model, label in record.labels.items():
        members[label_member(model)] = encode_label(label)
    if record.image_mask is not None:
        members["image_mask.png"] = encode_png(np.asarray(record.image_mask, bool).astype(np.uint8) * 255)
    return members


def decode(members: dict[str, bytes]) -> dict[str, Any]:
    """A record dict from tar members (inverse of :func:`encode`, depth rounded to 1 mm)."""
    missing = {"image.png", "mask.png", "depth.png", "params.npz", "json"} - set(members)
    if missing:
        raise ValueError(f"sample lacks members {sorted(missing)}")
    meta = json.loads(members["json"])
    if meta.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"sample schema {meta.get('schema')!r} is not supported (this version reads {SCHEMA_VERSION})")
    with np.load(io.BytesIO(members["params.npz"]), allow_pickle=False) as npz:
        params = {k: npz[k] for k in npz.files}
    depth = decode_png(members["depth.png"]).astype(np.float32) / np.float32(DEPTH_SCALE)
    record = dict(meta)
    record.update(
        image=decode_png(members["image.png"]),
        mask=decode_png(members["mask.png"]) > 127,
        depth=depth,
        K=np.asarray(meta["K"], np.float64),
        params=params,
        joints3d={k: np.asarray(v, np.float64) for k, v in meta["joints3d"].items()},
        keypoints2d=np.asarray(meta["keypoints2d"], np.float64),
        image_mask=decode_png(members["image_mask.png"]) > 127 if "image_mask.png" in members else None,
        labels={m: decode_label(m, members[label_member(m)]) for m in LABEL_MODELS if label_member(m) in members},
    )
    return record
