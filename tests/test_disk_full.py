"""A full or read-only output disk mid-run: one line naming the folder and the fix, exit 2, no
partial shard committed, the lock released; --resume once there is space completes the run to the
bytes of an unbroken one. A real small tmpfs when this machine lets the test mount one, and always
a write layer that fails the shard commit after K shards."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from diffusion_hpc import cli
from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data import open_dataset, writer
from diffusion_hpc.data.lock import LOCK_NAME
from diffusion_hpc.errors import DhpcError
from diffusion_hpc.pipeline.generate import generate as generate_local

from conftest import dataset_digest, manifest_rows, run_cli

#: 10 samples in 3 shards (4, 4, 2)
SMALL = dict(n=10, seed=3, image_size=(64, 64), batch_size=3, shard_size=4)
FLAGS = ["-n", "10", "--image-size", "64", "--batch-size", "3", "--shard-size", "4", "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, anny_body):
    out = tmp_path_factory.mktemp("ref") / "d"
    generate_local(GenerateConfig(**SMALL), out, progress=False)
    return out


def assert_clean_stop(out: Path, committed: int) -> None:
    """``committed`` whole shards, each with its manifest part; no temporary file; no lock; no run.json."""
    shards = sorted(p.name for p in (out / "shards").iterdir())
    parts = sorted(p.name for p in (out / "manifest").iterdir())
    assert shards == [f"shard-{s:06d}.tar" for s in range(committed)], shards
    assert parts == [f"shard-{s:06d}.jsonl" for s in range(committed)], parts
    assert not [p for p in out.rglob(".*") if p.is_file()], list(out.rglob(".*"))  # no temp file, no lock
    assert not (out / "manifest.jsonl").exists() and not (out / "run.json").exists()
    assert len(list(open_dataset(out))) == 4 * committed  # the committed shards read whole


def failing_writes(monkeypatch, code: int, after: int, what: str = ".tar") -> list[str]:
    """Fail writes of files ending in ``what`` with OSError(``code``) once ``after`` of them succeeded,
    the way a full disk does: part of the temporary file written, then the error. (A shard's tar is
    streamed to its temporary file and committed by ``writer.commit_file``; a manifest part is
    written by ``writer.atomic_write_bytes``.)"""
    real_write, real_commit = writer.atomic_write_bytes, writer.commit_file
    written: list[str] = []

    def full(path) -> bool:
        if not str(path).endswith(what):
            return False
        if len(written) >= after:
            return True
        written.append(str(path))
        return False

    def write(path, data: bytes) -> None:
        if full(path):
            with writer.atomic_path(path) as tmp:
                tmp.write_bytes(data[: len(data) // 2])
                raise OSError(code, os.strerror(code), str(tmp))
        real_write(path, data)

    def commit(tmp, path) -> None:
        if full(path):
            raise OSError(code, os.strerror(code), str(tmp))
        real_commit(tmp, path)

    monkeypatch.setattr(writer, "atomic_write_bytes", write)
    monkeypatch.setattr(writer, "commit_file", commit)
    return written


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_write_layer_failure_stops_cleanly_and_resume_completes(reference, tmp_path, monkeypatch, capsys, code):
    out = tmp_path / "d"
    failing_writes(monkeypatch, code, after=1)  # the tar of shard 1 fails
    assert cli.main(["generate", "--out", str(out), *FLAGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"--out {out}: cannot write shard shard-000001 ({os.strerror(code)})" in err[0]
    assert "free space" in err[0] and "--resume" in err[0]
    assert_clean_stop(out, committed=1)
    monkeypatch.undo()  # space is back
    assert cli.main(["generate", "--out", str(out), *FLAGS, "--resume"]) == 0
    assert [r["index"] for r in manifest_rows(out)] == list(range(10))
    assert len({s["key"] for s in open_dataset(out)}) == 10
    assert dataset_digest(out) == dataset_digest(reference)
    assert not (out / LOCK_NAME).exists()


def test_read_only_output_is_a_clear_error(tmp_path, monkeypatch, anny_body):
    """chmod 0o555 does not stop root, so a read-only folder is the write layer's EROFS on the first write."""
    out = tmp_path / "d"
    failing_writes(monkeypatch, errno.EROFS, after=0, what=".jsonl")
    with pytest.raises(DhpcError, match=rf"--out {out}: cannot write shard shard-000000 \(Read-only file system\); "
                                        "free space there \\(or make it writable\\)"):
        generate_local(GenerateConfig(**SMALL), out, progress=False)
    assert_clean_stop(out, committed=0)


def test_real_full_filesystem(reference, tmp_path):
    """A 2 MB tmpfs filled so that about one shard fits: the CLI stops with exit 2; after the ballast
    is deleted, --resume completes to the reference bytes."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        out = mnt / "d"
        room = sum(p.stat().st_size for p in (reference / "shards" / "shard-000000.tar",
                                               reference / "manifest" / "shard-000000.jsonl",
                                               reference / "config.yaml"))
        free = shutil.disk_usage(mnt).free
        (mnt / "ballast").write_bytes(b"\0" * (free - room - 48 * 1024))  # one shard fits, not two
        done = run_cli("generate", "--out", str(out), *FLAGS)
        assert done.returncode == 2, done.stderr[-2000:]
        line = done.stderr.strip().splitlines()[-1]
        assert f"--out {out}: cannot write" in line and "No space left on device" in line and "--resume" in line
        committed = len(list((out / "shards").glob("*.tar")))
        assert 1 <= committed < 3
        assert_clean_stop(out, committed)
        (mnt / "ballast").unlink()
        done = run_cli("generate", "--out", str(out), *FLAGS, "--resume")
        assert done.returncode == 0, done.stderr[-2000:]
        assert [r["index"] for r in manifest_rows(out)] == list(range(10))
        assert dataset_digest(out) == dataset_digest(reference)
        assert not (out / LOCK_NAME).exists()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_merge_onto_a_full_disk_leaves_nothing(reference, tmp_path, monkeypatch):
    """Parts on another file system are copied; a full disk there stops the merge with one line and
    leaves neither the output nor its temporary folder (nor the lock)."""
    from diffusion_hpc.data import merge as merge_module

    real_link = os.link

    def no_link(src, dst):  # os.link is global: the lock (and its move into the output) still links
        if Path(dst).name == LOCK_NAME:
            return real_link(src, dst)
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(merge_module.os, "link", no_link)
    monkeypatch.setattr(merge_module.shutil, "copyfile", full)
    out = tmp_path / "merged"
    with pytest.raises(DhpcError, match=rf"merge: --out {out}: cannot write shard-000000.jsonl .*No space left on "
                                        "device.*then merge again: nothing was merged"):
        merge_module.merge([reference], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
