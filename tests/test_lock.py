"""The output folder's lock: one writer at a time, a stale lock of a killed run is taken over by
--resume, a lock of another host is never taken over silently, and the lock goes when a run ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data import open_dataset
from diffusion_hpc.data.lock import LOCK_NAME, OutputLock
from diffusion_hpc.data.merge import merge
from diffusion_hpc.errors import DhpcError
from diffusion_hpc.pipeline.generate import Generator
from diffusion_hpc.pipeline.generate import generate as generate_local

from conftest import dataset_digest, manifest_rows, run_cli

SMALL = dict(n=10, seed=3, image_size=(64, 64), batch_size=3, shard_size=4)
FLAGS = ["--image-size", "64", "--batch-size", "3", "--shard-size", "4", "--seed", "3", "--no-progress"]


def dead_pid() -> int:
    """The pid of a process that has ended (on this host)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(root, pid: int, host: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host, "started": "2026-01-01T00:00:00Z"}))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, anny_body):
    out = tmp_path_factory.mktemp("ref") / "d"
    generate_local(GenerateConfig(**SMALL), out, progress=False)
    return out


def test_lock_holds_owner_and_is_exclusive(tmp_path):
    root = tmp_path / "run"
    with OutputLock(root) as lock:
        data = json.loads((root / LOCK_NAME).read_text())
        assert data["pid"] == os.getpid() and data["host"] == socket.gethostname() and data["started"]
        with pytest.raises(DhpcError, match=rf"in use by pid {os.getpid()}@{socket.gethostname()}, since .*--resume"):
            OutputLock(root).acquire()
        assert lock.owner is not None
    assert not root.exists()  # the lock made the folder and nothing was written: both gone


def test_second_run_on_a_folder_fails_and_the_first_completes(reference, tmp_path):
    """A run holds the lock from its start to its end: a second writer (fresh or --resume) is refused
    with the owner's name, and the first run's dataset is complete and intact."""
    out = tmp_path / "d"
    seen: list[str] = []
    gen = Generator(GenerateConfig(**SMALL), progress=False)
    original = gen.run_shard

    def run_shard(s, writer, on_batch=None):  # a second writer arrives while shard s is being made
        for resume in (False, True):
            with pytest.raises(DhpcError) as err:
                generate_local(GenerateConfig(**SMALL), out, resume=resume, progress=False)
            seen.append(str(err.value))
        return original(s, writer, on_batch)

    gen.run_shard = run_shard
    result = gen.run(out)
    assert result.accepted == 10 and len(seen) == 6
    me = f"pid {os.getpid()}@{socket.gethostname()}"
    assert all(me in m and "\n" not in m for m in seen), seen[0]
    assert [r["index"] for r in manifest_rows(out)] == list(range(10))
    assert dataset_digest(out) == dataset_digest(reference)
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_cli_second_writer_exits_2_naming_the_owner(tmp_path):
    out = tmp_path / "d"
    write_lock(out, 4242, "node-b")  # a run of another host: never taken over
    done = run_cli("generate", "-n", "4", "--out", str(out), *FLAGS, "--resume")
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert "pid 4242@node-b, since 2026-01-01T00:00:00Z" in line and "another host" in line
    assert f"delete {out / LOCK_NAME}" in line
    assert (out / LOCK_NAME).exists() and json.loads((out / LOCK_NAME).read_text())["host"] == "node-b"


def test_stale_lock_of_this_host_is_taken_over(reference, tmp_path, caplog):
    out = tmp_path / "d"
    write_lock(out, dead_pid(), socket.gethostname())
    result = generate_local(GenerateConfig(**SMALL), out, progress=False)  # a folder holding only a stale lock
    assert result.accepted == 10 and dataset_digest(out) == dataset_digest(reference)
    assert "taking over the stale lock" in caplog.text
    assert not (out / LOCK_NAME).exists()


def test_lock_released_on_error_and_keyboard_interrupt(tmp_path, anny_body):
    out = tmp_path / "d"
    gen = Generator(GenerateConfig(**SMALL), progress=False)

    def interrupted(s, writer, on_batch=None):
        raise KeyboardInterrupt

    gen.run_shard = interrupted
    with pytest.raises(KeyboardInterrupt):
        gen.run(out)
    assert not (out / LOCK_NAME).exists()
    # a refused resume (another config) releases the lock too
    with pytest.raises(DhpcError, match="different config"):
        generate_local(GenerateConfig(**{**SMALL, "seed": 4}), out, resume=True, progress=False)
    assert not (out / LOCK_NAME).exists()


def test_sigkilled_run_leaves_a_stale_lock_that_resume_clears(reference, tmp_path):
    out = tmp_path / "d"
    args = ["generate", "-n", "10", "--out", str(out), *FLAGS]
    proc = subprocess.Popen([sys.executable, "-m", "diffusion_hpc.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "shards" / "shard-000000.tar").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == proc.pid  # left behind by the killed run
    done = run_cli(*args, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"stale lock of pid {proc.pid}@" in done.stderr
    assert [s["key"] for s in open_dataset(out)] == [f"{i:09d}" for i in range(10)]
    assert dataset_digest(out) == dataset_digest(reference)
    assert not (out / LOCK_NAME).exists()


def test_merge_takes_the_lock_of_its_output(reference, tmp_path):
    out = tmp_path / "merged"
    write_lock(out, 4242, "node-b")
    with pytest.raises(DhpcError, match="merge: --out .* in use by pid 4242@node-b"):
        merge([reference], out)
    (out / LOCK_NAME).unlink()
    merge([reference], out)
    assert dataset_digest(out) == dataset_digest(reference) and not (out / LOCK_NAME).exists()
