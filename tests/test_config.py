"""One typed config per command: ``--config FILE`` equals the flags, flags win over the file, bad
values are one line naming the field, and the Python API's defaults are the CLI's (nothing here
loads a model: configs are built, not run)."""

from __future__ import annotations

import argparse

import pytest
import yaml

from diffusion_hpc.cli import CONFIGS, build_parser, command_config, main
from diffusion_hpc.config import (
    EstimateConfig,
    EvaluateConfig,
    ExportConfig,
    GenerateConfig,
    QualityConfig,
    SamplerConfig,
    TrainConfig,
)

#: per command: flags, and the same options as a config file (field names, YAML types)
EQUIVALENT = {
    "train": (
        ["--synthetic", "runs/d1", "runs/d2", "--real", "skipose:SkiPose", "--out", "runs/hmr", "--max-steps", "300",
         "--lr", "3e-4", "--backbone", "vit", "--devices", "2", "--strategy", "ddp", "--no-augment", "--val",
         "skipose:SkiPose", "--val-every", "100"],
        {"synthetic": ["runs/d1", "runs/d2"], "real": ["skipose:SkiPose"], "out": "runs/hmr", "max_steps": 300,
         "lr": 3e-4, "backbone": "vit", "devices": 2, "strategy": "ddp", "augment": False, "val": "skipose:SkiPose",
         "val_every": 100},
    ),
    "evaluate": (
        ["--checkpoint", "runs/hmr/best", "--data", "skipose:SkiPose", "--out", "r.json", "--limit", "10",
         "--crop-size", "128"],
        {"checkpoint": "runs/hmr/best", "data": "skipose:SkiPose", "out": "r.json", "limit": 10, "crop_size": 128},
    ),
    "estimate": (
        ["--images", "a.jpg", "photos", "--out", "fits.npz", "--estimator", "spin", "--checkpoint", "m.pt",
         "--smpl-path", "SMPL_NEUTRAL.npz", "--batch-size", "4"],
        {"images": ["a.jpg", "photos"], "out": "fits.npz", "estimator": "spin", "checkpoint": "m.pt",
         "smpl_path": "SMPL_NEUTRAL.npz", "batch_size": 4},
    ),
    "quality": (
        ["--real", "photos", "--generated", "runs/d1", "runs/t", "--out", "report", "--no-human-only",
         "--kid-subsets", "10", "--limit", "50"],
        {"real": "photos", "generated": ["runs/d1", "runs/t"], "out": "report", "human_only": False, "kid_subsets": 10,
         "limit": 50},
    ),
    "export": (
        ["runs/d1", "--format", "coco-json", "--out", "x/train.json", "--box-expand", "1.3"],
        {"dataset": "runs/d1", "format": "coco-json", "out": "x/train.json", "box_expand": 1.3},
    ),
    "generate": (
        ["--mode", "T", "--prompt", "doing a backflip", "--backbone", "tiny", "--generator", "controlnet", "-k", "2",
         "-n", "8", "--seed", "3", "--preset", "fast", "--steps", "6", "--blur-prob", "0.3", "--controlnet-scale", "0.8", "--fov", "30,60",
         "--image-size", "64"],
        {"mode": "T", "prompt": "doing a backflip", "backbone": "tiny", "generator": "controlnet", "k": 2, "n": 8,
         "seed": 3,
         "sampler": {"preset": "fast", "steps": 6, "blur_prob": 0.3, "controlnet_scale": 0.8},
         "camera": {"fov_deg": [30, 60]}, "image_size": [64, 64]},
    ),
}
#: flags a command needs besides its config (not config fields)
EXTRA = {"generate": ["--out", "runs/x"]}


def _config(argv: list[str]):
    return command_config(build_parser().parse_args(argv))


def _write(path, data: dict):
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("command", sorted(EQUIVALENT))
def test_config_file_equals_the_flags(command, tmp_path):
    flags, data = EQUIVALENT[command]
    from_flags = _config([command, *flags, *EXTRA.get(command, [])])
    from_file = _config([command, "--config", str(_write(tmp_path / "c.yaml", data)), *EXTRA.get(command, [])])
    assert type(from_flags) is CONFIGS[command]
    assert from_file == from_flags
    # and the config a run stores reads back as the same config
    assert type(from_flags).from_yaml(_write(tmp_path / "stored.yaml", yaml.safe_load(from_flags.to_yaml()))) == from_flags


def test_flags_win_over_the_file(tmp_path):
    path = _write(tmp_path / "t.yaml", {"synthetic": ["runs/d1"], "out": "runs/a", "max_steps": 300, "lr": 1e-3})
    config = _config(["train", "--config", str(path), "--max-steps", "50", "--out", "runs/b"])
    assert (config.max_steps, config.out.name, config.lr) == (50, "b", 1e-3)  # lr: the file's
    # generate: a sampler flag updates the file's sampler block key by key
    path = _write(tmp_path / "g.yaml", {"mode": "D", "sampler": {"preset": "original", "blur_prob": 0.0}, "n": 4})
    config = _config(["generate", "--config", str(path), "--out", "x", "--steps", "12"])
    assert (config.sampler.preset, config.sampler.steps, config.sampler.scheduler, config.n) == ("original", 12, "ddim", 4)


@pytest.mark.parametrize("command, data, field", [
    ("train", {"synthetic": ["d"], "out": "r", "max_steps": 0}, "max_steps"),
    ("train", {"synthetic": ["d"], "out": "r", "backbone": "resnet18"}, "backbone"),
    ("evaluate", {"checkpoint": "r", "data": "d", "batch_size": "many"}, "batch_size"),
    ("estimate", {"images": ["a.jpg"], "out": "fits.npz", "estimator": "hmr"}, "checkpoint"),
    ("quality", {"real": "p", "generated": [], "out": "o"}, "generated"),
    ("export", {"dataset": "d", "format": "spin-npz", "out": "x.json"}, "out"),
    ("generate", {"sampler": {"strength": 1.5}}, "sampler.strength"),
])  # fmt: skip
def test_a_bad_value_in_the_file_is_one_line_naming_the_field(command, data, field, tmp_path, capsys):
    path = _write(tmp_path / "bad.yaml", data)
    assert main([command, "--config", str(path), *EXTRA.get(command, [])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dhpc: error: ") and f"{field}" in err, err
    assert str(path) in err or command in ("estimate", "export"), err  # cross-field rules name the field only


def test_unknown_and_missing_options_name_the_fix(tmp_path, capsys):
    path = _write(tmp_path / "typo.yaml", {"synthetic": ["d"], "out": "r", "max_step": 5})
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'max_step'" in err and "max_steps" in err and str(path) in err
    assert main(["evaluate", "--data", "skipose:x"]) == 2
    assert "checkpoint is required: pass --checkpoint" in capsys.readouterr().err
    assert main(["train", "--synthetic", "d", "--out", "r", "--max-steps", "0"]) == 2
    assert "invalid options: max_steps" in capsys.readouterr().err  # a flag's value: the options, not the file


def test_python_defaults_are_the_cli_defaults():
    """train() etc. from Python with a config of only the required fields run exactly what the CLI
    runs with only those flags: every field, one by one."""
    cases = [
        (["train", "--synthetic", "d", "--out", "r"], TrainConfig(synthetic=["d"], out="r")),
        (["evaluate", "--checkpoint", "r", "--data", "d"], EvaluateConfig(checkpoint="r", data="d")),
        (["estimate", "--images", "p", "--out", "f.npz"], EstimateConfig(images=["p"], out="f.npz")),
        (["quality", "--real", "p", "--generated", "g", "--out", "o"], QualityConfig(real="p", generated=["g"], out="o")),
        (["export", "d", "--format", "spin-npz", "--out", "x.npz"], ExportConfig(dataset="d", format="spin-npz", out="x.npz")),
        (["generate", "--out", "x"], GenerateConfig()),
    ]  # fmt: skip
    for argv, python in cases:
        cli = _config(argv)
        for name in type(python).model_fields:
            assert getattr(cli, name) == getattr(python, name), (argv[0], name)
    train = TrainConfig(synthetic=["d"], out="r")  # the user-facing values, once
    assert (train.max_steps, train.accelerator, train.workers, train.devices) == (10000, "auto", 2, 1)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_defaults_come_from_the_config():
    """No flag of a config field carries a default of its own; where help shows a default, it is
    the field's."""
    from diffusion_hpc.config import CameraConfig, RenderBaselineConfig

    models = {name: [model] for name, model in CONFIGS.items()}
    models["generate"] += [SamplerConfig, CameraConfig, RenderBaselineConfig]
    sub = _subparsers(build_parser())
    for command, candidates in models.items():
        for action in sub[command]._actions:
            model = next((m for m in candidates if action.dest in m.model_fields), None)
            if model is None:
                continue
            assert action.default is None, (command, action.dest)
            info = model.model_fields[action.dest]
            shown = action.help.split("(default: ")[-1] if "(default: " in action.help else None
            if shown is not None and not isinstance(info.default, (bool, type(None))):
                value = info.default
                text = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
                assert shown.startswith(text), (command, action.dest, action.help)
    assert "(default: 10000)" in sub["train"].format_help() and "(default: auto)" in sub["train"].format_help()


def test_sampler_flags_build_the_sampler_block():
    config = _config(["generate", "--out", "x", "--mode", "T", "--prompt", "p", "--backbone", "b", "--preset", "original",
                      "--scheduler", "unipc", "--txt2img-steps", "30", "--strength", "0.5", "--guidance", "5"])
    assert config.sampler == SamplerConfig(preset="original", scheduler="unipc", txt2img_steps=30, steps=50, strength=0.5,
                                           guidance=5.0)
    assert _config(["generate", "--out", "x"]).sampler == SamplerConfig()


def test_sampler_values_a_run_would_ignore_are_errors(capsys):
    """--strength without a start image, --txt2img-steps outside mode T, --controlnet-scale without
    ControlNet would change nothing: each is one line naming the flag; the same values are fine
    where they act."""
    r = ["generate", "--out", "x", "--mode", "R", "--guides", "g", "--backbone", "b"]
    d = ["generate", "--out", "x", "--mode", "D", "--generator", "depth2img", "--backbone", "b"]
    for argv, message in ((d + ["--strength", "0.5"], "--strength"), (r + ["--txt2img-steps", "9"], "--txt2img-steps"),
                          (r + ["--controlnet-scale", "0.5"], "--controlnet-scale")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
    assert _config(d + ["--strength", "0.5", "--cycles", "1"]).sampler.strength == 0.5  # cycles start from an image
    assert _config(r + ["--generator", "controlnet", "--controlnet-scale", "0.5"]).sampler.controlnet_scale == 0.5
    stored = _config(d + ["--preset", "fast"])  # a stored, resolved config reads back
    assert GenerateConfig.model_validate(yaml.safe_load(stored.to_yaml())) == stored


def test_estimate_rules(capsys):
    base = ["estimate", "--images", "p", "--out", "f.npz"]
    for extra, message in (
        (["--estimator", "hmr", "--checkpoint", "r", "--no-prior"], "--no-prior"),
        (["--estimator", "hmr", "--checkpoint", "r", "--body-model", "anny"], "--body-model"),
        (["--estimator", "spin", "--checkpoint", "m.pt"], "--smpl-path"),
        (["--checkpoint", "r"], "--estimator hmr|spin"),
        (["--mean-params", "m.npz"], "--estimator spin"),
        (["--body-model", "smpl"], "--smpl-path"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
    assert _config(base).preview_dir.name == "f_preview" and _config(base).fit_body_model == "anny"


def test_lifter_option_names_the_fix(tmp_path, capsys):
    """--lifter takes on, off or an existing lifter weights file, for the runs the MediaPipe fit labels;
    anything else is one line naming the value and what to pass, before a model loads."""
    weights = tmp_path / "mine.safetensors"
    weights.write_bytes(b"")
    est = ["estimate", "--images", "p", "--out", "f.npz"]
    gen = ["generate", "--mode", "R", "--guides", "photos", "--backbone", "b", "--out", "d"]
    assert _config(est + ["--lifter", "off"]).lifter == "off"
    assert _config(gen + ["--lifter", str(weights)]).lifter == str(weights)
    assert _config(gen).lifter is None  # not set: the shipped lifter
    for argv, message in (
        (est + ["--lifter", "of"], "neither on, off nor"),
        (est + ["--lifter", str(tmp_path / "gone.safetensors")], "train_lifter.py --out"),
        (est + ["--estimator", "hmr", "--checkpoint", "r", "--lifter", "off"], "leave --lifter off out"),
        (gen + ["--lifter", "maybe"], "neither on, off nor"),
        (["generate", "--mode", "D", "--out", "d", "--lifter", "off"], "leave --lifter out"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)


def test_landmark_views_option_names_the_fix(capsys):
    """--landmark-views takes distinct views among them image, for the runs the MediaPipe estimator reads;
    anything else is one line naming the value and what to pass, before a model loads."""
    est = ["estimate", "--images", "p", "--out", "f.npz"]
    gen = ["generate", "--mode", "R", "--guides", "photos", "--backbone", "b", "--out", "d"]
    assert _config(est + ["--landmark-views", "grey", "image"]).landmark_views == ["image", "grey"]
    assert _config(est).landmark_views is None  # not set: the default views
    assert _config(gen).landmark_views is None  # not set: one reading, as before the option
    assert _config(gen + ["--landmark-views", "image"]).landmark_views == ["image"]
    assert _config(["generate", "--mode", "D", "--out", "d"]).landmark_views is None  # no estimator reads
    for argv, message in (
        (est + ["--landmark-views", "mirror"], "among them image"),
        (est + ["--landmark-views", "image", "image"], "distinct views"),
        (est + ["--estimator", "hmr", "--checkpoint", "r", "--landmark-views", "image"], "leave it out"),
        (["generate", "--mode", "D", "--out", "d", "--landmark-views", "image"], "leave it out"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
    with pytest.raises(SystemExit):  # argparse names the choices
        main(est + ["--landmark-views", "tilt"])
    assert "invalid choice: 'tilt'" in capsys.readouterr().err


def test_compile_fit_option_names_the_fix(capsys):
    """--compile-fit compiles the MediaPipe fit of Anny bodies; a run that fits none (a regressor, SMPL, mode D
    without --verify) fails in one line naming the option and the fix, before a model loads."""
    est = ["estimate", "--images", "p", "--out", "f.npz"]
    gen = ["generate", "--mode", "R", "--guides", "photos", "--backbone", "b", "--out", "d"]
    assert _config(est + ["--compile-fit"]).compile_fit is True
    assert _config(gen + ["--compile-fit"]).compile_fit is True
    assert _config(gen).compile_fit is False
    for argv in (
        est + ["--estimator", "hmr", "--checkpoint", "r", "--compile-fit"],
        est + ["--body-model", "smpl", "--smpl-path", "s", "--compile-fit"],
        ["generate", "--mode", "D", "--out", "d", "--compile-fit"],
        gen + ["--body-model", "smpl", "--smpl-path", "s", "--compile-fit"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "leave --compile-fit out" in err, (argv, err)


def test_compile_fit_unset_compiles_large_runs_that_fit():
    """--compile-fit left out compiles the MediaPipe fit of runs of COMPILE_FIT_FROM samples or more (where the
    one-off compilation pays for itself) when a C++ compiler is found, and only runs that fit Anny bodies;
    config.yaml records the decision, --no-compile-fit keeps a large run eager, and a machine without a compiler
    runs a large run eagerly instead of refusing it (only an asked-for --compile-fit needs one)."""
    import torch._inductor.config as inductor

    from diffusion_hpc.config.generate import COMPILE_FIT_FROM
    from diffusion_hpc.runtime.compiler import find_cpp_compiler

    assert find_cpp_compiler() is not None  # the test suite's machines build the compiled fit (test_fit_compile)
    gen = ["generate", "--mode", "R", "--guides", "photos", "--backbone", "b", "--out", "d"]
    large, small = ["--num-samples", str(COMPILE_FIT_FROM)], ["--num-samples", str(COMPILE_FIT_FROM - 1)]
    assert _config(gen + large).compile_fit is True
    assert yaml.safe_load(_config(gen + large).dataset_yaml())["compile_fit"] is True
    assert _config(gen + small).compile_fit is False
    assert _config(gen + large + ["--no-compile-fit"]).compile_fit is False
    assert _config(["generate", "--mode", "D", "--out", "d"] + large).compile_fit is False  # no fit
    assert _config(["generate", "--mode", "D", "--out", "d", "--verify", "--verify-by", "keypoint-model",
                    "--keypoint-model", "k"] + large).compile_fit is False
    assert _config(gen + large + ["--body-model", "smpl", "--smpl-path", "s"]).compile_fit is False
    assert f"{COMPILE_FIT_FROM:,} samples" in " ".join(GenerateConfig.model_fields["compile_fit"].description.split())
    with inductor.patch({"cpp.cxx": ("no-such-compiler++",)}):  # (monkeypatch's undo deletes inductor's option)
        assert _config(gen + large).compile_fit is False


def test_resume_keeps_the_compile_fit_a_dataset_recorded():
    """A dataset made before --compile-fit's default changed recorded compile_fit false; a resume that leaves the
    option out continues it eagerly even at COMPILE_FIT_FROM samples, and one that asks for --compile-fit is
    compared as given (the resume check then names the difference)."""
    from diffusion_hpc.config.generate import COMPILE_FIT_FROM

    gen = ["generate", "--mode", "R", "--guides", "photos", "--backbone", "b", "--out", "d", "--num-samples", str(COMPILE_FIT_FROM)]
    stored = _config(gen + ["--no-compile-fit"]).dataset_yaml()
    assert _config(gen).resumed_config(stored).compile_fit is False
    assert _config(gen + ["--compile-fit"]).resumed_config(stored).compile_fit is True
