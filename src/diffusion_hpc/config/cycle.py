"""The config of ``dhpc cycle`` (:func:`diffusion_hpc.engine.cycle.cycle`): the paper's loop,
generate -> fine-tune -> evaluate, N rounds.

A loop file holds the loop's own fields and one block per step, each block the fields of that
step's command (``generate``: :class:`~diffusion_hpc.config.GenerateConfig`, ``train``:
:class:`~diffusion_hpc.config.TrainConfig`); the loop sets the fields that change per round, so a
block may not give them::

    out: runs/loop
    rounds: 2
    seed: 0
    val: skipose:SkiPose          # evaluated after every round's fine-tuning (as dhpc evaluate --data)
    generate: {mode: R, guides: photos/, backbone: stabilityai/stable-diffusion-2-depth, n: 1000}
    train: {real: [skipose:SkiPose], backbone: resnet50, max_steps: 2000, checkpoint: runs/hmr}

The loop folder keeps this config as ``loop.yaml``; ``--resume`` checks the new one against it
(only ``rounds`` may change: a finished loop can be extended by more rounds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, ValidationError, model_validator

from diffusion_hpc.config.base import CommandConfig
from diffusion_hpc.config.generate import GenerateConfig
from diffusion_hpc.config.train import TrainConfig

#: the file in the loop folder that holds the config that started the loop
LOOP_CONFIG_FILE = "loop.yaml"
#: what a ``--resume`` may change (every other field defines the loop's data and models)
CYCLE_RESUMABLE = frozenset({"rounds", "resume"})
#: fields of the generate block the loop sets per round
LOOP_GENERATE_FIELDS = ("seed", "estimator", "estimator_checkpoint")
#: fields of the train block the loop sets per round (``checkpoint``: round 1 may give the start weights)
LOOP_TRAIN_FIELDS = ("out", "resume", "synthetic", "seed")


def _block(model: type[BaseModel], data: dict, block: str) -> BaseModel:
    """``model`` validated from a block; the first error as one ValueError naming ``block.field``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a cross-field rule: its message starts with the field it names
            raise ValueError(f"{block}.{msg}") from None
        raise ValueError(f"{'.'.join([block, *(str(p) for p in first['loc'])])}: {msg}") from None


class CycleConfig(CommandConfig):
    """N rounds of {generate (mode T or R) with the current estimator -> fine-tune on the real data
    and all synthetic data so far -> evaluate on a validation source}; round r + 1 estimates with
    the regressor round r trained."""

    out: Path
    """loop folder: loop.yaml, loop.json (the state of every round), round-N/ (data, train, eval.json), table.json/.md"""
    rounds: int = Field(2, ge=1, le=100)
    """rounds of generate -> fine-tune -> evaluate"""
    seed: int = Field(0, ge=0)
    """the loop's seed: round r generates and trains with seeds drawn from (seed, r), so every round draws fresh noise"""
    val: str
    """validation source scored after each fine-tuning (as dhpc evaluate --data): skipose:PATH, smart:PATH, spin:PATH
    or a dataset folder"""
    val_limit: Optional[int] = Field(None, ge=1)
    """evaluate on the first N validation samples only"""
    val_batch_size: int = Field(32, ge=1)
    """crops per forward pass of the evaluation"""
    h36m_regressor: Optional[Path] = None
    """SMPL regressors: the standard J_regressor_h36m.npy for the 3D joints the evaluation scores (as dhpc evaluate)"""
    estimator: Literal["mediapipe", "hmr", "spin", "hmr2"] = "mediapipe"
    """round 1's mesh estimator (later rounds use the regressor the round before trained)"""
    estimator_checkpoint: Optional[Path] = None
    """round 1's estimator weights (--estimator hmr|spin|hmr2)"""
    generate: dict[str, Any]
    """the generate step's options (dhpc generate's config fields; mode T or R), except seed and the estimator"""
    train: dict[str, Any] = {}
    """the fine-tuning's options (dhpc train's config fields: real data, backbone, budget, losses...), except out, resume,
    synthetic and seed; init (or checkpoint): the network round 1 starts from (spin:FILE, hmr2:FILE, dhpc:RUN)"""
    resume: bool = False
    """continue the loop in OUT (each round's finished steps are kept; a killed step resumes)"""

    @model_validator(mode="after")
    def _blocks(self):
        for name in LOOP_GENERATE_FIELDS:
            if name in self.generate:
                own = "seed" if name == "seed" else "estimator / estimator_checkpoint (round 1's)"
                raise ValueError(f"generate.{name}: the loop sets it per round; give the loop's {own} instead")
        for name in LOOP_TRAIN_FIELDS:
            if name in self.train:
                raise ValueError(f"train.{name}: the loop sets it per round (out: OUT/round-N/train; synthetic: every "
                                 "round's data so far); leave it out")
        estimator = None if self.estimator == "mediapipe" else self.estimator
        gen = _block(GenerateConfig, {**self.generate, "estimator": estimator,
                                      "estimator_checkpoint": self.estimator_checkpoint}, "generate")  # fmt: skip
        if gen.mode not in ("T", "R"):
            raise ValueError(f"generate.mode: the loop regenerates from estimated bodies (mode T or R), got {gen.mode!r}")
        if gen.part is not None:
            raise ValueError("generate.part: a loop makes whole rounds; leave part out")
        tr = _block(TrainConfig, {**self.train, "out": self.out / "train", "synthetic": [self.out]}, "train")
        if tr.body_model != gen.body_model:
            raise ValueError(f"train.body_model: the regressor must predict the bodies it labels next round "
                             f"({gen.body_model!r}, generate.body_model), got {tr.body_model!r}")
        return self

    def resume_conflicts(self, stored: "CycleConfig") -> list[str]:
        """Fields (all but :data:`CYCLE_RESUMABLE`) where this config differs from ``stored`` (the
        loop's ``loop.yaml``), as ``"name: stored -> this"`` lines; empty when a resume may go on."""
        mine, theirs = self.model_dump(mode="json"), stored.model_dump(mode="json")
        return [f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in sorted(mine)
                if k not in CYCLE_RESUMABLE and mine[k] != theirs[k]]  # fmt: skip

