"""The generator's mesh estimator in the dataset: every manifest row names the estimator that gave
its label (and the regressor checkpoint's content fingerprint), and a ``--resume`` refuses a
checkpoint retrained in place since the run began.

Mode R on the tiny random backbone (64x64) with a real photo as the guide, so the regressor labels
a person; a tiny random Anny regressor exported as ``dhpc train`` exports one.
"""

from __future__ import annotations

import json
import shutil

import pytest
import skimage.data
import torch

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data import open_dataset
from diffusion_hpc.pipeline.generate import generate

from conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64


@pytest.fixture(scope="module")
def regressor_run(tmp_path_factory, tiny_backbone):
    """(regressor folder, dataset folder, config): a mode-R run of 2 shards labelled by a regressor."""
    from PIL import Image

    from diffusion_hpc.hmr.model import HMRRegressor, export_regressor

    root = tmp_path_factory.mktemp("estimator")
    guides = root / "guides"
    guides.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(guides / "astronaut.png")
    torch.manual_seed(0)
    checkpoint = export_regressor(HMRRegressor("anny", backbone="tiny"), root / "reg" / "run").parent
    config = GenerateConfig(mode="R", guides=guides, backbone=str(tiny_backbone), image_size=(SIZE, SIZE), n=4, k=2,
                            seed=3, batch_size=2, shard_size=2, estimator="hmr", estimator_checkpoint=checkpoint)  # fmt: skip
    generate(config, root / "out", progress=False)
    return checkpoint, root / "out", config


def test_every_row_names_the_estimator_and_its_fingerprint(regressor_run):
    """Each row (accepted or failed) says which regressor labelled it: its name and the checkpoint's
    content fingerprint, the same as run.json's; no machine path."""
    from diffusion_hpc.estimate.hmr_adapter import checkpoint_fingerprint, exported_regressor_files

    checkpoint, out, _ = regressor_run
    fingerprint = checkpoint_fingerprint(exported_regressor_files(checkpoint))
    rows = open_dataset(out).manifest()
    assert len(rows) == 4 and {r["shard"] for r in rows} == {0, 1}
    assert all(r["estimator"] == {"name": "hmr", "fingerprint": fingerprint} for r in rows), rows
    assert json.loads((out / "run.json").read_text())["estimator"]["fingerprint"] == fingerprint
    assert str(checkpoint) not in (out / "manifest.jsonl").read_text()


def test_rows_of_a_run_without_an_estimator_have_no_estimator_key(tiny_backbone, tmp_path):
    """Mode D without --verify runs no estimator: its rows read as before (no ``estimator`` key)."""
    generate(GenerateConfig(mode="D", generator="render", n=2, seed=1, image_size=(SIZE, SIZE)), tmp_path / "d",
             progress=False)  # fmt: skip
    rows = open_dataset(tmp_path / "d").manifest()
    assert len(rows) == 2 and all("estimator" not in r for r in rows)


def test_resume_refuses_a_checkpoint_retrained_in_place(regressor_run, tmp_path):
    """A run killed after its first shard, whose checkpoint was then retrained in place: --resume
    stops before any work with one error naming the file and the fix (exit 2), the committed shard
    untouched; with the checkpoint put back the same command finishes the run."""
    from safetensors.torch import load_file, save_file

    checkpoint, made, config = regressor_run
    out = tmp_path / "out"
    shutil.copytree(made, out)
    for path in (out / "shards" / "shard-000001.tar", out / "manifest" / "shard-000001.jsonl", out / "run.json",
                 out / "manifest.jsonl"):  # fmt: skip
        path.unlink()  # as after a kill during shard 1
    kept = (out / "shards" / "shard-000000.tar").read_bytes()
    weights_file = checkpoint / "regressor.safetensors"
    original = weights_file.read_bytes()
    args = ["generate", "--config", str(out / "config.yaml"), "--out", str(out), "--resume", "--no-progress"]
    try:
        weights = load_file(str(weights_file))
        weights["dec_cam.bias"] = weights["dec_cam.bias"] + 0.01  # retrained: same file, same size, new weights
        save_file(weights, str(weights_file))
        proc = run_cli(*args, env={"OMP_NUM_THREADS": "1"})
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("dhpc: error") == 1, proc.stderr
        assert str(checkpoint) in proc.stderr and "changed since the run" in proc.stderr and "new --out" in proc.stderr
        assert not (out / "shards" / "shard-000001.tar").exists() and not (out / "run.json").exists()
        assert (out / "shards" / "shard-000000.tar").read_bytes() == kept
    finally:
        weights_file.write_bytes(original)
    proc = run_cli(*args, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert (out / "shards" / "shard-000000.tar").read_bytes() == kept
    assert len(open_dataset(out).manifest()) == config.n


def test_resume_of_a_run_not_yet_begun_starts_it(regressor_run, tmp_path):
    """``--resume`` into a folder nothing was written to yet (as ``dhpc cycle`` starts each round's
    generation) starts the run: there is no recorded checkpoint to compare with."""
    checkpoint, made, config = regressor_run
    generate(config, tmp_path / "fresh", resume=True, progress=False)
    assert len(open_dataset(tmp_path / "fresh").manifest()) == config.n


def test_a_row_names_the_fit_by_name_only():
    """The MediaPipe fit has no checkpoint: its rows say ``{"name": "mediapipe"}``, no null fingerprint;
    a run without an estimator writes no ``estimator`` key."""
    from diffusion_hpc.data.writer import ManifestRow
    from diffusion_hpc.pipeline.records import row_estimator

    assert row_estimator({"name": "mediapipe", "body_model": "anny"}) == {"name": "mediapipe"}
    assert row_estimator(None) is None
    row = ManifestRow("k", 0, 0, 1, "ok", estimator=row_estimator({"name": "mediapipe", "body_model": "anny"}))
    assert json.loads(row.to_json())["estimator"] == {"name": "mediapipe"}
    assert "estimator" not in json.loads(ManifestRow("k", 0, 0, 1, "ok").to_json())


def test_lifter_option_reaches_the_runs_fit(tmp_path):
    """``--lifter`` of dhpc generate sets the MediaPipe fit the run labels with, and run.json's estimator record
    (``describe_estimator``) says which lifter it followed."""
    from diffusion_hpc.estimate import describe_estimator
    from diffusion_hpc.pipeline.stages import load_estimator

    base = dict(mode="R", guides=tmp_path, backbone=str(tmp_path))
    assert describe_estimator(load_estimator(GenerateConfig(**base, lifter="off"), None, "cpu"))["lifter"] == "off"
    shipped = describe_estimator(load_estimator(GenerateConfig(**base), None, "cpu"))["lifter"]
    assert shipped.startswith("lifter.safetensors ")


def test_compile_fit_option_reaches_the_runs_fit(tmp_path):
    """``--compile-fit`` of dhpc generate makes the run's MediaPipe fit compiled, run.json's estimator record says
    so, and without a C++ compiler for torch.compile the estimator does not load: one message naming the option
    and the fix, before any work (not the first compiled call's failure deep inside torch)."""
    import torch._inductor.config as inductor

    from diffusion_hpc.errors import ConfigError
    from diffusion_hpc.estimate import describe_estimator
    from diffusion_hpc.pipeline.stages import load_estimator

    base = dict(mode="R", guides=tmp_path, backbone=str(tmp_path))
    assert describe_estimator(load_estimator(GenerateConfig(**base, compile_fit=True), None, "cpu"))["compile_fit"]
    assert not describe_estimator(load_estimator(GenerateConfig(**base), None, "cpu"))["compile_fit"]
    with inductor.patch({"cpp.cxx": ("no-such-compiler++",)}), pytest.raises(  # monkeypatch's undo deletes the option
        ConfigError, match="compile_fit compiles with torch.compile, which needs a C\\+\\+ compiler"):
        load_estimator(GenerateConfig(**base, compile_fit=True), None, "cpu")
