"""``dhpc cycle``: the paper's loop (DESIGN §2 step 8), N rounds of

    1. generate (mode T or R) with the current mesh estimator   -> OUT/round-r/data     (dhpc generate)
    2. fine-tune on the real data + every round's synthetic data -> OUT/round-r/train    (dhpc train)
    3. evaluate the fine-tuned regressor on a validation source  -> OUT/round-r/eval.json (dhpc evaluate)

Round 1 estimates with the loop's ``estimator`` (MediaPipe by default); round r + 1 with the
regressor round r trained (``--estimator hmr``, its run folder). Round 1 fine-tunes from
``train.checkpoint`` (when given, else the training's own initialisation); round r + 1 from round
r's regressor.

Noise: round r generates with :func:`round_seed` ``(seed, r)`` (and trains with another stream of
it), so no two rounds repeat their noise, and a rerun draws the same.

Resume: every step's folder is a normal resumable run (a killed generate resumes its shards, a
killed training its ``last.ckpt``), and the loop's state, ``OUT/loop.json``, is rewritten
atomically after each step: a finished step is never redone, a killed one continues where its own
run stopped. ``--resume`` refuses a loop config other than ``OUT/loop.yaml`` (only ``rounds`` may
change, so a finished loop can be extended).

Table: after every round, ``OUT/table.json`` and ``OUT/table.md``: per round the estimator that
generated its data, the samples (accepted / made), the UNet evaluations spent, the training steps,
and the validation metrics before (the weights the round fine-tuned from, when there were any) and
after its fine-tuning.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from diffusion_hpc.config import EvaluateConfig, GenerateConfig, TrainConfig
from diffusion_hpc.config.cycle import LOOP_CONFIG_FILE, CycleConfig
from diffusion_hpc.data.seeds import GENERATE_STREAM, TRAIN_STREAM, round_seed
from diffusion_hpc.engine import generate
from diffusion_hpc.errors import ConfigError, DhpcError, InputError
from diffusion_hpc.hmr.data import load_real_source
from diffusion_hpc.hmr.evaluate import evaluate, load_targets
from diffusion_hpc.hmr.init import load_regressor_spec
from diffusion_hpc.hmr.model import EXPORT_WEIGHTS
from diffusion_hpc.hmr.train import checkpoint_step, last_checkpoint, load_weights, train
from diffusion_hpc.pipeline.generate import Generator
from diffusion_hpc.runtime.atomic import atomic_write_bytes

#: the loop's state: per round, the steps done and what they produced (rewritten atomically)
LOOP_STATE = "loop.json"
TABLE_JSON = "table.json"
TABLE_MD = "table.md"
STEPS = ("generate", "train", "evaluate")
#: the metrics of the table: (result key, column title, format)
METRICS = (("mpjpe_mm", "MPJPE mm", "{:.1f}"), ("pa_mpjpe_mm", "PA-MPJPE mm", "{:.1f}"), ("pck", "PCK %", "{:.1f}"))


def round_dir(out: str | Path, round_number: int) -> Path:
    """The folder of round ``round_number`` (1-based): ``data/``, ``train/``, ``eval.json``."""
    return Path(out) / f"round-{round_number}"


@dataclass
class CycleResult:
    """What a loop produced: its folder, one table row per finished round, the markdown table."""

    out: Path
    rows: list[dict]
    table: str


class LoopState:
    """``OUT/loop.json``: per round, each step's record once it finished (``None`` before)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOOP_STATE
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {"rounds": {}}

    def round(self, r: int) -> dict:
        return self.data["rounds"].setdefault(str(r), {step: None for step in STEPS})

    def done(self, r: int, step: str) -> bool:
        return self.round(r).get(step) is not None

    def record(self, r: int, step: str, value: dict) -> None:
        """Mark ``step`` of round ``r`` finished with ``value``; the file is replaced atomically."""
        self.round(r)[step] = value
        atomic_write_bytes(self.path, json.dumps(self.data, indent=2, sort_keys=True).encode())


class Loop:
    """A configured loop. ``Loop(config).run()`` is what ``dhpc cycle`` does."""

    def __init__(self, config: CycleConfig, progress: bool = True,
                 report: Optional[Callable[[str], None]] = None) -> None:  # fmt: skip
        self.config = config
        self.out = Path(config.out)
        self.progress = progress
        if report is None:
            report = (lambda line: print(line, flush=True)) if progress else (lambda line: None)
        self.report = report
        self.state: LoopState | None = None

    # -- per-round configs ------------------------------------------------------------------------

    def estimator_of(self, r: int) -> tuple[str, Optional[Path]]:
        """Round ``r``'s mesh estimator: the loop's for round 1, the regressor of round r - 1 after."""
        if r == 1:
            return self.config.estimator, self.config.estimator_checkpoint
        return "hmr", round_dir(self.out, r - 1) / "train"

    def generate_config(self, r: int) -> GenerateConfig:
        """Round ``r``'s generate config: the generate block, the round's seed and estimator."""
        name, checkpoint = self.estimator_of(r)
        data = {**self.config.generate, "seed": round_seed(self.config.seed, r, GENERATE_STREAM),
                "estimator": None if name == "mediapipe" else name, "estimator_checkpoint": checkpoint}  # fmt: skip
        return GenerateConfig.model_validate(data)

    def init_of(self, r: int) -> Optional[str]:
        """The network round ``r`` fine-tunes from, as a checkpoint spec: the train block's ``init``
        (or ``checkpoint``: ``dhpc:PATH``) for round 1, ``dhpc:`` round r - 1's run after."""
        if r > 1:
            return f"dhpc:{round_dir(self.out, r - 1) / 'train'}"
        block = self.config.train
        if block.get("init") is not None:
            return str(block["init"])
        return None if block.get("checkpoint") is None else f"dhpc:{block['checkpoint']}"

    def train_config(self, r: int, resume: bool) -> TrainConfig:
        """Round ``r``'s fine-tuning: the real data and the synthetic data of rounds 1..r, its seed,
        its start network (:meth:`init_of`; kept as given on a resume, as ``train.yaml`` holds it).

        Rounds after the first start from the last round's run (``init: dhpc:RUN``) with the body
        model and crop size round 1 resolved (a ``spin:`` / ``hmr2:`` init brings its own)."""
        synthetic = [round_dir(self.out, i) / "data" for i in range(1, r + 1)
                     if self.state.round(i)["generate"]["accepted"] > 0]  # fmt: skip
        data = {**self.config.train, "out": round_dir(self.out, r) / "train", "synthetic": synthetic,
                "seed": round_seed(self.config.seed, r, TRAIN_STREAM), "resume": resume}  # fmt: skip
        if r > 1:
            first = self.first_train_config()
            for name in ("checkpoint", "init", "pretrained"):
                data.pop(name, None)
            data.update(init=self.init_of(r), body_model=first.body_model, crop_size=first.crop_size)
            if first.init is not None and first.init.partition(":")[0] in ("spin", "hmr2"):  # their own network
                for name in ("backbone", "backbone_config", "num_iterations"):
                    data.pop(name, None)
        if resume:
            data.pop("checkpoint", None)  # the run continues its last.ckpt (init stays: train.yaml holds it)
        if not synthetic and not data.get("real"):
            raise InputError(f"round {r}: no synthetic sample was accepted in rounds 1..{r} and train.real is empty, "
                             "so there is nothing to fine-tune on; check the generate block (guides, prompts, "
                             f"backbone) with dhpc inspect {round_dir(self.out, r) / 'data'}")
        return TrainConfig.model_validate(data)

    def first_train_config(self) -> TrainConfig:
        """The train block as round 1 resolves it (a ``spin:`` / ``hmr2:`` init's body model and crop size)."""
        return TrainConfig.model_validate({**self.config.train, "out": self.out, "synthetic": [self.out]})

    def evaluate_config(self, checkpoint: str | Path, out: Path | None) -> EvaluateConfig:
        """An evaluation of ``checkpoint`` (a run or a spec) on the validation source, at the network's own crop size."""
        c = self.config
        return EvaluateConfig(checkpoint=str(checkpoint), data=c.val, out=out, limit=c.val_limit,
                              batch_size=c.val_batch_size, h36m_regressor=c.h36m_regressor,
                              smpl_path=self.first_train_config().smpl_path)  # fmt: skip

    # -- checks before any work -------------------------------------------------------------------

    def check(self) -> None:
        """The loop folder (new, or a resume of the same loop), the first pending round's generate
        inputs and weights, the real and validation sources: all before any work."""

        c, out = self.config, self.out
        stored = out / LOOP_CONFIG_FILE
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file, not a folder; choose a folder for the loop")
        if stored.is_file():
            if not c.resume:
                raise DhpcError(f"--out {out} already holds a loop; pass --resume to continue it, or choose a new --out")
            conflicts = c.resume_conflicts(CycleConfig.from_yaml(stored))
            if conflicts:
                raise ConfigError(f"--resume: the loop in {out} was started with another config ({'; '.join(conflicts)}); "
                                  f"resume with the options in {stored} (only rounds may change), or choose a new --out")
        elif out.exists() and any(out.iterdir()):
            raise DhpcError(f"--out {out} is not empty and holds no loop ({LOOP_CONFIG_FILE}); choose a new --out")
        for spec in c.train.get("real") or []:  # read now: a bad source fails before the first generation
            load_real_source(spec)
        start = self.init_of(1)
        if start is not None and not start.startswith("imagenet:"):  # the network round 1 fine-tunes, read now
            load_regressor_spec(start, option="train.init")
        state = LoopState(out)
        pending = [r for r in range(1, c.rounds + 1) if not all(state.done(r, step) for step in STEPS)]
        if pending and not state.done(pending[0], "generate"):
            # the next generate's inputs, weights and estimator (round 1: the loop's; later: the last regressor)
            Generator(self.generate_config(pending[0]), progress=False)
        body_model = GenerateConfig.model_validate(c.generate).body_model
        load_targets(c.val, crop_size=self.first_train_config().crop_size, limit=1, body_model=body_model, option="val")

    # -- the steps --------------------------------------------------------------------------------

    def _generate(self, r: int) -> dict:

        cfg = self.generate_config(r)
        folder = round_dir(self.out, r) / "data"
        name = self.estimator_of(r)[0]
        resumed = folder.exists()
        self.report(f"round {r}/{self.config.rounds}: generate {cfg.n} samples (mode {cfg.mode}, estimator {name}, "
                    f"seed {cfg.seed}){' resuming' if resumed else ''} -> {folder}")
        result = generate(cfg, folder, resume=True, progress=self.progress)
        run = json.loads((folder / "run.json").read_text())
        self.report(f"round {r}/{self.config.rounds}: generate done: {result.accepted} accepted, {result.failed} "
                    f"failed, {run['unet_evals_total']:g} UNet evaluations")
        return {"seed": cfg.seed, "accepted": result.accepted, "failed": result.failed, "failures": result.failures,
                "unet_evals": run["unet_evals_total"], "estimator": run.get("estimator") or {"name": name}}

    def _train(self, r: int) -> dict:

        folder = round_dir(self.out, r) / "train"
        last = last_checkpoint(folder)
        cfg = self.train_config(r, resume=last is not None)
        finished = last is not None and checkpoint_step(last) >= cfg.max_steps and exported_last(folder)
        init = self.init_of(r)
        if finished:  # trained to the end before the loop could record it
            self.report(f"round {r}/{self.config.rounds}: train: finished before the interruption ({folder})")
        else:
            start = "" if init is None else f" from {init}"
            self.report(f"round {r}/{self.config.rounds}: train {cfg.max_steps} steps on {len(cfg.synthetic)} synthetic "
                        f"set(s) + {len(cfg.real)} real source(s){start}" + (" resuming" if cfg.resume else "")
                        + f" -> {folder}")
            train(cfg, progress=self.progress)
        steps = checkpoint_step(last_checkpoint(folder))
        self.report(f"round {r}/{self.config.rounds}: train done: {steps} steps")
        return {"steps": steps, "seed": cfg.seed, "synthetic": [p.parent.name for p in cfg.synthetic],
                "init": None if init is None else f"round-{r - 1}" if r > 1 else spec_name(init)}

    def _evaluate(self, r: int) -> dict:

        before = None
        if r > 1:  # the weights this round started from: the last round's result
            before = self.state.round(r - 1)["evaluate"]["after"]
        elif self.init_of(1) is not None and not self.init_of(1).startswith("imagenet:"):  # a regressor to score
            self.report(f"round {r}/{self.config.rounds}: evaluate the start network {self.init_of(1)} on {self.config.val}")
            before = metrics_of(evaluate(self.evaluate_config(self.init_of(1), round_dir(self.out, r) / "eval_before.json")))
        self.report(f"round {r}/{self.config.rounds}: evaluate on {self.config.val}")
        after = metrics_of(evaluate(self.evaluate_config(round_dir(self.out, r) / "train",
                                                         round_dir(self.out, r) / "eval.json")))
        self.report(f"round {r}/{self.config.rounds}: evaluate done: " + format_metrics(after))
        return {"before": before, "after": after}

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> CycleResult:
        """Check everything, then run (or continue) every round; returns the table."""
        c = self.config
        self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / LOOP_CONFIG_FILE).is_file():
            atomic_write_bytes(self.out / LOOP_CONFIG_FILE, c.model_copy(update={"resume": False}).to_yaml().encode())
        self.state = LoopState(self.out)
        steps = {"generate": self._generate, "train": self._train, "evaluate": self._evaluate}
        for r in range(1, c.rounds + 1):
            pending = [step for step in STEPS if not self.state.done(r, step)]
            for step in pending:  # a finished step is never redone
                t0 = time.perf_counter()
                record = steps[step](r)
                self.state.record(r, step, {**record, "seconds": round(time.perf_counter() - t0, 3)})
            rows = table_rows(self.state, c.rounds)
            write_table(self.out, rows)
            if pending:
                self.report(f"round {r}/{c.rounds} finished\n" + format_table(rows[r - 1:r]))
        rows = table_rows(self.state, c.rounds)
        table = format_table(rows)
        return CycleResult(self.out, rows, table)


def exported_last(run: Path) -> bool:
    """True when ``run``'s export holds the weights of its ``last.ckpt`` (a training that ended and
    exported; not an export left by an earlier session of the run)."""
    if not (run / EXPORT_WEIGHTS).is_file():
        return False
    exported, last = load_weights(run / EXPORT_WEIGHTS), load_weights(last_checkpoint(run))
    return exported.keys() == last.keys() and all(torch.equal(exported[k], last[k]) for k in exported)


def spec_name(spec: str) -> str:
    """A checkpoint spec without its folders (``spin:model_checkpoint.pt``): for records, no machine path."""
    kind, _, path = spec.partition(":")
    return f"{kind}:{Path(path).name}"


def metrics_of(result: dict) -> dict:
    """The table's part of an evaluation result: the metrics, their sample counts and protocols."""
    keep = ("samples", "mpjpe_mm", "pa_mpjpe_mm", "protocol_3d", "pck", "pck_images", "protocol_2d")
    return {k: result[k] for k in keep if k in result}


def format_metrics(m: dict | None) -> str:
    if m is None:
        return "-"
    return ", ".join(f"{title} {fmt.format(m[key])}" for key, title, fmt in METRICS if m.get(key) is not None)


def table_rows(state: LoopState, rounds: int) -> list[dict]:
    """One row per round whose three steps finished."""
    rows = []
    for r in range(1, rounds + 1):
        rec = state.round(r)
        if any(rec.get(step) is None for step in STEPS):
            continue
        gen, tr, ev = rec["generate"], rec["train"], rec["evaluate"]
        est = gen["estimator"]
        rows.append({
            "round": r, "estimator": est.get("name"), "estimator_fingerprint": est.get("fingerprint"),
            "samples": gen["accepted"], "made": gen["accepted"] + gen["failed"], "unet_evals": gen["unet_evals"],
            "train_steps": tr["steps"], "trained_on": tr["synthetic"], "init": tr["init"],
            "before": ev["before"], "after": ev["after"],
            "seconds": {step: rec[step].get("seconds") for step in STEPS},
        })  # fmt: skip
    return rows


def format_table(rows: list[dict]) -> str:
    """The rounds as a markdown table (metrics before -> after each round's fine-tuning)."""

    def metric(m, key, fmt):
        return "-" if m is None or m.get(key) is None else fmt.format(m[key])

    head = ["round", "estimator", "samples", "UNet evals", "train steps"] + [f"{t} before -> after" for _, t, _ in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        est = row["estimator"] + (f" ({row['estimator_fingerprint'][:8]})" if row.get("estimator_fingerprint") else "")
        cells = [str(row["round"]), est, f"{row['samples']} / {row['made']}", f"{row['unet_evals']:g}",
                 str(row["train_steps"])]  # fmt: skip
        cells += [f"{metric(row['before'], k, f)} -> {metric(row['after'], k, f)}" for k, _, f in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(out: Path, rows: list[dict]) -> None:
    """``table.json`` and ``table.md`` in the loop folder (each replaced atomically)."""
    atomic_write_bytes(out / TABLE_JSON, json.dumps(rows, indent=2, sort_keys=True).encode())
    atomic_write_bytes(out / TABLE_MD, (format_table(rows) + "\n").encode())


def cycle(config: CycleConfig, progress: bool = True, report: Optional[Callable[[str], None]] = None) -> CycleResult:
    """Python API of ``dhpc cycle``: check everything, then run (or, with ``config.resume``, continue)
    the loop in ``config.out``.

    Example::

        from diffusion_hpc.config.cycle import CycleConfig
        from diffusion_hpc.engine.cycle import cycle

        result = cycle(CycleConfig.from_yaml("loop.yaml"))
        print(result.table)

    Args:
        progress: the steps' progress bars and one line per step (to ``report``).
        report: where the step lines go (default: printed when ``progress``).
    """
    return Loop(config, progress=progress, report=report).run()
