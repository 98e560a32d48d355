"""`dhpc evaluate` and `dhpc train` (with --val) end to end; the scoring step on hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from conftest import run_cli
from diffusion_hpc.config import EvaluateConfig
from diffusion_hpc.hmr.evaluate import Targets, load_targets, score
from helpers_hmr import write_smart


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, anny_body):
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.pipeline.generate import generate

    out = tmp_path_factory.mktemp("ev") / "d"
    generate(GenerateConfig(n=6, image_size=(96, 96), batch_size=6, seed=3), out, progress=False)
    return out


def test_oracle_predictions_score_zero_and_full_pck(dataset):
    targets = load_targets(str(dataset), crop_size=64)
    assert targets.kind == "dataset" and targets.images.shape == (6, 3, 64, 64) and targets.joints3d.shape == (6, 17, 3)
    oracle = {"keypoints2d": targets.keypoints2d[..., :2], "joints3d": targets.joints3d + [0.3, -0.1, 2.0]}
    result = score(oracle, targets)
    assert result["mpjpe_mm"] == pytest.approx(0.0, abs=1e-6) and result["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)
    assert result["pck"] == pytest.approx(100.0) and result["samples"] == 6
    # a 10 mm error on every joint of every sample is a 10 mm MPJPE (root-centring removes a shift,
    # so move all joints but the root)
    moved = targets.joints3d.copy()
    moved[:, 1:, 0] += 0.010
    r = score({"keypoints2d": oracle["keypoints2d"], "joints3d": moved}, targets)
    assert r["mpjpe_mm"] == pytest.approx(10.0 * 16 / 17, rel=1e-6)


def test_skipose_protocol_ignores_joint_9():
    rng = np.random.default_rng(0)
    gt = rng.normal(scale=0.3, size=(4, 17, 3))
    kp = np.concatenate([rng.uniform(0, 223, size=(4, 17, 2)), np.full((4, 17, 1), 2.0)], axis=-1)
    targets = Targets("skipose:fixture", "skipose", np.zeros((4, 3, 224, 224), np.float32), kp, gt, 224)
    pred = gt.copy()
    pred[:, 9] += 0.5  # joint 9 is not scored on SkiPose
    r = score({"keypoints2d": kp[..., :2], "joints3d": pred}, targets)
    assert r["mpjpe_mm"] == pytest.approx(0.0, abs=1e-9) and r["protocol_3d"] == "skipose"


def test_train_then_evaluate_cli(dataset, tmp_path):
    from diffusion_hpc.hmr.evaluate import evaluate
    from diffusion_hpc.hmr.validation import read_best, read_rows

    run = tmp_path / "run"
    smart = write_smart(dataset, tmp_path / "smart")  # validation without 3D: PCK picks the best
    proc = run_cli("train", "--synthetic", str(dataset), "--out", str(run), "--backbone", "tiny", "--max-steps", "2",
                   "--batch-size", "4", "--crop-size", "64", "--accelerator", "cpu", "--workers", "0",
                   "--val", f"smart:{smart}", "--val-every", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "regressor.safetensors").exists()
    rows = read_rows(run)
    assert [r["step"] for r in rows] == [1, 2] and all("pa_mpjpe_mm" not in r and r["samples"] == 6 for r in rows)
    best = read_best(run)
    assert best["metric"] == "pck" and best["step"] == max(rows, key=lambda r: r["pck"])["step"]
    assert f"best: {run / 'best'} (step {best['step']}, pck" in proc.stdout
    for folder, row in ((run, rows[-1]), (run / "best", best)):
        result = evaluate(EvaluateConfig(checkpoint=folder, data=f"smart:{smart}", crop_size=64))
        assert result["pck"] == pytest.approx(row["pck"], rel=1e-9)
    out = tmp_path / "res.json"
    proc = run_cli("evaluate", "--checkpoint", str(run), "--data", str(dataset), "--crop-size", "64", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PA-MPJPE" in proc.stdout and "PCK" in proc.stdout
    result = json.loads(out.read_text())
    assert result["samples"] == 6 and np.isfinite(result["mpjpe_mm"]) and 0 <= result["pck"] <= 100
    assert result["config"] == EvaluateConfig(checkpoint=run, data=str(dataset), crop_size=64, out=out).model_dump(mode="json")
    # the same evaluation from a config file, with a flag that wins over the file's value
    config_file = tmp_path / "evaluate.yaml"
    config_file.write_text(yaml.safe_dump({"checkpoint": str(run), "data": str(dataset), "crop_size": 64, "limit": 2}))
    out2 = tmp_path / "res2.json"
    proc = run_cli("evaluate", "--config", str(config_file), "--limit", "6", "--out", str(out2))
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads(out2.read_text())
    assert again["config"]["limit"] == 6 and again["samples"] == 6
    assert {k: v for k, v in again.items() if k != "config"} == {k: v for k, v in result.items() if k != "config"}
    # the run folder holds the config the CLI built from the flags
    from diffusion_hpc.cli import build_parser, command_config
    from diffusion_hpc.config import TrainConfig

    argv = ["train", "--synthetic", str(dataset), "--out", str(run), "--backbone", "tiny", "--max-steps", "2",
            "--batch-size", "4", "--crop-size", "64", "--accelerator", "cpu", "--workers", "0",
            "--val", f"smart:{smart}", "--val-every", "1"]  # fmt: skip
    assert TrainConfig.from_yaml(run / "train.yaml") == command_config(build_parser().parse_args(argv))


@pytest.mark.slow
def test_train_validation_under_ddp_equals_single_process(dataset, tmp_path):
    """Two CPU ranks (gloo); 5 validation samples, so the ranks' shares are padded with a repeat."""
    from diffusion_hpc.hmr.evaluate import evaluate
    from diffusion_hpc.hmr.validation import read_rows

    run = tmp_path / "ddp"
    proc = run_cli("train", "--synthetic", str(dataset), "--out", str(run), "--backbone", "tiny", "--max-steps", "2",
                   "--batch-size", "3", "--crop-size", "64", "--accelerator", "cpu", "--workers", "0", "--devices", "2",
                   "--strategy", "ddp", "--val", str(dataset), "--val-every", "1", "--val-limit", "5",
                   env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(run)
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["samples"] == 5
    result = evaluate(EvaluateConfig(checkpoint=run, data=str(dataset), crop_size=64, limit=5))
    for key in ("mpjpe_mm", "pa_mpjpe_mm", "pck"):  # ranks predict in other batches: float32 rounding apart
        assert result[key] == pytest.approx(rows[-1][key], rel=1e-6), key


def test_evaluate_clear_errors(tmp_path, dataset):
    proc = run_cli("evaluate", "--checkpoint", str(tmp_path / "nothing"), "--data", str(dataset))
    assert proc.returncode == 2 and "regressor" in proc.stderr
    proc = run_cli("train", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "--synthetic" in proc.stderr
