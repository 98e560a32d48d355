"""Image generators (DESIGN §2 steps 1 and 6) behind one interface, and their factories.

Backends (:mod:`~diffusion_hpc.generate.base` holds the interface): ``render`` (the shaded-mesh
baseline), ``txt2img`` (mode T's start images), ``depth2img`` and ``controlnet`` (depth-conditioned
regeneration, :mod:`~diffusion_hpc.generate.diffusion`). The factories turn a run's config into
generators, every field of its ``sampler`` block passed through, and its placement (``device``,
``dtype``, ``offload``, ``vae_slicing``, ``vae_tiling``); torch and diffusers load with
the first diffusion generator, not with this package.
"""

from __future__ import annotations

from typing import Optional

from diffusion_hpc.config import DIFFUSION_GENERATORS, GenerateConfig
from diffusion_hpc.errors import ConfigError
from diffusion_hpc.generate.backgrounds import FolderBackgrounds
from diffusion_hpc.generate.base import (
    GenerationBatch,
    GenerationResult,
    ImageGenerator,
    RenderGenerator,
    SamplerRun,
    SamplerSettings,
)
from diffusion_hpc.generate.diffusion import DepthRegenerator, Text2ImageGenerator


def make_start_generator(config: GenerateConfig) -> Text2ImageGenerator:
    """Mode T's start-image generator: the backbone's text-to-image pipeline with the run's sampler
    (``preset``, ``scheduler``, ``txt2img_steps``, ``guidance``) and LoRA weights."""
    s = config.sampler
    return Text2ImageGenerator(config.backbone, preset=s.preset, steps=s.txt2img_steps, guidance=s.guidance,
                               scheduler=s.scheduler, lora=config.lora, lora_scale=config.lora_scale,
                               **placement_options(config))  # fmt: skip


def placement_options(config: GenerateConfig) -> dict:
    """The diffusion generators' ``device``, ``dtype`` and GPU memory options of a run's config."""
    return {"device": config.device, "dtype": config.dtype, "offload": config.offload,
            "vae_slicing": config.vae_slicing, "vae_tiling": config.vae_tiling}  # fmt: skip


def make_image_generator(config: GenerateConfig, start: Optional[Text2ImageGenerator] = None) -> ImageGenerator:
    """The run's image generator (``config.generator``): the render baseline, or the
    depth-conditioned regenerator with every ``sampler`` field (``preset``, ``scheduler``, ``steps``,
    ``strength``, ``guidance``, ``controlnet_scale``, ``blur_prob``).

    Args:
        start: mode T's start generator; ``controlnet`` reuses its components (one copy of the
            weights in memory, its LoRA included), ``depth2img`` loads its own pipeline.
    """
    name = config.generator
    if name == "render":
        folder = config.render_baseline.backgrounds
        return RenderGenerator(augment=config.render_baseline.augment,
                               backgrounds=FolderBackgrounds(folder) if folder else None)  # fmt: skip
    if name not in DIFFUSION_GENERATORS:
        raise ConfigError(f"unknown generator {name!r}; choose render, {' or '.join(DIFFUSION_GENERATORS)}")
    s = config.sampler
    share = start if name == "controlnet" else None
    lora = {} if share is not None else {"lora": config.lora, "lora_scale": config.lora_scale}  # shared UNet has it
    return DepthRegenerator(config.backbone, method=name, controlnet=config.controlnet, preset=s.preset,
                            steps=s.steps, strength=s.strength, guidance=s.guidance, scheduler=s.scheduler,
                            controlnet_scale=s.controlnet_scale, blur_prob=s.blur_prob, share_with=share,
                            **lora, **placement_options(config))  # fmt: skip


__all__ = [
    "GenerationBatch", "GenerationResult", "ImageGenerator", "SamplerRun", "SamplerSettings", "RenderGenerator",
    "DepthRegenerator", "Text2ImageGenerator", "make_start_generator", "make_image_generator",
    "placement_options",
]
