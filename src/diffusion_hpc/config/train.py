"""The config of ``dhpc train`` (:func:`diffusion_hpc.hmr.train.train`).

The CLI builds a :class:`TrainConfig` from its flags (or ``--config FILE`` plus flags), the Python
API takes the same object, and the run folder stores it as ``train.yaml``: the config that started
the run, which ``--resume`` checks against (only the fields of :data:`RESUMABLE` may change).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from diffusion_hpc.config.base import CommandConfig

#: the loss terms whose weights ``loss_weights`` may override (:data:`diffusion_hpc.hmr.losses.LOSS_SETS`)
LossTerm = Literal["keypoints2d", "joints3d", "rotmat", "shape", "camera"]
#: the terms of each ``losses`` set (:data:`diffusion_hpc.hmr.losses.LOSS_SETS` holds their weights)
LOSS_SET_TERMS = {"dhpc": ("keypoints2d", "joints3d", "rotmat", "shape", "camera"), "paper": ("keypoints2d", "rotmat", "shape")}
#: ``init`` prefixes: what each starts from
INIT_KINDS = {
    "spin": "SPIN's model_checkpoint.pt (ResNet-50 + iterative regressor, SMPL, 224 px crops)",
    "hmr2": "a 4D-Humans HMR 2.0 checkpoint (ViT-H + transformer head, SMPL, 256 px crops)",
    "dhpc": "a dhpc train run (folder, RUN/best, regressor.safetensors or a Lightning .ckpt)",
    "imagenet": "a transformers save_pretrained backbone folder (our regressor, this backbone's weights)",
}
#: the body model and crop side each pretrained network was trained with (SPIN: constants.py
#: IMG_RES 224; 4D-Humans: MODEL.IMAGE_SIZE 256); fine-tuning keeps them
INIT_CONVENTIONS = {"spin": ("smpl", 224), "hmr2": ("smpl", 256)}
#: a synthetic person trains only with at least this many COCO-17 keypoints visible (COCO visibility 2:
#: in the image and not hidden by its own body or another person); fewer leave the crop's pose unsupervised
MIN_VISIBLE_KEYPOINTS = 6
#: ... and at least this share of its silhouette visible (schema 2 ``visible_fraction``; 1.0 unoccluded)
MIN_VISIBLE_FRACTION = 0.2
#: fields describing our own regressor's architecture, meaningless for a spin: / hmr2: network
OWN_ARCHITECTURE_FIELDS = ("backbone", "backbone_config", "num_iterations", "pretrained")

#: what a ``--resume`` may change: the run's folder and starting weights, its budget, the hardware,
#: logging, checkpointing and validation (validation data has its own check, see hmr.validation).
#: Every other field defines the training (data, model, optimisation) and must match ``train.yaml``.
RESUMABLE = frozenset({
    "out", "resume", "checkpoint", "max_steps", "max_minutes", "devices", "num_nodes", "strategy", "accelerator",
    "workers", "checkpoint_every", "log_every", "val", "val_every", "val_limit", "smpl_path",
})  # fmt: skip
#: the file in the run folder that holds the config that started the run
TRAIN_CONFIG_FILE = "train.yaml"


class TrainConfig(CommandConfig):
    """Everything a ``dhpc train`` run depends on: data, regressor, optimisation, budget, hardware,
    validation. Sizes in pixels, time in minutes."""

    synthetic: list[Path] = []
    """dataset folders written by dhpc generate"""
    real: list[str] = []
    """real benchmark sources, mixed in per sample: spin:FILE.npz, skipose:ROOT_OR_labels.h5 (train split),
    smart:FILE_OR_DIR.json, or a path whose form tells"""
    out: Path
    """run folder: checkpoints, logs, train.yaml and the exported regressor"""
    resume: bool = False
    """continue OUT/checkpoints/last.ckpt (weights, optimiser, step); the training options must match OUT/train.yaml"""
    checkpoint: Optional[Path] = None
    """initial weights (a run folder, .safetensors or .ckpt), weights only, strict about keys and shapes (same as --init dhpc:PATH)"""
    init: Optional[str] = None
    """starting network: spin:FILE (SPIN's model_checkpoint.pt), hmr2:FILE (4D-Humans HMR 2.0 .ckpt), dhpc:RUN (a run of
    ours) or imagenet:DIR (a transformers backbone folder); default: our regressor with a randomly initialised backbone"""
    losses: Literal["dhpc", "paper"] = "dhpc"
    """loss terms: paper (2D keypoints x5 on all samples, rotations x1 and shape x0.001 on synthetic ones) or dhpc
    (the paper's terms plus SPIN's 3D joints x5 and camera regulariser x1; parameters of real samples used too)"""
    max_steps: int = Field(10000, ge=1)
    """total optimiser steps (a resumed run continues up to this count)"""
    max_minutes: Optional[float] = Field(None, gt=0)
    """stop after this much training time, a total over resumes (besides the step budget)"""
    batch_size: int = Field(64, ge=1)
    """samples per optimiser step and device"""
    lr: float = Field(1e-4, gt=0)
    """Adam learning rate"""
    real_ratio: float = Field(0.5, ge=0.0, le=1.0)
    """share of real samples per batch, drawn per sample (with both synthetic and real data)"""
    backbone: Literal["resnet50", "vit", "tiny"] = "resnet50"
    """image encoder (transformers ResNet-50 or ViT; tiny: a small random one for tests)"""
    pretrained: Optional[Path] = None
    """local transformers checkpoint folder with the backbone's weights (same as --init imagenet:DIR; default: random)"""
    backbone_config: Optional[dict[str, Any]] = None
    """a transformers config dict replacing the named backbone's architecture (Python / config file only)"""
    num_iterations: int = Field(3, ge=1, le=10)
    """iterative error-feedback steps of the regression head"""
    body_model: Literal["anny", "smpl", "smplx"] = "anny"
    """body model the regressor predicts (default: smpl for spin: / hmr2: inits, else anny)"""
    smpl_path: Optional[Path] = None
    """SMPL / SMPL-X model file or folder (for the smpl and smplx body models)"""
    crop_size: int = Field(224, ge=32, le=1024)
    """square person crop side in pixels (default: 224 as in SPIN; 256 for hmr2: inits, HMR 2.0's)"""
    loss_weights: dict[LossTerm, float] = {}
    """overrides of the weights of the --losses set's terms (keypoints2d, rotmat, shape; dhpc also joints3d, camera)"""
    augment: bool = True
    """rotation / scale / colour / flip augmentation of the crops"""
    min_visible_keypoints: int = Field(MIN_VISIBLE_KEYPOINTS, ge=0, le=17)
    """a synthetic person trains only with at least this many of its COCO-17 keypoints visible (in the image,
    not hidden by its own body or another person); the others are skipped and counted"""
    min_visible_fraction: float = Field(MIN_VISIBLE_FRACTION, ge=0.0, le=1.0)
    """... and at least this share of its silhouette visible (1.0: not occluded by another person)"""
    seed: int = Field(0, ge=0)
    """seed of the initial weights, the data stream and the augmentation"""
    devices: Union[int, str] = 1
    """devices per node: a number, 'auto' or a Lightning device list"""
    num_nodes: int = Field(1, ge=1)
    """machines (Lightning num_nodes)"""
    strategy: str = "auto"
    """Lightning strategy, e.g. ddp"""
    accelerator: str = "auto"
    """cpu, gpu, mps or auto (Lightning accelerator)"""
    workers: int = Field(2, ge=0)
    """data-loading worker processes per device"""
    checkpoint_every: int = Field(500, ge=1)
    """steps between periodic checkpoints (last.ckpt is also written at the end)"""
    log_every: int = Field(10, ge=1)
    """steps between logged loss rows (OUT/logs/*/metrics.csv)"""
    val: Optional[str] = None
    """held-out data scored during training: skipose:PATH, smart:PATH, spin:PATH or a dataset folder (as dhpc evaluate --data)"""
    val_every: Optional[int] = Field(None, ge=1)
    """validate every N steps and at the end (default: the checkpoint interval)"""
    val_limit: Optional[int] = Field(None, ge=1)
    """validate on the first N samples of the validation data only"""
    h36m_regressor: Optional[Path] = None
    """SMPL runs: J_regressor_h36m.npy (17 x 6890) for the 3D joints --val scores, as dhpc evaluate --h36m-regressor"""

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, v):
        if isinstance(v, str) and v.strip().isdigit():
            return int(v)
        return v

    @field_validator("devices")
    @classmethod
    def _devices_positive(cls, v):
        if isinstance(v, int) and v < 1 and v != -1:
            raise ValueError(f"devices must be a positive number, -1 (all) or 'auto', got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _init_conventions(cls, data):
        """A spin: / hmr2: init brings its body model and crop size unless given (INIT_CONVENTIONS)."""
        if isinstance(data, dict) and isinstance(data.get("init"), str):
            conventions = INIT_CONVENTIONS.get(data["init"].partition(":")[0])
            if conventions is not None:
                data = dict(data)
                for key, value in zip(("body_model", "crop_size"), conventions):
                    if data.get(key) is None:
                        data[key] = value
        return data

    @field_validator("init")
    @classmethod
    def _init_form(cls, v):
        if v is None:
            return v
        kind, sep, rest = v.partition(":")
        if not sep or kind not in INIT_KINDS or not rest:
            raise ValueError(f"--init {v!r}: give one of " + "; ".join(f"{k}:PATH ({d})" for k, d in INIT_KINDS.items()))
        return v

    @model_validator(mode="after")
    def _rules(self):
        if not self.synthetic and not self.real:
            raise ValueError("synthetic: dhpc train needs data: pass --synthetic DIR... and/or --real SOURCE...")
        if self.resume and self.checkpoint is not None:
            raise ValueError("checkpoint: give either --resume (continue this run) or --checkpoint (start from "
                             "weights), not both (resuming with a config file: remove its checkpoint)")
        if self.val is None and (self.val_every is not None or self.val_limit is not None):
            raise ValueError("val: --val-every / --val-limit need --val SOURCE, the held-out data to validate on")
        if self.val is None and self.h36m_regressor is not None:
            raise ValueError("val: --h36m-regressor (the joints validation scores) needs --val SOURCE")
        if self.h36m_regressor is not None and self.body_model != "smpl":
            raise ValueError(f"h36m_regressor: --h36m-regressor is for SMPL regressors; this run trains {self.body_model}")
        if self.init is not None:
            kind = self.init.partition(":")[0]
            for name, same in (("checkpoint", "dhpc"), ("pretrained", "imagenet")):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: --{name} is --init {same}:PATH; give --init {self.init} or --{name}, not both")
            if kind in INIT_CONVENTIONS:
                body, _ = INIT_CONVENTIONS[kind]
                if self.body_model != body:
                    raise ValueError(f"body_model: --init {kind}: is a {body.upper()} network; drop --body-model "
                                     f"{self.body_model} (or pass --body-model {body})")
                own = [f for f in OWN_ARCHITECTURE_FIELDS if getattr(self, f) != type(self).model_fields[f].default]
                if own:
                    raise ValueError(f"{own[0]}: --init {kind}: brings its own network; drop "
                                     + ", ".join(f"--{f.replace('_', '-')}" for f in own))
        extra = sorted(set(self.loss_weights) - set(LOSS_SET_TERMS[self.losses]))
        if extra:
            raise ValueError(f"loss_weights: --losses {self.losses} has no term {', '.join(extra)} (its terms: "
                             f"{', '.join(LOSS_SET_TERMS[self.losses])}); drop the weight or use --losses dhpc")
        if self.body_model in ("smpl", "smplx") and self.smpl_path is None:
            raise ValueError(f"smpl_path: body_model {self.body_model!r} needs the model files: pass --smpl-path PATH "
                             "(register and download them from smpl.is.tue.mpg.de / smpl-x.is.tue.mpg.de)")
        return self

    def resume_conflicts(self, stored: "TrainConfig") -> list[str]:
        """The training fields (all but :data:`RESUMABLE`) where this config differs from ``stored``
        (the run's ``train.yaml``), as ``"name: stored -> this"`` lines; empty when a resume may go on."""
        mine, theirs = self.model_dump(mode="json"), stored.model_dump(mode="json")
        return [f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in sorted(mine) if k not in RESUMABLE and mine[k] != theirs[k]]
