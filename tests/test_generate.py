"""Mode D on the free stack, end to end: labels consistent with the image, determinism, resume,
and clear errors on bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data import open_dataset
from diffusion_hpc.data.schema import persons_of
from diffusion_hpc.pipeline.generate import generate

from conftest import dataset_digest as _digest
from conftest import run_cli, strip_options

SMALL = dict(image_size=(96, 128), batch_size=3, shard_size=4)


def small_config(**kw) -> GenerateConfig:
    return GenerateConfig(**{**SMALL, "n": 7, "seed": 5, **kw})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, anny_body):
    out = tmp_path_factory.mktemp("gen") / "d"
    result = generate(small_config(), out, progress=False)
    assert result.accepted == 7 and result.failed == 0
    return out


def test_reader_fields_and_manifest(dataset):
    ds = open_dataset(dataset)
    samples = list(ds)
    assert len(samples) == len(ds) == 7
    assert [s["key"] for s in samples] == sorted({s["key"] for s in samples})
    s = samples[0]
    assert s["image"].shape == (96, 128, 3) and s["image"].dtype == np.uint8
    assert s["mask"].shape == (96, 128) and s["mask"].dtype == bool
    assert s["depth"].dtype == np.float32 and s["K"].shape == (3, 3)
    assert s["schema"] == 2 and s["mode"] == "D" and isinstance(s["seed"], int)
    assert s["instance"].shape == (96, 128) and np.array_equal(s["instance"] >= 0, s["mask"])
    [p] = persons_of(s)  # one person per image by default
    assert p["body_model"] == "anny" and p["visible_fraction"] == 1.0 and np.array_equal(p["mask"], s["mask"])
    assert set(p["params"]) == {"global_orient", "body_pose", "phenotype", "transl"}
    assert p["keypoints2d"].shape == (17, 3) and p["joints3d"]["coco17"].shape == (17, 3)
    rows = ds.manifest()
    assert [r["index"] for r in rows] == list(range(7))
    assert {r["shard"] for r in rows} == {0, 1}
    for r in rows:
        assert r["status"] == "ok" and r["unet_evals"] == 0 and set(r["timings"]) >= {"body", "render", "generate"}
        assert "sampler" not in r and "backbone" not in r  # no diffusion ran: the row reads as before
    run = json.loads((dataset / "run.json").read_text())
    assert run["generator"] == "render" and run["sampler"] is None and run["backbone"] is None
    assert (dataset / "preview.png").stat().st_size > 0 and (dataset / "manifest.jsonl").exists()


def test_label_integrity_every_sample(dataset, anny_body):
    from diffusion_hpc.geometry.camera import project
    from diffusion_hpc.render import get_renderer

    renderer = get_renderer("auto")
    for sample in open_dataset(dataset):
        [s] = persons_of(sample)
        # keypoints2d = projection of the COCO joints of joints3d through K
        uv = project(s["joints3d"]["coco17"], s["K"])
        assert np.abs(uv - s["keypoints2d"][:, :2]).max() <= 0.5
        # joints3d = body model forward pass on params
        params = {k: torch.as_tensor(v)[None] for k, v in s["params"].items()}
        with torch.no_grad():
            out = anny_body(params)
        for name, joints in s["joints3d"].items():
            assert np.abs(out.joints[name][0].numpy() - joints).max() <= 1e-3, name
        # the saved mask equals a fresh render of the saved mesh; depth positive exactly there
        fresh = renderer.render(out.vertices.numpy(), anny_body.faces.numpy(), s["K"][None], s["mask"].shape)
        inter = (fresh.mask[0] & s["mask"]).sum()
        union = (fresh.mask[0] | s["mask"]).sum()
        assert inter / union >= 0.99
        assert np.array_equal(s["depth"] > 0, s["mask"])
        assert np.abs(fresh.depth[0][s["mask"]] - s["depth"][s["mask"]]).max() <= 1e-3
        # the whole person is in frame, and it fills a sensible part of it
        assert s["mask"].any() and (s["keypoints2d"][:, 2] > 0).all()
        # visible keypoints lie on the silhouette (within a pixel or two)
        visible = s["keypoints2d"][:, 2] == 2
        cols = np.clip(np.round(s["keypoints2d"][visible, 0]).astype(int), 0, 127)
        rows = np.clip(np.round(s["keypoints2d"][visible, 1]).astype(int), 0, 95)
        assert s["mask"][rows, cols].mean() >= 0.9


def test_shards_are_webdataset_readable(dataset):
    import webdataset as wds

    urls = [str(p) for p in sorted((dataset / "shards").glob("*.tar"))]
    keys = [sample["__key__"] for sample in wds.WebDataset(urls, shardshuffle=False)]
    assert keys == [f"{i:09d}" for i in range(7)]


def test_same_seed_same_bytes_and_different_seed_differs(dataset, tmp_path):
    again = tmp_path / "again"
    generate(small_config(), again, progress=False)
    assert _digest(again) == _digest(dataset)
    first = next(iter(open_dataset(dataset)))
    other = tmp_path / "other"
    generate(small_config(seed=6, n=1), other, progress=False)
    assert not np.array_equal(next(iter(open_dataset(other)))["image"], first["image"])


def test_sample_depends_only_on_seed_and_index(dataset, tmp_path):
    """Sample 5 made in another batch / shard layout has the same labels and the same pose."""
    out = tmp_path / "layout"
    generate(small_config(batch_size=2, shard_size=3), out, progress=False)
    a = {s["key"]: s for s in open_dataset(dataset)}
    b = {s["key"]: s for s in open_dataset(out)}
    assert a.keys() == b.keys()
    for key in a:
        [pa], [pb] = persons_of(a[key]), persons_of(b[key])
        assert pa["seed"] == pb["seed"] and pa["pose_source"] == pb["pose_source"]
        assert np.allclose(pa["joints3d"]["h36m17"], pb["joints3d"]["h36m17"], atol=1e-5)
        assert (a[key]["mask"] != b[key]["mask"]).mean() < 1e-3


def _count_shards(out: Path) -> int:
    return len(list((out / "shards").glob("*.tar"))) if (out / "shards").exists() else 0


@pytest.mark.slow
def test_resume_after_sigkill_at_several_points(dataset, tmp_path):
    out = tmp_path / "killed"
    args = ["generate", "--mode", "D", "--poses", "builtin", "-n", "7", "--seed", "5", "--image-size", "96x128",
            "--batch-size", "3", "--shard-size", "4", "--out", str(out), "--no-progress"]
    env = {**os.environ}
    # kill 1: before anything is committed; kill 2: after the first shard
    for wait_for_shards in (0, 1):
        cmd = [sys.executable, "-m", "diffusion_hpc.cli", *args] + (["--resume"] if out.exists() else [])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if wait_for_shards == 0 and (out / "config.yaml").exists():
                break
            if wait_for_shards and _count_shards(out) >= wait_for_shards:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _count_shards(out) < 2
    done = run_cli(*args, "--resume")
    assert done.returncode == 0, done.stderr
    samples = list(open_dataset(out))
    assert sorted(s["key"] for s in samples) == [f"{i:09d}" for i in range(7)]
    assert _digest(out) == _digest(dataset)


def test_resume_of_complete_run_does_nothing(dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    before = _digest(copy)
    result = generate(small_config(), copy, resume=True, progress=False)
    assert result.skipped_shards == 2 and result.accepted == 7
    assert _digest(copy) == before


# --- bad input: one clear line, exit code 2, existing data intact --------------------------------


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--poses", "{garbage}"], "pose file"),
        (["-n", "0"], "n:"),
        (["--fov", "80,20"], "fov_deg"),
        (["--body-model", "smpl"], "--smpl-path"),
        (["--body-model", "smpl", "--smpl-path", "{missing}"], "does not exist"),
        (["--image-size", "8"], "image_size"),
    ],
)
def test_bad_input_clear_error_and_dataset_intact(dataset, tmp_path, extra, expected):
    garbage = tmp_path / "poses.npz"
    garbage.write_bytes(b"this is not a zip file")
    extra = [e.format(garbage=garbage, missing=tmp_path / "nope" / "SMPL_NEUTRAL.npz") for e in extra]
    before = _snapshot(dataset)
    proc = run_cli("generate", "--out", str(dataset), "--resume", "--no-progress", *extra)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert _snapshot(dataset) == before


def test_out_is_a_file(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    proc = run_cli("generate", "--out", str(target), "-n", "1", "--no-progress")
    assert proc.returncode == 2 and "is a file" in proc.stderr
    assert target.read_text() == "keep me"


def test_existing_dataset_needs_resume(dataset):
    before = _snapshot(dataset)
    proc = run_cli("generate", "--out", str(dataset), "-n", "7", "--no-progress")
    assert proc.returncode == 2 and "--resume" in proc.stderr
    assert _snapshot(dataset) == before


def test_resume_with_other_options_is_refused(dataset):
    before = _snapshot(dataset)
    proc = run_cli("generate", "--out", str(dataset), "--resume", "-n", "9", "--seed", "5", "--image-size", "96x128",
                   "--batch-size", "3", "--shard-size", "4", "--no-progress")
    assert proc.returncode == 2 and "different config" in proc.stderr
    assert _snapshot(dataset) == before


def test_inspect_cli(dataset, tmp_path):
    preview = tmp_path / "p.png"
    proc = run_cli("inspect", str(dataset), "--preview", str(preview))
    assert proc.returncode == 0, proc.stderr
    assert "7 accepted, 0 failed" in proc.stdout and "UNet evaluations per accepted sample: 0.0" in proc.stdout
    assert "score mask_area" in proc.stdout
    from PIL import Image

    img = Image.open(preview)
    assert img.size[0] == 3 * 192 and img.size[1] == 7 * 192


def _option_help(text: str) -> dict[str, str]:
    """``--help`` output -> {each option string: the help printed beside it}, whitespace normalised."""
    blocks: dict[str, list[str]] = {}
    names: list[str] = []
    for line in text.splitlines():
        m = re.match(r"^  (-\S.*?)(?:  +(\S.*))?$", line)
        if m:  # an option line: its flags, maybe its help
            names = re.findall(r"(?:^|, )(-[-\w]+)", m.group(1))
            for name in names:
                blocks[name] = [m.group(2) or ""]
        elif names and line.startswith("   "):  # the help continued
            for name in names:
                blocks[name].append(line)
        else:
            names = []
    return {name: " ".join(" ".join(lines).split()) for name, lines in blocks.items()}


def test_cli_help_reads_well():
    """Every option of ``dhpc generate`` is listed with its help text, and the defaults it shows are
    the config's (those the sampler preset fills in: the preset's values)."""
    import argparse

    from diffusion_hpc.cli import build_parser
    from diffusion_hpc.config import GenerateConfig, SamplerConfig

    wide = {"COLUMNS": "1000"}  # one line per option: no wrapping inside words like "instance-segmentation"
    for args in (["--help"], ["generate", "--help"], ["inspect", "--help"], ["poses", "import", "--help"]):
        proc = run_cli(*args, env=wide)
        assert proc.returncode == 0 and proc.stdout.startswith(" ".join(["usage: dhpc", *args[:-1]])), proc.stdout[:200]
    shown = _option_help(run_cli("generate", "--help", env=wide).stdout)
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    generate_parser = commands.choices["generate"]
    sampler = SamplerConfig()
    checked = set()
    for action in generate_parser._actions:
        if not action.option_strings:
            continue
        help_text = " ".join((action.help or "").replace("%%", "%").split())
        assert len(help_text) > 10, f"{action.option_strings} has no help"
        for flag in action.option_strings:
            assert shown.get(flag) == help_text, (flag, shown.get(flag), help_text)
        for model in (GenerateConfig, SamplerConfig):
            info = model.model_fields.get(action.dest)
            if info is None or isinstance(info.default, (bool, tuple, list)) or action.dest == "prior_path":
                continue
            if info.default is not None:
                assert help_text.endswith(f"(default: {info.default})"), (action.dest, help_text)
            elif model is SamplerConfig:
                assert f"(default: the preset's; preset {sampler.preset}: {getattr(sampler, action.dest)})" in help_text
            else:
                continue
            checked.add(action.dest)
    assert {"n", "seed", "batch_size", "body_model", "renderer", "mode", "lora_scale", "cycles", "preset", "scheduler",
            "txt2img_steps", "steps", "strength", "guidance", "controlnet_scale", "blur_prob"} <= checked, checked


def test_cli_and_python_api_make_the_same_dataset(dataset, tmp_path):
    out = tmp_path / "cli"
    proc = run_cli("generate", "--mode", "D", "--poses", "builtin", "-n", "7", "--seed", "5", "--image-size", "96x128",
                   "--batch-size", "3", "--shard-size", "4", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "7 samples accepted" in proc.stdout and "preview:" in proc.stdout
    assert (out / "config.yaml").read_text() == (dataset / "config.yaml").read_text()
    assert _digest(out) == _digest(dataset)


def test_yaml_config_file_with_flag_overrides(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("n: 2\nseed: 9\nimage_size: [64, 64]\ncamera:\n  fov_deg: [40, 45]\nrender_baseline:\n  augment: false\n")
    out = tmp_path / "y"
    proc = run_cli("generate", "--config", str(cfg), "-n", "3", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["n"] == 3 and saved["seed"] == 9 and saved["camera"]["fov_deg"] == [40.0, 45.0]
    assert saved["render_baseline"]["augment"] is False
    assert len(open_dataset(out)) == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("n: [unclosed\n")
    proc = run_cli("generate", "--config", str(bad), "--out", str(tmp_path / "z"), "--no-progress")
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr and not (tmp_path / "z").exists()
    bad.write_text("n: 3\nfrobnicate: 1\n")
    proc = run_cli("generate", "--config", str(bad), "--out", str(tmp_path / "z"), "--no-progress")
    assert proc.returncode == 2 and "frobnicate" in proc.stderr and not (tmp_path / "z").exists()


def test_user_backgrounds_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "bg"
    folder.mkdir()
    Image.fromarray(np.full((80, 120, 3), (10, 200, 30), np.uint8)).save(folder / "green.png")
    out = tmp_path / "bgrun"
    proc = run_cli("generate", "-n", "2", "--image-size", "64", "--backgrounds", str(folder), "--no-augment",
                   "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    for s in open_dataset(out):
        background = s["image"][~s["mask"]].astype(int)
        # far from the silhouette's soft edge, the background is the user's image
        far = background[np.abs(background - [10, 200, 30]).sum(1) < 6]
        assert len(far) > 0.8 * len(background)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    proc = run_cli("generate", "-n", "2", "--image-size", "64", "--backgrounds", str(folder), "--out",
                   str(tmp_path / "bgrun2"), "--no-progress")
    assert proc.returncode == 2 and "broken.jpg" in proc.stderr and not (tmp_path / "bgrun2").exists()


def test_camera_placement_of_a_batch_equals_one_by_one():
    """Mode D places a whole batch at once (geometry.camera.fit_translations): the same translations
    as one sample at a time, and a body that cannot fit is flagged, not placed."""
    from diffusion_hpc.geometry.camera import fit_translation, fit_translations, intrinsics_from_fov

    rng = np.random.default_rng(0)
    points = rng.normal(0.0, [0.25, 0.8, 0.2], (5, 400, 3))
    points[4, :200] = [[1.0, 1.0, -100.0], [-1.0, -1.0, -100.0]] * 100  # a wide near end 200 m before a far one:
    points[4, 200:] = [0.0, 0.0, 100.0]  # the near end stays out of frame at any fill
    K = np.stack([intrinsics_from_fov(fov, 96, 64) for fov in (40.0, 50.0, 60.0, 45.0, 50.0)])
    fill, offset = np.array([0.9, 0.7, 0.8, 0.95, 0.9]), rng.uniform(-1, 1, (5, 2))
    t, ok = fit_translations(points, K, 96, 64, fill, offset)
    assert ok.tolist() == [True, True, True, True, False]
    for b in range(4):
        np.testing.assert_allclose(t[b], fit_translation(points[b], K[b], 96, 64, fill[b], tuple(offset[b])), atol=1e-12)
    with pytest.raises(RuntimeError, match="could not fit"):
        fit_translation(points[4], K[4], 96, 64, fill[4], tuple(offset[4]))


def test_resume_of_a_mode_d_dataset_made_before_newer_options(dataset, tmp_path):
    """Mode D never fits a start image: a dataset whose config.yaml predates --estimate-batch, --verify-by and
    --compile-fit resumes with today's defaults."""
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(dataset, copy)
    strip_options(copy, ("estimate_batch", "verify_by", "compile_fit"))
    result = generate(small_config(), copy, resume=True, progress=False)
    assert result.skipped_shards == 2 and result.accepted == 7
