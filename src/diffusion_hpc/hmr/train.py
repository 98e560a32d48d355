"""Training glue: a Lightning module around regressor + body model + losses, and :func:`train`.

Run layout (``config.out``):

- ``train.yaml``: the :class:`~diffusion_hpc.config.TrainConfig` that started the run; ``resume``
  checks the new config against it (only budget, hardware, logging and validation may change).
- ``checkpoints/last.ckpt`` (written at every periodic save and at the end) and
  ``checkpoints/step=NNNNNNN.ckpt`` (the latest periodic one): Lightning checkpoints (weights,
  optimiser, loop state). They are read back with ``torch.load(..., weights_only=True)`` only:
  resuming passes ``weights_only=True`` to ``Trainer.fit``; fine-tuning reads the weights itself.
- ``regressor.safetensors`` + ``regressor.json``: the trained regressor alone (exported at the end;
  ``regressor.json`` names its architecture: ours, ``spin`` or ``hmr2`` for a run started from
  ``--init spin:`` / ``hmr2:``), loadable with :func:`diffusion_hpc.hmr.init.load_regressor_spec`
  (``dhpc:RUN``; our architecture also with :func:`diffusion_hpc.hmr.model.load_regressor`).
- ``logs/version_N/metrics.csv``: the loss terms per logged step (Lightning ``CSVLogger``; one
  version folder per run, so a resumed run starts a new file with step numbers continuing).
- with ``val=SOURCE``: ``val/*`` metrics in the same log, ``val.jsonl`` (one row per validation)
  and ``best/`` (the best regressor so far, with ``best.json``); see :mod:`.validation`.

Multi-GPU / multi-node goes through Lightning's ``strategy`` / ``devices`` / ``num_nodes`` options
(e.g. ``TrainConfig(strategy="ddp", ...)``); each rank reads its own shards (see :class:`.data.SyntheticShards`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl
import torch

from diffusion_hpc.body import get_body_model
from diffusion_hpc.config.train import TRAIN_CONFIG_FILE, TrainConfig
from diffusion_hpc.errors import ConfigError, InputError
from diffusion_hpc.hmr.data import AugmentConfig, MixedStream, RealDataset, SyntheticShards, count_persons
from diffusion_hpc.hmr.evaluate import load_h36m_regressor
from diffusion_hpc.hmr.init import load_exported, load_network, parse_spec
from diffusion_hpc.hmr.losses import hmr_losses, loss_weights
from diffusion_hpc.hmr.model import (
    EXPORT_CONFIG,
    EXPORT_WEIGHTS,
    HMRRegressor,
    body_on_device,
    export_regressor,
    load_state_strict,
    regress,
)
from diffusion_hpc.hmr.validation import Validation, predict_share
from diffusion_hpc.runtime.atomic import atomic_write_bytes

log = logging.getLogger(__name__)


class HMRModule(pl.LightningModule):
    """Lightning wrapper: regressor (trained), body model (frozen, not saved), losses, Adam.

    Args mirror :class:`~diffusion_hpc.hmr.model.HMRRegressor`, or ``network`` gives the regressor
    itself (a SPIN / HMR 2.0 / exported network, see :func:`build_network`); ``weights`` overrides
    the weights of loss set ``losses`` (:func:`~diffusion_hpc.hmr.losses.loss_weights`);
    ``smpl_path`` is the SMPL model file when ``body_model`` is ``"smpl"``.

    The body model runs on the training device (:func:`~diffusion_hpc.hmr.model.body_on_device`),
    moved there once: SMPL as a private copy, Anny as a body sharing the process's one copy of its
    model on that device; the process-wide instance stays where it is. A step copies no body tensor
    between the CPU and the device.
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
        losses: str = "dhpc",
        network: torch.nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        if network is not None:
            self.regressor = network
        else:
            self.regressor = HMRRegressor(
                body_model, backbone=backbone, pretrained_path=pretrained_path, num_iterations=num_iterations,
                backbone_config=backbone_config,
            )  # fmt: skip
        self.losses = losses
        self.weights = loss_weights(losses, weights)
        self.lr = lr
        #: (17, V) H36M joint regressor for validation's 3D joints (set by :func:`train`), or None
        self.h36m_regressor: torch.Tensor | None = None
        object.__setattr__(self, "_body", None)  # shared frozen body model: not a submodule, not saved

    @property
    def body(self):
        """The frozen body model, on the training device when it can move (SMPL)."""
        if self._body is None:
            object.__setattr__(self, "_body", get_body_model(self.hparams.body_model, model_path=self.hparams.smpl_path))
        object.__setattr__(self, "_body", body_on_device(self._body, self.device))
        return self._body

    def compute_losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms of the module's loss set for a collated batch (see :mod:`.data` for its keys)."""
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
            "is_real": batch["is_real"],
        }
        return hmr_losses(pred_terms, gt_terms, self.weights, losses=self.losses)

    def training_step(self, batch, batch_idx):
        losses = self.compute_losses(batch)
        size = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, on_step=True, on_epoch=False, batch_size=size)
        self.log("train/real_fraction", batch["is_real"].mean(), on_step=True, on_epoch=False, batch_size=size)
        return losses["total"]

    def validation_step(self, batch, batch_idx):
        """Predictions for a validation batch ``(index, crops)``; :class:`.validation.Validation` scores them."""

        return predict_share(self.regressor, self.body, batch, self.h36m_regressor)

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


def build_network(config: TrainConfig) -> torch.nn.Module:
    """The network a run starts from, with its initial weights (``config.init``, or the older
    ``checkpoint`` / ``pretrained`` fields, which are ``dhpc:`` / ``imagenet:``).

    - none: our :class:`~diffusion_hpc.hmr.model.HMRRegressor` with a randomly initialised backbone;
    - ``imagenet:DIR``: ours with the backbone weights of a transformers ``save_pretrained`` folder;
    - ``spin:FILE`` / ``hmr2:FILE``: SPIN's / HMR 2.0's own network and weights
      (:mod:`.spin`, :mod:`.hmr2`), trained as they are (SMPL, their crop camera and input size);
    - ``dhpc:RUN``: an exported run (folder, ``RUN/best``, ``regressor.safetensors`` with its
      ``regressor.json``), of whatever architecture it has; or a Lightning ``.ckpt`` / state dict
      of ours, loaded into the architecture this config describes.

    Raises:
        ConfigError: the network's body model or crop size is not the config's.
        InputError / MissingModelError: unreadable or mismatched files (named, with the keys).
    """
    c = config
    init = c.init
    if init is None and c.checkpoint is not None:
        init = f"dhpc:{c.checkpoint}"
    kind, path = ("imagenet", c.pretrained) if init is None else parse_spec(init, allow=("spin", "hmr2", "dhpc", "imagenet"), option="--init")

    def ours(pretrained=None) -> HMRRegressor:
        return HMRRegressor(c.body_model, backbone=c.backbone, pretrained_path=pretrained, num_iterations=c.num_iterations,
                            backbone_config=c.backbone_config)  # fmt: skip

    if kind == "imagenet":
        return ours(None if path is None else str(path))
    if kind in ("spin", "hmr2"):
        network = load_network(kind, path)
    elif (path / EXPORT_CONFIG if path.is_dir() else path.parent / EXPORT_CONFIG).is_file() and path.suffix != ".ckpt":
        network = load_exported(path)
    else:
        network = ours()
        load_state_strict(network, load_weights(path), source=str(path))
    if network.spec.name != c.body_model:
        raise ConfigError(f"--init {init}: the network predicts {network.spec.name}, the config trains {c.body_model}; "
                          f"pass --body-model {network.spec.name}")
    crop = getattr(network, "crop_size", None)
    if network.architecture == "hmr2" and crop != c.crop_size:
        raise ConfigError(f"--init {init}: HMR 2.0 takes {crop} px crops; pass --crop-size {crop} (or leave it out)")
    return network.train()


def check_resume(config: TrainConfig) -> None:
    """Refuse to resume ``config.out`` with training fields other than its ``train.yaml``'s.

    Only the fields of :data:`~diffusion_hpc.config.train.RESUMABLE` (budget, hardware, logging,
    validation, the run folder's place) may change. A run from before ``train.yaml`` existed gets
    one, from this config, with a warning.
    """
    path = Path(config.out) / TRAIN_CONFIG_FILE
    if not path.is_file():
        log.warning("%s does not exist (a run from an older version); recording this config there", path)
        atomic_write_bytes(path, config.to_yaml().encode())
        return
    stored = TrainConfig.from_yaml(path)
    diff = config.resume_conflicts(stored)
    if diff:
        raise ConfigError(f"--resume: the run in {config.out} was started with another training config ({'; '.join(diff)}); "
                          f"resume with the options in {path} (only the budget, hardware, logging and validation may "
                          "change), or start a new run with another --out")


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


def train(config: TrainConfig, progress: bool = True) -> HMRModule:
    """Fine-tune an HMR regressor on synthetic shards mixed with real benchmarks (DESIGN §2).

    ``dhpc train`` builds the same :class:`~diffusion_hpc.config.TrainConfig` from its flags; its
    fields document every option. In short:

    - data: ``synthetic`` (dataset folders) and ``real`` (benchmark sources, see
      :func:`.data.load_real_source`), mixed per sample with probability ``real_ratio``;
    - ``out``: the run folder (layout in this module's docstring). A fresh run writes
      ``out/train.yaml``; ``resume=True`` continues ``out/checkpoints/last.ckpt`` (weights,
      optimiser, global step) and refuses a config whose training fields differ from
      ``train.yaml`` (only :data:`~diffusion_hpc.config.train.RESUMABLE` fields may change:
      budget, hardware, logging, validation);
    - ``init``: the starting network (:func:`build_network`): ``spin:FILE``, ``hmr2:FILE``,
      ``dhpc:RUN`` or ``imagenet:DIR``; by default our regressor with a random backbone.
      ``checkpoint`` is ``dhpc:``, ``pretrained`` is ``imagenet:``. Weights only, strict about
      keys and shapes (:class:`~diffusion_hpc.errors.InputError` otherwise); on ``resume`` the
      architecture comes from it and the weights from ``last.ckpt``;
    - ``losses``: ``dhpc`` or ``paper`` (:mod:`.losses`);
    - ``max_steps`` / ``max_minutes``: the budget, totals over resumes (Lightning restores the
      elapsed time);
    - ``val``: a held-out source validated every ``val_every`` steps (default ``checkpoint_every``)
      and at the end, at ``crop_size``, with ``dhpc evaluate``'s functions (:mod:`.validation`);
      loaded before training starts; ``h36m_regressor`` gives SMPL runs the standard H36M joints.

    Example::

        from diffusion_hpc.config import TrainConfig
        from diffusion_hpc.hmr.train import train

        train(TrainConfig(synthetic=["runs/d1"], real=["skipose:SkiPose"], out="runs/hmr", max_steps=2000))

    Args:
        config: the run's config.
        progress: Lightning's progress bar.
    Returns:
        The trained :class:`HMRModule`.
    Raises:
        ConfigError: a resume whose config differs from the run's ``train.yaml``, or other
            validation data than the run's history.
        InputError: nothing to resume, or unreadable data / checkpoints.
    """
    from pytorch_lightning.loggers import CSVLogger


    c = config
    out = Path(c.out)
    ckpt_path = None
    start_step = 0
    if c.resume:
        ckpt_path = last_checkpoint(out)
        if ckpt_path is None:
            raise InputError(f"nothing to resume: {out / 'checkpoints' / 'last.ckpt'} does not exist")
        check_resume(c)
        start_step = checkpoint_step(ckpt_path)
        if start_step >= c.max_steps:
            log.warning("run %s is already at step %d >= max_steps %d; nothing to do", out, start_step, c.max_steps)
    network = build_network(c)  # before any data: a wrong --init fails fast
    validation = None
    if c.val is not None:
        validation = Validation.from_source(
            c.val, out, every=c.checkpoint_every if c.val_every is None else c.val_every, crop_size=c.crop_size,
            body_model=c.body_model, limit=c.val_limit, batch_size=c.batch_size, start_step=start_step,
        )  # fmt: skip
    pl.seed_everything(c.seed + start_step, workers=True, verbose=False)

    aug = AugmentConfig() if c.augment else None
    if c.synthetic:  # what the synthetic data holds for training, before any step (the samples' JSON only)
        log.info("synthetic data: %s", count_persons(c.synthetic, c.min_visible_keypoints, c.min_visible_fraction))
    synthetic = (
        SyntheticShards(c.synthetic, size=c.crop_size, augment=aug, body_model=c.body_model, seed=c.seed,
                        min_visible_keypoints=c.min_visible_keypoints, min_visible_fraction=c.min_visible_fraction)
        if c.synthetic else None
    )  # fmt: skip
    real = None
    if c.real:
        parts = [RealDataset(s, size=c.crop_size, augment=aug, body_model=c.body_model, seed=c.seed) for s in c.real]
        real = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    stream = MixedStream(synthetic, real, real_ratio=c.real_ratio, seed=c.seed)
    stream.set_start(start_step)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=c.batch_size, num_workers=c.workers, persistent_workers=False, pin_memory=False
    )

    module = HMRModule(
        body_model=c.body_model, lr=c.lr, weights=dict(c.loss_weights), losses=c.losses,
        smpl_path=None if c.smpl_path is None else str(c.smpl_path), network=network,
    )  # fmt: skip
    if c.h36m_regressor is not None:
        vertices = int(module.body.model.v_template.shape[0])
        module.h36m_regressor = torch.as_tensor(load_h36m_regressor(c.h36m_regressor, vertices))

    out.mkdir(parents=True, exist_ok=True)
    if not c.resume:
        atomic_write_bytes(out / TRAIN_CONFIG_FILE, c.to_yaml().encode())
    _quiet_lightning_adverts()
    trainer = pl.Trainer(
        default_root_dir=str(out),
        max_steps=c.max_steps,
        max_epochs=-1,
        max_time=None if c.max_minutes is None else {"minutes": float(c.max_minutes)},
        accelerator=c.accelerator,
        devices=c.devices,
        num_nodes=c.num_nodes,
        strategy=c.strategy,
        logger=CSVLogger(str(out), name="logs"),
        callbacks=_callbacks(out, c.checkpoint_every) + ([validation] if validation is not None else []),
        log_every_n_steps=c.log_every,
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
