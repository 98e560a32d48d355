"""The config of ``dhpc generate``.

The CLI builds a :class:`GenerateConfig` from its flags (or ``--config FILE`` plus flags), the
Python API takes the same object, and the dataset stores it, resolved, as ``config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from diffusion_hpc.config.base import CommandConfig, Strict, build, check_range
from diffusion_hpc.config.estimate import LandmarkView, check_landmark_views, check_lifter
from diffusion_hpc.errors import ConfigError
from diffusion_hpc.runtime.compiler import find_cpp_compiler
from diffusion_hpc.runtime.device import check_device_name


class CameraConfig(Strict):
    """How cameras are sampled per sample (angles in degrees)."""

    fov_deg: tuple[float, float] = (35.0, 65.0)
    """vertical field of view"""
    yaw_deg: tuple[float, float] = (-180.0, 180.0)
    """heading of the body about the vertical axis (0 = facing the camera)"""
    elevation_deg: tuple[float, float] = (-10.0, 35.0)
    """camera height: positive looks down on the person"""
    roll_deg: tuple[float, float] = (-8.0, 8.0)
    fill: tuple[float, float] = (0.5, 0.92)
    """share of the image's limiting side the person spans (the whole body is always in frame)"""

    _fov = field_validator("fov_deg")(check_range("fov_deg"))
    _fill = field_validator("fill")(check_range("fill"))

    @field_validator("fov_deg")
    @classmethod
    def _fov_bounds(cls, v):
        if not (5.0 <= v[0] and v[1] <= 120.0):
            raise ValueError(f"fov_deg must lie in [5, 120], got {v}")
        return v

    @field_validator("fill")
    @classmethod
    def _fill_bounds(cls, v):
        if not (0.05 <= v[0] and v[1] <= 1.0):
            raise ValueError(f"fill must lie in [0.05, 1], got {v}")
        return v


class ShapeConfig(Strict):
    """Body shape sampling: Anny's phenotype distribution (calibrated on WHO height/age data)."""

    age_years: tuple[float, float] = (16.0, 70.0)
    """morphological age range sampled uniformly (the distribution then gives height, weight...)"""

    _age = field_validator("age_years")(check_range("age_years"))


class RenderBaselineConfig(Strict):
    """The render-baseline generator (shaded body over a background)."""

    backgrounds: Optional[Path] = None
    """folder of background images (jpg/png/webp); default: procedural backgrounds"""
    augment: bool = True
    """blur / noise / colour augmentation"""


@dataclass(frozen=True)
class Preset:
    """Sampler settings of a generation preset.

    Attributes:
        scheduler: scheduler name (see :data:`SCHEDULERS`).
        txt2img_steps: denoising steps of the start image.
        regen_steps: nominal steps of the regeneration (``round(strength * regen_steps)`` run, at least 1).
        guidance: classifier-free guidance scale; <= 1 turns guidance off (one UNet eval per step).
        strength: SDEdit noise strength of the regeneration.
        timestep_spacing: diffusers' ``timestep_spacing`` forced on the scheduler (``trailing``: the
            first of few steps starts at the last training timestep, as Turbo backbones need); None
            keeps the backbone's own scheduler config.
    """

    scheduler: str
    txt2img_steps: int
    regen_steps: int
    guidance: float
    strength: float = 0.7
    timestep_spacing: Optional[str] = None


#: ``original``: the paper's settings (DDIM in place of SD v1-4's PNDM: same step count, exact counts).
#: ``default``: DPM-Solver++ (2M) at 20 steps: 40 + 28 = 68 UNet evals per mode-T sample (original: 170).
#: ``fast``: LCM (an LCM-distilled backbone, or an LCM- / Hyper-SD LoRA), guidance off: 4 + round(0.7 * 4) = 7
#: per mode-T sample, 3 in mode R, 4 in mode D; ``--scheduler tcd`` for TCD- / Hyper-SD TCD LoRAs.
#: ``turbo``: SD-/SDXL-Turbo (adversarially distilled), Euler ancestral on trailing timesteps, guidance 0,
#: as diffusers' Turbo guide runs them: 1 txt2img step, img2img 2 steps at strength 0.5 (1 runs): 1 + 1 = 2.
PRESETS: dict[str, Preset] = {
    "original": Preset("ddim", 50, 50, 7.5),
    "default": Preset("dpm++", 20, 20, 7.5),
    "fast": Preset("lcm", 4, 4, 1.0),
    "turbo": Preset("euler_a", 1, 2, 0.0, strength=0.5, timestep_spacing="trailing"),
}

#: scheduler names accepted by ``scheduler`` and the presets
SCHEDULERS: tuple[str, ...] = ("ddim", "pndm", "dpm++", "dpm++sde", "unipc", "euler", "euler_a", "lcm", "tcd")
#: few-step (consistency-distilled) schedulers: their own img2img schedule (``set_timesteps(n, strength=s)``
#: spreads the n steps over the distillation timesteps below s), and they expect guidance off (or embedded)
FEW_STEP_SCHEDULERS: tuple[str, ...] = ("lcm", "tcd")
#: TCD's ``eta`` (the paper's gamma: share of each step's noise drawn afresh; diffusers' and the paper's default)
TCD_ETA = 0.3

SchedulerName = Literal["ddim", "pndm", "dpm++", "dpm++sde", "unipc", "euler", "euler_a", "lcm", "tcd"]


class SamplerConfig(Strict):
    """The diffusion sampler. ``preset`` names a whole set of values; any field given overrides it.

    Fields left at None take the preset's value when the config is validated, so a stored config
    (the dataset's ``config.yaml``) holds the values that ran.
    """

    preset: Literal["original", "default", "fast", "turbo"] = "default"
    """original (the paper: DDIM, 50 steps, guidance 7.5), default (DPM++ 2M, 20 steps), fast (LCM / TCD
    backbones or LoRAs: 4 steps, guidance off), turbo (SD-/SDXL-Turbo: 1 step, guidance 0)"""
    scheduler: Optional[SchedulerName] = None
    """scheduler of both the start image and the regeneration"""
    txt2img_steps: Optional[int] = Field(None, ge=1, le=1000)
    """denoising steps of the start image (mode T)"""
    steps: Optional[int] = Field(None, ge=1, le=1000)
    """nominal steps of the regeneration; round(strength x steps) of them (at least 1) run on a start image"""
    strength: Optional[float] = Field(None, gt=0.0, le=1.0)
    """SDEdit noise strength of the regeneration (the original: 0.7)"""
    guidance: Optional[float] = Field(None, ge=0.0, le=50.0)
    """classifier-free guidance scale; <= 1: off (one UNet evaluation per step)"""
    controlnet_scale: float = Field(1.0, ge=0.0, le=4.0)
    """ControlNet conditioning scale (--generator controlnet)"""
    blur_prob: float = Field(0.0, ge=0.0, le=1.0)
    """probability of the Gaussian-blur augmentation (radius U(1, 2.5)) of the regenerated image"""

    @model_validator(mode="after")
    def _resolve(self):
        p, d = PRESETS[self.preset], self.__dict__  # through __dict__: validate_assignment would re-enter
        for name, value in (("scheduler", p.scheduler), ("txt2img_steps", p.txt2img_steps),
                            ("steps", p.regen_steps), ("strength", p.strength), ("guidance", p.guidance)):
            if d[name] is None:
                d[name] = value
        return self


#: the generators that regenerate with a diffusion backbone (``--generator``; ``render`` is the
#: baseline). The start image of mode T always comes from the backbone's text-to-image pipeline.
DIFFUSION_GENERATORS = ("depth2img", "controlnet")
#: the regeneration prompt of modes R and D when no --prompt / --prompts is given
DEFAULT_PROMPT = "a photo of a person"
#: shards hold at most this many samples by default (modes T/R: rounded down to a multiple of k)
DEFAULT_SHARD_SIZE = 256


#: most people one image holds (``--people``)
MAX_PEOPLE = 16
#: modes T and R: a person region of a start image must span this share of the image height to get a
#: label (``--min-person-height``; the detector's recall goal starts at 10 %)
MIN_PERSON_HEIGHT = 0.1


#: fields that choose how a run is executed, not what it makes: left out of the dataset's config.yaml,
#: so --resume (and dhpc merge) accept a run continued with another engine or worker count
EXECUTION_FIELDS = ("engine", "ray_address", "workers", "gpus_per_worker", "overlap")

#: options added after datasets were first made, each with how a run makes data as the runs before the
#: option did: a dataset whose config.yaml lacks one was made that way (GenerateConfig.made_as_before)
ADDED_OPTIONS = {
    "compile_fit": "without --compile-fit",
    "estimate_batch": "with --estimate-batch 1",
    "verify_by": "with --verify-by estimate",
    "keypoint_model": "without --keypoint-model",
    "landmark_runtime": "with --landmark-runtime mediapipe",
    "landmark_views": "with --landmark-views image",
}


#: options whose default changed after datasets were made with the earlier one: a resume that leaves the
#: option unset continues with the value the dataset recorded (:meth:`GenerateConfig.resumed_config`).
#: ``verify_by``: ``landmarks`` -> ``label-box`` with the MediaPipe estimator; ``compile_fit``: off ->
#: on from :data:`COMPILE_FIT_FROM` samples.
CHANGED_DEFAULTS = ("verify_by", "compile_fit")

#: ``compile_fit`` left unset compiles the MediaPipe fit of runs of at least this many samples (``n``, the
#: whole dataset's, so every part and worker of a run decides alike). The compilation costs about 120 s
#: of CPU in a fresh process (71 s, and about 50 s more at the first batch with masks; about 15 s with
#: inductor's on-disk cache warm) and saves 14-16 ms of CPU per accepted sample at batch 16, k = 3
#: (``scripts/bench_modes.py --n 96 --photo-finals``, eager -> ``--compile-fit``: mode R 80.7 -> 65.8,
#: T 81.5 -> 66.9, the fit 28.2 -> 12.6 and 26.3 -> 12.3): it pays for itself from about 8,000 samples
#: a process with a cold cache, about 1,000 with a warm one.
COMPILE_FIT_FROM = 10_000


class GenerateConfig(CommandConfig):
    """Everything a ``dhpc generate`` run depends on. Same config + seed = same dataset, byte for byte.

    Options left at None are resolved by mode when the config is validated (and stored resolved):
    ``generator`` (D: render; T, R: depth2img), ``k`` (D: 1; T, R: 3), ``verify`` (True for
    diffusion generators), ``shard_size`` (D: 256; T, R: the largest multiple of k <= 256).
    """

    mode: Literal["T", "R", "D"] = "D"
    """T: from text prompts; R: from the user's real images (``guides``); D: from body poses"""
    poses: str = "builtin"
    """mode D: ``builtin`` (CMU mocap retargeted to Anny), ``builtin-hard`` (those the shipped prior calls hard) or a pose file (.npz, see diffusion_hpc.poses.io)"""
    people: Optional[str] = None
    """people per image, ``N`` or ``MIN-MAX``. Mode D: each sample draws 2, 3 or 4 (``2-4``) from its own seed;
    they stand on one ground plane without interpenetrating and the camera frames the group (default: one).
    Modes T and R: every person the segmenter finds in a start image gets a label, the largest MAX of them;
    a start image with fewer than MIN is rejected (default: 1 to 16)"""
    min_person_height: float = Field(default=MIN_PERSON_HEIGHT, gt=0.0, le=1.0)
    """modes T and R: a person region of a start image must span this share of the image height to get a
    label; smaller people stay in the person mask (regenerated without depth)"""

    @field_validator("people")
    @classmethod
    def _people(cls, v):
        if v is None:
            return v
        try:
            lo, _, hi = str(v).strip().partition("-")
            low, high = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"people must be N or MIN-MAX (e.g. 2-4), got {v!r}") from None
        if not 1 <= low <= high <= MAX_PEOPLE:
            raise ValueError(f"people {v!r}: need 1 <= MIN <= MAX <= {MAX_PEOPLE} (e.g. 2-4)")
        return f"{low}-{high}" if high != low else str(low)

    def people_range(self) -> tuple[int, int]:
        """(fewest, most) people per image (``people``; not set: mode D (1, 1), modes T and R (1, MAX_PEOPLE))."""
        if self.people is None:
            return (1, 1) if self.mode == "D" else (1, MAX_PEOPLE)
        lo, _, hi = self.people.partition("-")
        return int(lo), int(hi or lo)
    prompt: Optional[str] = None
    """an action phrase put into the prompt templates ("doing a backflip"), or a full prompt (with
    ``{action}`` replaced, or more than one sentence-like phrase: see pipeline.requests.prompt_for_guide)"""
    prompts: Optional[Path] = None
    """a text file of prompts / action phrases, one per line (blank lines and # comments skipped)"""
    guides: Optional[Path] = None
    """mode R: folder of the user's real images (start images)"""
    n: int = Field(16, ge=1)
    seed: int = Field(0, ge=0)
    generator: Optional[Literal["render", "depth2img", "controlnet"]] = None
    backbone: Optional[str] = None
    """diffusion backbone: local directory, dhpc bundle, or hub id from the local cache (offline)"""
    controlnet: Optional[str] = None
    """ControlNet-depth model (``--generator controlnet``); overrides a bundle's"""
    lora: Optional[str] = None
    """LoRA weights of a domain-fine-tuned backbone (.safetensors file or folder; needs a diffusion generator)"""
    lora_scale: float = Field(1.0, ge=0.0, le=4.0)
    """LoRA strength (0: the plain backbone)"""
    segmenter: str = "mediapipe"
    """``mediapipe`` (person mask only) or a transformers instance-segmentation checkpoint (occluders too)"""
    estimator: Optional[Literal["mediapipe", "hmr", "spin", "hmr2"]] = None
    """mesh estimator of the start images (T, R), label verification and cycles: mediapipe (landmarks + body-model
    fit; also when not set), hmr (a regressor from dhpc train), spin (SPIN's model_checkpoint.pt) or hmr2 (a 4D-Humans
    HMR 2.0 checkpoint); spin and hmr2 give SMPL bodies"""
    estimator_checkpoint: Optional[Path] = None
    """hmr / spin / hmr2: the regressor's weights (a dhpc train run folder or RUN/best; SPIN's model_checkpoint.pt;
    a 4D-Humans .ckpt)"""
    lifter: Optional[str] = None
    """the MediaPipe fit's 3D target: on (the shipped learned lifter of MediaPipe's landmarks; also when not set),
    off (MediaPipe's world landmarks) or a lifter weights file made by scripts/train_lifter.py"""
    landmark_views: Optional[list[LandmarkView]] = None
    """the MediaPipe estimator: the views of each start image's person MediaPipe Pose reads, their landmarks merged
    (per landmark the median; diffusion_hpc.estimate.views): image (as it is), mirror (flipped left to
    right), grey (the background away from the person painted grey). Not set: image (one reading); image mirror
    grey costs about three"""
    compile_fit: Optional[bool] = None
    """the MediaPipe fit with Anny, compiled (torch.compile; needs a C++ compiler): the same labels to 0.3 mm, about
    half the fit's CPU per fitted image, after a one-off compilation of one to two minutes per process (per worker;
    about 15 s with inductor's cache warm). Not set: on for runs of 10,000 samples or more that fit Anny bodies with
    MediaPipe when a C++ compiler is found, else off (config.yaml records which)"""
    sampler: SamplerConfig = SamplerConfig()
    """the diffusion sampler (preset, scheduler, steps, strength, guidance, ControlNet scale, blur)"""
    k: Optional[int] = Field(None, ge=1, le=64)
    """modes T, R: variants per guide (the estimate + k-1 augmented poses)"""
    hard_only: bool = False
    """modes T, R: keep only guides whose prior score >= the prior's hard threshold"""
    min_agreement: Optional[float] = Field(None, ge=0.0, le=1.0)
    """drop samples whose pck_agreement (label verification) is below this"""
    verify: Optional[bool] = None
    """run label verification on the final images (default: yes for diffusion generators)"""
    verify_by: Optional[Literal["landmarks", "label-box", "estimate", "keypoint-model"]] = None
    """what label verification reads each person's 2D keypoints from: ``label-box`` (MediaPipe's landmark model
    alone on the region the label's joints give, without its person detector; the default with the MediaPipe
    estimator, see :mod:`diffusion_hpc.pipeline.verify`), ``landmarks`` (the MediaPipe estimator's detector
    alone on the whole image, without its body fit; the default before label-box), ``estimate`` (the
    estimator's whole estimate: the MediaPipe fit's body, or a regressor's) or ``keypoint-model`` (a top-down
    keypoint model, ``keypoint_model``, on the box of each label's silhouette; any estimator). Set when
    verification runs (null otherwise)"""
    keypoint_model: Optional[str] = None
    """``verify_by keypoint-model``: a transformers top-down COCO-17 keypoint checkpoint (ViTPose), a local folder
    or a hub id in the local Hugging Face cache; runs on ``device`` in ``dtype``"""
    landmark_runtime: Optional[Literal["mediapipe", "torch"]] = None
    """the MediaPipe estimator: how MediaPipe Pose's person detector and landmark model read the start images'
    people (the head's whole-image pass) and the labels' regions (``verify_by label-box``): ``mediapipe``
    (MediaPipe's own graph, one image at a time on the CPU) or ``torch`` (the same weights from the mediapipe
    wheel as torch operations, all images of a batch in one call on ``device``, in ``dtype``; float16 where
    ``dtype`` is bfloat16, which loses the models' precision). The two agree within 0.4 px but on rare regions
    (tests/test_landmark_model.py, tests/test_pose_detector_model.py). Not set: torch when the run's device is a
    GPU, else mediapipe; run.json records which ran. With torch the readings on the people's masks that follow
    a whole-image pass finding no one large run there too, a round of regions in one call; only the tile search of
    an image without a mask stays MediaPipe's own"""
    cycles: int = Field(0, ge=0, le=10)
    """extra estimate -> regenerate cycles on the output image (diffusion generators)"""
    body_model: Literal["anny", "smpl", "smplx"] = "anny"
    smpl_path: Optional[Path] = None
    """SMPL / SMPL-X model file or folder (``--smpl-path``), needed for body_model smpl/smplx"""
    label_models: Optional[tuple[Literal["anny", "smpl", "smplx"], ...]] = None
    """body models each sample is labelled with (``anny,smpl``): the run's own, plus each other one
    fitted to the sample's body (stored as sample["labels"][model], see dhpc convert; smpl / smplx
    need ``smpl_path``)"""

    @field_validator("label_models")
    @classmethod
    def _label_models(cls, v):
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"label_models {','.join(v)} names a body model twice; name each once")
        return v

    def extra_label_models(self) -> tuple[str, ...]:
        """The label models other than the run's own body model (those fitted to each sample)."""
        return tuple(m for m in (self.label_models or ()) if m != self.body_model)
    prior_path: Optional[Path] = None
    """pose-prior weights: an Anny prior file (default: the shipped prior) or VPoser (SMPL)"""
    image_size: tuple[int, int] = (512, 512)
    """(height, width) of the saved images"""
    batch_size: int = Field(16, ge=1, le=1024)
    """samples per batch (modes T, R: max(1, batch_size // k) guides per batch)"""
    estimate_batch: int = Field(16, ge=1, le=1024)
    """modes T, R: start images segmented and fitted in one call (whole batches' guides, the nearest number of
    batches, at least one): a fit call's cost is mostly per call (the MediaPipe fit's CPU ms per image at 1 / 5 /
    16 / 40 images a call: eager 1059 / 300 / 114 / 76, compiled 308 / 84 / 44 / 34), so a larger group costs less
    CPU per sample; the diffusion batches stay batch_size"""
    shard_size: Optional[int] = Field(None, ge=1)
    renderer: Literal["auto", "gl", "torch"] = "auto"
    device: str = "auto"
    """torch device of the diffusion models and an instance segmenter: auto (the first CUDA device, else the CPU),
    cpu, cuda, cuda:N or mps (the body model, renderer, MediaPipe and the body fit run on the CPU)"""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """precision of the diffusion models: auto (float16 on CUDA, float32 on the CPU), float32, float16
    (GPU only) or bfloat16; everything else stays float32"""
    offload: Literal["none", "model", "sequential"] = "none"
    """diffusion weights kept on the CPU between uses (CUDA only): model (whole models, small slowdown) or
    sequential (layer by layer: least GPU memory, slow); none keeps them on the device"""
    vae_slicing: bool = False
    """decode the batch's latents one image at a time (less GPU memory for large batches)"""
    vae_tiling: bool = False
    """decode / encode large images in overlapping tiles (less GPU memory at high resolution)"""

    _device = field_validator("device")(check_device_name)
    _lifter = field_validator("lifter")(check_lifter)
    _landmark_views = field_validator("landmark_views")(check_landmark_views)

    @model_validator(mode="after")
    def _memory_options(self):
        generator = self.generator or ("render" if self.mode == "D" else "depth2img")  # as _modes resolves it
        if generator == "render" and (self.offload != "none" or self.vae_slicing or self.vae_tiling):
            raise ValueError("offload: --offload / --vae-slicing / --vae-tiling are memory options of the diffusion "
                             "generators; the render baseline runs no diffusion model, leave them out")
        return self

    camera: CameraConfig = CameraConfig()
    shape: ShapeConfig = ShapeConfig()
    render_baseline: RenderBaselineConfig = RenderBaselineConfig()
    engine: Literal["local", "ray"] = "local"
    """local: shards one after another in this process; ray: shards spread over Ray workers (same dataset)"""
    ray_address: Optional[str] = None
    """engine ray: the cluster to join, ``auto`` or HOST:PORT (default: start a Ray instance on this machine)"""
    workers: Optional[int] = Field(None, ge=1, le=100000)
    """engine ray: worker actors, each loads the models once (default: the cluster's CPUs, or its GPUs / gpus_per_worker)"""
    gpus_per_worker: float = Field(0.0, ge=0.0, le=64.0)
    """engine ray: GPUs reserved per worker (fractions share a GPU)"""
    part: Optional[str] = None
    """I/N: make only the shards s with s % N == I-1 into this folder (job arrays; ``dhpc merge`` joins the parts)"""
    overlap: Optional[bool] = None
    """make the next batch's head (start images, segmentation, estimate, prior, augmentation; mode D: poses, body,
    camera) on a worker thread while the current batch's tail (render, image generator, cycles, verification)
    runs, so a GPU is kept fed; not set: on when the diffusion models run on a GPU (``device`` cuda or mps), off
    on the CPU, where the two threads would only compete for the cores. The samples are the same either way"""

    @field_validator("part")
    @classmethod
    def _part(cls, v):
        if v is None:
            return v
        try:
            i, n = (int(x) for x in v.split("/"))
        except ValueError:
            raise ValueError(f"part must be I/N (e.g. 1/4 for the first of 4 parts), got {v!r}") from None
        if not (n >= 1 and 1 <= i <= n):
            raise ValueError(f"part {v!r}: I must lie in 1..N (e.g. 1/{max(n, 1)}), got I={i}, N={n}")
        return f"{i}/{n}"

    @model_validator(mode="after")
    def _engine_fields(self):
        if self.engine != "ray":
            given = [f for f in ("ray_address", "workers") if getattr(self, f) is not None]
            given += ["gpus_per_worker"] if self.gpus_per_worker else []
            if given:
                raise ValueError(f"{given[0]}: applies to --engine ray (this run's engine is {self.engine!r}); "
                                 f"pass --engine ray or leave --{given[0].replace('_', '-')} out")
        return self

    def part_numbers(self) -> tuple[int, int] | None:
        """``(I, N)`` of ``part``, or None for a whole run."""
        if self.part is None:
            return None
        i, n = self.part.split("/")
        return int(i), int(n)

    def dataset_yaml(self) -> str:
        """The YAML a dataset stores (``config.yaml``): the config without the execution fields
        (:data:`EXECUTION_FIELDS`), which change how a run is spread, not what it makes."""
        import yaml

        data = self.model_dump(mode="json", exclude=set(EXECUTION_FIELDS))
        return yaml.safe_dump(data, sort_keys=True)

    def made_as_before(self, option: str) -> bool:
        """Whether this config makes data as runs did before ``option`` (a key of :data:`ADDED_OPTIONS`) existed."""
        if option == "compile_fit":
            return not self.compile_fit
        if option == "estimate_batch":  # one batch a head
            return self.mode == "D" or self.guides_per_estimate == self.guides_per_batch
        if option == "verify_by":  # verification fitted a body
            return self.verify_by in (None, "estimate")
        if option == "keypoint_model":
            return self.keypoint_model is None
        if option == "landmark_runtime":  # MediaPipe's own graph read the labels' boxes
            return self.landmark_runtime in (None, "mediapipe")
        if option == "landmark_views":  # one reading of each image
            return self.landmark_views in (None, ["image"])
        raise KeyError(option)

    def resumed_config(self, stored_yaml: str) -> GenerateConfig:
        """This config continuing a dataset whose stored ``config.yaml`` is ``stored_yaml``: an option of
        :data:`CHANGED_DEFAULTS` this config leaves unset (not given by a flag or its config file) takes the
        value the dataset recorded, so a dataset made under an earlier default continues as it was made
        (a resume with the same flags as the killed run). Itself when nothing changes.

        Raises:
            ConfigError: the recorded value does not hold with this config's other options.
        """
        import yaml

        stored = yaml.safe_load(stored_yaml) or {}
        kept = {o: stored[o] for o in CHANGED_DEFAULTS
                if o not in self.model_fields_set and stored.get(o) is not None and stored[o] != getattr(self, o)}
        if not kept:
            return self
        return build(type(self), {**self.model_dump(mode="json"), **kept},
                     source=f"the dataset's config.yaml ({', '.join(kept)})")

    def resumed_dataset_yaml(self, stored_yaml: str) -> str:
        """:meth:`dataset_yaml` to compare with a dataset's stored ``config.yaml`` (``stored_yaml``) on a resume:
        the options the stored config lacks (:data:`ADDED_OPTIONS`: the dataset was made before them) are left
        out where this config makes data as before them.

        Raises:
            ConfigError: this config uses such an option otherwise (names the flags that continue the dataset).
        """
        import yaml

        stored = yaml.safe_load(stored_yaml) or {}
        missing = [o for o in ADDED_OPTIONS if o not in stored]
        differ = [o for o in missing if not self.made_as_before(o)]
        if differ:
            raise ConfigError(
                f"--resume: the dataset was made before {' and '.join('--' + o.replace('_', '-') for o in differ)} "
                f"existed, so it continues only as it was made: {', '.join(ADDED_OPTIONS[o] for o in differ)}; "
                "or choose a new --out")
        data = self.model_dump(mode="json", exclude=set(EXECUTION_FIELDS) | set(missing))
        return yaml.safe_dump(data, sort_keys=True)

    @model_validator(mode="before")
    @classmethod
    def _sampler_keys_of_older_configs(cls, data):
        """Configs written before the sampler block had ``preset`` and ``blur_prob`` at the top."""
        if isinstance(data, dict) and ("preset" in data or "blur_prob" in data):
            data = dict(data)
            sampler = dict(data.get("sampler") or {})
            for key in ("preset", "blur_prob"):
                if key in data:
                    sampler.setdefault(key, data.pop(key))
            data["sampler"] = sampler
        return data

    @field_validator("image_size")
    @classmethod
    def _size(cls, v):
        if not all(32 <= s <= 4096 for s in v):
            raise ValueError(f"image_size sides must lie in [32, 4096], got {v}")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if v is not None and not v.strip():
            raise ValueError("prompt is empty; pass an action phrase such as 'doing a backflip'")
        return v

    @model_validator(mode="after")
    def _smpl_needs_path(self):
        needs = [m for m in (self.body_model, *(self.label_models or ())) if m in ("smpl", "smplx")]
        if needs and self.smpl_path is None and self.body_model not in ("smpl", "smplx"):
            raise ValueError(f"label_models {needs[0]!r} needs the model files: pass --smpl-path PATH "
                             "(register and download them from smpl.is.tue.mpg.de / smpl-x.is.tue.mpg.de)")
        if self.body_model in ("smpl", "smplx") and self.smpl_path is None:
            raise ValueError(
                f"body_model {self.body_model!r} needs the model files: pass --smpl-path PATH "
                "(register and download them from smpl.is.tue.mpg.de / smpl-x.is.tue.mpg.de)"
            )
        return self

    @model_validator(mode="after")
    def _modes(self):
        # validate_assignment would re-run this validator on each assignment: set through __dict__
        d = self.__dict__
        guided = self.mode in ("T", "R")
        if d["generator"] is None:
            d["generator"] = "depth2img" if guided else "render"
        if d["k"] is None:
            d["k"] = 3 if guided else 1
        if d["verify"] is None:
            d["verify"] = d["generator"] in DIFFUSION_GENERATORS
        if d["shard_size"] is None:
            d["shard_size"] = max(d["k"], DEFAULT_SHARD_SIZE - DEFAULT_SHARD_SIZE % d["k"])
        diffusion = d["generator"] in DIFFUSION_GENERATORS
        if self.prompt is not None and self.prompts is not None:
            raise ValueError("prompt: give either --prompt TEXT or --prompts FILE, not both")
        if self.mode == "T" and self.prompt is None and self.prompts is None:
            raise ValueError("prompt: mode T needs a text prompt: pass --prompt 'doing a backflip' or --prompts FILE")
        if self.mode == "R" and self.guides is None:
            raise ValueError("guides: mode R needs the folder of your real images: pass --guides DIR")
        if self.mode != "R" and self.guides is not None:
            raise ValueError(f"guides: --guides is for mode R (this run is mode {self.mode}); pass --mode R")
        if guided and not diffusion:
            raise ValueError(f"generator: mode {self.mode} regenerates the image with a diffusion model; "
                             "pass --generator depth2img or controlnet (render is for mode D)")
        if diffusion and self.backbone is None:
            raise ValueError(f"backbone: generator {d['generator']!r} needs a diffusion backbone: pass --backbone "
                             "DIR_OR_HUB_ID (for a smoke test: `dhpc backbone tiny --out DIR`)")
        if self.lora is not None and d["generator"] not in DIFFUSION_GENERATORS:
            raise ValueError("lora: LoRA weights adapt a diffusion backbone; pass --generator depth2img|controlnet "
                             "with --backbone, or leave --lora out")
        if self.controlnet is not None and d["generator"] != "controlnet":
            raise ValueError(f"controlnet: --controlnet is used by --generator controlnet, not {d['generator']!r}")
        if self.mode == "D" and d["k"] != 1:
            raise ValueError("k: variants per guide apply to modes T and R; mode D draws every sample's pose "
                             "from --poses (leave -k out)")
        if self.mode == "D" and self.people == "1":
            d["people"] = None  # one person: mode D's default, stored as such (a run given --people 1 resumes without it)
        if self.mode == "D" and self.hard_only:
            raise ValueError("hard_only: the hard-pose filter applies to modes T and R (estimated poses)")
        if guided and d["shard_size"] % d["k"]:
            raise ValueError(f"shard_size: {d['shard_size']} is not a multiple of k={d['k']}; shards hold whole "
                             f"guides so that resume remakes start images identically (e.g. {d['shard_size'] - d['shard_size'] % d['k'] or d['k']})")
        if self.cycles and not diffusion:
            raise ValueError("cycles: extra cycles regenerate with a diffusion generator, not the render baseline")
        if self.sampler.blur_prob and not diffusion:
            raise ValueError("blur_prob: applies to diffusion generators (the render baseline has its own augmentation)")
        preset = PRESETS[self.sampler.preset]
        if self.mode == "D" and not self.cycles and self.sampler.strength != preset.strength:
            raise ValueError(f"sampler.strength: mode D regenerates from noise (no start image to keep; only --cycles "
                             f"regenerate from an image), so --strength {self.sampler.strength} would change nothing; "
                             "leave it out")
        if self.mode != "T" and self.sampler.txt2img_steps != preset.txt2img_steps:
            raise ValueError(f"sampler.txt2img_steps: only mode T makes start images from text (this run is mode "
                             f"{self.mode}); leave --txt2img-steps out")
        if d["generator"] != "controlnet" and self.sampler.controlnet_scale != SamplerConfig().controlnet_scale:
            raise ValueError(f"sampler.controlnet_scale: --controlnet-scale applies to --generator controlnet, not "
                             f"{d['generator']!r}; leave it out or pass --generator controlnet")
        if not diffusion and (self.prompt is not None or self.prompts is not None):
            raise ValueError("prompt: the render baseline uses no prompt; pass --generator depth2img|controlnet "
                             "with --backbone to use it, or leave --prompt out")
        if diffusion and self.render_baseline != RenderBaselineConfig():
            raise ValueError("render_baseline: --backgrounds / --no-augment apply to --generator render only")
        if self.min_agreement is not None and not d["verify"]:
            raise ValueError("min_agreement: needs label verification; pass --verify (the render baseline's image "
                             "is the render itself)")
        f = 8
        if diffusion and any(s % f for s in self.image_size):
            raise ValueError(f"image_size: {tuple(self.image_size)} must be a multiple of {f} for diffusion backbones")
        return self

    @property
    def guides_per_batch(self) -> int:
        """Modes T, R: the guides of one batch, ``max(1, batch_size // k)``."""
        return max(1, self.batch_size // self.k)

    @property
    def guides_per_estimate(self) -> int:
        """Modes T, R: the guides of one head call, ``estimate_batch`` rounded to whole batches (at least one)."""
        per = self.guides_per_batch
        return per * max(1, round(self.estimate_batch / per))

    @property
    def estimates_bodies(self) -> bool:
        """True when the run estimates bodies: modes T, R (start images), verification (unless a top-down
        keypoint model reads the final images: ``verify_by keypoint-model``), cycles."""
        verifies_by_estimator = bool(self.verify) and not self.verifies_by_keypoint_model
        return self.mode in ("T", "R") or verifies_by_estimator or self.cycles > 0

    @property
    def verifies_by_keypoint_model(self) -> bool:
        """True when label verification reads the final images with the top-down keypoint model
        (``verify_by keypoint-model``, ``keypoint_model``)."""
        return bool(self.verify) and self.verify_by == "keypoint-model"

    @property
    def segments_images(self) -> bool:
        """True when the run segments images: modes T, R (start images), verification (the final image's
        person mask), cycles."""
        return self.mode in ("T", "R") or bool(self.verify) or self.cycles > 0

    @property
    def mesh_estimator(self) -> str:
        """The mesh estimator that runs (``estimator``; not set: ``"mediapipe"``)."""
        return self.estimator or "mediapipe"

    @model_validator(mode="after")
    def _estimator(self):  # after _modes: reads the resolved verify
        name = self.mesh_estimator
        fits_with_mediapipe = name == "mediapipe" and self.estimates_bodies
        if self.lifter is not None and not fits_with_mediapipe:
            raise ValueError(f"lifter: --lifter {self.lifter} sets the MediaPipe fit of modes T and R, --verify and "
                             f"--cycles; this run does not fit with MediaPipe (estimator {name}, mode {self.mode}), "
                             "leave --lifter out")
        fits_anny = fits_with_mediapipe and self.body_model == "anny"
        if self.compile_fit and not fits_anny:
            raise ValueError(f"compile_fit: --compile-fit compiles the MediaPipe fit of Anny bodies in modes T and R, "
                             f"--verify and --cycles; this run does not fit one (estimator {name}, body model "
                             f"{self.body_model}, mode {self.mode}), leave --compile-fit out")
        if self.landmark_views is not None and not fits_with_mediapipe:
            raise ValueError(f"landmark_views: --landmark-views sets what the MediaPipe estimator reads; this run "
                             f"estimates no bodies with it (estimator {name}, mode {self.mode}), leave it out")
        d = self.__dict__  # as _modes: validate_assignment would re-run this validator on each assignment
        if self.compile_fit is None:
            d["compile_fit"] = fits_anny and self.n >= COMPILE_FIT_FROM and find_cpp_compiler() is not None
        if not self.verify:
            if self.verify_by is not None:
                raise ValueError(f"verify_by: --verify-by {self.verify_by} sets how label verification reads the final "
                                 "images; this run does not verify: pass --verify, or leave --verify-by out")
        elif self.verify_by is None:
            d["verify_by"] = "label-box" if name == "mediapipe" else "estimate"
        if self.verify_by == "keypoint-model" and self.keypoint_model is None:
            raise ValueError("keypoint_model: --verify-by keypoint-model reads each person with a top-down keypoint "
                             "model: pass --keypoint-model DIR (or a cached hub id, e.g. a ViTPose COCO checkpoint)")
        if self.keypoint_model is not None and self.verify_by != "keypoint-model":
            raise ValueError(f"keypoint_model: --keypoint-model {self.keypoint_model} is the model of --verify-by "
                             f"keypoint-model; this run verifies by {self.verify_by or 'nothing (no --verify)'}: pass "
                             "--verify-by keypoint-model, or leave --keypoint-model out")
        if self.landmark_runtime is not None and not fits_with_mediapipe:
            raise ValueError(f"landmark_runtime: --landmark-runtime {self.landmark_runtime} sets how the MediaPipe "
                             f"estimator reads people; this run has none (estimator {name}, mode {self.mode}, "
                             f"verify_by {self.verify_by}): leave --landmark-runtime out")
        if self.verify_by in ("landmarks", "label-box") and name != "mediapipe":
            raise ValueError(f"verify_by: --verify-by {self.verify_by} reads MediaPipe's landmarks without the "
                             f"fit; estimator {name} has no landmarks of its own: pass --verify-by estimate (its "
                             "estimate is the cheap reading), or leave --verify-by out")
        if name == "mediapipe":
            if self.estimator_checkpoint is not None:
                raise ValueError("estimator_checkpoint: --estimator-checkpoint gives a regressor's weights; pass "
                                 "--estimator hmr|spin|hmr2 with it, or leave it out for the MediaPipe fit")
            return self
        if self.estimator_checkpoint is None:
            raise ValueError(f"estimator_checkpoint: --estimator {name} regresses from a checkpoint: pass "
                             "--estimator-checkpoint PATH (hmr: a dhpc train run folder; spin: model_checkpoint.pt; "
                             "hmr2: a 4D-Humans .ckpt)")
        if not self.estimates_bodies:
            raise ValueError(f"estimator: mode D without --cycles, or a --verify that reads with the estimator, "
                             f"estimates no body (its poses come from --poses; --verify-by keypoint-model reads with "
                             f"its own model); leave --estimator {name} out, or pass --verify")
        if name in ("spin", "hmr2") and self.body_model != "smpl":
            raise ValueError(f"body_model: --estimator {name} regresses SMPL bodies, and the labels are its bodies; "
                             "pass --body-model smpl --smpl-path PATH (with --prior-path to VPoser's weights)")
        return self
