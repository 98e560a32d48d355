"""Modes T, R and D end to end on the tiny random backbone (64x64): labels, cost counting,
verification, failures, missing weights, determinism and resume.

The tiny backbone draws noise, so in mode T its start images hold no person: the real txt2img run
checks failure rows and the waste they count; a second T run swaps its noise for real photos
(the stage is behind the ImageGenerator interface) so the rest of mode T runs on a person.
Real photos: scikit-image's astronaut and camera, matplotlib's grace_hopper.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import diffusers  # noqa: F401  (hard dependencies: a broken install fails the suite, never skips it)
import numpy as np
import pytest
import skimage.data
import torch

from diffusion_hpc.config import DEFAULT_PROMPT, GenerateConfig
from diffusion_hpc.data import open_dataset
from diffusion_hpc.data.reader import shard_without_timings
from diffusion_hpc.data.schema import persons_of
from diffusion_hpc.errors import ConfigError, DhpcError, InputError, MissingModelError
from diffusion_hpc.generate.base import PRESETS, expected_unet_evals, guidance_factor
from diffusion_hpc.pipeline.generate import Generator, generate

from conftest import dataset_digest, lose_shard, run_cli, strip_options

SIZE = 64
P = PRESETS["default"]
TXT2IMG_EVALS = expected_unet_evals(P.txt2img_steps, P.guidance)  # 40
REGEN_EVALS = expected_unet_evals(P.regen_steps, P.guidance, P.strength)  # 28
FULL_EVALS = expected_unet_evals(P.regen_steps, P.guidance)  # 40: mode D, no start image


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone(tiny_backbone):
    return tiny_backbone


@pytest.fixture(scope="module")
def guides(tmp_path_factory):
    import matplotlib
    from PIL import Image

    folder = tmp_path_factory.mktemp("guides")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skimage.data.camera()).save(folder / "camera.png")
    shutil.copy(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", folder / "grace_hopper.jpg")
    return folder


def r_config(backbone, guides, **kw) -> GenerateConfig:
    base = dict(mode="R", guides=guides, backbone=str(backbone), image_size=(SIZE, SIZE), n=6, k=2, seed=3,
                batch_size=8, shard_size=2)  # fmt: skip
    return GenerateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def r_dataset(tmp_path_factory, backbone, guides):
    out = tmp_path_factory.mktemp("r") / "d"
    result = generate(r_config(backbone, guides), out, progress=False)
    assert result.accepted + result.failed == 6
    return out


class PhotoStart:
    """Mode T's start stage with the tiny backbone's cost but a real photo per guide.

    Runs the real tiny txt2img (so its UNet evaluations are counted as a real backbone's would be)
    and replaces each noise image by a photo of a person: what a real backbone would draw.
    """

    name = "txt2img"
    requires = ("prompts", "seeds")

    def __init__(self, inner, photos):
        self.inner, self.photos = inner, photos

    def generate(self, batch):
        result = self.inner.generate(batch)
        result.images = np.stack([self.photos[int(s) % len(self.photos)] for s in batch.seeds])
        return result


@pytest.fixture(scope="module")
def t_dataset(tmp_path_factory, backbone, guides):
    from diffusion_hpc.pipeline.inputs import GuideImages

    photos = [GuideImages(guides, (SIZE, SIZE)).load(i) for i in range(3)]
    cfg = GenerateConfig(mode="T", prompt="doing a backflip", backbone=str(backbone), image_size=(SIZE, SIZE), n=5,
                         k=2, seed=1, batch_size=8)  # fmt: skip
    gen = Generator(cfg, progress=False)
    gen.load_models()
    gen.stages.start = PhotoStart(gen.stages.start, photos)
    out = tmp_path_factory.mktemp("t") / "d"
    gen.run(out)
    return out


def check_labels(root: Path, body) -> int:
    """The foundation's integrity checks on every sample; returns the number of samples."""
    from diffusion_hpc.geometry.camera import project
    from diffusion_hpc.render import get_renderer

    renderer = get_renderer("auto")
    count = 0
    for sample in open_dataset(root):
        (s,) = persons_of(sample)  # modes T and R label one person per image
        uv = project(s["joints3d"]["coco17"], s["K"])
        assert np.abs(uv - s["keypoints2d"][:, :2]).max() <= 0.5
        params = {k: torch.as_tensor(v)[None] for k, v in s["params"].items()}
        with torch.no_grad():
            out = body(params)
        for name, joints in s["joints3d"].items():
            assert np.abs(out.joints[name][0].numpy() - joints).max() <= 1e-3, name
        assert s["mask"].any() and np.array_equal(s["depth"] > 0, s["mask"])
        fresh = renderer.render(out.vertices.numpy(), body.faces.numpy(), s["K"][None], s["mask"].shape)
        inter, union = (fresh.mask[0] & s["mask"]).sum(), (fresh.mask[0] | s["mask"]).sum()
        assert inter / union >= 0.98
        assert s["image"].shape == (SIZE, SIZE, 3)
        count += 1
    return count


# --- mode R ------------------------------------------------------------------------------------


def test_mode_r_labels_scores_and_cost(r_dataset, anny_body):
    assert check_labels(r_dataset, anny_body) >= 4  # the estimator finds the person in all three photos
    ds = open_dataset(r_dataset)
    rows = ds.manifest()
    assert [r["index"] for r in rows] == list(range(6))
    for s in ds:
        assert s["mode"] == "R" and s["prompt"] == DEFAULT_PROMPT and s["generator"] == "depth2img"
        (person,) = persons_of(s)
        assert person["pose_source"].startswith("guide:") and person["pose_source"].endswith(f"#variant{s['index'] % 2}")
        # no start image in mode R: the regeneration only, round(0.7 * 20) steps x 2 (guidance)
        assert s["unet_evals"] == REGEN_EVALS == 28
        assert 0.0 <= s["scores"]["pck_agreement"] <= 1.0 and 0.0 <= s["scores"]["mask_iou"] <= 1.0
        # the segmenter's mask of the final image is stored beside the label silhouette, and mask_iou is theirs
        from diffusion_hpc.pipeline.verify import mask_iou

        assert s["image_mask"] is not None and s["image_mask"].shape == s["mask"].shape
        iou = mask_iou(s["image_mask"], s["mask"])
        assert (np.isnan(iou) and s["scores"]["mask_iou"] is None) or abs(iou - s["scores"]["mask_iou"]) < 1e-9
        assert s["scores"]["prior_score"] is not None
        assert {"start", "segment", "estimate", "prior", "render", "regenerate", "verify"} <= set(s["timings"])
    # variants of one guide: the same start photo, other poses
    by_guide = {}
    for s in ds:
        by_guide.setdefault(s["index"] // 2, []).append(persons_of(s)[0])
    pairs = [v for v in by_guide.values() if len(v) == 2]
    assert pairs
    for a, b in pairs:
        assert a["pose_source"].split("#")[0] == b["pose_source"].split("#")[0]
        assert not np.allclose(a["params"]["body_pose"], b["params"]["body_pose"])
    run = json.loads((r_dataset / "run.json").read_text())
    assert run["unet_evals_total"] == sum(r["unet_evals"] for r in rows)


def test_determinism_same_seed_same_samples(r_dataset, backbone, guides, tmp_path):
    """A 2-sample run with the same seed remakes shard 0 byte for byte (labels, images, scores)."""
    out = tmp_path / "again"
    generate(r_config(backbone, guides, n=2), out, progress=False)
    name = "shards/shard-000000.tar"
    assert shard_without_timings((out / name).read_bytes()) == shard_without_timings((r_dataset / name).read_bytes())


@pytest.mark.slow
def test_resume_mode_r_after_sigkill(r_dataset, backbone, guides, tmp_path):
    out = tmp_path / "killed"
    args = ["generate", "--mode", "R", "--guides", str(guides), "--backbone", str(backbone), "--image-size", "64",
            "-n", "6", "-k", "2", "--seed", "3", "--batch-size", "8", "--shard-size", "2", "--out", str(out),
            "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "diffusion_hpc.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "shards").glob("*.tar"))) >= 1 if (out / "shards").exists() else False:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list((out / "shards").glob("*.tar"))) < 3
    done = run_cli(*args, "--resume", env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    rows = open_dataset(out).manifest()
    assert sorted(r["index"] for r in rows) == list(range(6))
    keys = [s["key"] for s in open_dataset(out)]
    assert len(keys) == len(set(keys)) == sum(r["status"] == "ok" for r in rows)
    assert dataset_digest(out) == dataset_digest(r_dataset)


def test_min_agreement_drops_and_counts_cli(backbone, guides, tmp_path):
    out = tmp_path / "strict"
    proc = run_cli("generate", "--mode", "R", "--guides", str(guides), "--backbone", str(backbone), "--image-size",
                   "64", "-n", "3", "-k", "1", "--min-agreement", "0.5", "--out", str(out), "--no-progress",
                   env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = open_dataset(out).manifest()
    # noise images from the tiny backbone: no agreement with the label, every sample drifted
    assert [r["reason"] for r in rows] == ["verify: drifted"] * 3
    for r in rows:
        assert r["scores"]["pck_agreement"] < 0.5 and "mask_iou" in r["scores"] and r["unet_evals"] == REGEN_EVALS
    assert json.loads((out / "run.json").read_text())["drifted"] == 3
    assert "0 samples accepted, 3 failed" in proc.stdout and "verify: drifted" in proc.stdout
    shown = run_cli("inspect", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "drifted (verification below --min-agreement): 3" in shown.stdout
    assert f"{3 * REGEN_EVALS} spent on 3 candidates" in shown.stdout


def test_hard_only_filter_and_cycles(backbone, guides, tmp_path):
    # every guide counts as easy when the threshold is out of reach: all filtered, none crash
    cfg = r_config(backbone, guides, n=2, k=2, hard_only=True)
    gen = Generator(cfg, progress=False)
    gen.load_models()
    prior = gen.stages.prior
    saved = prior.hard_threshold
    prior.hard_threshold = float("inf")
    try:
        gen.run(tmp_path / "easy")
    finally:
        prior.hard_threshold = saved
    rows = open_dataset(tmp_path / "easy").manifest()
    assert [r["reason"] for r in rows] == ["filter: easy pose"] * 2
    assert all(r["scores"]["hard"] == 0.0 and r["unet_evals"] == 0 for r in rows)
    # one extra cycle: the noise output has no person, so the cycle fails with its reason and cost
    generate(r_config(backbone, guides, n=1, k=1, cycles=1), tmp_path / "cycle", progress=False)
    [row] = open_dataset(tmp_path / "cycle").manifest()
    assert row["status"] == "failed" and row["reason"].startswith("cycle 1: ")
    assert row["unet_evals"] == REGEN_EVALS


def test_sampler_flags_reach_the_generators_and_every_row_records_them(backbone, guides, tmp_path):
    """Non-default --steps / --strength / --guidance / --scheduler / --blur-prob: every row records
    exactly those, and its UNet evaluations are the recorded steps x the guidance factor."""
    out = tmp_path / "sampler"
    proc = run_cli("generate", "--mode", "R", "--guides", str(guides), "--backbone", str(backbone), "--image-size",
                   "64", "-n", "4", "-k", "2", "--seed", "3", "--steps", "6", "--strength", "0.5", "--guidance", "3",
                   "--scheduler", "euler", "--blur-prob", "0.5", "--out", str(out), "--no-progress",
                   env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = open_dataset(out).manifest()
    assert len(rows) == 4 and sum(r["status"] == "ok" for r in rows) >= 2
    blurred = 0
    for r in rows:
        s = r["sampler"]
        assert (s["steps"], s["strength"], s["guidance"], s["scheduler"], s["blur_prob"]) == (6, 0.5, 3.0, "euler", 0.5)
        assert s["preset"] == "default" and s["txt2img_steps"] is None and s["controlnet_scale"] is None
        regenerated = r["status"] == "ok" or r["reason"].startswith("verify")
        assert s["regenerations"] == int(regenerated) and s["steps_run"] == (round(0.5 * 6) if regenerated else 0)
        assert r["unet_evals"] == s["regenerations"] * s["steps_run"] * guidance_factor(s["guidance"], s["guidance_embedded"])
        assert r["unet_evals"] == (3 * 2 if regenerated else 0)
        assert s["blur"] == (s["blur_radius"] is not None) and (not s["blur"] or 1.0 <= s["blur_radius"] <= 2.5)
        blurred += s["blur"]
        # the weights, by name and fingerprint: no machine path in the dataset
        assert r["backbone"]["spec"] == backbone.name and len(r["backbone"]["fingerprint"]) == 16
        assert str(backbone.parent) not in json.dumps(r)
    assert 0 < blurred < 4
    run = json.loads((out / "run.json").read_text())
    assert run["sampler"] == {k: rows[0]["sampler"][k] for k in run["sampler"]} and run["backbone"] == rows[0]["backbone"]
    shown = run_cli("inspect", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "scheduler euler  guidance 3  regeneration 6 steps at strength 0.5 (3 ran)" in shown.stdout
    assert f"blur p 0.5 ({blurred} of " in shown.stdout and f"backbone  {backbone.name} (fingerprint " in shown.stdout


# --- mode T ------------------------------------------------------------------------------------


def test_mode_t_labels_and_cost_share(t_dataset, anny_body):
    assert check_labels(t_dataset, anny_body) >= 3
    rows = open_dataset(t_dataset).manifest()
    assert len(rows) == 5
    for r in rows:
        # guides of 2 variants (the last guide has 1 sample in a 5-sample run) share the start image's cost
        share = TXT2IMG_EVALS / (2 if r["index"] < 4 else 1)
        expected = share + (REGEN_EVALS if r["status"] == "ok" or r["reason"].startswith("verify") else 0)
        assert r["unet_evals"] == pytest.approx(expected), r
        # what ran, as the row records it, accounts for the same cost
        s = r["sampler"]
        assert (s["txt2img_steps"], s["txt2img_steps_run"], s["steps"], s["strength"]) == (20, 20, 20, 0.7)
        txt2img = s["txt2img_steps_run"] * guidance_factor(s["guidance"], s["txt2img_guidance_embedded"])
        regen = s["regenerations"] * s["steps_run"] * guidance_factor(s["guidance"], s["guidance_embedded"])
        assert r["unet_evals"] == pytest.approx(txt2img / (2 if r["index"] < 4 else 1) + regen), r
    spent = sum(r["unet_evals"] for r in rows)
    assert spent == pytest.approx(3 * TXT2IMG_EVALS + REGEN_EVALS * sum(r["status"] == "ok" for r in rows))
    for s in open_dataset(t_dataset):
        assert s["mode"] == "T" and "doing a backflip" in s["prompt"]
        assert persons_of(s)[0]["pose_source"].startswith("txt2img:")
        assert "pck_agreement" in s["scores"]


def test_mode_t_tiny_backbone_failures_count_waste(backbone, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# actions\ndoing a backflip\n\na photo of a diver, mid-air\n")
    cfg = GenerateConfig(mode="T", prompts=prompts, backbone=str(backbone), image_size=(SIZE, SIZE), n=4, k=2, seed=0)
    result = generate(cfg, tmp_path / "t", progress=False)
    rows = open_dataset(tmp_path / "t").manifest()
    assert result.accepted + result.failed == 4 == len(rows)
    for r in rows:
        if r["status"] == "failed" and r["reason"].split(":")[0] in ("segment", "estimate"):
            assert r["unet_evals"] == TXT2IMG_EVALS / 2  # the waste of a rejected start image
        else:
            assert r["unet_evals"] == TXT2IMG_EVALS / 2 + REGEN_EVALS
    assert sum(r["unet_evals"] for r in rows) >= 2 * TXT2IMG_EVALS


# --- mode D ------------------------------------------------------------------------------------


def test_mode_d_diffusion_generator(backbone, anny_body, tmp_path):
    cfg = GenerateConfig(mode="D", generator="depth2img", backbone=str(backbone), image_size=(SIZE, SIZE), n=3, seed=2)
    result = generate(cfg, tmp_path / "d", progress=False)
    assert result.accepted == 3
    assert check_labels(tmp_path / "d", anny_body) == 3
    for s in open_dataset(tmp_path / "d"):
        assert s["unet_evals"] == FULL_EVALS and s["prompt"] == DEFAULT_PROMPT and "pck_agreement" in s["scores"]


# --- errors before any work ----------------------------------------------------------------------


def test_missing_weights_one_error_no_output(tmp_path):
    out = tmp_path / "never"
    proc = run_cli("generate", "--mode", "T", "--prompt", "doing a backflip", "--generator", "controlnet",
                   "--backbone", str(tmp_path / "no-backbone"), "--controlnet", str(tmp_path / "no-cn"),
                   "--segmenter", str(tmp_path / "no-seg"), "--out", str(out), "--no-progress")  # fmt: skip
    assert proc.returncode == 2
    assert "3 models are missing" in proc.stderr
    for name in ("no-backbone", "no-cn", "no-seg"):
        assert name in proc.stderr
    assert proc.stderr.count("dhpc: error") == 1 and not out.exists()
    # the Python API does the same: one error, before the output directory exists
    cfg = GenerateConfig(mode="D", generator="depth2img", backbone=str(tmp_path / "no-backbone"), image_size=(SIZE, SIZE))
    with pytest.raises(MissingModelError, match="no-backbone"):
        generate(cfg, out)
    assert not out.exists()


def test_backbone_without_what_the_mode_needs(backbone, tmp_path):
    only_depth = backbone / "depth2img"
    cfg = GenerateConfig(mode="T", prompt="diving", backbone=str(only_depth), image_size=(SIZE, SIZE))
    with pytest.raises(MissingModelError, match="text-to-image"):
        Generator(cfg)


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(mode="T", backbone="x"), "prompt"),
        (dict(mode="R", backbone="x"), "guides"),
        (dict(mode="D", generator="depth2img"), "backbone"),
        (dict(mode="T", prompt="diving", backbone="x", k=3, shard_size=10), "shard_size"),
        (dict(mode="T", prompt="diving", backbone="x", generator="render"), "generator"),
        (dict(mode="D", k=3), "k:"),
        (dict(mode="D", min_agreement=0.5), "min_agreement"),
        (dict(mode="T", prompt="a", prompts="f.txt", backbone="x"), "prompt"),
        (dict(mode="D", prompt="diving"), "prompt: the render baseline"),
        (dict(mode="D", cycles=1), "cycles"),
    ],
)
def test_config_errors_name_the_field(kw, field):
    from diffusion_hpc.config import build

    with pytest.raises(ConfigError, match=field):
        build(GenerateConfig, kw)


def test_input_errors_before_any_work(backbone, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    out = tmp_path / "out"
    proc = run_cli("generate", "--mode", "T", "--prompts", str(empty), "--backbone", str(backbone), "--out", str(out),
                   "--no-progress")  # fmt: skip
    assert proc.returncode == 2 and "holds no prompts" in proc.stderr and not out.exists()
    folder = tmp_path / "g"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(InputError, match="broken.jpg"):
        Generator(GenerateConfig(mode="R", guides=folder, backbone=str(backbone), image_size=(SIZE, SIZE)))
    assert not out.exists()
    # the config stores resolved defaults and round-trips through YAML
    cfg = GenerateConfig(mode="T", prompt="diving", backbone=str(backbone))
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = GenerateConfig.from_yaml(path)
    assert again == cfg and again.k == 3 and again.shard_size % 3 == 0 and again.verify is True


# --- the mesh estimator: a regressor checkpoint, cycles ----------------------------------------


@pytest.fixture(scope="module")
def anny_regressor(tmp_path_factory):
    """A tiny random Anny regressor exported as dhpc train exports one (regressor.json + .safetensors)."""
    from diffusion_hpc.hmr.model import HMRRegressor, export_regressor

    torch.manual_seed(0)
    return export_regressor(HMRRegressor("anny", backbone="tiny"), tmp_path_factory.mktemp("reg") / "run").parent


def test_generate_mode_r_with_a_regressor_records_it(backbone, guides, anny_regressor, anny_body, tmp_path):
    """``--estimator hmr`` on a real photo: the regressor's bodies are the labels, run.json names the
    estimator and fingerprints its weights (no machine path), and another checkpoint changes it."""
    out = tmp_path / "hmr"
    proc = run_cli("generate", "--mode", "R", "--guides", str(guides), "--backbone", str(backbone), "--image-size",
                   "64", "-n", "2", "-k", "2", "--seed", "3", "--estimator", "hmr", "--estimator-checkpoint",
                   str(anny_regressor), "--out", str(out), "--no-progress", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert check_labels(out, anny_body) == 2  # MediaPipe boxes the astronaut, the regressor gives the body
    from diffusion_hpc.estimate.hmr_adapter import checkpoint_fingerprint, exported_regressor_files

    run = json.loads((out / "run.json").read_text())
    fingerprint = checkpoint_fingerprint(exported_regressor_files(anny_regressor))
    assert run["estimator"] == {"name": "hmr", "body_model": "anny", "architecture": "dhpc",
                                "checkpoint": anny_regressor.name, "fingerprint": fingerprint}  # fmt: skip
    assert str(tmp_path) not in json.dumps(run) and str(anny_regressor.parent) not in json.dumps(run["estimator"])
    # the regressor's estimate, not MediaPipe's fit: variant 0 is the regressed pose itself
    from diffusion_hpc.estimate import get_estimator
    from diffusion_hpc.pipeline.inputs import GuideImages

    [est] = get_estimator("hmr", checkpoint=anny_regressor).estimate([GuideImages(guides, (SIZE, SIZE)).load(0)])
    (first,) = persons_of(next(s for s in open_dataset(out) if s["index"] == 0))
    np.testing.assert_allclose(first["params"]["body_pose"], est.params["body_pose"], atol=1e-5)
    # retrained weights (same architecture, same file sizes) have another fingerprint
    other = tmp_path / "retrained"
    shutil.copytree(anny_regressor, other)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(other / "regressor.safetensors"))
    weights["dec_cam.bias"] = weights["dec_cam.bias"] + 0.01
    save_file(weights, str(other / "regressor.safetensors"))
    assert checkpoint_fingerprint(exported_regressor_files(other)) != fingerprint


def test_bad_estimator_options_fail_before_any_work(backbone, guides, anny_regressor, fake_smpl, tmp_path):
    from diffusion_hpc.hmr.model import HMRRegressor, export_regressor

    base = ["generate", "--mode", "R", "--guides", str(guides), "--backbone", str(backbone), "--image-size", "64",
            "-n", "2", "-k", "2", "--no-progress"]  # fmt: skip
    smpl_run = tmp_path / "smpl-run"
    export_regressor(HMRRegressor("smpl", backbone="tiny"), smpl_run)
    cases = [
        (["--estimator", "hmr"], "--estimator-checkpoint"),  # no checkpoint
        (["--estimator", "hmr", "--estimator-checkpoint", str(tmp_path / "no-run")], "no-run"),  # missing
        (["--estimator-checkpoint", str(anny_regressor)], "--estimator hmr"),  # a checkpoint for the fit
        (["--estimator", "hmr", "--estimator-checkpoint", str(smpl_run)], "--body-model smpl"),  # SMPL regressor, Anny run
        (["--estimator", "spin", "--estimator-checkpoint", str(tmp_path / "spin.pt")], "--body-model smpl"),
    ]
    for i, (flags, named) in enumerate(cases):
        out = tmp_path / f"out{i}"
        proc = run_cli(*base, *flags, "--out", str(out))
        assert proc.returncode == 2, (flags, proc.stderr)
        assert proc.stderr.count("dhpc: error") == 1 and named in proc.stderr, (flags, proc.stderr)
        assert not out.exists()


class PhotoInput:
    """A segmenter or estimator that looks at a real photo instead of each image it is given: the
    tiny backbone draws noise, so a cycle's re-estimate needs a person to find."""

    def __init__(self, inner, photo):
        self.inner, self.photo = inner, photo

    def segment(self, images):
        return self.inner.segment(np.stack([self.photo] * len(images)))

    def estimate(self, images):
        return self.inner.estimate([self.photo] * len(images))

    reads_keypoints = True  # verification's reading (verify_by label-box, the default, or landmarks)

    def read_keypoints(self, images, masks=None, labels=None):
        return self.inner.read_keypoints([self.photo] * len(images), labels=labels)


class SeedRecorder:
    """The image generator, recording the seeds of every call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, batch):
        self.calls.append(list(batch.seeds))
        return self.inner.generate(batch)


def test_cycles_draw_fresh_noise_each_cycle(backbone, guides, tmp_path):
    """Each cycle regenerates from its own seed (the sample's seed and the cycle number): not the
    first regeneration's noise again, and the same again on a rerun."""
    from diffusion_hpc.data.seeds import sample_seed
    from diffusion_hpc.pipeline.inputs import GuideImages
    from diffusion_hpc.data.seeds import cycle_seed

    photo = GuideImages(guides, (SIZE, SIZE)).load(0)

    def run(out):
        gen = Generator(r_config(backbone, guides, n=2, k=2, cycles=2), progress=False)
        gen.load_models()
        st = gen.stages
        st.segmenter, st.estimator = PhotoInput(st.segmenter, photo), PhotoInput(st.estimator, photo)
        st.image_generator = SeedRecorder(st.image_generator)
        gen.run(out)
        return st.image_generator.calls

    calls = run(tmp_path / "a")
    seeds = [sample_seed(3, i) for i in range(2)]
    assert calls == [seeds, [cycle_seed(s, 1) for s in seeds], [cycle_seed(s, 2) for s in seeds]]
    assert len({s for call in calls for s in call}) == 6  # six regenerations, six noise streams
    rows = open_dataset(tmp_path / "a").manifest()
    assert all(r["sampler"]["regenerations"] == 3 for r in rows) and all(r["status"] == "ok" for r in rows)
    assert run(tmp_path / "b") == calls
    assert dataset_digest(tmp_path / "a") == dataset_digest(tmp_path / "b")


def test_generate_with_hmr2_labels_smpl_bodies(backbone, guides, fake_smpl, tmp_path):
    """``--estimator hmr2`` (a tiny 4D-Humans checkpoint) on real photos with ``--body-model smpl``:
    the samples carry the regressor's SMPL bodies, run.json names the checkpoint by file name and
    fingerprint."""
    from helpers_hmr import tiny_hmr2, write_hmr2_lightning

    from diffusion_hpc.estimate.hmr_adapter import checkpoint_fingerprint
    from diffusion_hpc.prior.vposer import VPoserNet

    net = tiny_hmr2()
    with torch.no_grad():  # the mean camera, centred: random decoder weights would throw the body out of frame
        torch.nn.init.zeros_(net.smpl_head.deccam.weight), torch.nn.init.zeros_(net.smpl_head.deccam.bias)
        # 64-px crops with HMR 2.0's focal 5000 put the body at 2 * 5000 / (64 s) m: s = 3.6 brings it to the
        # ~43 m of HMR 2.0's 256-px crops at s = 0.9 (the renderer clips at 100 m)
        net.smpl_head.init_cam.copy_(torch.tensor([[3.6, 0.0, 0.0]]))
    ckpt = write_hmr2_lightning(net, tmp_path / "epoch=35-step=1000000.ckpt")
    torch.manual_seed(0)
    vposer = tmp_path / "vposer.ckpt"
    torch.save({"state_dict": {f"vp_model.{k}": v for k, v in VPoserNet().state_dict().items()}}, vposer)
    cfg = r_config(backbone, guides, n=2, k=2, estimator="hmr2", estimator_checkpoint=ckpt, body_model="smpl",
                   smpl_path=fake_smpl, prior_path=vposer)  # fmt: skip
    generate(cfg, tmp_path / "d", progress=False)
    rows = open_dataset(tmp_path / "d").manifest()
    assert len(rows) == 2 and sum(r["status"] == "ok" for r in rows) >= 1, rows
    for (s,) in map(persons_of, open_dataset(tmp_path / "d")):
        assert s["body_model"] == "smpl" and s["params"]["betas"].shape == (10,) and s["params"]["body_pose"].shape == (23, 3)
    run = json.loads((tmp_path / "d" / "run.json").read_text())
    assert run["estimator"] == {"name": "hmr2", "body_model": "smpl", "architecture": "hmr2", "checkpoint": ckpt.name,
                                "fingerprint": checkpoint_fingerprint([ckpt])}  # fmt: skip


def test_resume_of_a_dataset_made_before_newer_options(backbone, guides, tmp_path):
    """A mode-R run killed before --verify-by and --estimate-batch existed (its config.yaml lacks them; made as
    verify_by estimate, one batch a head): a resume with today's defaults is refused before any work, naming the
    flags that continue it as it was made; with them it remakes the lost shard byte for byte."""
    old = r_config(backbone, guides, verify_by="estimate", estimate_batch=1)
    assert old.guides_per_estimate == old.guides_per_batch != r_config(backbone, guides).guides_per_estimate
    out = tmp_path / "old"
    generate(old, out, progress=False)
    whole = dataset_digest(out)
    lose_shard(out, 2)
    strip_options(out, ("verify_by", "estimate_batch", "compile_fit"))
    with pytest.raises(ConfigError, match="with --estimate-batch 1, with --verify-by estimate") as err:
        generate(r_config(backbone, guides), out, resume=True, progress=False)
    assert "--compile-fit" not in str(err.value)  # left out, as before
    assert not (out / "shards" / "shard-000002.tar").exists()
    result = generate(old, out, resume=True, progress=False)
    assert result.skipped_shards == 2
    assert dataset_digest(out) == whole


def test_resume_keeps_the_verification_a_dataset_was_made_with(backbone, guides, tmp_path):
    """A mode-R run killed while ``landmarks`` was the default reading of --verify (its config.yaml records
    verify_by landmarks): a resume with the same flags continues it with landmarks, not today's default
    label-box, and remakes the lost shard byte for byte; a resume that asks for label-box is refused,
    naming verify_by, before any work."""
    assert r_config(backbone, guides).verify_by == "label-box"
    out = tmp_path / "landmarks"
    generate(r_config(backbone, guides, verify_by="landmarks"), out, progress=False)
    whole = dataset_digest(out)
    lose_shard(out, 2)
    with pytest.raises(DhpcError, match=r"different config \(-verify_by: landmarks; \+verify_by: label-box\)"):
        generate(r_config(backbone, guides, verify_by="label-box"), out, resume=True, progress=False)
    assert not (out / "shards" / "shard-000002.tar").exists()
    result = generate(r_config(backbone, guides), out, resume=True, progress=False)
    assert result.skipped_shards == 2
    assert dataset_digest(out) == whole
    assert "verify_by: landmarks" in (out / "config.yaml").read_text()
    assert json.loads((out / "run.json").read_text())["verify_by"] == "landmarks"
