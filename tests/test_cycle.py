"""``dhpc cycle``: generate -> fine-tune -> evaluate rounds on the tiny backbone (64 px) with a tiny
regressor; resume after SIGKILL; the round table; config errors before any work.

Guides: real photos of people (scikit-image's astronaut, matplotlib's grace_hopper), so MediaPipe
(round 1) and the regressor's MediaPipe boxes (round 2) find a person. Validation: a mode-D
dataset; real data: the same samples as a SMART benchmark (helpers_hmr.write_smart).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import skimage.data
import yaml

from conftest import dataset_digest, run_cli
from diffusion_hpc.cli import main
from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.config.cycle import CycleConfig
from diffusion_hpc.data.seeds import GENERATE_STREAM, TRAIN_STREAM, round_seed
from diffusion_hpc.engine.cycle import Loop, round_dir

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """(guides folder, validation dataset, SMART annotation file)."""
    import matplotlib
    from PIL import Image
    from helpers_hmr import write_smart

    from diffusion_hpc.pipeline.generate import generate

    root = tmp_path_factory.mktemp("cycle-sources")
    guides = root / "guides"
    guides.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(guides / "astronaut.png")
    shutil.copy(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", guides / "grace_hopper.jpg")
    val = root / "val"
    generate(GenerateConfig(n=4, image_size=(SIZE, SIZE), batch_size=4, seed=5), val, progress=False)
    return guides, val, write_smart(val, root / "smart")


def loop_data(tmp_path, tiny_backbone, sources, **over) -> dict:
    guides, val, smart = sources
    data = {
        "out": str(tmp_path / "loop"), "rounds": 2, "seed": 7, "val": str(val),
        "generate": {"mode": "R", "guides": str(guides), "backbone": str(tiny_backbone), "image_size": [SIZE, SIZE],
                     "n": 4, "k": 2, "shard_size": 2, "batch_size": 2},
        "train": {"real": [f"smart:{smart}"], "backbone": "tiny", "crop_size": SIZE, "batch_size": 4, "max_steps": 3,
                  "workers": 0, "accelerator": "cpu", "augment": False, "lr": 1e-3, "log_every": 1},
    }  # fmt: skip
    return {**data, **over}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder``: (mtime in ns, content hash), by relative path."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, digest(p)) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_rounds_resume_after_sigkill(tiny_backbone, sources, tmp_path):
    """Kill ``dhpc cycle`` in round 2's generation (after one of its shards is committed), resume:
    round 1 is not redone (no file of it rewritten), round 2's committed shard is kept, its data
    equals an unbroken run of the same round, and the table holds both rounds with metrics before
    and after."""
    from diffusion_hpc.estimate.hmr_adapter import checkpoint_fingerprint, exported_regressor_files

    data = loop_data(tmp_path, tiny_backbone, sources)
    config_file = write_yaml(tmp_path / "loop.yaml", data)
    out = Path(data["out"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "diffusion_hpc.cli", "cycle", "--config", str(config_file)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    shards = round_dir(out, 2) / "data" / "shards"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not list(shards.glob("*.tar")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    first_log = (tmp_path / "first.log").read_text()
    assert "round 1/2: train done: 3 steps" in first_log and "round 1/2: evaluate done" in first_log, first_log
    state = json.loads((out / "loop.json").read_text())
    assert all(state["rounds"]["1"][s] is not None for s in ("generate", "train", "evaluate"))
    assert state["rounds"].get("2", {}).get("generate") is None  # killed inside round 2's generation
    committed = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")}
    assert len(committed) == 1, committed
    round1 = files_of(round_dir(out, 1))
    # the loop refuses to start over in the folder, and resumes only the same loop
    again = run_cli("cycle", "--config", str(config_file), env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 2 and "--resume" in again.stderr
    changed = write_yaml(tmp_path / "changed.yaml", {**data, "seed": 8})
    again = run_cli("cycle", "--config", str(changed), "--resume", env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 2 and "seed: 7 -> 8" in again.stderr

    done = run_cli("cycle", "--config", str(config_file), "--resume", env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "round 1/2" not in done.stdout and "round 2/2: generate 4 samples" in done.stdout and "resuming" in done.stdout
    # nothing redone: round 1's files untouched (apart from nothing), round 2's committed shard kept
    assert files_of(round_dir(out, 1)) == round1
    assert {name: (shards / name).stat().st_mtime_ns for name in committed} == committed
    # nothing lost: round 2's data is the unbroken run of its config (same seeds, same bytes)
    loop = Loop(CycleConfig.model_validate(data), progress=False)
    gen2 = loop.generate_config(2)
    assert gen2.seed == round_seed(7, 2, GENERATE_STREAM) != loop.generate_config(1).seed  # fresh noise per round
    assert gen2.estimator == "hmr" and gen2.estimator_checkpoint == round_dir(out, 1) / "train"
    from diffusion_hpc.pipeline.generate import generate

    generate(gen2, tmp_path / "unbroken", progress=False)
    assert dataset_digest(round_dir(out, 2) / "data") == dataset_digest(tmp_path / "unbroken")
    # round 2 estimated with round 1's regressor, by content
    run2 = json.loads((round_dir(out, 2) / "data" / "run.json").read_text())
    fingerprint = checkpoint_fingerprint(exported_regressor_files(round_dir(out, 1) / "train"))
    assert run2["estimator"]["name"] == "hmr" and run2["estimator"]["fingerprint"] == fingerprint
    # the table: both rounds, metrics before (round 2: round 1's regressor) and after
    rows = json.loads((out / "table.json").read_text())
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["estimator"] == "mediapipe" and rows[1]["estimator"] == "hmr"
    assert rows[1]["estimator_fingerprint"] == fingerprint
    for r in rows:
        assert r["made"] == 4 and r["samples"] == 4 and r["unet_evals"] == 4 * 28 and r["train_steps"] == 3
        assert r["after"]["samples"] == 4 and r["after"]["mpjpe_mm"] > 0 and 0 <= r["after"]["pck"] <= 100
    assert rows[0]["before"] is None and rows[1]["before"] == rows[0]["after"]
    assert rows[1]["trained_on"] == ["round-1", "round-2"] and rows[1]["init"] == "round-1"
    eval1 = json.loads((round_dir(out, 1) / "eval.json").read_text())
    assert rows[0]["after"]["mpjpe_mm"] == eval1["mpjpe_mm"]  # the table quotes dhpc evaluate's result
    # round 2 fine-tuned from round 1's regressor on rounds 1 + 2's data
    train2 = yaml.safe_load((round_dir(out, 2) / "train" / "train.yaml").read_text())
    assert train2["init"] == f"dhpc:{round_dir(out, 1) / 'train'}" and train2["checkpoint"] is None
    assert len(train2["synthetic"]) == 2
    assert train2["seed"] == round_seed(7, 2, TRAIN_STREAM)
    md = (out / "table.md").read_text()
    assert md.count("\n| 1 | mediapipe") == 1 and md.count("\n| 2 | hmr (") == 1 and md in done.stdout + "\n"
    state = json.loads((out / "loop.json").read_text())
    assert all(state["rounds"][r][s] is not None for r in ("1", "2") for s in ("generate", "train", "evaluate"))
    # killed after round 2's training finished but before the loop recorded it: the run is not retrained
    from diffusion_hpc.engine.cycle import cycle

    trained = files_of(round_dir(out, 2) / "train")
    state["rounds"]["2"]["train"] = state["rounds"]["2"]["evaluate"] = None
    (out / "loop.json").write_text(json.dumps(state))
    lines: list[str] = []
    result = cycle(CycleConfig.model_validate({**data, "resume": True}), progress=False, report=lines.append)
    assert "round 2/2: train: finished before the interruption" in "\n".join(lines), lines
    assert files_of(round_dir(out, 2) / "train") == trained
    assert [r["train_steps"] for r in result.rows] == [3, 3]
    for new_row, old_row in zip(result.rows, rows):  # the same regressor scores the same
        for key in ("mpjpe_mm", "pa_mpjpe_mm", "pck"):
            assert new_row["after"][key] == pytest.approx(old_row["after"][key], rel=1e-5)


def test_bad_loop_configs_fail_before_any_work(tiny_backbone, sources, tmp_path, capsys):
    """One error, exit 2, nothing written, for each bad loop file."""
    base = loop_data(tmp_path, tiny_backbone, sources)
    cases = [
        ({"generate": {"mode": "D", "n": 4}}, "generate.mode"),
        ({"generate": {**base["generate"], "k": 3}}, "generate.shard_size"),  # GenerateConfig's own rules
        ({"generate": {**base["generate"], "seed": 3}}, "generate.seed"),
        ({"train": {**base["train"], "out": "x"}}, "train.out"),
        ({"train": {**base["train"], "body_model": "smpl", "smpl_path": "x"}}, "train.body_model"),
        ({"train": {**base["train"], "max_steps": 0}}, "train.max_steps"),
        ({"estimator": "hmr"}, "estimator_checkpoint"),
        ({"estimator": "hmr", "estimator_checkpoint": str(tmp_path / "no-run")}, "no-run"),
        ({"val": str(tmp_path / "no-val")}, "no-val"),
        ({"train": {**base["train"], "real": [f"smart:{tmp_path / 'none.json'}"]}}, "none.json"),
        ({"generate": {**base["generate"], "backbone": str(tmp_path / "no-backbone")}}, "no-backbone"),
    ]
    for i, (change, named) in enumerate(cases):
        data = {**base, **change, "out": str(tmp_path / f"loop{i}")}
        path = write_yaml(tmp_path / f"bad{i}.yaml", data)
        assert main(["cycle", "--config", str(path), "--no-progress"]) == 2, change
        err = capsys.readouterr().err
        assert err.count("dhpc: error") == 1 and err.startswith("dhpc: error: ") and named in err, (change, err)
        assert not (tmp_path / f"loop{i}").exists(), change
    # a folder that holds something else is refused
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    path = write_yaml(tmp_path / "taken.yaml", {**base, "out": str(tmp_path / "taken")})
    assert main(["cycle", "--config", str(path), "--no-progress"]) == 2
    assert "holds no loop" in capsys.readouterr().err


def test_flags_override_the_loop_file(tiny_backbone, sources, tmp_path):
    from diffusion_hpc.cli import build_parser, command_config

    path = write_yaml(tmp_path / "loop.yaml", loop_data(tmp_path, tiny_backbone, sources))
    config = command_config(build_parser().parse_args(["cycle", "--config", str(path), "--rounds", "3", "--resume"]))
    assert isinstance(config, CycleConfig) and config.rounds == 3 and config.resume and config.seed == 7
    # the seeds of rounds differ, and repeat for the same (seed, round)
    seeds = {round_seed(7, r, GENERATE_STREAM) for r in range(1, 6)}
    assert len(seeds) == 5 and round_seed(7, 2, GENERATE_STREAM) == round_seed(7, 2, GENERATE_STREAM)
    assert round_seed(7, 2, GENERATE_STREAM) != round_seed(7, 2, TRAIN_STREAM) != round_seed(8, 2, TRAIN_STREAM)


def test_later_rounds_fine_tune_the_last_round_with_round_one_conventions(tiny_backbone, sources, fake_smpl, tmp_path):
    """A loop started from SPIN (``train.init: spin:FILE``, SMPL at 224 px): round 1 fine-tunes SPIN's
    network, round 2 the run round 1 made, keeping SMPL and SPIN's crop size; a resumed round keeps
    the init its train.yaml holds."""
    from diffusion_hpc.engine.cycle import LoopState

    base = loop_data(tmp_path, tiny_backbone, sources)
    train = {k: v for k, v in base["train"].items() if k not in ("backbone", "crop_size")}
    data = {**base, "generate": {**base["generate"], "body_model": "smpl", "smpl_path": str(fake_smpl),
                                 "prior_path": "vposer.ckpt"},
            "train": {**train, "init": "spin:/models/model_checkpoint.pt", "smpl_path": str(fake_smpl)}}  # fmt: skip
    loop = Loop(CycleConfig.model_validate(data), progress=False)
    loop.state = LoopState(tmp_path)
    for r in (1, 2):
        loop.state.round(r)["generate"] = {"accepted": 4}
    first, second = loop.train_config(1, resume=False), loop.train_config(2, resume=False)
    assert (first.init, first.body_model, first.crop_size) == ("spin:/models/model_checkpoint.pt", "smpl", 224)
    assert (second.init, second.body_model, second.crop_size) == (f"dhpc:{round_dir(loop.out, 1) / 'train'}", "smpl", 224)
    assert second.synthetic == [round_dir(loop.out, 1) / "data", round_dir(loop.out, 2) / "data"]
    assert loop.train_config(2, resume=True).init == second.init and loop.train_config(2, resume=True).resume
    assert loop.init_of(1) == "spin:/models/model_checkpoint.pt"
    # the train block's body model must be the generated one
    with pytest.raises(ValueError, match="train.body_model"):
        CycleConfig.model_validate({**data, "generate": base["generate"]})


def test_a_killed_training_resumes_from_its_last_checkpoint(tiny_backbone, sources, tmp_path):
    """A round whose training died after a periodic checkpoint continues that run (its step count
    goes on from the checkpoint) instead of starting over; the round's data is not remade."""
    from diffusion_hpc.engine.cycle import cycle
    from diffusion_hpc.hmr.train import checkpoint_step

    base = loop_data(tmp_path, tiny_backbone, sources, rounds=1)
    data = {**base, "train": {**base["train"], "max_steps": 5, "checkpoint_every": 2}}
    cycle(CycleConfig.model_validate(data), progress=False)
    out, train = Path(data["out"]), round_dir(Path(data["out"]), 1) / "train"
    periodic = train / "checkpoints" / "step=0000004.ckpt"
    assert checkpoint_step(periodic) == 4
    # as if killed between the periodic checkpoint at step 4 and the end: last.ckpt is step 4, no export
    shutil.copy(periodic, train / "checkpoints" / "last.ckpt")
    for name in ("regressor.json", "regressor.safetensors"):
        (train / name).unlink()
    state = json.loads((out / "loop.json").read_text())
    state["rounds"]["1"]["train"] = state["rounds"]["1"]["evaluate"] = None
    (out / "loop.json").write_text(json.dumps(state))
    shards = files_of(round_dir(out, 1) / "data" / "shards")
    lines: list[str] = []
    result = cycle(CycleConfig.model_validate({**data, "resume": True}), progress=False, report=lines.append)
    text = "\n".join(lines)
    assert "round 1/1: train 5 steps" in text and "resuming" in text and "generate" not in text, text
    assert checkpoint_step(train / "checkpoints" / "last.ckpt") == 5 and (train / "regressor.safetensors").is_file()
    assert result.rows[0]["train_steps"] == 5 and files_of(round_dir(out, 1) / "data" / "shards") == shards
    assert len(list((train / "logs").iterdir())) == 2  # the resumed session's log beside the first
