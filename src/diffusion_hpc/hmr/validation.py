"""Held-out validation during HMR training (``dhpc train --val SOURCE --val-every N``).

Every ``N`` optimiser steps, and once more when training stops (``max_steps``, ``max_minutes``),
the regressor is scored on ``SOURCE`` exactly as ``dhpc evaluate`` scores it, with the same
functions of :mod:`diffusion_hpc.hmr.evaluate`: :func:`~diffusion_hpc.hmr.evaluate.load_targets`
(once, before training starts, so a bad source fails at once),
:func:`~diffusion_hpc.hmr.evaluate.predict_batch` (inside Lightning's validation loop) and
:func:`~diffusion_hpc.hmr.evaluate.score`. Crops are cut at the training crop size, so the
numbers of step ``N`` equal ``dhpc evaluate --data SOURCE --crop-size CROP`` on the regressor of
step ``N``. (This module is the one place where ``hmr`` imports from ``eval``: it is training glue,
imported by :func:`diffusion_hpc.hmr.train.train` only when validation is asked for.)

Where the numbers go, in the run folder:

- Lightning's logger (``logs/version_K/metrics.csv``): ``val/mpjpe_mm`` and ``val/pa_mpjpe_mm``
  (sources with 3D), ``val/pck``, and ``val/step``, the optimiser step validated. Lightning's own
  ``step`` column is its 0-based batch index: ``val/step - 1``, the row of the training losses
  of the batch that produced the validated weights.
- ``val.jsonl``: one JSON object per validation, ``{"step": N, "val_digest": ..., **score(...)}``
  (``val_digest`` fingerprints the validation labels), rewritten atomically after each validation.
- ``best/``: the exported regressor (``regressor.safetensors`` + ``regressor.json``; ``dhpc
  evaluate --checkpoint RUN/best`` reads it) with the lowest ``pa_mpjpe_mm``, or for sources
  without 3D the highest ``pck``; ``best/best.json`` records its step, metric and row. The same
  record sits in the weights file's header (:func:`~diffusion_hpc.hmr.model.export_metadata`),
  written atomically with the weights, and is the reference should ``best.json`` be stale.
  A later validation replaces ``best/`` only when strictly better.

Order at a validation: ``checkpoints/last.ckpt`` is brought to step ``N`` first (unless a
periodic checkpoint was just saved at ``N``), then the row is written, then ``best/``. A run
killed at any moment therefore resumes (``--resume`` reads ``last.ckpt``, step ``S``) with every
recorded row at a step <= ``S``, and its history continues (a validation the kill interrupted is
not redone: that step has no row). Rows after ``S`` (possible only if
``last.ckpt`` was replaced by an older file) are dropped at the start with a warning, as is a
``best/`` from such a step; a step never gets a second row. A run started without ``--resume``
starts a new history. Resuming with validation data other than the history's (another source,
``--val-limit`` or crop size: another ``val_digest``) is refused before training starts.

Distributed (DDP): Lightning runs the validation loop on every rank. Each rank predicts its share
of the samples (:class:`RankSlice`: rank, rank + world, ..., padded by wrap-around to equal
shares, like ``DistributedSampler`` without shuffling), the shares are all-gathered, the padding
duplicates dropped, and every rank scores the complete set in sample order: the metrics are those
of a single-process evaluation (to float32 rounding, as the ranks' batches differ from a single
process's), identical on all ranks (so callbacks may monitor them). Files are written by rank 0.

Memory: the validation crops are held in memory as float32, as ``dhpc evaluate`` holds them
(N x 3 x S x S x 4 bytes per rank: SkiPose's 1716 test crops at 224 px take about 1 GB); use
``--val-limit`` for a smaller, quicker validation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion_hpc.errors import ConfigError, InputError
from diffusion_hpc.hmr.data import consumer_id
from diffusion_hpc.hmr.evaluate import PREDICTION_KEYS, Targets, concat_predictions, load_targets, predict_batch, score
from diffusion_hpc.hmr.model import EXPORT_WEIGHTS, export_metadata, export_regressor
from diffusion_hpc.runtime.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

try:  # Lightning is optional (the `train` extra); train() checks for it before using this module
    from pytorch_lightning.callbacks import Callback
except ImportError:  # pragma: no cover
    Callback = object

VAL_FILE = "val.jsonl"
BEST_DIR = "best"
BEST_RECORD = "best.json"
#: header key of the validation record in ``best/regressor.safetensors``
BEST_METADATA_KEY = "validation"
#: score() entries logged through Lightning, as ``val/<name>``, when the source has them
LOGGED = ("mpjpe_mm", "pa_mpjpe_mm", "pck")


# ----------------------------------------------------------------------------------------------
# Pure pieces.


def selection_metric(has_3d: bool) -> tuple[str, str]:
    """(score key, "min" | "max") that picks the best regressor: PA-MPJPE with 3D labels, else PCK."""
    return ("pa_mpjpe_mm", "min") if has_3d else ("pck", "max")


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` strictly improves on ``best`` (``None``: nothing yet); NaN never does."""
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value < best if mode == "min" else value > best


def targets_digest(targets: Targets) -> str:
    """Fingerprint of the validation labels (kind, count, keypoints, 3D joints), rounded so that
    it does not depend on the last bits of the crop arithmetic."""
    h = hashlib.sha1(f"{targets.kind}:{len(targets.images)}:{targets.crop_size}".encode())
    h.update((np.round(targets.keypoints2d, 3) + 0.0).tobytes())  # + 0.0: -0.0 -> 0.0
    if targets.joints3d is not None:
        h.update((np.round(targets.joints3d, 6) + 0.0).tobytes())
    return h.hexdigest()[:16]


class RankSlice(torch.utils.data.Sampler):
    """Sample indices of this distributed rank: ``rank, rank + world, ...`` over ``0..n-1``, padded
    by wrapping around so every rank gets ``ceil(n / world)`` (``DistributedSampler``'s order
    without shuffling). Rank and world size are read when iterated, once the process group exists.
    """

    def __init__(self, n: int) -> None:
        self.n = int(n)

    def __len__(self) -> int:
        return -(-self.n // consumer_id()[1])

    def __iter__(self):
        rank, world = consumer_id()
        return iter([(rank + k * world) % self.n for k in range(-(-self.n // world))])


def merge_shares(gathered: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """All ranks' predictions (any order, with their sample ``index``) -> the ``n`` samples in
    order, padding duplicates dropped."""
    unique, first = np.unique(gathered["index"], return_index=True)
    if len(unique) != n or (n and (unique[0] != 0 or unique[-1] != n - 1)):
        raise RuntimeError(f"validation gathered predictions for {len(unique)} distinct samples, expected {n}")
    return {k: v[first] for k, v in gathered.items() if k != "index"}


def predict_share(regressor, body_model, batch, h36m_regressor=None) -> dict[str, np.ndarray]:
    """Validation step: :func:`~diffusion_hpc.hmr.evaluate.predict_batch` on a ``(index, crops)`` batch
    (``h36m_regressor``: (17, V) tensor of the scored 3D joints, as ``dhpc evaluate --h36m-regressor``)."""
    index, images = batch
    return {"index": index.cpu().numpy()} | predict_batch(regressor, body_model, images, h36m_regressor)


# ----------------------------------------------------------------------------------------------
# Files.


def read_rows(out: str | Path) -> list[dict[str, Any]]:
    """Rows of ``out/val.jsonl`` ([] if absent)."""
    path = Path(out) / VAL_FILE
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            row = exc
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise InputError(
                f"{path} line {i} is not a validation row (a JSON object with an integer 'step'); "
                f"repair it, or move {path} and {Path(out) / BEST_DIR} aside to start a new history"
            )
        rows.append(row)
    return rows


def write_rows(out: str | Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``out/val.jsonl`` atomically."""
    atomic_write_bytes(Path(out) / VAL_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def read_best(out: str | Path) -> dict[str, Any] | None:
    """The record of ``out/best`` (from its weights' header), or ``None`` without a best export."""
    path = Path(out) / BEST_DIR / EXPORT_WEIGHTS
    if not path.is_file():
        return None
    text = export_metadata(path).get(BEST_METADATA_KEY)
    return None if text is None else json.loads(text)


def export_best(regressor, out: str | Path, record: dict[str, Any]) -> None:
    """Export ``regressor`` to ``out/best`` with ``record`` in its header and in ``best.json``."""
    best = Path(out) / BEST_DIR
    export_regressor(regressor, best, metadata={BEST_METADATA_KEY: json.dumps(record, sort_keys=True)})
    _write_best_record(best, record)


def _write_best_record(best: Path, record: dict[str, Any]) -> None:
    """``best/best.json``, the readable copy of the record in the weights' header."""
    atomic_write_bytes(best / BEST_RECORD, json.dumps(record, indent=1, sort_keys=True).encode())


def rewind(out: str | Path, start_step: int) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Make the history of ``out`` that of a run continuing from ``start_step``.

    Drops rows after ``start_step`` and a ``best/`` exported after it (a fresh run, step 0, drops
    everything), refreshes a stale ``best.json``; returns (rows kept, best record or ``None``).
    """
    out = Path(out)
    rows = read_rows(out)
    kept = [r for r in rows if r["step"] <= start_step]
    if len(kept) != len(rows):
        if start_step > 0:
            log.warning("%s: dropping %d validation rows after step %d, the step this run resumes from",
                        out / VAL_FILE, len(rows) - len(kept), start_step)  # fmt: skip
        else:
            log.warning("%s: a run started without --resume starts a new validation history (%d old rows dropped)",
                        out / VAL_FILE, len(rows))  # fmt: skip
        write_rows(out, kept)
    best = read_best(out)
    if (out / BEST_DIR).exists() and (best is None or best["step"] > start_step):
        log.warning("%s is not from this run's history up to step %d; removed", out / BEST_DIR, start_step)
        shutil.rmtree(out / BEST_DIR)
        best = None
    elif best is not None and _read_json(out / BEST_DIR / BEST_RECORD) != best:  # killed between the two writes
        _write_best_record(out / BEST_DIR, best)
    return kept, best


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------
# The Lightning callback.


class Validation(Callback):
    """Validation on a held-out source: the loader for Lightning's validation loop, the scoring,
    the logging and the files (see the module docstring). Build it with :meth:`from_source`."""

    def __init__(self, out: str | Path, targets: Targets, every: int, batch_size: int = 32, start_step: int = 0) -> None:
        super().__init__()
        self.out, self.targets, self.every, self.batch_size = Path(out), targets, int(every), int(batch_size)
        self.start_step = int(start_step)
        self.metric, self.mode = selection_metric(targets.joints3d is not None)
        self.digest = targets_digest(targets)
        self.rows: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._parts: list[dict[str, np.ndarray]] = []
        self._result: dict[str, Any] | None = None
        self._saved_step = -1

    @classmethod
    def from_source(cls, source: str, out: str | Path, *, every: int, crop_size: int, body_model: str = "anny",
                    limit: int | None = None, batch_size: int = 32, start_step: int = 0) -> "Validation":
        """Load ``source`` and check it against the run's history; errors come before any training."""
        if int(every) < 1:
            raise ConfigError(f"--val-every must be a positive number of steps, got {every}")
        if limit is not None and int(limit) < 1:
            raise ConfigError(f"--val-limit must be a positive number of samples, got {limit}")
        targets = load_targets(str(source), crop_size=crop_size, limit=limit, body_model=body_model, option="--val")
        validation = cls(out, targets, every, batch_size=batch_size, start_step=start_step)
        earlier = [r for r in read_rows(out) if r["step"] <= start_step] if start_step > 0 else []
        if earlier and earlier[-1].get("val_digest") != validation.digest:
            last = earlier[-1]
            raise ConfigError(
                f"{Path(out) / VAL_FILE} was recorded on other validation data ({last.get('source')!r}, "
                f"{last.get('samples')} samples) than --val {source!r} ({len(targets.images)} samples at crop "
                f"{crop_size}); resume with the same --val, --val-limit and --crop-size, or move {VAL_FILE} and "
                f"{BEST_DIR}/ out of the run folder to start a new history"
            )
        return validation

    def trainer_flags(self) -> dict[str, Any]:
        """``Trainer`` arguments: validate every ``every`` optimiser steps, counted over the whole run."""
        return {"val_check_interval": self.every, "check_val_every_n_epoch": None}

    def dataloader(self) -> torch.utils.data.DataLoader:
        """``(index, crop)`` batches of this rank's share of the samples."""
        n = len(self.targets.images)
        data = torch.utils.data.TensorDataset(torch.arange(n), torch.from_numpy(self.targets.images))
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size, sampler=RankSlice(n), num_workers=0)

    # -- hooks ----------------------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.rows, self.best = rewind(self.out, self.start_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True  # Lightning validates when a run is stopped, not at max_steps

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._saved_step = trainer.global_step

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._parts = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._parts.append(outputs)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        shares = concat_predictions(self._parts, ("index", *PREDICTION_KEYS))
        self._parts = []
        if trainer.sanity_checking:
            return
        if trainer.world_size > 1:
            shares = {k: pl_module.all_gather(torch.from_numpy(v).to(pl_module.device)).flatten(0, 1).cpu().numpy()
                      for k, v in shares.items()}  # fmt: skip
        result = score(merge_shares(shares, len(self.targets.images)), self.targets)
        values = {f"val/{k}": float(result[k]) for k in LOGGED if k in result} | {"val/step": float(trainer.global_step)}
        main = f"val/{self.metric}"
        # identical on every rank already; "max" over ranks keeps them exact (and Lightning informed)
        sync = {"on_step": False, "on_epoch": True, "sync_dist": True, "reduce_fx": "max"}
        pl_module.log(main, values.pop(main), prog_bar=True, **sync)
        pl_module.log_dict(values, **sync)
        self._result = result

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._result is None or trainer.state.fn != "fit":
            return
        step, result, self._result = trainer.global_step, self._result, None
        if self._saved_step != step:  # checkpoint first: every recorded row stays resumable
            trainer.save_checkpoint(str(self.out / "checkpoints" / "last.ckpt"), weights_only=False)
        if trainer.is_global_zero:
            self.record(pl_module.regressor, step, result)

    # -- rank 0 -----------------------------------------------------------------------------------

    def record(self, regressor, step: int, result: dict[str, Any]) -> None:
        """Write the row of ``step`` (replacing rows at or after it) and ``best/`` if it improves."""
        row = {"step": int(step), "val_digest": self.digest, **result}
        self.rows = [r for r in self.rows if r["step"] < step] + [row]
        write_rows(self.out, self.rows)
        value = float(result[self.metric])
        if is_better(value, None if self.best is None else float(self.best["value"]), self.mode):
            self.best = {"metric": self.metric, "mode": self.mode, "value": value, **row}
            export_best(regressor, self.out, self.best)
            log.info("step %d: best %s so far (%.3f) -> %s", step, self.metric, value, self.out / BEST_DIR)
