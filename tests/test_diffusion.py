"""Diffusion generators, conditioning, weights and segmenters on the tiny random backbone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import diffusers  # noqa: F401  (hard dependencies: a broken install fails the suite, never skips it)
import numpy as np
import pytest
import torch

from diffusion_hpc.errors import MissingModelError
from diffusion_hpc.generate import conditioning as C
from diffusion_hpc.generate.base import (
    NEGATIVE_PROMPT,
    PRESETS,
    GenerationBatch,
    SamplerSettings,
    expected_unet_evals,
    format_prompt,
    prompt_for_sample,
)
from diffusion_hpc.runtime.weights import check_models, check_tokenizer

from conftest import TINY_SIZE as SIZE
from conftest import regen_batch, regen_scene
from test_pipeline_modes import PhotoStart, guides  # noqa: F401  (guides: the real-photo fixture)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone(tiny_backbone):
    return tiny_backbone


@pytest.fixture(scope="module")
def t2i(backbone):
    from diffusion_hpc.generate.diffusion import Text2ImageGenerator

    return Text2ImageGenerator(backbone, preset="default", steps=2)


@pytest.fixture(scope="module")
def d2i(backbone):
    from diffusion_hpc.generate.diffusion import DepthRegenerator

    return DepthRegenerator(backbone, method="depth2img", preset="default", steps=4, strength=0.7)


@pytest.fixture(scope="module")
def cnet(backbone, t2i):
    from diffusion_hpc.generate.diffusion import DepthRegenerator

    return DepthRegenerator(backbone, method="controlnet", preset="default", steps=4, strength=0.7, share_with=t2i)


# --------------------------------------------------------------------------------------------
# pure functions


def test_depth_to_disparity_matches_the_original_formula():
    depth = torch.tensor([[[0.0, 2.0, 3.0], [4.0, 0.0, 0.0]]])
    out = C.depth_to_disparity(depth, scheme="original")
    # foreground 2, 3, 4 m -> rescaled to 150, 180, 210 -> max + 50 - d = 260 - d
    expected = torch.tensor([[[0.0, 110.0, 80.0], [50.0, 0.0, 0.0]]])
    assert torch.allclose(out, expected)
    inv = C.depth_to_disparity(depth, scheme="inverse")
    assert torch.allclose(inv, torch.tensor([[[0.0, 1.0, 2 / 3], [0.5, 0.0, 0.0]]]))
    # per sample, constant foreground -> 50 (the span is 0), empty sample -> all 0
    batch = torch.stack([torch.tensor([[0.0, 5.0], [5.0, 0.0]]), torch.zeros(2, 2)])
    out = C.depth_to_disparity(batch)
    assert torch.equal(out, torch.tensor([[[0.0, 50.0], [50.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]))


def test_occluders_are_zeroed_in_the_conditioning_depth():
    _, depth, _, occ = regen_scene(2)
    depth, occ = torch.from_numpy(depth), torch.from_numpy(occ)
    for scheme in ("original", "inverse"):
        free = C.depth_to_disparity(depth, scheme=scheme)
        out = C.depth_to_disparity(depth, occ, scheme=scheme)
        assert (out[occ] == 0).all() and (free[occ & (depth > 0)] > 0).all()
        assert torch.equal(out[~occ], free[~occ])  # the rest is unchanged


def test_composited_start_latents_are_noise_inside_and_image_outside():
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    person = np.zeros((2, 64, 64), bool)
    person[0, 10:30, 20:40] = True
    sil = np.zeros_like(person)
    sil[1, 33:34, 5:6] = True  # one pixel: the "any" rule takes its whole latent cell
    occ = np.zeros_like(person)
    occ[0, 10:30, 32:40] = True
    region = torch.from_numpy(C.human_region(person, sil, occ))
    out = C.composite_start_latents(lat, region, noise)
    cell = C.latent_mask(region, (8, 8)).unsqueeze(1).expand_as(lat)
    assert cell[0, 0, 1:4, 2:4].all() and not cell[0, 0, 1:4, 4:5].any()
    assert cell[1, 0, 4, 0] and cell[1].sum() == 4  # 1 cell x 4 channels
    assert torch.equal(out[cell], noise[cell]) and torch.equal(out[~cell], lat[~cell])
    area = C.latent_mask(region, (8, 8), rule="area")
    assert not area[1].any() and area[0, 1:4, 3].all() and area[0, 2, 2] and not area[0, 1, 2]  # 6/8 x 4/8 < 0.5


def test_blur_augment_radius_and_determinism():
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, 16:] = 255
    a = C.blur_augment(img, np.random.default_rng(1))
    b = C.blur_augment(img, np.random.default_rng(1))
    assert np.array_equal(a, b) and not np.array_equal(a, img)
    radii = [C.sample_blur_radius(np.random.default_rng(s)) for s in range(50)]
    assert min(radii) >= 1.0 and max(radii) <= 2.5


def test_prompts_and_expected_costs():
    assert format_prompt("skiing", 1) == "a side shot of a person skiing"
    assert prompt_for_sample("diving", 5) == prompt_for_sample("diving", 5)
    assert NEGATIVE_PROMPT == "deformed, bad anatomy"
    orig = PRESETS["original"]
    t = expected_unet_evals(orig.txt2img_steps, orig.guidance)
    r = expected_unet_evals(orig.regen_steps, orig.guidance, orig.strength)
    assert (t, r) == (100, 70)
    d = PRESETS["default"]
    assert expected_unet_evals(d.txt2img_steps, d.guidance) + expected_unet_evals(d.regen_steps, d.guidance, 0.7) <= 70


def test_importing_generate_and_segment_loads_no_model_library():
    """diffusers, transformers and MediaPipe load with the first model, not with the modules (the
    weight check runs before any of them)."""
    code = ("import sys, diffusion_hpc.generate, diffusion_hpc.generate.identity, diffusion_hpc.runtime.weights, "
            "diffusion_hpc.generate.conditioning, diffusion_hpc.generate.diffusion, diffusion_hpc.generate.tiny, "
            "diffusion_hpc.segment, diffusion_hpc.segment.instance, diffusion_hpc.segment.mediapipe_seg; "
            "bad = [m for m in ('diffusers', 'transformers', 'mediapipe') if m in sys.modules]; "
            "assert not bad, bad")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------------------------
# weights


def test_missing_models_are_reported_together_before_any_work(tmp_path):
    specs = {"backbone": "nobody-dhpc/missing-backbone", "controlnet": str(tmp_path / "no-controlnet"),
             "segmenter": "nobody-dhpc/missing-segmenter"}  # fmt: skip
    with pytest.raises(MissingModelError) as err:
        check_models(specs)
    msg = str(err.value)
    assert msg.startswith("3 models are missing")
    for spec in specs.values():
        assert spec in msg
    assert "hf download nobody-dhpc/missing-backbone" in msg and "Hugging Face cache" in msg
    assert str(tmp_path / "no-controlnet") in msg and "--controlnet DIR" in msg
    from diffusion_hpc.generate.diffusion import DepthRegenerator

    with pytest.raises(MissingModelError):
        DepthRegenerator("nobody-dhpc/missing-backbone", method="controlnet", controlnet=str(tmp_path / "x"))


def test_tokenizer_trap_is_caught(backbone, tmp_path):
    broken = tmp_path / "sd"
    shutil.copytree(backbone / "text2img", broken)
    (broken / "dhpc_tiny.json").unlink()
    index = json.loads((broken / "model_index.json").read_text())
    index.pop("_dhpc_tiny")
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(MissingModelError, match="only 514 tokens"):
        check_models({"backbone": str(broken)})
    found = check_models({"backbone": str(backbone), "segmenter": "mediapipe"})  # the tiny one is allowed
    assert found["backbone"] == backbone.resolve()

    class TwoTokens:
        def __len__(self):
            return 2

    with pytest.raises(MissingModelError, match="only 2 tokens"):
        check_tokenizer(TwoTokens(), "openai/clip-vit-large-patch14")


def test_tiny_backbone_is_deterministic(backbone, tmp_path):
    from diffusion_hpc.generate.tiny import write_tiny_backbone

    other = write_tiny_backbone(tmp_path / "again", seed=0)
    for part in ("text2img/unet", "depth2img/unet", "controlnet_depth"):
        a = (backbone / part / "diffusion_pytorch_model.safetensors").read_bytes()
        assert a == (other / part / "diffusion_pytorch_model.safetensors").read_bytes()


# --------------------------------------------------------------------------------------------
# generators


def test_txt2img_is_deterministic_per_seed_and_batch_free(t2i):
    prompts = [format_prompt("pole vaulting", i) for i in range(3)]
    out = t2i.generate(GenerationBatch(seeds=[11, 12, 13], prompts=prompts, size=(SIZE, SIZE)))
    assert out.images.shape == (3, SIZE, SIZE, 3) and out.images.dtype == np.uint8
    again = t2i.generate(GenerationBatch(seeds=[11, 12, 13], prompts=prompts, size=(SIZE, SIZE)))
    assert np.array_equal(out.images, again.images)
    alone = t2i.generate(GenerationBatch(seeds=[12], prompts=prompts[1:2], size=(SIZE, SIZE)))
    diff = np.abs(alone.images[0].astype(int) - out.images[1])
    assert diff.max() <= 2  # batched kernels round differently; no change beyond that
    assert not np.array_equal(out.images[0], out.images[2])
    assert (out.unet_evals == 2 * 2).all()  # 2 steps x guidance


@pytest.mark.parametrize("which", ["d2i", "cnet"])
def test_depth_regeneration_runs_and_counts(which, request):
    gen = request.getfixturevalue(which)
    out = gen.generate(regen_batch([1, 2]))
    assert out.images.shape == (2, SIZE, SIZE, 3)
    assert out.ran.steps_run == round(0.7 * 4) == 3
    assert (out.unet_evals == 3 * 2).all()
    assert (out.controlnet_evals == (6 if which == "cnet" else 0)).all()
    again = gen.generate(regen_batch([1, 2]))
    assert np.array_equal(out.images, again.images)
    alone = gen.generate(regen_batch([2], first=1))
    assert np.abs(alone.images[0].astype(int) - out.images[1]).max() <= 2
    # mode D: no start image -> all steps from noise
    d = gen.generate(regen_batch([3], start=False))
    assert d.ran.steps_run == 4 and (d.unet_evals == 8).all()


def test_unet_counts_equal_steps_times_guidance_factor(backbone, t2i):
    from diffusion_hpc.generate.diffusion import DepthRegenerator, Text2ImageGenerator

    off = Text2ImageGenerator(backbone, steps=3, guidance=1.0)
    out = off.generate(GenerationBatch(seeds=[1, 2], prompts=["a", "b"], size=(SIZE, SIZE)))
    assert (out.unet_evals == 3).all() and off.unet_evals_per_sample() == 3
    assert t2i.unet_evals_per_sample() == 4
    for guidance, factor in ((7.5, 2), (1.0, 1)):
        gen = DepthRegenerator(backbone, method="depth2img", preset="original", guidance=guidance)
        out = gen.generate(regen_batch([5]))
        assert out.ran.steps_run == 35  # strength 0.7 of 50 steps
        assert (out.unet_evals == 35 * factor).all() and gen.unet_evals_per_sample() == 35 * factor


def test_factories_pass_every_sampler_field(backbone):
    """make_start_generator / make_image_generator hand every field of the config's sampler block
    to the generators, and each call reports what ran."""
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.data.seeds import STAGE_BLUR, stage_seed
    from diffusion_hpc.generate import make_image_generator, make_start_generator

    sampler = dict(preset="original", scheduler="euler", txt2img_steps=3, steps=6, strength=0.5, guidance=3.0,
                   controlnet_scale=0.6, blur_prob=0.5)  # fmt: skip
    cfg = GenerateConfig(mode="T", prompt="diving", generator="controlnet", backbone=str(backbone),
                         image_size=(SIZE, SIZE), sampler=sampler)  # fmt: skip
    start = make_start_generator(cfg)
    regen = make_image_generator(cfg, start=start)
    spacing = start.pipe.scheduler.config.timestep_spacing  # the backbone's own (no preset overrides it)
    assert start.settings == SamplerSettings("txt2img", "original", "euler", 3, 3.0, False, timestep_spacing=spacing)
    assert regen.settings == SamplerSettings("controlnet", "original", "euler", 6, 3.0, False, strength=0.5,
                                             controlnet_scale=0.6, blur_prob=0.5, timestep_spacing=spacing)  # fmt: skip
    assert regen.pipe.unet is start.pipe.unet  # ControlNet regeneration shares the start generator's weights
    made = start.generate(GenerationBatch(seeds=[1], prompts=["a"], size=(SIZE, SIZE)))
    assert made.ran.settings == start.settings and made.ran.steps_run == 3 and made.ran.blur_radius is None
    assert (made.unet_evals == 3 * 2).all()
    seeds = [1, 2, 3, 4, 5, 6]
    out = regen.generate(regen_batch(seeds))
    assert out.ran.settings == regen.settings and out.ran.steps_run == round(0.5 * 6) == 3
    assert (out.unet_evals == 3 * 2).all() and (out.controlnet_evals == 3 * 2).all()
    # blur: the sample's own stream decides, radius U(1, 2.5)
    blurred = [np.random.default_rng(stage_seed(s, STAGE_BLUR)).random() < 0.5 for s in seeds]
    assert list(out.ran.blur_radius > 0) == blurred and 0 < sum(blurred) < len(seeds)
    assert ((out.ran.blur_radius == 0) | ((out.ran.blur_radius >= 1) & (out.ran.blur_radius <= 2.5))).all()


def test_backbone_identity_names_no_path_and_follows_the_weights(backbone, tmp_path):
    from diffusion_hpc.generate.identity import backbone_identity, fingerprint, model_identity
    from diffusion_hpc.runtime.weights import backbone_set

    copy = tmp_path / "copy-of-tiny"
    shutil.copytree(backbone, copy)
    a = backbone_identity(str(backbone), backbone_set(backbone))
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"x" * 10)
    b = backbone_identity(str(copy), backbone_set(copy), lora=lora, lora_scale=0.5)
    assert a["fingerprint"] == b["fingerprint"] and len(a["fingerprint"]) == 16
    assert b["spec"] == "copy-of-tiny" and b["commit"] is None and str(tmp_path) not in json.dumps(b)
    assert b["lora"] == {"file": "lora.safetensors", "fingerprint": fingerprint(lora), "scale": 0.5}
    config = sorted(copy.rglob("unet/config.json"))[0]
    config.write_text(config.read_text() + " ")
    changed = fingerprint(copy)
    assert changed != a["fingerprint"]
    weights = sorted(copy.rglob("*.safetensors"))[0]
    with open(weights, "ab") as f:
        f.write(b"\0")
    assert fingerprint(copy) != changed
    # a hub id from the HF cache: the snapshot commit, and the blobs' content hashes
    snap = tmp_path / "models--owner--name" / "snapshots" / ("c" * 40)
    (snap / "unet").mkdir(parents=True)
    blobs = tmp_path / "models--owner--name" / "blobs"
    blobs.mkdir()
    (blobs / ("a" * 64)).write_bytes(b"weights")
    (snap / "unet" / "model.safetensors").symlink_to(blobs / ("a" * 64))
    (snap / "model_index.json").write_text("{}")
    hub = model_identity("owner/name", snap)
    assert hub["spec"] == "owner/name" and hub["commit"] == "c" * 40
    (blobs / ("b" * 64)).write_bytes(b"weights")  # same size, other content: another blob
    (snap / "unet" / "model.safetensors").unlink()
    (snap / "unet" / "model.safetensors").symlink_to(blobs / ("b" * 64))
    assert model_identity("owner/name", snap)["fingerprint"] != hub["fingerprint"]


# --------------------------------------------------------------------------------------------
# segmenters


def test_instance_masks_from_instances():
    from diffusion_hpc.segment.instance import masks_from_instances

    m = np.zeros((4, 20, 20), bool)
    m[0, 2:10, 2:8] = True  # person
    m[1, 8:12, 6:14] = True  # overlaps the person box: occluder
    m[2, 15:19, 15:19] = True  # far away: not an occluder
    m[3, 3:5, 3:5] = True  # person-box overlap but low score: ignored
    person, occ, score, people = masks_from_instances(m, np.array([0, 5, 5, 7]), np.array([0.9, 0.8, 0.9, 0.3]), [0])
    assert np.array_equal(person, m[0]) and score == pytest.approx(0.9)
    assert np.array_equal(occ, m[1] & ~m[0]) and not (occ & m[2]).any()


def test_mediapipe_person_mask_on_a_real_photo():
    import skimage.data  # the test extra ships the astronaut photo

    from diffusion_hpc.segment import make_segmenter

    image = skimage.data.astronaut()
    seg = make_segmenter("mediapipe").segment(image)
    assert seg.person.shape == (1, 512, 512) and seg.person_found[0]
    assert 0.2 < seg.person[0].mean() < 0.8 and not seg.occluders.any()
    # the astronaut fills the lower centre of the photo; the top corners are background
    assert seg.person[0, 400:, 200:300].mean() > 0.8 and seg.person[0, :60, :60].mean() < 0.2


def test_instance_segmenter_with_a_tiny_random_mask2former(tmp_path):
    import transformers

    from diffusion_hpc.segment import make_segmenter

    swin = transformers.SwinConfig(image_size=64, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                   window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])  # fmt: skip
    cfg = transformers.Mask2FormerConfig(
        backbone_config=swin, hidden_dim=32, mask_feature_size=32, feature_size=32, encoder_layers=1,
        decoder_layers=2, num_queries=6, num_attention_heads=2, encoder_feedforward_dim=32, dim_feedforward=32,
        id2label={0: "person", 1: "chair"}, label2id={"person": 0, "chair": 1},
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.Mask2FormerForUniversalSegmentation(cfg).save_pretrained(tmp_path / "m2f")
    transformers.Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(tmp_path / "m2f")
    seg = make_segmenter(str(tmp_path / "m2f"), score_threshold=0.0)  # random weights: low scores
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    out = seg.segment(images)
    assert out.person.shape == out.occluders.shape == (2, 48, 40)
    assert not (out.person & out.occluders).any()
    assert np.array_equal(out.person_found, out.person.reshape(2, -1).any(axis=1))
    assert out.instances.shape == (2, 48, 40) and ((out.instances >= 0) <= out.person).all()  # people lie in the person mask


# --------------------------------------------------------------------------------------------
# few-step sampling: LCM, TCD (preset fast) and Turbo (Euler ancestral, trailing timesteps)

#: (preset, scheduler override, txt2img evals, regeneration evals with a start image, from noise)
FEW_STEP = [("fast", None, 4, 3, 4), ("fast", "tcd", 4, 3, 4), ("turbo", None, 1, 1, 2)]


@pytest.mark.parametrize("preset, scheduler, t_evals, r_evals, d_evals", FEW_STEP)
def test_few_step_samplers_count_and_repeat_per_sample(backbone, preset, scheduler, t_evals, r_evals, d_evals):
    """The few-step presets run their schedulers with guidance off through txt2img and both depth
    regenerations: one UNet row per sample per step, and each sample's scheduler noise (LCM's and TCD's
    multistep noise, Euler ancestral's) drawn from its own stream: same seeds, same bytes; a sample
    alone matches itself in a batch up to the batched kernels' rounding."""
    from diffusion_hpc.generate.diffusion import DepthRegenerator, Text2ImageGenerator

    expected = PRESETS[preset]
    t2i = Text2ImageGenerator(backbone, preset=preset, scheduler=scheduler)
    batch = GenerationBatch(seeds=[11, 12], prompts=["a", "b"], size=(SIZE, SIZE))
    out = t2i.generate(batch)
    assert (out.unet_evals == t_evals).all() and out.ran.steps_run == expected.txt2img_steps == t_evals
    assert np.array_equal(out.images, t2i.generate(batch).images) and not np.array_equal(*out.images)
    assert t2i.settings.eta == (0.3 if scheduler == "tcd" else None)  # the settings record TCD's eta
    assert t2i.settings.timestep_spacing == ("trailing" if preset == "turbo" else t2i.pipe.scheduler.config.timestep_spacing)
    alone = t2i.generate(GenerationBatch(seeds=[12], prompts=["b"], size=(SIZE, SIZE)))
    assert np.abs(alone.images[0].astype(int) - out.images[1]).max() <= 2
    for method in ("depth2img", "controlnet"):
        gen = DepthRegenerator(backbone, method=method, preset=preset, scheduler=scheduler,
                               share_with=t2i if method == "controlnet" else None)  # fmt: skip
        assert gen.settings.scheduler == (scheduler or expected.scheduler) and gen.settings.guidance_factor == 1
        out = gen.generate(regen_batch([1, 2]))
        cn = r_evals if method == "controlnet" else 0
        assert out.ran.steps_run == r_evals and (out.unet_evals == r_evals).all() and (out.controlnet_evals == cn).all()
        assert gen.unet_evals_per_sample() == r_evals
        assert np.array_equal(out.images, gen.generate(regen_batch([1, 2])).images)
        alone = gen.generate(regen_batch([2], first=1))
        assert np.abs(alone.images[0].astype(int) - out.images[1]).max() <= 2
        d = gen.generate(regen_batch([3], start=False))  # mode D: every step from noise
        assert d.ran.steps_run == d_evals and (d.unet_evals == d_evals).all()


def test_few_step_img2img_schedules_follow_strength(backbone):
    """LCM / TCD place their steps below the noise level strength asks for (their own img2img
    schedule); Turbo's 2 trailing steps at strength 0.5 run the one at t = 499; a strength below one
    step's worth still runs one step; a strength with no distillation timestep left is refused."""
    from diffusion_hpc.errors import ConfigError
    from diffusion_hpc.generate.diffusion import DepthRegenerator, make_scheduler, regen_timesteps

    config = json.loads((backbone / "depth2img" / "scheduler" / "scheduler_config.json").read_text())
    for name in ("lcm", "tcd"):
        ts, n = regen_timesteps(make_scheduler(name, config), name, 4, 0.7, with_start=True)
        assert n == 3 and ts.tolist() == [699, 479, 239]  # 3 of LCM's 50 distillation steps below t = 700
        ts, n = regen_timesteps(make_scheduler(name, config), name, 4, 1.0, with_start=False)
        assert n == 4 and ts[0] == 999
        ts, n = regen_timesteps(make_scheduler(name, config), name, 4, 0.1, with_start=True)  # round(0.4) = 0
        assert n == 1 and ts.tolist() == [99]
        with pytest.raises(ConfigError, match=r"strength 0.01 .*--strength >= 0.02"):
            regen_timesteps(make_scheduler(name, config), name, 4, 0.01, with_start=True)
    turbo = PRESETS["turbo"]
    euler_a = make_scheduler(turbo.scheduler, config, turbo.timestep_spacing)
    ts, n = regen_timesteps(euler_a, turbo.scheduler, turbo.regen_steps, turbo.strength, with_start=True)
    assert n == 1 and ts.tolist() == [499]
    euler_a = make_scheduler(turbo.scheduler, config, turbo.timestep_spacing)
    assert regen_timesteps(euler_a, "euler_a", 2, 0.2, with_start=True)[1] == 1  # round(0.4) = 0: still one step
    leading = make_scheduler("euler_a", {**config, "timestep_spacing": "leading"})
    assert regen_timesteps(leading, "euler_a", 2, 0.5, with_start=True)[0].tolist() == [1]  # why Turbo trails
    gen = DepthRegenerator(backbone, preset="fast", strength=0.1)
    assert (gen.generate(regen_batch([4])).unet_evals == 1).all()
    with pytest.raises(ConfigError, match="strength 0.01"):
        DepthRegenerator(backbone, preset="fast", scheduler="tcd", strength=0.01)
    with pytest.raises(ConfigError, match=r"for 60 denoising steps; pass --steps <= 50"):  # mode D: all from noise
        DepthRegenerator(backbone, preset="fast", steps=60, strength=1.0)


def test_tcd_eta_reaches_every_step(backbone, monkeypatch):
    """TCD's eta (gamma) is passed to the txt2img pipeline and to our regeneration loop: with eta 0
    (deterministic TCD) both outputs change."""
    from diffusion_hpc.generate import diffusion
    from diffusion_hpc.generate.diffusion import DepthRegenerator, Text2ImageGenerator

    t2i = Text2ImageGenerator(backbone, preset="fast", scheduler="tcd")
    regen = DepthRegenerator(backbone, preset="fast", scheduler="tcd")
    batch = GenerationBatch(seeds=[5], prompts=["a"], size=(SIZE, SIZE))
    made, regenerated = t2i.generate(batch).images, regen.generate(regen_batch([5])).images
    monkeypatch.setitem(diffusion.STEP_KWARGS, "tcd", {"eta": 0.0})
    assert not np.array_equal(made, t2i.generate(batch).images)
    assert not np.array_equal(regenerated, regen.generate(regen_batch([5])).images)


def test_few_step_presets_end_to_end_record_their_cost(backbone, guides, tmp_path):  # noqa: F811
    """--preset fast (LCM) in mode T and --preset turbo in mode R through the Python API, end to end:
    each manifest row records the preset's sampler, and the UNet evaluations it counts are the
    goals: fast mode T (k=1) 4 + 3 = 7 <= 8 per accepted sample, turbo mode R 1 (original: 170 / 70)."""
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.pipeline.generate import Generator, generate
    from diffusion_hpc.pipeline.inputs import GuideImages

    photos = [GuideImages(guides, (SIZE, SIZE)).load(i) for i in range(3)]
    cfg = GenerateConfig(mode="T", prompt="doing a backflip", backbone=str(backbone), image_size=(SIZE, SIZE), n=2,
                         k=1, seed=1, sampler={"preset": "fast"})  # fmt: skip
    gen = Generator(cfg, progress=False)
    gen.load_models()
    gen.stages.start = PhotoStart(gen.stages.start, photos)
    gen.run(tmp_path / "t")
    rows = open_dataset(tmp_path / "t").manifest()
    assert len(rows) == 2 and any(r["status"] == "ok" for r in rows)
    for r in rows:
        s = r["sampler"]
        assert (s["preset"], s["scheduler"], s["guidance"], s["txt2img_steps_run"]) == ("fast", "lcm", 1.0, 4)
        regenerated = r["status"] == "ok" or r["reason"].startswith("verify")
        assert s["steps_run"] == (3 if regenerated else 0) and r["unet_evals"] == 4 + s["steps_run"] <= 8
    out = tmp_path / "r"
    r_cfg = GenerateConfig(mode="R", guides=guides, backbone=str(backbone), image_size=(SIZE, SIZE), n=2, k=1, seed=3,
                           sampler={"preset": "turbo"})  # fmt: skip
    generate(r_cfg, out, progress=False)
    rows = open_dataset(out).manifest()
    assert len(rows) == 2 and any(r["status"] == "ok" for r in rows)
    for r in rows:
        s = r["sampler"]
        assert (s["preset"], s["scheduler"], s["guidance"], s["steps"], s["strength"]) == \
            ("turbo", "euler_a", 0.0, 2, 0.5)  # fmt: skip
        assert (s["timestep_spacing"], s["eta"]) == ("trailing", None)  # what the preset name implies, recorded
        regenerated = r["status"] == "ok" or r["reason"].startswith("verify")
        assert s["steps_run"] == int(regenerated) and r["unet_evals"] == s["steps_run"] <= 4
