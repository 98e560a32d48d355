"""Second body-model labels for a dataset (``dhpc convert``) and for a run (``--label-models``).

:class:`LabelConverter` fits the target body model to batches of a dataset's bodies
(:func:`diffusion_hpc.body.convert.convert_bodies`) and returns one label per body in the form
the reader returns (:func:`diffusion_hpc.data.schema.encode_label`)::

    person["labels"]["smpl"] = {
        "body_model": "smpl",
        "params": {"global_orient": (3,), "body_pose": (69,), "betas": (10,), "transl": (3,)},
        "joints3d": {"coco17": (17, 3), "h36m17": (17, 3), "smpl24": (24, 3)},
        "fit": {"surface_mm": float, "joints_mm": float, "flagged": bool},
    }

(``body_pose`` (63,) and no ``smpl24`` for SMPL-X; the neutral model.) Parameters are in the camera
frame with the model's own names, as a native ``--body-model smpl`` dataset's ``params`` (there
``body_pose`` is (23, 3)); the joints are the target model's own, so ``joints3d`` equals the
forward pass of ``params``. The reader gives every person its own label (``persons_of(sample)``;
a schema-1 sample is one person, its label at ``sample["labels"]``).

:func:`convert_dataset` converts every person and stores the labels in the dataset's own shards,
as the member ``<key>.<model>.npz`` beside each sample's ``params.npz``: every array with a leading
person axis in a schema-2 sample (:func:`~diffusion_hpc.data.schema.encode_labels`), one label in a
schema-1 sample. Shards are rewritten one at a time under the dataset's lock
(:mod:`diffusion_hpc.data.lock`): a temporary tar in ``shards/``, then one rename, so a killed
convert leaves every shard either as it was or complete, and a rerun skips the shards that already
carry the label (resumable). The manifest, config.yaml and
run.json are not touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from diffusion_hpc.body import check_body_model, get_body_model
from diffusion_hpc.body.convert import Conversion, ConvertWeights, convert_bodies
from diffusion_hpc.config.convert import ConvertConfig
from diffusion_hpc.data.lock import OutputLock
from diffusion_hpc.data.reader import Dataset, iter_shard_members
from diffusion_hpc.data.schema import encode_label, encode_labels, label_member
from diffusion_hpc.data.writer import _add_members, commit_file, storage_errors
from diffusion_hpc.errors import InputError
from diffusion_hpc.prior import get_prior
from diffusion_hpc.runtime.device import resolve_device, resolve_dtype

log = logging.getLogger(__name__)


def conversion_labels(conversion: Conversion) -> list[dict]:
    """One label per body of ``conversion`` (numpy; ``body_pose`` flattened)."""
    params = {k: v.detach().cpu().double().numpy() for k, v in conversion.params.items()}
    joints = {k: v.detach().cpu().double().numpy() for k, v in conversion.joints.items()}
    out = []
    for i in range(len(conversion.surface_mm)):
        out.append({
            "body_model": conversion.body_model,
            "params": {k: (v[i].reshape(-1) if k == "body_pose" else v[i]).astype(np.float32) for k, v in params.items()},
            "joints3d": {k: v[i] for k, v in joints.items()},
            "fit": {"surface_mm": float(conversion.surface_mm[i]), "joints_mm": float(conversion.joints_mm[i]),
                    "flagged": bool(conversion.flagged[i])},
        })  # fmt: skip
    return out


def load_target_prior(target: str, prior_path: str | os.PathLike | None):
    """The target's pose prior: Anny's shipped one (or ``prior_path``), VPoser at ``prior_path`` for
    SMPL / SMPL-X, or None (no VPoser given)."""
    if target == "anny":
        return get_prior("anny", prior_path)
    return get_prior("vposer", prior_path) if prior_path is not None else None


class LabelConverter:
    """Fits ``target`` to bodies of the ``source`` body model, in batches.

    Args:
        source, target: body-model names (``anny``, ``smpl``, ``smplx``); ``smpl_path`` their
            SMPL / SMPL-X model file or folder.
        prior_path: the target's pose prior (:func:`load_target_prior`).
        device, dtype: where the fit runs (torch objects).
        weights: the fit's energy and schedule.
    Raises:
        MissingModelError: a model file is missing or unsafe (before anything is loaded).
    """

    def __init__(self, source: str, target: str, smpl_path: str | os.PathLike | None = None,
                 prior_path: str | os.PathLike | None = None, device=None, dtype=None,
                 weights: ConvertWeights = ConvertWeights()) -> None:
        import torch

        check_body_model(source, smpl_path)
        check_body_model(target, smpl_path)
        self.source = get_body_model(source, model_path=smpl_path)
        self.target = get_body_model(target, model_path=smpl_path)
        self.prior = load_target_prior(target, prior_path)
        self.device = torch.device("cpu") if device is None else device
        self.dtype = torch.float32 if dtype is None else dtype
        self.weights = weights

    def __call__(self, params: Mapping[str, np.ndarray]) -> list[dict]:
        """Labels (:func:`conversion_labels`) of the B source bodies of batched ``params`` (camera frame)."""
        import torch

        with torch.no_grad():
            out = self.source({k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in params.items()})
        conversion = convert_bodies(out.vertices, self.source.faces, out.joints, self.target, prior=self.prior,
                                    weights=self.weights, device=self.device, dtype=self.dtype)  # fmt: skip
        return conversion_labels(conversion)


@dataclass
class ConvertResult:
    """What :func:`convert_dataset` did: ``converted`` persons in ``shards_done`` rewritten shards,
    ``shards_skipped`` already labelled, ``flagged`` persons above the fit threshold, wall ``seconds``."""

    converted: int
    shards_done: int
    shards_skipped: int
    flagged: int
    seconds: float


def shard_has_label(path: Path, model: str) -> bool:
    """True when every sample of shard ``path`` carries the ``model`` label (an empty shard does)."""
    keys, labelled = set(), set()
    member = label_member(model)
    with tarfile.open(path, "r") as tar:
        for name in tar.getnames():
            key, _, ext = name.partition(".")
            keys.add(key)
            if ext == member:
                labelled.add(key)
    return keys == labelled


def persons_params(members: dict[str, bytes], where: str) -> tuple[dict[str, np.ndarray], bool]:
    """(every person's parameters with a leading person axis (P, ...), stacked) of one sample's
    undecoded members: schema 2's ``params.npz`` as stored, schema 1's one person given the axis."""
    import io
    import json

    if "params.npz" not in members or "json" not in members:
        raise InputError(f"{where} has no params.npz or json; the shard is corrupt: regenerate it")
    with np.load(io.BytesIO(members["params.npz"]), allow_pickle=False) as npz:
        params = {k: npz[k] for k in npz.files}
    stacked = json.loads(members["json"]).get("schema") != 1
    return (params if stacked else {k: v[None] for k, v in params.items()}), stacked


def label_shard(path: Path, converter: LabelConverter, model: str, batch_size: int) -> tuple[int, int]:
    """Rewrite shard ``path`` with the ``model`` label of every person of each sample added (replaced
    if present): a temporary tar beside it, then one rename. The persons of ``batch_size`` samples
    are fitted in one batch; a schema-2 sample stores its persons' labels with a leading person
    axis (:func:`~diffusion_hpc.data.schema.encode_labels`), a schema-1 sample its one label as
    before. Returns (persons, flagged persons)."""
    member = label_member(model)
    count = flagged = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as out:
            pending: list[tuple[str, dict[str, bytes]]] = []

            def flush() -> None:
                nonlocal count, flagged
                if not pending:
                    return
                people = [persons_params(members, f"shard {path}: sample {key}") for key, members in pending]
                names = set(people[0][0])
                for (key, _), (params, _) in zip(pending, people):
                    if set(params) != names:
                        raise InputError(f"shard {path}: sample {key}'s parameters {sorted(params)} differ from "
                                         f"{sorted(names)}; the shard mixes body models: regenerate it")
                batch = {k: np.concatenate([params[k] for params, _ in people]) for k in names}
                labels = iter(converter(batch))
                for (key, members), (params, stacked) in zip(pending, people):
                    mine = [next(labels) for _ in range(len(next(iter(params.values()))))]
                    data = encode_labels(mine) if stacked else encode_label(mine[0])
                    _add_members(out, key, {**{e: b for e, b in members.items() if e != member}, member: data})
                    flagged += sum(int(label["fit"]["flagged"]) for label in mine)
                    count += len(mine)
                pending.clear()

            for key, members in iter_shard_members(path):
                pending.append((key, members))
                if len(pending) >= batch_size:
                    flush()
            flush()
        commit_file(Path(tmp), path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return count, flagged


def convert_dataset(config: ConvertConfig, progress: bool = False) -> ConvertResult:
    """Label every person of every sample of ``config.dataset`` with ``config.to`` (see the module docstring).

    Raises:
        InputError: not a dataset, or ``to`` is the dataset's own body model.
        MissingModelError: the SMPL / SMPL-X model file is missing or unsafe (before any work).
    """
    start = time.perf_counter()
    dataset = Dataset(config.dataset)
    stored = dataset.config
    source = stored.get("body_model", "anny")
    if config.to == source:
        raise InputError(f"dataset {config.dataset} is already a {source!r} dataset (its params are {source}'s); "
                         f"pass --to with another body model")
    smpl_path = config.smpl_path if config.smpl_path is not None else stored.get("smpl_path")
    check_body_model(source, smpl_path)
    check_body_model(config.to, smpl_path)
    device = resolve_device(config.device)
    import torch

    dtype = torch.float64 if config.dtype == "float64" else resolve_dtype(config.dtype, device, diffusion=False)
    shards = dataset.shards
    done = skipped = converted = flagged = 0
    with OutputLock(dataset.root, what="dataset"):
        folder = dataset.root / "shards"
        for stale in folder.glob(".shard-*.tmp"):  # left by a killed convert or run (we hold the lock)
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        converter = None
        for i, shard in enumerate(shards):
            if shard_has_label(shard, config.to):
                skipped += 1
                continue
            if converter is None:
                converter = LabelConverter(source, config.to, smpl_path, config.prior_path, device, dtype)
            with storage_errors(f"dataset {dataset.root}", f"shard {shard.name}",
                                "then rerun the same dhpc convert: labelled shards are kept"):
                n, f = label_shard(shard, converter, config.to, config.batch_size)
            done, converted, flagged = done + 1, converted + n, flagged + f
            if progress:
                print(f"shard {i + 1}/{len(shards)}: {n} persons labelled ({f} flagged)", flush=True)
    return ConvertResult(converted, done, skipped, flagged, time.perf_counter() - start)
