"""Diffusion generators: text-to-image start images and depth-conditioned regeneration.

Two backends behind :class:`~diffusion_hpc.generate.base.ImageGenerator`:

- :class:`Text2ImageGenerator` (``txt2img``): any diffusers text-to-image checkpoint (SD 1.x / 2.x /
  SDXL / LCM, loaded with ``AutoPipelineForText2Image``), optional LoRA weights. It calls the
  pipeline with per-sample initial latents (and per-sample generators), so each image depends only
  on its own seed.
- :class:`DepthRegenerator` (``depth2img`` / ``controlnet``): the original's SDEdit-style
  regeneration (DESIGN §2 step 6) with our own denoising loop on the pipeline's components (VAE,
  text encoder, UNet, scheduler, ControlNet), so the start-latent compositing and the noise at
  ``strength`` are exact and every UNet call is visible:

  1. encode the start image to latents (VAE posterior mode, scaled);
  2. replace the latents inside the human region (person mask | silhouette, minus occluders) by
     Gaussian noise (:func:`~diffusion_hpc.generate.conditioning.composite_start_latents`);
  3. noise the result to the first of the ``round(strength * steps)`` timesteps that run (at least
     one; :func:`regen_timesteps`: the last ones of the schedule, or for LCM / TCD their own img2img
     schedule below ``strength``);
  4. denoise, conditioned on the rendered depth as disparity with occluders zeroed (SD-2-depth:
     a 5th UNet input channel; ControlNet: residuals), with classifier-free guidance when
     ``guidance > 1`` (the few-step presets run without: one UNet row per sample per step);
  5. decode; optional Gaussian blur augmentation.

Few-step sampling (DESIGN §6): preset ``fast`` runs diffusers' ``LCMScheduler`` (``--scheduler tcd``:
``TCDScheduler``, eta :data:`~diffusion_hpc.config.generate.TCD_ETA`) with guidance off, for
LCM-distilled backbones and LCM- / TCD- / Hyper-SD LoRAs; preset ``turbo`` runs Euler ancestral on
``trailing`` timesteps with guidance 0 for SD-/SDXL-Turbo (1 text-to-image step; 2 nominal
regeneration steps at strength 0.5, of which 1 runs), as diffusers' Turbo guide does. Both go through
the same depth conditioning and start-latent compositing as every scheduler.

Randomness: sample i draws from its own ``torch.Generator`` seeded from ``(seeds[i], stage)``, in a
fixed order (region noise, then strength noise, then scheduler noise: the multistep noise of LCM,
TCD and Euler ancestral is drawn per sample from these generators), so its output does not depend
on the batch it is in, up to the float rounding of batched kernels (CPU convolutions and GEMMs sum
in a batch-size dependent order: ~1e-6 relative, at most 1-2 grey levels on a few pixels after
uint8 rounding). The same seed in the same batch gives identical bytes.

UNet evaluations are counted by a forward pre-hook on the UNet (rows of each call; a guided step
passes 2 rows per sample) and reported per sample in ``GenerationResult.unet_evals``.

SDXL backbones (UNet ``addition_embed_type="text_time"``): prompts go through both text encoders
(cross-attention on the concatenated hidden states) and the UNet and ControlNet get the "added
conditions": the second encoder's pooled embedding and the 6 size / crop ids (original size = target
size = the image size, crop (0, 0)), as ``StableDiffusionXLControlNetPipeline`` does; the tiny SDXL
backbone's regeneration from noise matches that pipeline exactly (tests/test_diffusion_sdxl.py).

LoRA weights (``lora=``): a ``.safetensors`` file or a folder holding one (``save_lora_weights``
writes ``pytorch_lora_weights.safetensors``), loaded with peft into the UNet (and text encoders, if
the file has them). Pickled ``.bin`` weights are refused: nothing is ever unpickled.

Devices (``device=``, ``dtype=``, :mod:`diffusion_hpc.runtime.device`): every component is moved
once, at load, to the device and precision (``auto``: float16 on CUDA, float32 on the CPU). The
noise is always drawn by the per-sample CPU generators and then moved (as diffusers recommends),
so a seed means the same noise on every device; outputs come back to the CPU as uint8. SDXL's VAE
overflows in float16: with a float16 SDXL backbone it runs in float32 for each encode / decode
(its ``force_upcast``, as diffusers' SDXL pipelines do). ``offload`` (CUDA only) keeps the weights
on the CPU between uses (diffusers' model / sequential CPU offload); ``vae_slicing`` /
``vae_tiling`` decode one image / one tile at a time. Attention is diffusers' default, PyTorch's
scaled-dot-product attention (nothing here replaces the attention processors).

Weights are loaded offline only (:mod:`diffusion_hpc.runtime.weights`).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from diffusion_hpc.config import SCHEDULERS
from diffusion_hpc.config.generate import FEW_STEP_SCHEDULERS, TCD_ETA
from diffusion_hpc.data.seeds import STAGE_BLUR, STAGE_REGEN, STAGE_TXT2IMG, stage_seed
from diffusion_hpc.errors import ConfigError, MissingModelError
from diffusion_hpc.generate import conditioning as C
from diffusion_hpc.generate.base import (
    GenerationBatch,
    GenerationResult,
    SamplerRun,
    SamplerSettings,
    get_preset,
    guidance_factor,
    strength_steps,
)
from diffusion_hpc.generate.conditioning import human_region
from diffusion_hpc.runtime.device import Placement, check_offload, dtype_name, resolve_placement
from diffusion_hpc.runtime.weights import (
    BackboneSet,
    backbone_set,
    check_models,
    check_tokenizer,
    ensure_offline,
    is_tiny,
)


def torch_generators(seeds: Sequence[int], stage: int):
    """One CPU ``torch.Generator`` per sample, seeded with :func:`stage_seed`."""
    import torch

    return [torch.Generator("cpu").manual_seed(stage_seed(s, stage)) for s in seeds]


def per_sample_randn(generators, shape: tuple[int, ...], device="cpu", dtype=None):
    """(B, *shape) standard normal noise, row i drawn from ``generators[i]`` (on CPU, then moved)."""
    import torch

    rows = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype or torch.float32)


# --------------------------------------------------------------------------------------------
# counting


class EvalCounter:
    """Counts the rows (sample evaluations) and calls of a module's forward, and its wall time.

    Attached once per module (``EvalCounter.attach(unet)`` returns the existing counter if any), so
    generators that share a UNet share the count; each generator call resets it first.
    """

    def __init__(self, module):
        self.rows = 0
        self.calls = 0
        self.seconds = 0.0
        self._t0 = 0.0
        module.register_forward_pre_hook(self._pre, with_kwargs=True)
        module.register_forward_hook(self._post)

    @classmethod
    def attach(cls, module) -> "EvalCounter":
        counter = getattr(module, "_dhpc_counter", None)
        if counter is None:
            counter = cls(module)
            object.__setattr__(module, "_dhpc_counter", counter)
        return counter

    def reset(self) -> None:
        self.rows, self.calls, self.seconds = 0, 0, 0.0

    def _pre(self, module, args, kwargs):
        x = args[0] if args else kwargs["sample"]
        self.rows += int(x.shape[0])
        self.calls += 1
        self._t0 = time.perf_counter()

    def _post(self, module, args, output):
        self.seconds += time.perf_counter() - self._t0

    def per_sample(self, batch_size: int) -> np.ndarray:
        """(B,) evaluations per sample; every sample of a call gets the same number of rows."""
        if self.rows % batch_size:
            raise RuntimeError(f"{self.rows} evaluated rows do not split over {batch_size} samples")
        return np.full(batch_size, self.rows // batch_size, np.int64)


# --------------------------------------------------------------------------------------------
# helpers


#: extra ``scheduler.step`` arguments per scheduler name (the per-sample generators are passed to every
#: scheduler whose step takes them): TCD's stochastic share of each step
STEP_KWARGS: dict[str, dict] = {"tcd": {"eta": TCD_ETA}}


def make_scheduler(name: str, config, timestep_spacing: Optional[str] = None):
    """A fresh scheduler of kind ``name`` (see :data:`SCHEDULERS`) from a pipeline's scheduler config.

    ``timestep_spacing`` (a preset's, e.g. ``trailing`` for Turbo backbones) overrides the config's.
    """
    import diffusers

    kinds = {
        "ddim": (diffusers.DDIMScheduler, {}),
        "pndm": (diffusers.PNDMScheduler, {"skip_prk_steps": True}),
        "dpm++": (diffusers.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "dpm++sde": (diffusers.DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        "unipc": (diffusers.UniPCMultistepScheduler, {}),
        "euler": (diffusers.EulerDiscreteScheduler, {}),
        "euler_a": (diffusers.EulerAncestralDiscreteScheduler, {}),
        "lcm": (diffusers.LCMScheduler, {}),
        "tcd": (diffusers.TCDScheduler, {}),
    }
    if name not in kinds:
        raise ConfigError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, extra = kinds[name]
    if timestep_spacing is not None:
        extra = {**extra, "timestep_spacing": timestep_spacing}
    return cls.from_config(config, **extra)


def regen_timesteps(scheduler, name: str, steps: int, strength: float, with_start: bool, device="cpu"):
    """Set ``scheduler``'s timesteps for one regeneration; return those that run and their count.

    Without a start image all ``steps`` run from pure noise. With one, ``n = round(strength * steps)``
    run (at least 1, :func:`~diffusion_hpc.generate.base.strength_steps`):

    - few-step schedulers (:data:`~diffusion_hpc.config.generate.FEW_STEP_SCHEDULERS`: LCM, TCD) get
      their own img2img schedule, ``set_timesteps(n, strength=strength)``: n steps spread over the
      distillation timesteps below ``strength`` (as diffusers' LCM img2img pipeline does), so the first
      step starts at the noise level ``strength`` asks for;
    - the others run the last n of ``steps`` timesteps (SDEdit: the original's 35 of 50), from
      ``set_begin_index`` on.

    Args:
        scheduler: a fresh scheduler of kind ``name`` (:func:`make_scheduler`).
    Returns:
        ``(timesteps, n)``: (n * order,) timesteps to run, first the one the start latents are noised to.
    Raises:
        ConfigError: a few-step scheduler with fewer distillation timesteps below ``strength`` than steps.
    """
    n = strength_steps(steps, strength) if with_start else int(steps)
    if name in FEW_STEP_SCHEDULERS:
        s = float(strength) if with_start else 1.0
        origin = int(scheduler.config.original_inference_steps)
        if int(origin * s) < n:
            fewer = " or fewer --steps" if n > 1 else ""
            fix = f"--strength >= {n / origin:.2f}{fewer}" if with_start else f"--steps <= {origin}"
            raise ConfigError(f"strength {s:g} leaves {int(origin * s)} of the {name} scheduler's {origin} "
                              f"distillation timesteps for {n} denoising step{'s' * (n > 1)}; pass {fix}")  # fmt: skip
        scheduler.set_timesteps(n, device=device, strength=s)
        return scheduler.timesteps, n
    scheduler.set_timesteps(int(steps), device=device)
    begin = (int(steps) - n) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    return scheduler.timesteps[begin:], n


def ran_schedule(name: str, scheduler_config) -> dict:
    """What a run records of its schedule beyond the preset's name: ``timestep_spacing`` (from the
    scheduler's config as built) and ``eta`` (:data:`STEP_KWARGS`, TCD's; None for the others)."""
    return {"timestep_spacing": scheduler_config.get("timestep_spacing"), "eta": STEP_KWARGS.get(name, {}).get("eta")}


def step_kwargs(name: str, scheduler, generators) -> dict:
    """``scheduler.step``'s extra arguments: the per-sample generators (its noise, e.g. LCM's, TCD's
    and Euler ancestral's, comes from each sample's own stream) and :data:`STEP_KWARGS`."""
    accepted = inspect.signature(scheduler.step).parameters
    kw = {"generator": generators} if "generator" in accepted else {}
    return {**kw, **{k: v for k, v in STEP_KWARGS.get(name, {}).items() if k in accepted}}


def guidance_embedding(w, dim: int):
    """LCM-style guidance-scale embedding (as diffusers' ``get_guidance_scale_embedding``).

    Args:
        w: (B,) guidance scales minus 1.
    Returns:
        (B, dim) float32.
    """
    import math

    import torch

    w = w.float() * 1000.0
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def _to_uint8(images) -> np.ndarray:
    """(B, 3, H, W) tensor in [-1, 1] -> (B, H, W, 3) uint8."""
    x = (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return np.round(x * 255.0).astype(np.uint8)


def _from_uint8(images: np.ndarray, device, dtype):
    """(B, H, W, 3) uint8 -> (B, 3, H, W) tensor in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.to(device=device, dtype=dtype)


def placement_of(device="cpu", dtype="float32") -> Placement:
    """The :class:`~diffusion_hpc.runtime.device.Placement` of a generator's ``device`` / ``dtype``:
    names (``auto``, ``cuda:0``, ``bfloat16``...), torch objects, or a ready placement."""
    if isinstance(device, Placement):
        return device
    return resolve_placement(str(device), dtype if isinstance(dtype, str) else dtype_name(dtype), diffusion=True)


def _place(pipe, placement: Placement, offload: str = "none", vae_slicing: bool = False,
           vae_tiling: bool = False):  # fmt: skip
    """Move a loaded pipeline to its device once (or set up CPU offload, :func:`check_offload`-ed before
    loading) and its VAE memory options."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=placement.device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=placement.device)
    else:
        pipe = pipe.to(placement.device)
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        (vae.enable_slicing if vae_slicing else vae.disable_slicing)()
        (vae.enable_tiling if vae_tiling else vae.disable_tiling)()
    return pipe


def _pipeline_kwargs(folder: Path) -> dict:
    """Extra ``from_pretrained`` kwargs for the pipeline in ``folder``.

    SD 1.x: skip the safety checker (it needs extra weights and blanks images). SDXL: no invisible
    watermark (diffusers adds it whenever the optional package is installed, so the same seed would
    give other start images on machines that have it).
    """
    import json

    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    kwargs = {}
    if "safety_checker" in index:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if "text_encoder_2" in index and "XL" in str(index.get("_class_name", "")):
        kwargs["add_watermarker"] = False
    return kwargs


def _check_pipeline_tokenizers(pipe, folder: Path) -> None:
    for key in ("tokenizer", "tokenizer_2"):
        tok = getattr(pipe, key, None)
        if tok is not None:
            check_tokenizer(tok, str(folder / key), allow_small=is_tiny(folder))


#: the file name ``save_lora_weights`` writes (looked for first in a LoRA folder)
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: adapter name of the ``lora=`` weights in the pipeline
LORA_ADAPTER = "domain"


def lora_file(lora: Optional[str]) -> Optional[Path]:
    """The ``.safetensors`` file of a ``lora=`` spec (a file, or a folder holding one), checked on disk.

    Called before any model loads, so a wrong path fails at once. In a folder,
    :data:`LORA_WEIGHT_NAME` wins, else its only ``*.safetensors`` file.

    Raises:
        MissingModelError: no such path, not a ``.safetensors`` file (pickled weights are refused),
            or a folder with none or several candidates.
    """
    if lora is None:
        return None
    path = Path(lora).expanduser()
    fix = f"pass a .safetensors LoRA file or a folder holding {LORA_WEIGHT_NAME} (as save_lora_weights writes)"
    if path.is_file():
        if path.suffix != ".safetensors":
            raise MissingModelError(f"LoRA weights {lora!r} are not a .safetensors file (pickled weights are never "
                                    f"loaded); {fix}")  # fmt: skip
        return path.resolve()
    if not path.is_dir():
        raise MissingModelError(f"LoRA weights {lora!r} not found (looked at {path.resolve()}); {fix}")
    if (path / LORA_WEIGHT_NAME).is_file():
        return (path / LORA_WEIGHT_NAME).resolve()
    found = sorted(path.glob("*.safetensors"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found)
        what = f"{len(found)} .safetensors files ({names})" if found else "no .safetensors file"
        raise MissingModelError(f"LoRA folder {path.resolve()} holds {what}; {fix}, or pass the file itself")
    return found[0].resolve()


def _load_lora(pipe, file: Optional[Path], scale: float) -> None:
    """Load the :func:`lora_file` weights into ``pipe`` as adapter :data:`LORA_ADAPTER` at ``scale``."""
    if file is None:
        return
    try:
        pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=LORA_ADAPTER,
                               use_safetensors=True, local_files_only=True)  # fmt: skip
    except (ImportError, ValueError) as exc:
        if "peft" in str(exc).lower():
            raise ConfigError(f"loading LoRA weights needs the peft package: pip install peft ({exc})") from None
        raise
    if scale != 1.0:
        pipe.set_adapters([LORA_ADAPTER], [float(scale)])


def _resolve(backbone, controlnet=None) -> BackboneSet:
    if isinstance(backbone, BackboneSet):
        return backbone
    found = check_models({"backbone": str(backbone), "controlnet": None if controlnet is None else str(controlnet)})
    return backbone_set(found["backbone"], found.get("controlnet"))


# --------------------------------------------------------------------------------------------
# text to image


class Text2ImageGenerator:
    """Start images from text (mode T) with any diffusers text-to-image checkpoint.

    Args:
        backbone: ``--backbone`` (dir, bundle or cached hub id) or a resolved :class:`BackboneSet`.
        preset: ``original`` | ``default`` | ``fast`` | ``turbo`` (:data:`~diffusion_hpc.config.PRESETS`).
        steps, guidance, scheduler: override the preset's values.
        lora: LoRA weights of a domain-fine-tuned backbone: a ``.safetensors`` file or a folder
            holding one (see :func:`lora_file`; loaded with peft).
        lora_scale: LoRA strength (0: the backbone's own output).
        size: default (H, W) when the batch gives none; default: the UNet's native size.
        device, dtype: ``auto`` | ``cpu`` | ``cuda[:N]`` | ``mps`` and ``auto`` | ``float32`` |
            ``float16`` | ``bfloat16`` (or torch objects; see :func:`placement_of`).
        offload, vae_slicing, vae_tiling: GPU memory options (see the module docstring).
    """

    name = "txt2img"
    requires = ("prompts", "seeds")

    def __init__(self, backbone, preset: str = "default", steps: Optional[int] = None,
                 guidance: Optional[float] = None, scheduler: Optional[str] = None, lora: Optional[str] = None,
                 lora_scale: float = 1.0, size: Optional[tuple[int, int]] = None, device="cpu",
                 dtype="float32", offload: str = "none", vae_slicing: bool = False,
                 vae_tiling: bool = False):  # fmt: skip
        from diffusers import AutoPipelineForText2Image

        placement = placement_of(device, dtype)
        check_offload(offload, placement.device)
        ensure_offline()
        lora_path = lora_file(lora)
        p = get_preset(preset)
        self.preset = preset
        self.steps = int(steps if steps is not None else p.txt2img_steps)
        self.guidance = float(guidance if guidance is not None else p.guidance)
        self.scheduler_name = scheduler or p.scheduler
        self.timestep_spacing = p.timestep_spacing
        self.backbones = _resolve(backbone)
        folder = self.backbones.text2img
        if folder is None:
            raise MissingModelError(
                f"backbone {self.backbones.root} is a depth-to-image checkpoint and cannot make start images "
                "from text; pass a text-to-image checkpoint (SD 1.x/2.x/XL) as --backbone for mode T"
            )
        self.placement = placement
        self.device = placement.device
        pipe = AutoPipelineForText2Image.from_pretrained(
            str(folder), local_files_only=True, dtype=placement.dtype, **_pipeline_kwargs(folder)
        )
        self.pipe = _place(pipe, placement, offload, vae_slicing, vae_tiling)
        self.pipe.set_progress_bar_config(disable=True)
        _check_pipeline_tokenizers(self.pipe, folder)
        self.pipe.scheduler = make_scheduler(self.scheduler_name, self.pipe.scheduler.config, self.timestep_spacing)
        _load_lora(self.pipe, lora_path, lora_scale)
        self.size = size
        self.unet_counter = EvalCounter.attach(self.pipe.unet)
        self._call_params = set(inspect.signature(self.pipe.__call__).parameters)

    @property
    def guidance_embedded(self) -> bool:
        """True for guidance-distilled UNets (LCM): the scale is an input, no extra UNet pass."""
        return getattr(self.pipe.unet.config, "time_cond_proj_dim", None) is not None

    @property
    def settings(self) -> SamplerSettings:
        """The sampler as it runs (preset values with the overrides applied)."""
        return SamplerSettings(self.name, self.preset, self.scheduler_name, self.steps, self.guidance,
                               self.guidance_embedded, **self.placement.names,
                               **ran_schedule(self.scheduler_name, self.pipe.scheduler.config))  # fmt: skip

    def unet_evals_per_sample(self) -> int:
        """Expected UNet evaluations per sample: steps x guidance factor."""
        return self.steps * guidance_factor(self.guidance, self.guidance_embedded)

    def default_size(self) -> tuple[int, int]:
        if self.size is not None:
            return tuple(self.size)
        s = self.pipe.unet.config.sample_size
        s = (s, s) if isinstance(s, int) else tuple(s)
        f = self.pipe.vae_scale_factor
        return int(s[0] * f), int(s[1] * f)

    def generate(self, batch: GenerationBatch) -> GenerationResult:
        """B start images, item i from ``prompts[i]`` and ``seeds[i]`` only."""
        import torch

        t0 = time.perf_counter()
        # 1. check inputs
        batch.check(self.requires, "the txt2img generator")
        b = len(batch)
        h, w = batch.image_size() or self.default_size()
        f = self.pipe.vae_scale_factor
        if h % f or w % f:
            raise ConfigError(f"image size {(h, w)} must be a multiple of {f} for this backbone")
        # 2. per-sample initial latents and generators (scheduler noise, e.g. LCM)
        generators = torch_generators(batch.seeds, STAGE_TXT2IMG)
        shape = (self.pipe.unet.config.in_channels, h // f, w // f)
        latents = per_sample_randn(generators, shape, self.device, self.pipe.unet.dtype)
        # 3. run the pipeline, counting UNet rows
        kwargs = dict(prompt=list(batch.prompts), num_inference_steps=self.steps, guidance_scale=self.guidance,
                      height=h, width=w, latents=latents, generator=generators, output_type="np")  # fmt: skip
        if "negative_prompt" in self._call_params and guidance_factor(self.guidance, self.guidance_embedded) == 2:
            kwargs["negative_prompt"] = batch.negatives()
        kwargs.update({k: v for k, v in STEP_KWARGS.get(self.scheduler_name, {}).items() if k in self._call_params})
        self.unet_counter.reset()
        with torch.inference_mode():
            out = self.pipe(**kwargs)
        # 4. images and cost
        images = np.round(np.clip(np.asarray(out.images, np.float32), 0, 1) * 255.0).astype(np.uint8)
        total = time.perf_counter() - t0
        return GenerationResult(
            images=images,
            unet_evals=self.unet_counter.per_sample(b),
            controlnet_evals=np.zeros(b, np.int64),
            seconds={"total": total, "unet": self.unet_counter.seconds},
            ran=SamplerRun(self.settings, steps_run=self.steps),
        )


# --------------------------------------------------------------------------------------------
# depth-conditioned regeneration


class DepthRegenerator:
    """Depth-conditioned SDEdit-style regeneration (modes T, R; mode D without a start image).

    Args:
        backbone: ``--backbone`` (dir, bundle or cached hub id) or a resolved :class:`BackboneSet`.
        method: ``depth2img`` (SD-2-depth: depth as a 5th UNet channel) or ``controlnet``
            (ControlNet-depth on the text-to-image backbone: SD 1.x / 2.x or SDXL).
        controlnet: ``--controlnet`` (overrides a bundle's ControlNet).
        preset: ``original`` | ``default`` | ``fast`` | ``turbo``; ``steps`` / ``strength`` /
            ``guidance`` / ``scheduler`` override it. ``round(strength * steps)`` steps (at least 1)
            run on a start image (:func:`regen_timesteps`).
        disparity: depth conversion scheme (``original`` or ``inverse``).
        mask_rule: pixel -> latent mask rule (``any`` or ``area``, see ``latent_mask``).
        controlnet_scale: ControlNet conditioning scale.
        blur_prob: probability of the Gaussian blur augmentation (radius U(1, 2.5)) per sample.
        lora, lora_scale: LoRA weights and strength, as :class:`Text2ImageGenerator`'s.
        share_with: a :class:`Text2ImageGenerator` whose components to reuse (ControlNet method:
            one copy of the weights in memory, its LoRA included: pass ``lora`` to it, not here).
        device, dtype, offload, vae_slicing, vae_tiling: as :class:`Text2ImageGenerator`'s (with
            ``share_with``, pass the same placement).
    """

    requires = ("prompts", "seeds", "depth")

    def __init__(self, backbone, method: Literal["depth2img", "controlnet"] = "depth2img",
                 controlnet: Optional[str] = None, preset: str = "default", steps: Optional[int] = None,
                 strength: Optional[float] = None, guidance: Optional[float] = None,
                 scheduler: Optional[str] = None, disparity: Literal["original", "inverse"] = "original",
                 mask_rule: Literal["any", "area"] = "any", controlnet_scale: float = 1.0,
                 blur_prob: float = 0.0, lora: Optional[str] = None, lora_scale: float = 1.0,
                 share_with: Optional[Text2ImageGenerator] = None, device="cpu", dtype="float32",
                 offload: str = "none", vae_slicing: bool = False, vae_tiling: bool = False):  # fmt: skip
        placement = placement_of(device, dtype)
        check_offload(offload, placement.device)
        ensure_offline()
        if method not in ("depth2img", "controlnet"):
            raise ConfigError(f"unknown regeneration method {method!r}; use depth2img or controlnet")
        if lora is not None and share_with is not None and method == "controlnet":
            raise ConfigError(f"lora={lora!r} with share_with: the shared generator's UNet is reused as it is; "
                              "pass lora to the Text2ImageGenerator given as share_with instead")  # fmt: skip
        if share_with is not None and method == "controlnet" and share_with.placement != placement:
            raise ConfigError(f"share_with runs on {share_with.placement.names}, this generator on "
                              f"{placement.names}; pass the same device and dtype to both")  # fmt: skip
        lora_path = lora_file(lora)
        p = get_preset(preset)
        self.name = method
        self.method = method
        self.preset = preset
        self.steps = int(steps if steps is not None else p.regen_steps)
        self.strength = float(strength if strength is not None else p.strength)
        strength_steps(self.steps, self.strength)  # validates
        self.guidance = float(guidance if guidance is not None else p.guidance)
        self.scheduler_name = scheduler or p.scheduler
        self.disparity = disparity
        self.mask_rule = mask_rule
        self.controlnet_scale = float(controlnet_scale)
        self.blur_prob = float(blur_prob)
        self.placement = placement
        self.device = placement.device
        self.backbones = _resolve(backbone, controlnet)
        self.pipe = self._load(placement.dtype, share_with, (offload, vae_slicing, vae_tiling))
        self.pipe.set_progress_bar_config(disable=True)
        _load_lora(self.pipe, lora_path, lora_scale)
        self.scheduler_config = self.pipe.scheduler.config
        self.timestep_spacing = p.timestep_spacing
        # validates the name, and a few-step scheduler's steps against strength (and from noise), now
        for with_start in (False, True):
            regen_timesteps(self._scheduler(), self.scheduler_name, self.steps, self.strength, with_start)
        self.unet = self.pipe.unet
        self.vae = self.pipe.vae
        self.controlnet = getattr(self.pipe, "controlnet", None) if method == "controlnet" else None
        self.is_sdxl = getattr(self.unet.config, "addition_embed_type", None) == "text_time"
        # SDXL's VAE overflows in float16: encode / decode in float32 (diffusers: vae.config.force_upcast)
        self.vae_upcast = bool(self.is_sdxl and str(self.vae.dtype) == "torch.float16"
                               and getattr(self.vae.config, "force_upcast", False))  # fmt: skip
        self.unet_counter = EvalCounter.attach(self.unet)
        self.controlnet_counter = EvalCounter.attach(self.controlnet) if self.controlnet is not None else None

    # ---- loading ----------------------------------------------------------------------------

    def _load(self, dtype, share_with, memory):
        import diffusers

        bs = self.backbones
        if self.method == "depth2img":
            if bs.depth2img is None:
                raise MissingModelError(
                    f"backbone {bs.root} has no depth-to-image pipeline; pass an SD-2-depth checkpoint "
                    "(stabilityai/stable-diffusion-2-depth) as --backbone, or use --generator controlnet "
                    "with --controlnet"
                )
            pipe = diffusers.StableDiffusionDepth2ImgPipeline.from_pretrained(
                str(bs.depth2img), depth_estimator=None, feature_extractor=None, local_files_only=True,
                dtype=dtype,
            )  # fmt: skip
            pipe = _place(pipe, self.placement, *memory)
            _check_pipeline_tokenizers(pipe, bs.depth2img)
            return pipe
        if bs.text2img is None or bs.controlnet_depth is None:
            what = "a text-to-image backbone" if bs.text2img is None else "a ControlNet-depth model (--controlnet)"
            raise MissingModelError(f"the controlnet generator needs {what}; backbone {bs.root} provides none")
        cn = diffusers.ControlNetModel.from_pretrained(str(bs.controlnet_depth), local_files_only=True,
                                                       dtype=dtype)  # fmt: skip
        import json

        unet_cfg = json.loads((bs.text2img / "unet" / "config.json").read_text()) if share_with is None else \
            dict(share_with.pipe.unet.config)  # fmt: skip
        sdxl = unet_cfg.get("addition_embed_type") == "text_time"
        cls = diffusers.StableDiffusionXLControlNetPipeline if sdxl else diffusers.StableDiffusionControlNetPipeline
        if share_with is not None:
            comps = {k: v for k, v in share_with.pipe.components.items() if k in inspect.signature(cls).parameters}
            # the shared components are on the device already (moving them again is a no-op); with offload
            # the hooks are set up again over all of them, the ControlNet included
            pipe = _place(cls(**{**comps, "controlnet": cn}), self.placement, *memory)
        else:
            pipe = cls.from_pretrained(str(bs.text2img), controlnet=cn, local_files_only=True, dtype=dtype,
                                       **_pipeline_kwargs(bs.text2img))  # fmt: skip
            pipe = _place(pipe, self.placement, *memory)
        _check_pipeline_tokenizers(pipe, bs.text2img)
        return pipe

    def _scheduler(self):
        """A fresh scheduler of the run's kind (schedulers hold per-call state)."""
        return make_scheduler(self.scheduler_name, self.scheduler_config, self.timestep_spacing)

    # ---- cost -------------------------------------------------------------------------------

    @property
    def guidance_embedded(self) -> bool:
        return getattr(self.unet.config, "time_cond_proj_dim", None) is not None

    @property
    def cfg(self) -> bool:
        return guidance_factor(self.guidance, self.guidance_embedded) == 2

    @property
    def settings(self) -> SamplerSettings:
        """The sampler as it runs (preset values with the overrides applied)."""
        return SamplerSettings(self.name, self.preset, self.scheduler_name, self.steps, self.guidance,
                               self.guidance_embedded, strength=self.strength, blur_prob=self.blur_prob,
                               controlnet_scale=self.controlnet_scale if self.method == "controlnet" else None,
                               **self.placement.names, **ran_schedule(self.scheduler_name, self._scheduler().config))

    def steps_run(self, with_start_image: bool = True) -> int:
        """Denoising steps per call: round(strength * steps) with a start image, all steps without."""
        return strength_steps(self.steps, self.strength) if with_start_image else self.steps

    def unet_evals_per_sample(self, with_start_image: bool = True) -> int:
        return self.steps_run(with_start_image) * (2 if self.cfg else 1)

    # ---- pieces -----------------------------------------------------------------------------

    def _encode_prompts(self, prompts: list[str], negatives: list[str]):
        """-> (positive (B, L, D), negative (B, L, D) or None, pooled, negative pooled (SDXL) or None)."""
        pipe = self.pipe
        if self.is_sdxl:
            pos, neg, pooled, neg_pooled = pipe.encode_prompt(
                prompt=prompts, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=self.cfg, negative_prompt=negatives if self.cfg else None,
            )  # fmt: skip
            return pos, neg, pooled, neg_pooled
        pos, neg = pipe.encode_prompt(prompts, self.device, 1, self.cfg, negative_prompt=negatives if self.cfg else None)
        return pos, neg, None, None

    def _sdxl_added(self, pooled, neg_pooled, size, b):
        """SDXL's added conditions for the UNet and ControlNet, rows ordered as the prompt embeddings.

        Args:
            pooled, neg_pooled: (B, P) pooled embeddings of the second text encoder (negative: None
                without guidance).
            size: (H, W) image size: original and target size of the time ids, crop (0, 0).
            b: batch size B.

        Returns:
            ``{"text_embeds": (R, P), "time_ids": (R, 6)}`` with R = 2B (negative rows first) when
            guided, else B.
        """
        import torch

        pipe = self.pipe
        proj = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else int(pooled.shape[-1])
        ids = pipe._get_add_time_ids(tuple(size), (0, 0), tuple(size), dtype=pooled.dtype,
                                     text_encoder_projection_dim=proj).to(self.device)  # fmt: skip
        ids = ids.repeat(b, 1)
        if self.cfg:
            return {"text_embeds": torch.cat([neg_pooled, pooled]), "time_ids": torch.cat([ids, ids])}
        return {"text_embeds": pooled, "time_ids": ids}

    @contextlib.contextmanager
    def _vae_precision(self):
        """The VAE's dtype for one encode / decode: float32 for a float16 SDXL VAE (then back)."""
        if not self.vae_upcast:
            yield self.vae.dtype
            return
        import torch

        # nn.Module.to: diffusers' ModelMixin.to would warn on every cast
        torch.nn.Module.to(self.vae, dtype=torch.float32)
        try:
            yield torch.float32
        finally:
            torch.nn.Module.to(self.vae, dtype=torch.float16)

    def encode_images(self, images: np.ndarray):
        """(B, H, W, 3) uint8 -> (B, C, h, w) scaled latents (posterior mode: deterministic), in the UNet's dtype."""
        with self._vae_precision() as dtype:
            x = _from_uint8(images, self.device, dtype)
            lat = self.vae.encode(x).latent_dist.mode()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((lat - shift) * self.vae.config.scaling_factor).to(self.unet.dtype)

    def decode_latents(self, latents):
        """(B, C, h, w) scaled latents -> (B, H, W, 3) uint8 (on the CPU)."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        with self._vae_precision() as dtype:
            x = self.vae.decode((latents / self.vae.config.scaling_factor + shift).to(dtype), return_dict=False)[0]
        return _to_uint8(x)

    # ---- the call -----------------------------------------------------------------------------

    def generate(self, batch: GenerationBatch) -> GenerationResult:
        """B regenerated images, item i from its own inputs and ``seeds[i]`` only."""
        import torch


        t_start = time.perf_counter()
        # 1. check inputs
        batch.check(self.requires, f"the {self.name} generator")
        b = len(batch)
        h_img, w_img = batch.image_size()
        f = self.pipe.vae_scale_factor
        if h_img % f or w_img % f:
            raise ConfigError(f"image size {(h_img, w_img)} must be a multiple of {f} for this backbone")
        h, w = h_img // f, w_img // f
        with_start = batch.start_images is not None
        dev, dtype = self.device, self.unet.dtype
        self.unet_counter.reset()
        if self.controlnet_counter is not None:
            self.controlnet_counter.reset()

        with torch.inference_mode():
            # 2. prompts (negative rows first when guided)
            pos, neg, pooled, neg_pooled = self._encode_prompts(list(batch.prompts), batch.negatives())
            embeds = torch.cat([neg, pos]) if self.cfg else pos
            added = self._sdxl_added(pooled, neg_pooled, (h_img, w_img), b) if self.is_sdxl else None
            timestep_cond = None
            if self.guidance_embedded:
                w_emb = torch.full((b,), self.guidance - 1.0)
                timestep_cond = guidance_embedding(w_emb, self.unet.config.time_cond_proj_dim).to(dev, dtype)

            # 3. timesteps: round(strength * steps) of them with a start image (regen_timesteps)
            scheduler = self._scheduler()
            timesteps, n_run = regen_timesteps(scheduler, self.scheduler_name, self.steps, self.strength,
                                               with_start, device=dev)  # fmt: skip

            # 4. per-sample noise: region noise, then strength noise (fixed order per sample)
            gens = torch_generators(batch.seeds, STAGE_REGEN)
            c_lat = 4 if self.method == "depth2img" else self.unet.config.in_channels
            region_noise = per_sample_randn(gens, (c_lat, h, w), dev, dtype)
            strength_noise = per_sample_randn(gens, (c_lat, h, w), dev, dtype)

            # 5. start latents: encoded image outside the human region, noise inside, then noised to t0
            if with_start:
                image_latents = self.encode_images(batch.start_images)
                region = self._region(batch, (h_img, w_img))
                start = C.composite_start_latents(image_latents, region.to(dev), region_noise, rule=self.mask_rule)
                latents = scheduler.add_noise(start, strength_noise, timesteps[:1].repeat(b))
            else:
                latents = region_noise * scheduler.init_noise_sigma

            # 6. depth conditioning: disparity with occluders zeroed
            depth = torch.from_numpy(np.asarray(batch.depth, np.float32)).to(dev)
            occ = None if batch.occluder_masks is None else torch.from_numpy(np.asarray(batch.occluder_masks, bool)).to(dev)
            disparity = C.depth_to_disparity(depth, occ, scheme=self.disparity)
            if self.method == "depth2img":
                cond = C.depth2img_conditioning(disparity, (h, w)).to(dtype)
            else:
                cond = C.controlnet_conditioning(disparity).to(dtype)
            cond = torch.cat([cond, cond]) if self.cfg else cond

            # 7. denoising loop
            step_kw = step_kwargs(self.scheduler_name, scheduler, gens)
            for i, t in enumerate(timesteps):
                x = torch.cat([latents, latents]) if self.cfg else latents
                x = scheduler.scale_model_input(x, t)
                unet_kw = {"timestep_cond": timestep_cond, "added_cond_kwargs": added}
                if self.method == "depth2img":
                    x_in = torch.cat([x, cond], dim=1)
                else:
                    x_in = x
                    down, mid = self.controlnet(x, t, encoder_hidden_states=embeds, controlnet_cond=cond,
                                                conditioning_scale=self.controlnet_scale, added_cond_kwargs=added,
                                                return_dict=False)  # fmt: skip
                    unet_kw.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
                eps = self.unet(x_in, t, encoder_hidden_states=embeds, return_dict=False,
                                **{k: v for k, v in unet_kw.items() if v is not None})[0]  # fmt: skip
                if self.cfg:
                    e_uncond, e_text = eps.chunk(2)
                    eps = e_uncond + self.guidance * (e_text - e_uncond)
                out = scheduler.step(eps, t, latents, return_dict=True, **step_kw)
                last = i == len(timesteps) - 1
                latents = out.denoised if last and getattr(out, "denoised", None) is not None else out.prev_sample

            # 8. decode
            t_dec = time.perf_counter()
            images = self.decode_latents(latents)
            t_dec = time.perf_counter() - t_dec

        # 9. optional blur augmentation (per-sample stream)
        radii = []
        for i, s in enumerate(batch.seeds):
            rng = np.random.default_rng(stage_seed(s, STAGE_BLUR))
            if self.blur_prob > 0 and rng.random() < self.blur_prob:
                r = C.sample_blur_radius(rng)
                from PIL import Image, ImageFilter

                images[i] = np.asarray(Image.fromarray(images[i]).filter(ImageFilter.GaussianBlur(r)))
                radii.append(r)
            else:
                radii.append(0.0)
        total = time.perf_counter() - t_start
        cn_evals = (self.controlnet_counter.per_sample(b) if self.controlnet_counter is not None
                    else np.zeros(b, np.int64))  # fmt: skip
        seconds = {"total": total, "unet": self.unet_counter.seconds, "decode": t_dec}
        if self.controlnet_counter is not None:
            seconds["controlnet"] = self.controlnet_counter.seconds
        return GenerationResult(
            images=images,
            unet_evals=self.unet_counter.per_sample(b),
            controlnet_evals=cn_evals,
            seconds=seconds,
            ran=SamplerRun(self.settings, steps_run=n_run, blur_radius=np.asarray(radii, np.float64)),
        )

    def _region(self, batch: GenerationBatch, size: tuple[int, int]):
        """(B, H, W) bool tensor: (person | silhouette) & ~occluders; all False if no mask is given."""
        import torch


        if batch.person_masks is None and batch.silhouettes is None:
            return torch.zeros((len(batch),) + tuple(size), dtype=torch.bool)
        region = human_region(batch.person_masks, batch.silhouettes, batch.occluder_masks)
        return torch.from_numpy(np.asarray(region, bool))
