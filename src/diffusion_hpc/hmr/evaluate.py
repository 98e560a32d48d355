"""``dhpc evaluate``: a trained regressor on a benchmark, under the benchmark's protocol.

Three steps, kept apart so each can be checked on its own:

1. :func:`load_targets` — crops and ground truth of a source (SkiPose test split, SMART, SPIN npz,
   or one of our datasets), without augmentation;
2. :func:`predict` — the regressor + body model on the crops (batched, no gradients), one batch at
   a time through :func:`predict_batch`;
3. :func:`score` — the protocol's metrics on (predictions, targets): MPJPE / PA-MPJPE in mm on
   H36M-17 (SkiPose: root-centred, joint 9 dropped; our datasets: root-centred, all 17) and PCK at
   0.1 x crop size on visible COCO joints (SMART's scored joints), averaged per image.

Validation during training (``dhpc train --val``, :mod:`diffusion_hpc.hmr.validation`) runs the
same three steps: :func:`load_targets` before training, :func:`predict_batch` inside Lightning's
validation loop, :func:`score` on the gathered predictions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion_hpc.body import check_body_model, get_body_model
from diffusion_hpc.body.joint_sets import H36M17
from diffusion_hpc.config.evaluate import EvaluateConfig
from diffusion_hpc.data import benchmarks
from diffusion_hpc.errors import ConfigError, InputError, MissingModelError
from diffusion_hpc.eval import metrics
from diffusion_hpc.hmr.data import RealDataset, dataset_person_crops, denormalise_keypoints
from diffusion_hpc.hmr.init import load_regressor_spec
from diffusion_hpc.hmr.model import body_on_device, regress
from diffusion_hpc.runtime.atomic import atomic_write_bytes
from diffusion_hpc.runtime.device import Placement, resolve_placement

#: 3D protocol for our own datasets: H36M-17, root-centred on the pelvis, every joint scored.
DATASET_PROTOCOL = metrics.Protocol3D(name="h36m17 root-centred", joint_set="h36m17", root="pelvis", scored=H36M17)


@dataclass
class Targets:
    """Crops and labels of an evaluation source.

    Attributes:
        name: source description; kind: "skipose" | "smart" | "spin" | "dataset".
        images: (N, 3, S, S) float32 crops in [0, 1].
        keypoints2d: (N, 17, 3) COCO-17 in crop pixels + visibility (0 = not scored).
        joints3d: (N, 17, 3) H36M-17 metres (root-relative is fine) or None.
    """

    name: str
    kind: str
    images: np.ndarray
    keypoints2d: np.ndarray
    joints3d: np.ndarray | None
    crop_size: int


#: What a source argument may be, for error messages.
SOURCE_FORMATS = (
    "skipose:PATH (SkiPose root or its labels.h5; test split), smart:PATH (SMART JSON file or folder), "
    "spin:PATH (SPIN npz) or a dataset folder written by dhpc generate"
)


def _source_kind(source: str, option: str = "--data") -> tuple[str, Path]:
    """(kind, path) of a source; ``option`` names the flag in errors (``--data``, ``--val``)."""
    kind, _, rest = str(source).partition(":")
    if kind in ("skipose", "smart", "spin") and rest:
        path = Path(rest)
        if not path.exists():
            raise InputError(f"{option} {source}: {path} does not exist; pass {SOURCE_FORMATS}")
        return kind, path
    path = Path(source)
    if not path.exists():
        raise InputError(f"{option} {source} does not exist; pass {SOURCE_FORMATS}")
    if (path / "config.yaml").is_file() and (path / "shards").is_dir():
        return "dataset", path
    if path.suffix == ".npz":
        return "spin", path
    if path.suffix == ".h5" or (path / "test" / "labels.h5").is_file():
        return "skipose", path
    if path.suffix == ".json" or (path.is_dir() and any(path.glob("*.json"))):
        return "smart", path
    raise InputError(f"cannot tell the format of {option} {source!r}: pass {SOURCE_FORMATS}")


def load_targets(source: str, crop_size: int = 224, limit: int | None = None, body_model: str = "anny",
                 option: str = "--data") -> Targets:
    """Crops and ground truth of ``source`` (SkiPose uses its test split).

    ``option`` is the command-line flag the source came from, named in errors.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be a positive number of samples, got {limit}")
    kind, path = _source_kind(source, option)
    items: list[dict[str, torch.Tensor]] = []
    if kind == "dataset":  # one crop per person (schema 2: several per image)
        items = dataset_person_crops(path, crop_size, limit, body_model)
    else:

        data = {"skipose": lambda: benchmarks.load_skipose(path, "test", limit=limit),
                "smart": lambda: benchmarks.load_smart(path), "spin": lambda: benchmarks.load_spin_npz(path)}[kind]()
        dataset = RealDataset(data, size=crop_size, augment=None, body_model=body_model)
        n = len(dataset) if limit is None else min(limit, len(dataset))
        items = [dataset[i] for i in range(n)]
    if not items:
        raise InputError(f"{option} {source} holds no samples")
    kp = np.stack([it["keypoints2d"].numpy() for it in items]).astype(np.float64)
    kp[..., :2] = denormalise_keypoints(kp[..., :2], crop_size)  # normalised -> crop pixels
    has_3d = np.array([float(it["has_3d"]) > 0 for it in items])
    joints3d = np.stack([it["joints3d"].numpy()[..., :3] for it in items]).astype(np.float64) if has_3d.all() else None
    images = np.stack([it["image"].numpy() for it in items]).astype(np.float32)
    return Targets(str(source), kind, images, kp, joints3d, crop_size)


#: how the scored H36M-17 joints come from each body model when no H36M regressor is given
JOINTS_3D_APPROXIMATIONS = {
    "smpl": "approximation: SMPL kinematic joints and the head-top vertex 411 (body/smpl.py); pass --h36m-regressor "
            "J_regressor_h36m.npy for the standard H36M joints",
    "smplx": "approximation: SMPL-X kinematic joints, the head joint as head top (body/smpl.py)",
    "anny": "Anny bone heads and tails (body.joint_sets.ANNY_H36M17_FROM_BONES)",
}  # fmt: skip


def load_h36m_regressor(path: str | Path, num_vertices: int) -> np.ndarray:
    """(17, V) H36M joint regressor from ``J_regressor_h36m.npy`` (SPIN / 4D-Humans data), plain arrays only.

    Raises:
        MissingModelError: no such file. InputError: not a (17, V) array for a body of V vertices.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingModelError(f"--h36m-regressor {path} does not exist (J_regressor_h36m.npy from SPIN's or 4D-Humans' data)")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"--h36m-regressor {path} is not a plain .npy array ({exc})") from None
    if array.shape != (17, num_vertices):
        raise InputError(f"--h36m-regressor {path}: expected a (17, {num_vertices}) regressor for this body model, got "
                         f"{array.shape}")
    return np.asarray(array, np.float32)


def load_model(checkpoint: str | Path, smpl_path: str | Path | None = None, placement: Placement | None = None):
    """A regressor (any :mod:`diffusion_hpc.hmr.init` spec: run folder, ``spin:FILE``, ``hmr2:FILE``)
    and its body model; returns ``(network, body_model, loaded)`` (:class:`~diffusion_hpc.hmr.init.LoadedRegressor`).

    The regressor is moved once to ``placement`` (default: the CPU in float32); the body model
    computes on the same device (:func:`~diffusion_hpc.hmr.model.body_on_device`), in float32.
    """
    device = None if placement is None else placement.device
    loaded = load_regressor_spec(checkpoint, device=device, dtype=None if placement is None else placement.dtype)
    check_body_model(loaded.body_model, smpl_path)
    body = get_body_model(loaded.body_model, model_path=smpl_path)
    return loaded.network, body if device is None else body_on_device(body, device), loaded


#: Keys of :func:`predict` / :func:`predict_batch` results.
PREDICTION_KEYS = ("keypoints2d", "joints3d")


def predict_batch(regressor, body_model, images, h36m_regressor=None) -> dict[str, np.ndarray]:
    """Predictions for one batch of crops ((B, 3, S, S) tensor on the regressor's device).

    ``{"keypoints2d": (B, 17, 2) crop pixels, "joints3d": (B, 17, 3) H36M-17 metres}`` as float64
    numpy; ``h36m_regressor`` ((17, V) tensor): the 3D joints are ``h36m_regressor @ vertices``
    instead of the body model's ``h36m17`` set. Gradients are the caller's business
    (``torch.no_grad()`` in :func:`predict`, Lightning's validation loop during training).
    """

    out = regress(regressor, body_model, images, with_vertices=h36m_regressor is not None)
    if h36m_regressor is None:
        joints = out["joints"]["h36m17"]
    else:
        joints = torch.einsum("jv,bvc->bjc", h36m_regressor.to(out["vertices"]), out["vertices"])
    return {
        "keypoints2d": denormalise_keypoints(out["keypoints2d"].detach().cpu().numpy(), images.shape[-1]),
        "joints3d": joints.detach().cpu().numpy().astype(np.float64),
    }


def concat_predictions(parts: list[dict[str, np.ndarray]], keys: tuple[str, ...] = PREDICTION_KEYS) -> dict[str, np.ndarray]:
    """Batch results (of :func:`predict_batch`) joined along the sample axis."""
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def predict(regressor, body_model, images: np.ndarray, batch_size: int = 32, h36m_regressor: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``{"keypoints2d": (N, 17, 2) crop pixels, "joints3d": (N, 17, 3) H36M-17 metres}``; each batch is
    moved to the regressor's device and precision (``h36m_regressor``: see :func:`predict_batch`)."""
    weight = next(regressor.parameters())
    j_reg = None if h36m_regressor is None else torch.as_tensor(h36m_regressor, dtype=torch.float32)
    with torch.no_grad():
        parts = [predict_batch(regressor, body_model,
                               torch.as_tensor(images[lo : lo + batch_size]).to(weight.device, weight.dtype), j_reg)
                 for lo in range(0, len(images), batch_size)]  # fmt: skip
    return concat_predictions(parts)


def score(predictions: dict[str, np.ndarray], targets: Targets) -> dict[str, Any]:
    """The protocol's metrics (means over samples, with counts)."""
    result: dict[str, Any] = {"source": targets.name, "kind": targets.kind, "samples": int(len(targets.images))}
    if targets.joints3d is not None:
        protocol = metrics.SKIPOSE_PROTOCOL if targets.kind == "skipose" else DATASET_PROTOCOL
        per = metrics.evaluate_3d(predictions["joints3d"], targets.joints3d, protocol, pred_joint_set="h36m17", gt_joint_set="h36m17")
        result["protocol_3d"] = protocol.name
        result["mpjpe_mm"] = float(np.nanmean(per["mpjpe"]))
        result["pa_mpjpe_mm"] = float(np.nanmean(per["pa_mpjpe"]))
    pck = metrics.evaluate_2d(predictions["keypoints2d"], targets.keypoints2d, float(targets.crop_size), metrics.SMART_PROTOCOL,
                              pred_joint_set="coco17", gt_joint_set="coco17")
    scored = np.isfinite(pck)
    result["protocol_2d"] = metrics.SMART_PROTOCOL.name
    result["pck"] = float(np.mean(pck[scored]) * 100.0) if scored.any() else float("nan")
    result["pck_images"] = int(scored.sum())
    return result


def format_table(result: dict[str, Any]) -> str:
    """The result as a small readable table."""
    rows = [("source", result["source"]), ("samples", result["samples"])]
    if "regressor" in result:
        r = result["regressor"]
        rows += [("regressor", f"{r['source']} ({r['architecture']}, {r['body_model']}, {result.get('crop_size', r['crop_size'])} px crops)")]
    if "mpjpe_mm" in result:
        rows += [(f"MPJPE ({result['protocol_3d']})", f"{result['mpjpe_mm']:.2f} mm"),
                 (f"PA-MPJPE ({result['protocol_3d']})", f"{result['pa_mpjpe_mm']:.2f} mm")]
        if "joints_3d" in result:
            rows += [("3D joints", result["joints_3d"])]
    rows += [(f"PCK ({result['protocol_2d']})", f"{result['pck']:.2f} % over {result['pck_images']} images")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Python API of ``dhpc evaluate``: load, predict, score, and write ``config.out`` (JSON) if set.

    Example::

        from diffusion_hpc.config import EvaluateConfig
        from diffusion_hpc.hmr.evaluate import evaluate

        result = evaluate(EvaluateConfig(checkpoint="runs/hmr", data="skipose:SkiPose"))
        result["pa_mpjpe_mm"]

    Returns:
        :func:`score`'s metrics plus ``checkpoint``, ``device`` and ``dtype`` (as they ran) and
        ``config`` (this config as JSON types);
        the same dict is written to ``config.out``.
    """
    placement = resolve_placement(config.device, config.dtype, diffusion=False)  # before any model loads
    regressor, body, loaded = load_model(config.checkpoint, smpl_path=config.smpl_path, placement=placement)
    crop_size = config.crop_size or loaded.crop_size
    if loaded.architecture == "hmr2" and crop_size != loaded.crop_size:
        raise ConfigError(f"--crop-size {crop_size}: HMR 2.0 takes {loaded.crop_size} px crops; leave --crop-size out")
    h36m = None
    if config.h36m_regressor is not None:
        if loaded.body_model != "smpl":
            raise ConfigError(f"--h36m-regressor is for SMPL regressors; {config.checkpoint} predicts {loaded.body_model}")
        h36m = load_h36m_regressor(config.h36m_regressor, int(body.model.v_template.shape[0]))
    targets = load_targets(config.data, crop_size=crop_size, limit=config.limit, body_model=body.name)
    result = score(predict(regressor, body, targets.images, batch_size=config.batch_size, h36m_regressor=h36m), targets)
    result["checkpoint"] = str(config.checkpoint)
    result["regressor"] = loaded.describe()
    result["crop_size"] = crop_size
    if "mpjpe_mm" in result:
        result["joints_3d"] = (f"H36M joint regressor {config.h36m_regressor}" if h36m is not None
                               else JOINTS_3D_APPROXIMATIONS.get(loaded.body_model, loaded.body_model))
    result.update(placement.names)  # the device and precision that ran
    result["config"] = config.model_dump(mode="json")
    if config.out is not None:
        atomic_write_bytes(config.out, json.dumps(result, indent=2, sort_keys=True).encode())
    return result
