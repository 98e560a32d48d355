"""The Ray engine makes the local engine's dataset, byte for byte, also when a worker dies mid-shard
or the driver is killed and the run is resumed (with either engine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data import open_dataset
from diffusion_hpc.engine import generate
from diffusion_hpc.engine.ray_engine import KILL_HOOK_ENV
from diffusion_hpc.pipeline.generate import generate as generate_local

from conftest import dataset_digest, manifest_rows, run_cli

#: render baseline at 64 px, small shards: 10 samples in 3 shards (4, 4, 2), batches of 3
SMALL = dict(n=10, seed=3, image_size=(64, 64), batch_size=3, shard_size=4)
FLAGS = ["--image-size", "64", "--batch-size", "3", "--shard-size", "4", "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray with 2 CPUs for the module (the engine joins it instead of starting its own)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, anny_body):
    out = tmp_path_factory.mktemp("local") / "d"
    generate_local(GenerateConfig(**SMALL), out, progress=False)
    return out


def test_ray_equals_local_byte_for_byte(ray_session, local_run, tmp_path):
    out = tmp_path / "ray"
    result = generate(GenerateConfig(**SMALL, engine="ray", workers=2), out, progress=False)
    assert result.accepted == 10 and result.failed == 0
    assert dataset_digest(out) == dataset_digest(local_run)
    assert manifest_rows(out) == manifest_rows(local_run)
    assert (out / "config.yaml").read_text() == (local_run / "config.yaml").read_text()  # no engine fields in it
    run = json.loads((out / "run.json").read_text())
    assert run["execution"]["engine"] == "ray" and run["execution"]["workers"] == 2 and run["generator"] == "render"


def test_a_part_on_ray_holds_the_local_runs_shards(ray_session, local_run, tmp_path):
    import tarfile

    out = tmp_path / "p1"
    generate(GenerateConfig(**SMALL, engine="ray", workers=2, part="1/2"), out, progress=False)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-000000.tar", "shard-000002.tar"]
    for name in ("shard-000000.tar", "shard-000002.tar"):
        with tarfile.open(out / "shards" / name) as a, tarfile.open(local_run / "shards" / name) as b:
            assert a.getnames() == b.getnames()
            for m in a.getnames():
                if m.endswith(".png"):
                    assert a.extractfile(m).read() == b.extractfile(m).read()


def test_ray_equals_local_with_a_diffusion_generator(ray_session, tiny_backbone, tmp_path):
    """The tiny backbone (mode D, depth2img): CPU float32 convolutions give other bytes with another
    torch thread count, so the workers take the driver's; the images are then the local run's."""
    cfg = dict(n=4, seed=1, image_size=(64, 64), batch_size=2, shard_size=2, generator="depth2img",
               backbone=str(tiny_backbone), verify=False)
    generate_local(GenerateConfig(**cfg), tmp_path / "local", progress=False)
    generate(GenerateConfig(**cfg, engine="ray", workers=2), tmp_path / "ray", progress=False)
    assert dataset_digest(tmp_path / "ray") == dataset_digest(tmp_path / "local")
    assert manifest_rows(tmp_path / "ray") == manifest_rows(tmp_path / "local")  # the sampler and backbone rows too


def test_worker_killed_mid_shard_is_redone(ray_session, local_run, tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_HOOK_ENV, f"1:{marker}")  # the worker of shard 1 dies after its first batch, once
    out = tmp_path / "ray"
    result = generate(GenerateConfig(**SMALL, engine="ray", workers=2), out, progress=False)
    assert marker.exists()  # the kill happened
    assert result.accepted == 10
    assert [r["index"] for r in manifest_rows(out)] == list(range(10))  # nothing duplicated or lost
    assert dataset_digest(out) == dataset_digest(local_run)


def test_driver_killed_then_resume_completes(anny_body, tmp_path):
    """SIGKILL the driver of `dhpc generate --engine ray` once a shard is committed; --resume (here with
    the local engine: execution options may change) completes to exactly n unique readable samples."""
    n, out = 40, tmp_path / "d"
    args = ["generate", "-n", str(n), "--out", str(out), *FLAGS]
    proc = subprocess.Popen([sys.executable, "-m", "diffusion_hpc.cli", *args, "--engine", "ray", "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "shards").glob("*.tar")) if (out / "shards").exists() else True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard committed in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        # Ray's helper processes outlive a SIGKILLed driver: end them with the driver's session
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.stderr.close()
    committed = len(list((out / "shards").glob("*.tar")))
    assert 1 <= committed < 10 and not (out / "run.json").exists()  # killed mid-run
    done = run_cli(*args, "--resume", "--engine", "local")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shards were already complete" in done.stdout
    keys = [s["key"] for s in open_dataset(out)]
    assert keys == [f"{i:09d}" for i in range(n)]
    reference = tmp_path / "ref"
    generate_local(GenerateConfig(**{**SMALL, "n": n}), reference, progress=False)
    assert dataset_digest(out) == dataset_digest(reference)


def test_engine_options_need_ray_and_resume_ignores_them(local_run, tmp_path):
    proc = run_cli("generate", "-n", "10", "--out", str(tmp_path / "x"), "--workers", "2", *FLAGS)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--engine ray" in proc.stderr
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(local_run, copy)
    # a complete run resumed with the Ray engine and another worker count: accepted, nothing to do, no Ray started
    result = generate(GenerateConfig(**SMALL, engine="ray", workers=1), copy, resume=True, progress=False)
    assert result.skipped_shards == 3 and dataset_digest(copy) == dataset_digest(local_run)


def test_unreachable_ray_address_fails_fast_with_one_line(tmp_path):
    out = tmp_path / "x"
    proc = run_cli("generate", "-n", "4", "--out", str(out), "--engine", "ray", "--ray-address", "127.0.0.1:1",
                   *FLAGS, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--ray-address 127.0.0.1:1" in proc.stderr
    assert not out.exists()
