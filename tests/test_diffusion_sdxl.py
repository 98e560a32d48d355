"""SDXL backbones on the tiny random SDXL set (``dhpc backbone tiny --sdxl``): text-to-image and
ControlNet-depth regeneration through the project's generators, their UNet counts, and our own
regeneration loop against diffusers' ControlNet pipelines (pooled embeddings, size / crop ids and
the ControlNet's added conditions must be exactly theirs)."""

from __future__ import annotations

import json

import diffusers  # noqa: F401  (hard dependencies: a broken install fails the suite, never skips it)
import numpy as np
import pytest
import torch

from diffusion_hpc.errors import MissingModelError
from diffusion_hpc.generate.base import GenerationBatch, format_prompt

from conftest import TINY_SIZE as SIZE
from conftest import regen_batch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_backbone):
    return tiny_sdxl_backbone


@pytest.fixture(scope="module")
def tiny_lcm_backbone(tmp_path_factory):
    """The tiny SD backbone with guidance-distilled (LCM-style) UNets."""
    from diffusion_hpc.generate.tiny import write_tiny_backbone

    return write_tiny_backbone(tmp_path_factory.mktemp("tiny-lcm") / "bb", seed=0, lcm=True)


@pytest.fixture(scope="module")
def t2i(sdxl):
    from diffusion_hpc.generate.diffusion import Text2ImageGenerator

    return Text2ImageGenerator(sdxl, preset="default", steps=2)


@pytest.fixture(scope="module")
def cnet(sdxl, t2i):
    from diffusion_hpc.generate.diffusion import DepthRegenerator

    return DepthRegenerator(sdxl, method="controlnet", preset="default", steps=4, strength=0.7, share_with=t2i)


def test_tiny_sdxl_backbone_layout_and_determinism(sdxl, tmp_path):
    from diffusion_hpc.generate.tiny import write_tiny_backbone
    from diffusion_hpc.runtime.weights import check_models, resolve_backbone

    bs = resolve_backbone(str(sdxl))  # both tiny tokenizers pass the tokenizer check
    assert bs.tiny and bs.depth2img is None and bs.regenerators() == ["controlnet"]
    index = json.loads((bs.text2img / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    unet = json.loads((bs.text2img / "unet" / "config.json").read_text())
    cn = json.loads((bs.controlnet_depth / "config.json").read_text())
    for cfg in (unet, cn):
        assert cfg["addition_embed_type"] == "text_time" and cfg["cross_attention_dim"] == 64
        assert cfg["projection_class_embeddings_input_dim"] == 6 * 8 + 24  # 6 time ids x 8 + pooled 24
    assert check_models({"controlnet": str(bs.controlnet_depth)})["controlnet"] == bs.controlnet_depth.resolve()
    other = write_tiny_backbone(tmp_path / "again", seed=0, sdxl=True)
    for part in ("text2img/unet/diffusion_pytorch_model.safetensors", "text2img/text_encoder_2/model.safetensors",
                 "controlnet_depth/diffusion_pytorch_model.safetensors"):  # fmt: skip
        assert (sdxl / part).read_bytes() == (other / part).read_bytes(), part


def test_sdxl_txt2img_shapes_determinism_and_counts(t2i, sdxl):
    from diffusion_hpc.generate.diffusion import Text2ImageGenerator

    assert type(t2i.pipe).__name__ == "StableDiffusionXLPipeline" and t2i.pipe.watermark is None
    assert t2i.default_size() == (SIZE, SIZE)
    prompts = [format_prompt("diving", i) for i in range(3)]
    out = t2i.generate(GenerationBatch(seeds=[4, 5, 6], prompts=prompts))
    assert out.images.shape == (3, SIZE, SIZE, 3) and out.images.dtype == np.uint8
    again = t2i.generate(GenerationBatch(seeds=[4, 5, 6], prompts=prompts))
    assert np.array_equal(out.images, again.images)
    alone = t2i.generate(GenerationBatch(seeds=[5], prompts=prompts[1:2]))
    assert np.abs(alone.images[0].astype(int) - out.images[1]).max() <= 2  # batched kernels only
    assert not np.array_equal(out.images[0], out.images[2])
    assert (out.unet_evals == 2 * 2).all() and t2i.unet_evals_per_sample() == 4  # steps x guidance
    off = Text2ImageGenerator(sdxl, steps=3, guidance=1.0)
    assert (off.generate(GenerationBatch(seeds=[1], prompts=["a"])).unet_evals == 3).all()


def test_sdxl_controlnet_regeneration_runs_and_counts(cnet):
    assert type(cnet.pipe).__name__ == "StableDiffusionXLControlNetPipeline" and cnet.is_sdxl
    out = cnet.generate(regen_batch([1, 2]))
    assert out.images.shape == (2, SIZE, SIZE, 3)
    assert out.ran.steps_run == round(0.7 * 4) == 3
    assert (out.unet_evals == 3 * 2).all() and (out.controlnet_evals == 3 * 2).all()
    assert cnet.unet_evals_per_sample() == 6
    again = cnet.generate(regen_batch([1, 2]))
    assert np.array_equal(out.images, again.images)
    alone = cnet.generate(regen_batch([2], first=1))
    assert np.abs(alone.images[0].astype(int) - out.images[1]).max() <= 2
    # mode D: no start image -> all steps from noise
    d = cnet.generate(regen_batch([3], start=False))
    assert d.ran.steps_run == 4 and (d.unet_evals == 8).all() and (d.controlnet_evals == 8).all()


@pytest.mark.parametrize("kind, preset, scheduler, guidance", [
    ("sd", "default", None, 7.5), ("sdxl", "default", None, 7.5), ("sdxl", "default", None, 1.0),
    ("sd", "fast", None, None), ("sd", "fast", "tcd", None), ("sdxl", "turbo", None, None), ("lcm", "fast", None, 8.0),
])  # fmt: skip
def test_regeneration_from_noise_matches_the_diffusers_controlnet_pipeline(kind, preset, scheduler, guidance, request):
    """Mode D (no start image, all steps) is plain ControlNet text-to-image: the diffusers pipeline
    on the same initial latents and control image must give the same bytes. The few-step presets
    too (LCM, TCD with its eta, Turbo's Euler ancestral on trailing timesteps, guidance off): their
    scheduler noise comes from each sample's generator after its region and strength noise, as the
    pipeline draws it from the same generators. A guidance-distilled (LCM) UNet takes guidance 8 as an
    embedding: one UNet row per sample per step."""
    from diffusion_hpc.generate import conditioning as C
    from diffusion_hpc.data.seeds import STAGE_REGEN
    from diffusion_hpc.generate.diffusion import (
        STEP_KWARGS,
        DepthRegenerator,
        make_scheduler,
        per_sample_randn,
        torch_generators,
    )

    fixture = {"sd": "tiny_backbone", "sdxl": "tiny_sdxl_backbone", "lcm": "tiny_lcm_backbone"}[kind]
    backbone = request.getfixturevalue(fixture)
    steps = 3 if preset == "default" else None  # the few-step presets' own step counts
    gen = DepthRegenerator(backbone, method="controlnet", preset=preset, scheduler=scheduler, steps=steps,
                           guidance=guidance)  # fmt: skip
    batch = regen_batch([8, 9], start=False)
    out = gen.generate(batch)
    ours = out.images
    assert gen.guidance_embedded == (kind == "lcm") and gen.cfg == (guidance == 7.5)
    assert (out.unet_evals == gen.steps * (2 if gen.cfg else 1)).all()
    seeds = list(batch.seeds)
    generators = torch_generators(seeds, STAGE_REGEN)
    latents = per_sample_randn(generators, (4, SIZE // 8, SIZE // 8))
    per_sample_randn(generators, (4, SIZE // 8, SIZE // 8))  # the strength noise, unused without a start image
    depth, occ = torch.from_numpy(batch.depth), torch.from_numpy(batch.occluder_masks)
    control = C.controlnet_conditioning(C.depth_to_disparity(depth, occ, scheme=gen.disparity))
    gen.pipe.scheduler = make_scheduler(gen.scheduler_name, gen.scheduler_config, gen.timestep_spacing)
    ref = gen.pipe(prompt=list(batch.prompts), negative_prompt=batch.negatives() if gen.cfg else None, image=control,
                   latents=latents, generator=generators,
                   num_inference_steps=gen.steps, guidance_scale=gen.guidance, height=SIZE, width=SIZE,
                   output_type="np", **STEP_KWARGS.get(gen.scheduler_name, {})).images  # fmt: skip
    assert type(gen.pipe).__name__ == ("StableDiffusionXLControlNetPipeline" if kind == "sdxl"
                                       else "StableDiffusionControlNetPipeline")  # fmt: skip
    assert np.array_equal(np.round(np.clip(ref, 0, 1) * 255).astype(np.uint8), ours)
    if kind == "lcm":  # the start image too: guidance 8 embedded, 4 LCM steps, 4 UNet rows
        from diffusion_hpc.generate.diffusion import Text2ImageGenerator

        t2i = Text2ImageGenerator(backbone, preset=preset, guidance=guidance)
        made = t2i.generate(GenerationBatch(seeds=seeds, prompts=list(batch.prompts), size=(SIZE, SIZE)))
        assert t2i.settings.guidance_embedded and (made.unet_evals == 4).all()


def test_float16_sdxl_vae_runs_in_float32(sdxl):
    """SDXL's VAE overflows in float16: with a float16 backbone it encodes and decodes in float32 and is
    back in float16 afterwards. (float16 on the CPU is refused by --dtype; a ready Placement passes it
    here, only to exercise the upcast without a GPU.)"""
    from diffusion_hpc.generate.diffusion import DepthRegenerator, Text2ImageGenerator
    from diffusion_hpc.runtime.device import Placement

    half = Placement(torch.device("cpu"), torch.float16)
    t2i = Text2ImageGenerator(sdxl, steps=2, device=half)
    gen = DepthRegenerator(sdxl, method="controlnet", steps=2, share_with=t2i, device=half)
    assert gen.vae_upcast and gen.unet.dtype == torch.float16 and gen.settings.dtype == "float16"
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype)) for m in (gen.vae.encoder, gen.vae.decoder)]
    result = gen.generate(regen_batch([1, 2], start=True))
    for h in hooks:
        h.remove()
    assert seen == [torch.float32, torch.float32] and gen.vae.dtype == torch.float16
    assert result.images.dtype == np.uint8 and result.images.std() > 0


def test_sdxl_backbone_has_no_depth2img(sdxl):
    from diffusion_hpc.generate.diffusion import DepthRegenerator

    with pytest.raises(MissingModelError, match="no depth-to-image pipeline.*--generator controlnet"):
        DepthRegenerator(sdxl, method="depth2img")


def test_cli_tiny_sdxl_and_mode_d_controlnet(tmp_path, capsys):
    from diffusion_hpc.cli import main
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.generate.base import PRESETS, expected_unet_evals

    bb = tmp_path / "bb"
    assert main(["backbone", "tiny", "--sdxl", "--out", str(bb)]) == 0
    assert "tiny SDXL backbone" in capsys.readouterr().out
    assert json.loads((bb / "dhpc_backbone.json").read_text())["sdxl"] is True
    out = tmp_path / "d"
    code = main(["generate", "--mode", "D", "--generator", "controlnet", "--backbone", str(bb), "--image-size", "64",
                 "-n", "2", "--seed", "1", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    p = PRESETS["default"]
    samples = list(open_dataset(out))
    assert len(samples) == 2
    for s in samples:
        assert s["generator"] == "controlnet" and s["image"].shape == (SIZE, SIZE, 3)
        assert s["unet_evals"] == expected_unet_evals(p.regen_steps, p.guidance) == 40  # no start image: all steps
