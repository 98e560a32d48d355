"""``dhpc generate``: the orchestration of a run, modes T, R and D (DESIGN §2).

The pipeline holds no model logic: it draws requests, calls each stage through its interface, one
batch at a time, and hands records to the writer. Data flows one way: request -> stages -> record
-> writer. Models are loaded once per process (:class:`~diffusion_hpc.pipeline.stages.Stages`).

    1. check inputs (config, prompts, guide images, poses, every model's weights) before any work
    2. open the dataset (new, or resume: skip committed shards)
    3. per batch, the mode's head, then the shared tail:
       D:    pose requests -> body -> camera placement                      (pipeline.mode_d)
       T, R: start image (T: txt2img; R: the user's images) -> masks -> estimate -> prior score
             (-> hard-only filter) -> k variants                             (pipeline.guided)
       tail: label (body, render, keypoints) -> image generator -> cycles -> verify -> records
                                                                             (pipeline.tail)
       T, R: one head serves several batches (``estimate_batch`` start images fitted in one call: a
       fit call's cost is mostly per call); each batch then goes through the tail on its own
       with ``overlap`` (default: when the diffusion models run on a GPU), the next head runs on a
       worker thread while the current batches' tails run (pipeline.ahead): the CPU stages of the
       next batches while these denoise
    4. commit each shard atomically; consolidate the manifest; run.json (with what ran); preview

A shard is the unit every engine drives (:mod:`diffusion_hpc.engine`): :meth:`Generator.plan`
(steps 1-2: the run's shards, all or a part's, and those left to make), :meth:`Generator.run_shard`
(step 3 and the shard's commit, in any process) and :meth:`Generator.finish` (step 4's rest).
:meth:`Generator.run` is the local engine: the pending shards one after another in this process.

Each stage hands the next a typed output (:mod:`~diffusion_hpc.pipeline.samples`); every sample
of a batch keeps a :class:`~diffusion_hpc.pipeline.samples.SampleLog` (reason, cost, scores, what
ran) from which its manifest row is written. Shards hold whole guides (shard_size is a multiple of
k), batches whole guides (``max(1, batch_size // k)``), a head whole batches.

Failures (no person found, estimation failed, filtered, out of frame, drifted) become manifest rows
with a reason, never a crash; their UNet evaluations count in the manifest.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from diffusion_hpc.body import check_body_model
from diffusion_hpc.config import DEFAULT_PROMPT, DIFFUSION_GENERATORS, GenerateConfig
from diffusion_hpc.data.inspect import write_preview
from diffusion_hpc.data.lock import OutputLock
from diffusion_hpc.data.merge import part_shards
from diffusion_hpc.data.reader import Dataset, manifest_totals
from diffusion_hpc.data.schema import SampleRecord
from diffusion_hpc.data.seeds import shard_ranges
from diffusion_hpc.data.writer import DatasetWriter, ManifestRow
from diffusion_hpc.errors import ConfigError, InputError, MissingModelError
from diffusion_hpc.estimate import REGRESSOR_ESTIMATORS
from diffusion_hpc.estimate.hmr_adapter import checkpoint_fingerprint, exported_regressor_files
from diffusion_hpc.generate.backgrounds import FolderBackgrounds
from diffusion_hpc.generate.diffusion import lora_file
from diffusion_hpc.pipeline.ahead import made_ahead
from diffusion_hpc.pipeline.guided import place_guided, split_by_batches
from diffusion_hpc.pipeline.inputs import GuideImages, read_prompt_lines
from diffusion_hpc.pipeline.mode_d import hard_threshold_of_poses, place_bodies
from diffusion_hpc.pipeline.records import run_sampler
from diffusion_hpc.pipeline.requests import guides_of
from diffusion_hpc.pipeline.samples import PlacedBodies, SampleLog
from diffusion_hpc.pipeline.stages import Stages, StageTimer, check_run_estimator, needs_estimator
from diffusion_hpc.pipeline.tail import finish
from diffusion_hpc.poses import load_pose_set
from diffusion_hpc.runtime.weights import backbone_set, check_models

log = logging.getLogger(__name__)

#: run.json keys describing what ran (kept from an earlier session when a resume loads no model)
WHAT_RAN_KEYS = ("sampler", "backbone", "prior", "estimator", "keypoint_model")


def check_resumed_estimator(cfg: GenerateConfig, out: Path) -> None:
    """Before a ``--resume`` does any work: the regressor checkpoint (``--estimator-checkpoint``)
    holds the weights the run's committed rows were labelled with.

    A checkpoint retrained in place keeps its path, so the config still matches, but the rows made
    now would carry another network's labels. The fingerprints recorded are those of the committed
    shards' rows (their ``estimator``, one row per shard is read) and of ``run.json``.

    Raises:
        ConfigError: the checkpoint's content changed since the run began (names the file and the fix).
    """
    if cfg.mesh_estimator not in REGRESSOR_ESTIMATORS or not needs_estimator(cfg):
        return
    if not (out / "config.yaml").is_file():  # nothing made yet (a --resume may start a run): nothing recorded
        return
    recorded = set()
    run = out / "run.json"
    if run.is_file():
        recorded.add((json.loads(run.read_text()).get("estimator") or {}).get("fingerprint"))
    for shard in Dataset(out).shards:
        with (out / "manifest" / f"{shard.stem}.jsonl").open() as fh:
            first = fh.readline()
        if first.strip():
            recorded.add((json.loads(first).get("estimator") or {}).get("fingerprint"))
    recorded.discard(None)
    if not recorded:
        return
    checkpoint = Path(cfg.estimator_checkpoint).expanduser()
    files = exported_regressor_files(checkpoint) if cfg.mesh_estimator == "hmr" else [checkpoint]
    now = checkpoint_fingerprint(files)
    if recorded != {now}:
        raise ConfigError(
            f"--resume: --estimator-checkpoint {cfg.estimator_checkpoint} changed since the run in {out} began "
            f"(fingerprint {now}; its rows were labelled by {', '.join(sorted(recorded - {now}))}), so the "
            "samples made now would carry another network's labels; put back the checkpoint the run began with "
            "to finish it, or generate with the new one into a new --out")


@dataclass
class GenerateResult:
    """What a run produced."""

    out: Path
    accepted: int
    failed: int
    skipped_shards: int
    seconds: float
    preview: Path | None = None
    failures: dict[str, int] = field(default_factory=dict)


@dataclass
class ShardResult:
    """What making one shard produced (returned by :meth:`Generator.run_shard`, from any process)."""

    shard: int
    count: int  # manifest rows (sample indices) of the shard
    failures: dict[str, int]
    stage_seconds: float
    write_seconds: float  # waited for the shard writer (encoding and writing not hidden behind the batches)
    unet_seconds: float
    seconds: float = 0.0  # wall time of the whole shard in the process that made it


@dataclass
class RunPlan:
    """The shards of a run in ``out``: ``ranges`` (all of the run's, by shard number), ``own`` (this
    folder's: all, or a part's), ``pending`` (own, not yet committed).

    ``lock`` is the output folder's lock, held from :meth:`Generator.plan` on; the engine releases
    it when the run ends, also on an error (``with plan:`` or :meth:`release`)."""

    out: Path
    writer: DatasetWriter
    ranges: list[range]
    own: list[int]
    pending: list[int]
    started: float
    lock: OutputLock | None = None

    def samples(self, shards: list[int]) -> int:
        return sum(len(self.ranges[s]) for s in shards)

    def release(self) -> None:
        """Release the output folder's lock (the run ended, or failed)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> "RunPlan":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Generator:
    """A configured generation run. ``Generator(config).run()`` is what ``dhpc generate`` does."""

    def __init__(self, config: GenerateConfig, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.stages: Stages | None = None
        self.unet_seconds = 0.0  # UNet (+ ControlNet) wall time of this session, for run.json
        cfg = config
        # 1. Inputs are checked before any model is loaded or any file written.
        check_body_model(cfg.body_model, cfg.smpl_path)
        self.poses = self._load_poses() if cfg.mode == "D" else None
        self.guides = None
        if cfg.mode == "R":
            self.guides = GuideImages(cfg.guides, cfg.image_size)

        diffusion = cfg.generator in DIFFUSION_GENERATORS
        self.prompt_lines = read_prompt_lines(cfg.prompt, cfg.prompts, None if cfg.mode == "T" else DEFAULT_PROMPT)
        if cfg.render_baseline.backgrounds is not None and not diffusion:
            FolderBackgrounds(cfg.render_baseline.backgrounds)  # unreadable files fail here
        self._check_weights()

    def _check_weights(self) -> None:
        """Every model the run needs, checked at once: one error listing all that is missing."""
        cfg = self.config
        diffusion = cfg.generator in DIFFUSION_GENERATORS
        specs = {
            "backbone": cfg.backbone if diffusion else None,
            "controlnet": cfg.controlnet if diffusion else None,
            "segmenter": cfg.segmenter if cfg.segments_images else None,
            "keypoint_model": cfg.keypoint_model if cfg.verifies_by_keypoint_model else None,
        }
        found = check_models(specs)
        check_run_estimator(cfg)  # the mesh estimator's checkpoint, and its body model against the run's
        if diffusion:
            lora_file(cfg.lora)  # a wrong LoRA path fails here, before any model loads
        if cfg.prior_path is not None and not Path(cfg.prior_path).exists():
            raise MissingModelError(f"prior_path {cfg.prior_path} does not exist; pass the pose-prior file "
                                    "(dhpc prior fit --out FILE writes one) or leave it out for the shipped prior")
        if cfg.body_model != "anny" and cfg.prior_path is None and (cfg.mode in ("T", "R") or cfg.verify):
            raise MissingModelError(f"body_model {cfg.body_model!r} scores poses with VPoser: pass --prior-path "
                                    "to the VPoser v2 weights")
        if not diffusion:
            return
        bs = backbone_set(found["backbone"], found.get("controlnet"))
        lacking = []
        if cfg.mode == "T" and bs.text2img is None:
            lacking.append("a text-to-image pipeline (mode T makes its start images from text)")
        if cfg.generator not in bs.regenerators():
            lacking.append(f"what --generator {cfg.generator} needs ("
                           + ("an SD-2-depth depth-to-image pipeline" if cfg.generator == "depth2img"
                              else "a text-to-image pipeline and a ControlNet-depth model (--controlnet)") + ")")
        if lacking:
            raise MissingModelError(f"backbone {cfg.backbone!r} lacks " + " and ".join(lacking)
                                    + f"; it provides {', '.join(bs.regenerators()) or 'no regenerator'}"
                                    + (" and txt2img" if bs.text2img else "")
                                    + ". Pass a backbone that has it (`dhpc backbone tiny --out DIR` has all)")

    # -- set-up ---------------------------------------------------------------------------------

    def _load_poses(self):
        cfg = self.config
        poses = load_pose_set(cfg.poses)
        if poses.body_model != cfg.body_model:
            raise InputError(
                f"pose file {cfg.poses} holds {poses.body_model!r} poses but --body-model is {cfg.body_model!r}; "
                f"pass --body-model {poses.body_model} or a pose file for {cfg.body_model}"
            )
        if len(poses) == 0:
            raise InputError(f"pose file {cfg.poses} holds no poses")
        return poses

    def load_models(self) -> None:
        """Load every stage's models (once); a caller may then swap a stage for another implementation."""
        if self.stages is None:
            self.stages = Stages(self.config)

    # -- batches ----------------------------------------------------------------------------------

    def _batches(self, indices: range) -> list[range | list[int]]:
        """Mode D: ranges of batch_size indices; T, R: lists of whole guides."""
        cfg = self.config
        if cfg.mode == "D":
            return [range(lo, min(lo + cfg.batch_size, indices.stop)) for lo in range(indices.start, indices.stop, cfg.batch_size)]
        guides = guides_of(indices, cfg.k)
        per = cfg.guides_per_batch
        return [guides[i:i + per] for i in range(0, len(guides), per)]

    def _head_groups(self, batches: list) -> list[list]:
        """The batches whose head is made in one call: mode D one batch a head; T, R the batches of
        ``guides_per_estimate`` guides (``estimate_batch`` in whole batches)."""
        cfg = self.config
        if cfg.mode == "D":
            return [[batch] for batch in batches]
        m = cfg.guides_per_estimate // cfg.guides_per_batch
        return [batches[i:i + m] for i in range(0, len(batches), m)]

    def _head(self, group: list) -> list[tuple[list[SampleLog], PlacedBodies, StageTimer]]:
        """The head of a group of batches (the mode's: bodies placed in their camera), on any thread:
        each batch's logs, bodies and clock."""
        cfg, timer = self.config, StageTimer()
        if cfg.mode == "D":
            [batch] = group
            logs, bodies = place_bodies(cfg, self.stages, self.poses, self.prompt_lines, batch, timer)
            return [(logs, bodies, timer)]
        guides = [g for batch in group for g in batch]
        logs, bodies = place_guided(cfg, self.stages, self.guides, self.prompt_lines, guides, timer)
        return split_by_batches(logs, bodies, timer, group, cfg.k)

    def _tail(self, head: tuple[list[SampleLog], PlacedBodies, StageTimer]
              ) -> tuple[list[SampleRecord], list[ManifestRow], int]:  # fmt: skip
        """The shared tail of a batch whose head is done, on the calling thread: records, rows, sample count."""
        logs, bodies, timer = head
        timer.restart()  # the wait for the head counts in no stage
        records, rows = finish(self.config, self.stages, logs, bodies, timer)
        self.unet_seconds += timer.unet_seconds
        return records, rows, len(logs)

    def _heads(self, groups: list) -> Iterator[list[tuple[list[SampleLog], PlacedBodies, StageTimer]]]:
        """The heads of ``groups`` (:meth:`_head_groups`) in order: made one ahead on a worker thread with
        ``overlap``, else when asked; a generator: close it when done (an error included), the worker
        thread ends and is joined."""
        if self.overlaps():
            return made_ahead(self._head, groups, name="dhpc-head")
        return (self._head(group) for group in groups)

    def overlaps(self) -> bool:
        """Whether each batch's head is made beside the previous batch's tail: ``config.overlap``, or when
        it is not set, whether the diffusion models run on an accelerator (with the UNet on the CPU too,
        the two threads would only compete for the cores: measured in scripts/bench_overlap.py)."""
        if self.config.overlap is not None:
            return self.config.overlap
        return self.stages is not None and self.stages.placement.device.type != "cpu"

    def what_ran(self, out: str | Path) -> dict:
        """run.json's record of what ran: the sampler and the weights (diffusion generators)."""
        if self.stages is not None:
            st = self.stages
            prior = None
            if st.prior is not None:
                prior = st.prior.describe()
                if self.config.mode == "D":
                    prior["hard_threshold_used"] = hard_threshold_of_poses(self.config, st.prior)
            return {"generator": self.config.generator, "sampler": run_sampler(st.start_sampler, st.sampler),
                    "backbone": st.backbone, "prior": prior, "estimator": st.estimator_identity,
                    "verify_by": self.config.verify_by, "keypoint_model": st.keypoint_model_identity}  # fmt: skip
        previous = Path(out) / "run.json"  # a resume with nothing left to make loads no model
        kept = json.loads(previous.read_text()) if previous.is_file() else {}
        return {"generator": self.config.generator, "verify_by": self.config.verify_by,
                **{k: kept.get(k) for k in WHAT_RAN_KEYS}}

    # -- the run: a plan, shards (the unit every engine drives), finish ----------------------------

    def dataset_yaml(self, out: str | Path) -> str:
        """The config YAML a resume into ``out`` compares with the dataset's: written before some options
        existed, it is compared without them (:meth:`GenerateConfig.resumed_dataset_yaml`)."""
        stored = Path(out) / "config.yaml"
        return self.config.resumed_dataset_yaml(stored.read_text()) if stored.is_file() else self.config.dataset_yaml()

    def plan(self, out: str | Path, resume: bool = False) -> RunPlan:
        """Take the lock of ``out`` and check ``out`` for this run (no data written yet); list the
        shards left to make.

        The run's shards are all of them, or those of ``config.part`` (s % N == I-1); ``pending``
        are those not yet committed (``resume``). The caller opens ``plan.writer`` before any shard
        and releases ``plan`` (its lock) when the run ends: ``with generator.plan(out) as plan:``.
        A folder another live run writes to fails here, naming that run (:mod:`diffusion_hpc.data.lock`).
        """
        cfg = self.config
        lock = OutputLock(out).acquire()
        try:
            writer = DatasetWriter(out, self.dataset_yaml(out) if resume else cfg.dataset_yaml(), resume=resume)
            ranges = shard_ranges(cfg.n, cfg.shard_size)
            own = part_shards(len(ranges), cfg.part_numbers())
            if not own:
                raise InputError(f"--part {cfg.part}: this run has only {len(ranges)} shards (n={cfg.n}, shard_size="
                                 f"{cfg.shard_size}), so part {cfg.part} holds none; use at most {len(ranges)} parts")
            pending = [s for s in own if not writer.is_complete(s)]
            if resume:
                check_resumed_estimator(cfg, Path(out))
        except BaseException:
            lock.release()
            raise
        return RunPlan(Path(out), writer, ranges, own, pending, time.perf_counter(), lock)

    def run_shard(self, s: int, writer: DatasetWriter, on_batch: Callable[[int], None] | None = None) -> ShardResult:
        """Make shard ``s`` (its batches, in the fixed composition of the run) and commit it atomically.

        Every engine calls this: the bytes of a shard depend only on the config and ``s``. ``on_batch``
        is called with the sample count of each batch done (progress).
        """
        cfg = self.config
        start = time.perf_counter()
        self.load_models()
        rows: list[ManifestRow] = []
        stage_seconds, unet_before = 0.0, self.unet_seconds
        # records are encoded and written on the stream's thread while the next batch is made; with
        # overlap, each batch's head is made on a worker thread while the previous batch's tail runs
        heads = self._heads(self._head_groups(self._batches(shard_ranges(cfg.n, cfg.shard_size)[s])))
        with writer.open_shard(s) as stream, closing(heads):
            t0 = time.perf_counter()
            for group in heads:
                while group:
                    recs, rs, count = self._tail(group.pop(0))  # the group lets go of each batch it hands on
                    stage_seconds += time.perf_counter() - t0  # this thread's time on the batch (its head's, or the wait)
                    stream.add(recs)
                    del recs  # the stream holds the records until they are written
                    rows.extend(rs)
                    if on_batch is not None:
                        on_batch(count)
                    t0 = time.perf_counter()
            for row in rows:
                row.shard = s
            stream.commit(rows)
        failures: dict[str, int] = {}
        for row in rows:
            if row.status != "ok":
                failures[row.reason] = failures.get(row.reason, 0) + 1
        end = time.perf_counter()
        return ShardResult(s, len(rows), failures, stage_seconds, stream.waited, self.unet_seconds - unet_before,
                           end - start)

    def finish(self, plan: RunPlan, done: list[ShardResult], what_ran: dict | None = None,
               execution: dict | None = None) -> GenerateResult:
        """Consolidate the manifest of the run's shards, write run.json and the preview.

        ``done``: the shards made in this session (by any engine); ``what_ran``: run.json's record
        of the sampler and weights (default: this process's models, else the previous session's);
        ``execution``: how the session ran (engine, workers), recorded in run.json with ``overlap``
        (the next batch's head made beside the current batch's tail, or not; null: not set, and no
        model loaded in this process, so each worker chose by its device).
        """
        cfg, out = self.config, plan.out
        overlap = self.overlaps() if self.stages is not None else cfg.overlap
        totals = manifest_totals(Dataset(out).iter_manifest())
        written = sum(r.count for r in done)
        write_seconds = sum(r.write_seconds for r in done)
        seconds = time.perf_counter() - plan.started
        plan.writer.finalize(plan.own, {
            **totals, "seconds_this_session": seconds, "n": cfg.n, "mode": cfg.mode,
            # the write stage is the time the pipeline waited for its shard writer (encoding runs beside it)
            "write_seconds_per_sample": write_seconds / written if written else None,
            "unet_seconds_this_session": sum(r.unet_seconds for r in done),
            "stage_seconds_this_session": sum(r.stage_seconds for r in done),
            "part": cfg.part, "shards": len(plan.own), "shards_of_run": len(plan.ranges),
            "execution": {**(execution or {"engine": "local"}), "overlap": overlap},
            **(what_ran if what_ran is not None else self.what_ran(out)),
        })  # fmt: skip
        preview = None
        try:
            preview = write_preview(out)
        except Exception as exc:  # the preview is a convenience; the dataset is complete without it
            log.warning("could not write the preview: %s", exc)
        return GenerateResult(Path(out), totals["accepted"], totals["failed"], len(plan.own) - len(plan.pending),
                              seconds, preview, totals["failures"])

    def run(self, out: str | Path, resume: bool = False) -> GenerateResult:
        """Generate ``config.n`` samples (or the shards of ``config.part``) into ``out`` in this
        process, one shard after another (resuming a killed run if ``resume``)."""
        from tqdm.auto import tqdm

        with self.plan(out, resume) as plan:  # the folder's lock, released at the end (also on errors)
            if plan.pending:
                self.load_models()  # missing or broken model files fail here, before any write
            plan.writer.open()
            bar = tqdm(total=plan.samples(plan.own), initial=plan.samples(plan.own) - plan.samples(plan.pending),
                       unit="sample", desc="generate", disable=not self.progress)
            done: list[ShardResult] = []
            for s in plan.pending:
                done.append(self.run_shard(s, plan.writer, on_batch=bar.update))
                if done[-1].failures:
                    bar.set_postfix(failure_counts(done), refresh=False)
            bar.close()
            return self.finish(plan, done)


def failure_counts(done: list[ShardResult]) -> dict[str, int]:
    """Failures by reason over the shards ``done`` (for a progress bar)."""
    out: dict[str, int] = {}
    for r in done:
        for reason, count in r.failures.items():
            out[reason] = out.get(reason, 0) + count
    return out


def run_config(config: GenerateConfig, out: str | Path, resume: bool = False) -> GenerateConfig:
    """The config a run into ``out`` makes data with: ``config``, or on a resume of a dataset made under an
    earlier default, ``config`` with that option as the dataset recorded it, where ``config`` leaves it
    unset (:meth:`~diffusion_hpc.config.generate.GenerateConfig.resumed_config`)."""
    stored = Path(out) / "config.yaml"
    return config.resumed_config(stored.read_text()) if resume and stored.is_file() else config


def generate(config: GenerateConfig, out: str | Path, resume: bool = False, progress: bool = True) -> GenerateResult:
    """Python API of ``dhpc generate`` on the local engine: validate inputs, then generate into ``out``.

    ``diffusion_hpc.engine.generate`` takes the same arguments and also runs ``engine: ray``.
    """
    return Generator(run_config(config, out, resume), progress=progress).run(out, resume=resume)
