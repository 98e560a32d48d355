"""Training glue: a Lightning module around regressor + body model + losses, and :func:`train`.

Run layout (``out_dir``):

- ``checkpoints/last.ckpt`` (written at every periodic save and at the end) and
  ``checkpoints/step=NNNNNNN.ckpt`` (the latest periodic one): Lightning checkpoints (weights,
  optimiser, loop state). They are read back with ``torch.load(..., weights_only=True)`` only:
  resuming passes ``weights_only=True`` to ``Trainer.fit``; fine-tuning reads the weights itself.
- ``regressor.safetensors`` + ``regressor.json``: the trained regressor alone (exported at the end),
  loadable with :func:`diffusion_hpc.hmr.model.load_regressor`.
- ``logs/version_N/metrics.csv``: the loss terms per logged step (Lightning ``CSVLogger``; one
  version folder per run, so a resumed run starts a new file with step numbers continuing).
- with ``val=SOURCE``: ``val/*`` metrics in the same log, ``val.jsonl`` (one row per validation)
  and ``best/`` (the best regressor so far, with ``best.json``); see :mod:`.validation`.

Multi-GPU / multi-node goes through Lightning's ``strategy`` / ``devices`` / ``num_nodes`` flags
(e.g. ``strategy="ddp"``); each rank reads its own shards (see :class:`.data.SyntheticShards`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch

from diffusion_hpc.body import get_body_model
from diffusion_hpc.errors import ConfigError, InputError
from diffusion_hpc.hmr.data import AugmentConfig, MixedStream, RealDataset, SyntheticShards
from diffusion_hpc.hmr.losses import LossWeights, hmr_losses
from diffusion_hpc.hmr.model import EXPORT_WEIGHTS, HMRRegressor, export_regressor, load_state_strict, regress
from diffusion_hpc.hmr.validation import Validation, predict_share

log = logging.getLogger(__name__)


class HMRModule(pl.LightningModule):
    """Lightning wrapper: regressor (trained), body model (frozen, not saved), losses, Adam.

    Args mirror :class:`~diffusion_hpc.hmr.model.HMRRegressor`; ``weights`` overrides
    :class:`~diffusion_hpc.hmr.losses.LossWeights` fields; ``smpl_path`` is the SMPL model file
    when ``body_model`` is ``"smpl"``.
    """

    def __init__(
        self,
        body_model: str = "anny",
        backbone: str = "resnet50",
        pretrained_path: str | None = None,
        num_iterations: int = 3,
        lr: float = 1e-4,
        weights: Mapping[str, float] | None = None,
        smpl_path: str | None = None,
        backbone_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.regressor = HMRRegressor(
            body_model, backbone=backbone, pretrained_path=pretrained_path, num_iterations=num_iterations,
            backbone_config=backbone_config,
        )
        self.weights = LossWeights(**dict(weights or {}))
        self.lr = lr
        object.__setattr__(self, "_body", None)  # shared frozen body model: not a submodule, not saved

    @property
    def body(self):
        if self._body is None:

            object.__setattr__(self, "_body", get_body_model(self.hparams.body_model, model_path=self.hparams.smpl_path))
        return self._body

    def compute_losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms for a collated batch (see :mod:`.data` for its keys)."""
        import roma

        pred = regress(self.regressor, self.body, batch["image"])
        gt_rot = roma.rotvec_to_rotmat(torch.cat([batch["global_orient"][:, None], batch["body_pose"]], dim=1))
        pred_terms = {
            "keypoints2d": pred["keypoints2d"],
            "joints3d": pred["joints"]["h36m17"],
            "rotmat": pred["rotmat"],
            "shape": pred["shape"],
            "cam": pred["cam"],
        }
        gt_terms = {
            "keypoints2d": batch["keypoints2d"],
            "joints3d": batch["joints3d"],
            "rotmat": gt_rot,
            "shape": batch["shape"],
            "has_2d": batch["has_2d"],
            "has_3d": batch["has_3d"],
            "has_params": batch["has_params"],
        }
        return hmr_losses(pred_terms, gt_terms, self.weights)

    def training_step(self, batch, batch_idx):
        losses = self.compute_losses(batch)
        size = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, on_step=True, on_epoch=False, batch_size=size)
        self.log("train/real_fraction", batch["is_real"].mean(), on_step=True, on_epoch=False, batch_size=size)
        return losses["total"]

    def validation_step(self, batch, batch_idx):
        """Predictions for a validation batch ``(index, crops)``; :class:`.validation.Validation` scores them."""

        return predict_share(self.regressor, self.body, batch)

    def configure_optimizers(self):
        return torch.optim.Adam(self.regressor.parameters(), lr=self.lr)


# ----------------------------------------------------------------------------------------------
# Checkpoints.


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Regressor weights from a Lightning ``.ckpt`` (``regressor.*`` keys), a ``.safetensors`` file,
    a plain ``torch.save``-d state dict, or a run folder (its ``regressor.safetensors``).

    Uses ``torch.load(..., weights_only=True)``: no code in a checkpoint is executed.
    """

    p = Path(path)
    if p.is_dir():
        p = p / EXPORT_WEIGHTS
    if not p.is_file():
        raise InputError(f"checkpoint {p} not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of many types
        raise InputError(f"cannot read checkpoint {p} with weights_only=True: {exc}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        state = obj["state_dict"]
        prefix = "regressor."
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        return dict(state)
    if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise InputError(f"checkpoint {p} holds no state dict")


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """``out_dir/checkpoints/last.ckpt`` if present."""
    path = Path(out_dir) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def checkpoint_step(path: str | Path) -> int:
    """Global step stored in a Lightning checkpoint (``weights_only=True``)."""
    return int(torch.load(path, map_location="cpu", weights_only=True).get("global_step", 0))


class FinalSave(pl.Callback):
    """At the end: ``last.ckpt`` (all ranks call, rank 0 writes) and the safetensors export.

    A module-level class, so that spawn-based strategies (``ddp_spawn``) can pickle it.
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)

    def on_train_end(self, trainer, module):
        trainer.save_checkpoint(str(self.out / "checkpoints" / "last.ckpt"), weights_only=False)
        if trainer.is_global_zero:
            export_regressor(module.regressor, self.out)


class _DropAdverts(logging.Filter):
    """Drops Lightning's start-up advertisement ("💡 Tip: ... litlogger ..."); keeps its other lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def _quiet_lightning_adverts() -> None:
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in rank_zero.filters):
        rank_zero.addFilter(_DropAdverts())


def _callbacks(out: Path, checkpoint_every: int):
    from pytorch_lightning.callbacks import ModelCheckpoint

    periodic = ModelCheckpoint(
        dirpath=str(out / "checkpoints"),
        filename="{step:07d}",
        every_n_train_steps=checkpoint_every,
        save_top_k=1,
        monitor="step",
        mode="max",
        save_last=True,
        # last.ckpt is also written by FinalSave and at validations: overwrite it, never add last-v1.ckpt
        enable_version_counter=False,
    )
    return [periodic, FinalSave(out)]


# ----------------------------------------------------------------------------------------------
# Entry point.


def train(
    synthetic_dirs: Sequence[str | Path],
    real_sources: Sequence[Any] = (),
    out_dir: str | Path = "runs/hmr",
    max_steps: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-4,
    real_ratio: float = 0.5,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str = "cpu",
    *,
    body_model: str = "anny",
    smpl_path: str | None = None,
    backbone: str = "resnet50",
    pretrained_path: str | Path | None = None,
    backbone_config: Mapping[str, Any] | None = None,
    num_iterations: int = 3,
    crop_size: int = 224,
    weights: Mapping[str, float] | None = None,
    augment: bool = True,
    num_workers: int = 0,
    checkpoint_every: int = 500,
    log_every: int = 10,
    seed: int = 0,
    max_minutes: float | None = None,
    progress: bool = False,
    val: str | Path | None = None,
    val_every: int | None = None,
    val_limit: int | None = None,
) -> HMRModule:
    """Fine-tune an HMR regressor on synthetic shards mixed with real benchmarks (DESIGN §2).

    Args:
        synthetic_dirs: dataset folders written by ``dhpc generate``.
        real_sources: benchmark sources (see :func:`.data.load_real_source`), mixed in per sample
            with probability ``real_ratio``.
        out_dir: run folder (checkpoints, logs, exported regressor).
        max_steps: total optimiser steps (a resumed run continues up to this count).
        checkpoint: initial weights (Lightning ckpt, safetensors or run folder); weights only,
            strict about keys and shapes (:class:`~diffusion_hpc.errors.InputError` otherwise).
        resume: continue ``out_dir/checkpoints/last.ckpt`` (weights, optimiser, global step).
        devices, num_nodes, strategy, accelerator: Lightning ``Trainer`` flags.
        backbone, pretrained_path, num_iterations: see :class:`~diffusion_hpc.hmr.model.HMRRegressor`.
        backbone_config: a ``transformers`` config dict replacing the named architecture.
        crop_size: crop side in pixels (224 as in SPIN; smaller for tests).
        weights: overrides of :class:`~diffusion_hpc.hmr.losses.LossWeights` fields.
        augment: rotation / scale / colour / flip augmentation (:class:`.data.AugmentConfig`).
        num_workers: DataLoader worker processes per rank.
        checkpoint_every: steps between periodic checkpoints (``last.ckpt`` is also written at the end).
        max_minutes: wall-clock bound of the run (Lightning ``max_time``), besides ``max_steps``; like
            ``max_steps`` it is a total: Lightning restores the elapsed time on resume.
        val: held-out source validated during training, in any form ``dhpc evaluate --data`` takes
            (SkiPose test split, SMART JSON, SPIN npz, a dataset folder); scored at ``crop_size``
            with ``dhpc evaluate``'s functions (:mod:`.validation`). Loaded before training starts.
        val_every: validate every this many steps (default ``checkpoint_every``) and at the end.
        val_limit: validate on the first this many samples of ``val`` only.
    Returns:
        The trained :class:`HMRModule`.
    """
    from pytorch_lightning.loggers import CSVLogger


    out = Path(out_dir)
    if resume and checkpoint is not None:
        raise ConfigError("give either --resume (continue this run) or --checkpoint (start from weights), not both")
    ckpt_path = None
    start_step = 0
    if resume:
        ckpt_path = last_checkpoint(out)
        if ckpt_path is None:
            raise InputError(f"nothing to resume: {out / 'checkpoints' / 'last.ckpt'} does not exist")
        start_step = checkpoint_step(ckpt_path)
        if start_step >= max_steps:
            log.warning("run %s is already at step %d >= max_steps %d; nothing to do", out, start_step, max_steps)
    validation = None
    if val is not None:

        validation = Validation.from_source(
            str(val), out, every=max(1, checkpoint_every) if val_every is None else val_every, crop_size=crop_size,
            body_model=body_model, limit=val_limit, batch_size=batch_size, start_step=start_step,
        )  # fmt: skip
    elif val_every is not None or val_limit is not None:
        raise ConfigError("--val-every / --val-limit need --val SOURCE, the held-out data to validate on")
    pl.seed_everything(seed + start_step, workers=True, verbose=False)

    aug = AugmentConfig() if augment else None
    synthetic = (
        SyntheticShards(synthetic_dirs, size=crop_size, augment=aug, body_model=body_model, seed=seed) if synthetic_dirs else None
    )
    real = None
    if real_sources:
        parts = [RealDataset(s, size=crop_size, augment=aug, body_model=body_model, seed=seed) for s in real_sources]
        real = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    stream = MixedStream(synthetic, real, real_ratio=real_ratio, seed=seed)
    stream.set_start(start_step)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=batch_size, num_workers=num_workers, persistent_workers=False, pin_memory=False
    )

    module = HMRModule(
        body_model=body_model, backbone=backbone, pretrained_path=None if pretrained_path is None else str(pretrained_path),
        num_iterations=num_iterations, lr=lr, weights=weights, smpl_path=smpl_path,
        backbone_config=None if backbone_config is None else dict(backbone_config),
    )  # fmt: skip
    if checkpoint is not None:
        load_state_strict(module.regressor, load_weights(checkpoint), source=str(checkpoint))

    out.mkdir(parents=True, exist_ok=True)
    _quiet_lightning_adverts()
    trainer = pl.Trainer(
        default_root_dir=str(out),
        max_steps=max_steps,
        max_epochs=-1,
        max_time=None if max_minutes is None else {"minutes": float(max_minutes)},
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        logger=CSVLogger(str(out), name="logs"),
        callbacks=_callbacks(out, max(1, checkpoint_every)) + ([validation] if validation is not None else []),
        log_every_n_steps=max(1, log_every),
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **(validation.trainer_flags() if validation is not None else {"limit_val_batches": 0}),
        inference_mode=False,  # validation under no_grad: no inference tensors reach the shared body model
        use_distributed_sampler=False,  # the stream shards itself by rank and worker; validation by RankSlice
        deterministic=False,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=None if validation is None else validation.dataloader(),
                ckpt_path=None if ckpt_path is None else str(ckpt_path), weights_only=True)  # fmt: skip
    return module
