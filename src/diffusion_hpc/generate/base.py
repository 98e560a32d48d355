"""The image-generator interface shared by every backend (render baseline, text-to-image, regeneration).

One call takes a :class:`GenerationBatch` (everything a backend may need, per sample, batch first,
numpy) and returns a :class:`GenerationResult` (images plus per-sample cost). A backend reads only
the fields it needs and says which ones it requires in :attr:`ImageGenerator.requires`; the
pipeline fills them per mode:

=================  =========================================================================
backend            needs
=================  =========================================================================
``render``         ``render`` (+ ``face_part``), ``seeds``
``txt2img``        ``prompts``, ``seeds``
``depth2img``,     ``prompts``, ``seeds``, ``depth``; ``start_images`` + ``person_masks`` /
``controlnet``     ``silhouettes`` (+ ``occluder_masks``) for SDEdit-style regeneration
                   (modes T, R); without ``start_images`` the whole latent starts from noise
                   (mode D)
=================  =========================================================================

Seeds: ``seeds[i]`` is sample i's 63-bit seed (:func:`diffusion_hpc.data.seeds.sample_seed`), and
item i of the output depends on item i of the batch only, so a sample is reproducible from its own
seed whatever batch it lands in. Also here, as data: the prompt templates and negative prompt of
DESIGN §2. Importing this module imports neither torch nor diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from diffusion_hpc.config import PRESETS, Preset
from diffusion_hpc.data.seeds import prompt_rng
from diffusion_hpc.errors import ConfigError
from diffusion_hpc.generate.render_baseline import RenderBaselineGenerator

if TYPE_CHECKING:
    from diffusion_hpc.render.base import RenderOutput

#: the original's negative prompt
NEGATIVE_PROMPT = "deformed, bad anatomy"

#: The original's eight prompt templates around an action phrase (DESIGN §2 step 1). Verified against
#: the paper's public code (github.com/ZZWENG/Diffusion_HPC, ``generate_dataset.py``,
#: ``prompt_template``, commit c0f976e), whose ``sample_prompt`` draws one uniformly for every
#: text-to-image start image and again for every regenerated variant. The four DESIGN §2 lists come
#: first (indices 0-3 unchanged since they were our only ones), then the other four; the
#: original's order is 4, 0, 5, 2, 6, 1, 3, 7 of ours. The original's ``{}`` is our ``{action}``.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of an athlete {action}",
    "a side shot of a person {action}",
    "a blurry image of an athlete {action}",
    "a high speed shot of a person {action}",
    "a picture of an athlete {action}",
    "a low resolution picture of a person {action}",
    "a nice shot of a person {action}",
    "a slow motion shot of a person {action}",
)


def format_prompt(action: str, template: int | str = 0) -> str:
    """A prompt from an action phrase ("doing a backflip") and a template (index or format string)."""
    text = PROMPT_TEMPLATES[template % len(PROMPT_TEMPLATES)] if isinstance(template, int) else template
    if "{action}" not in text:
        raise ValueError(f"prompt template {text!r} has no {{action}} placeholder")
    return text.format(action=action.strip())


def prompt_for_sample(action: str, seed: int, templates: Sequence[str] = PROMPT_TEMPLATES) -> str:
    """The prompt of one image: a template drawn uniformly from the prompt stream of ``seed``
    (:func:`~diffusion_hpc.data.seeds.prompt_rng`; reproducible, order-free). Pass a guide's seed for
    its start image and each sample's own seed for its regeneration, so every variant draws its own
    template as the original does."""
    rng = prompt_rng(seed)
    return format_prompt(action, templates[int(rng.integers(len(templates)))])


@dataclass
class GenerationBatch:
    """Inputs of one generator call, B samples, batch first (numpy).

    Attributes:
        seeds: B ints, one per sample (63-bit).
        prompts: B prompts (diffusion backends).
        negative_prompts: B negative prompts; None = :data:`NEGATIVE_PROMPT` for all.
        start_images: (B, H, W, 3) uint8 start images (mode T: the text-to-image output; R: real images).
        person_masks: (B, H, W) bool person masks of the start images (segmenter).
        occluder_masks: (B, H, W) bool non-person objects in front of the person (segmenter).
        depth: (B, H, W) float32 rendered camera-frame z in metres, 0 = background.
        silhouettes: (B, H, W) bool rendered mesh masks.
        render: a full batched render (render baseline).
        face_part: (F,) int body-part index per face (render baseline).
        size: (H, W) of the output when no image-sized input fixes it (text-to-image).
    """

    seeds: Sequence[int]
    prompts: Optional[Sequence[str]] = None
    negative_prompts: Optional[Sequence[str]] = None
    start_images: Optional[np.ndarray] = None
    person_masks: Optional[np.ndarray] = None
    occluder_masks: Optional[np.ndarray] = None
    depth: Optional[np.ndarray] = None
    silhouettes: Optional[np.ndarray] = None
    render: Optional["RenderOutput"] = None
    face_part: Optional[np.ndarray] = None
    size: Optional[tuple[int, int]] = None

    def __len__(self) -> int:
        return len(self.seeds)

    def check(self, required: Sequence[str], who: str) -> None:
        """Raise ValueError naming every missing required field or wrong batch length."""
        missing = [name for name in required if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{who} needs {', '.join(missing)} in the GenerationBatch")
        b = len(self)
        for name in ("prompts", "negative_prompts", "start_images", "person_masks", "occluder_masks",
                     "depth", "silhouettes"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and len(value) != b:
                raise ValueError(f"{name} has {len(value)} items for a batch of {b} seeds; pass one per sample")

    def negatives(self) -> list[str]:
        """B negative prompts (default :data:`NEGATIVE_PROMPT`)."""
        if self.negative_prompts is None:
            return [NEGATIVE_PROMPT] * len(self)
        return list(self.negative_prompts)

    def image_size(self) -> Optional[tuple[int, int]]:
        """(H, W) from the first image-sized input, else ``size``."""
        for value in (self.start_images, self.depth, self.silhouettes, self.person_masks):
            if value is not None:
                return int(value.shape[1]), int(value.shape[2])
        if self.render is not None:
            return tuple(int(s) for s in self.render.mask.shape[1:3])
        return None if self.size is None else (int(self.size[0]), int(self.size[1]))


@dataclass(frozen=True)
class SamplerSettings:
    """The sampler of one diffusion generator as it runs: its preset with the overrides applied.

    Attributes:
        name: the backend (``txt2img``, ``depth2img``, ``controlnet``).
        preset: the preset the values started from.
        scheduler: scheduler name (see :data:`~diffusion_hpc.config.SCHEDULERS`).
        steps: nominal denoising steps.
        guidance: classifier-free guidance scale.
        guidance_embedded: the UNet takes the scale as an input (LCM): one UNet pass per step.
        strength: SDEdit strength (regeneration; None for text-to-image).
        controlnet_scale: ControlNet conditioning scale (``controlnet`` only, else None).
        blur_prob: probability of the blur augmentation (regeneration; None for text-to-image).
        device: the torch device the models ran on (``cpu``, ``cuda:0``...).
        dtype: their precision (``float32``, ``float16``, ``bfloat16``; a float16 SDXL VAE runs in float32).
        timestep_spacing: the scheduler's timestep spacing as it ran (``leading``, ``trailing``...).
        eta: the scheduler's stochasticity when it takes one (TCD), else None.
    """

    name: str
    preset: str
    scheduler: str
    steps: int
    guidance: float
    guidance_embedded: bool
    strength: Optional[float] = None
    controlnet_scale: Optional[float] = None
    blur_prob: Optional[float] = None
    device: str = "cpu"
    dtype: str = "float32"
    timestep_spacing: Optional[str] = None
    eta: Optional[float] = None

    @property
    def guidance_factor(self) -> int:
        """UNet rows per sample per step (:func:`guidance_factor`)."""
        return guidance_factor(self.guidance, self.guidance_embedded)


@dataclass
class SamplerRun:
    """What one diffusion call ran, for the manifest.

    Attributes:
        settings: the generator's sampler.
        steps_run: denoising steps every sample of the call went through (SDEdit:
            ``round(strength * steps)`` with a start image; all steps without one).
        blur_radius: (B,) Gaussian-blur radius per sample, 0 where no blur ran; None when the
            backend has no blur augmentation.
    """

    settings: SamplerSettings
    steps_run: int
    blur_radius: Optional[np.ndarray] = None


@dataclass
class GenerationResult:
    """Output of one generator call.

    Attributes:
        images: (B, H, W, 3) uint8 RGB.
        unet_evals: (B,) int64 UNet evaluations spent per sample (a guided step counts 2).
        controlnet_evals: (B,) int64 ControlNet evaluations per sample (0 for other backends).
        seconds: wall time of the call, and its parts (``unet``, ``total``, ...), for the manifest.
        ran: what a diffusion call ran (sampler, steps that ran, blur per sample); None for the
            render baseline.
    """

    images: np.ndarray
    unet_evals: np.ndarray
    controlnet_evals: Optional[np.ndarray] = None
    seconds: dict[str, float] = field(default_factory=dict)
    ran: Optional[SamplerRun] = None


@runtime_checkable
class ImageGenerator(Protocol):
    """A named image backend: ``generate(batch) -> GenerationResult``.

    Attributes:
        name: the backend name used in config / CLI (``render``, ``txt2img``, ``depth2img``, ``controlnet``).
        requires: the :class:`GenerationBatch` fields it cannot do without.
    """

    name: str
    requires: tuple[str, ...]

    def generate(self, batch: GenerationBatch) -> GenerationResult: ...


class RenderGenerator:
    """The render baseline behind the common interface (wraps ``RenderBaselineGenerator``).

    ``seeds[i]`` becomes ``numpy.random.default_rng(seeds[i])``, i.e. exactly
    :func:`~diffusion_hpc.data.seeds.sample_rng` of the sample, as the pipeline uses today.
    """

    name = "render"
    requires = ("render", "face_part", "seeds")

    def __init__(self, augment: bool = True, backgrounds=None):
        self.inner = RenderBaselineGenerator(augment=augment)
        self.backgrounds = backgrounds

    def generate(self, batch: GenerationBatch) -> GenerationResult:
        import time

        batch.check(self.requires, "the render generator")
        t0 = time.perf_counter()
        rngs = [np.random.default_rng(int(s)) for s in batch.seeds]
        images = self.inner.generate(batch.render, batch.face_part, rngs, self.backgrounds)
        zeros = np.zeros(len(batch), np.int64)
        return GenerationResult(images, zeros, zeros.copy(), {"total": time.perf_counter() - t0})


# --------------------------------------------------------------------------------------------
# presets and cost


#: UNet evaluations per sample of the original (DESIGN §2): mode T (100 + 70) and mode R (70)
ORIGINAL_UNET_EVALS = {"T": 170, "R": 70}


def get_preset(name: str) -> Preset:
    """The :class:`Preset` called ``name``; a ConfigError naming the choices otherwise."""

    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def strength_steps(steps: int, strength: float) -> int:
    """Steps an SDEdit run of ``steps`` nominal steps at ``strength`` actually denoises: round(strength * steps)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must lie in (0, 1], got {strength}")
    return max(1, min(int(steps), int(round(strength * steps))))


def guidance_factor(guidance: float, guidance_embedded: bool = False) -> int:
    """UNet rows per sample per step: 2 with classifier-free guidance (guidance > 1), else 1.

    Guidance-distilled UNets (LCM, ``time_cond_proj_dim`` set) take the scale as an input: factor 1.
    """
    return 2 if guidance > 1.0 and not guidance_embedded else 1


def expected_unet_evals(steps: int, guidance: float, strength: float = 1.0, guidance_embedded: bool = False) -> int:
    """UNet evaluations per sample: ``strength_steps(steps, strength) * guidance_factor(guidance)``."""
    n = int(steps) if strength >= 1.0 else strength_steps(steps, strength)
    return n * guidance_factor(guidance, guidance_embedded)
