"""Atomic, resumable dataset writer: WebDataset tar shards, a per-shard manifest and the run config.

Layout of a dataset directory::

    config.yaml              the run's full config (a resumed run must match it)
    shards/shard-000000.tar  WebDataset shard: the accepted samples of indices [0, S)
    manifest/shard-000000.jsonl  one row per sample index of the shard (accepted or failed)
    manifest.jsonl           all rows, consolidated when the run finishes
    preview.png              image | depth | silhouette and keypoints, a few samples

A shard is streamed (:class:`ShardStream`): its records are encoded and appended to a temporary tar
on a writer thread while the next batch is made, so a run holds a bounded number of records
whatever the shard size. It is committed in two atomic renames: its manifest part first, then its
tar. A shard is complete when its tar exists; a run killed at any point loses at most the shards in
progress (their temporary tars are removed when the folder is opened again), and ``resume``
regenerates exactly those (samples are reproducible from (seed, index)), so no sample is
duplicated or dropped.

A run writes under the folder's lock (:mod:`diffusion_hpc.data.lock`, ``.lock``), which the
engine takes; the writer ignores the lock when it checks that a new run's folder is empty. A write
that fails because the disk is full or read-only (``ENOSPC``, ``EDQUOT``, ``EROFS``, ``EACCES``)
stops the run with one line naming the folder and the fix (free space, then ``--resume``); the
shard being written is not committed (a manifest part whose tar failed is removed again).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import queue
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from diffusion_hpc.data.lock import is_lock_file
from diffusion_hpc.data.schema import SampleRecord, encode
from diffusion_hpc.data.seeds import shard_name
from diffusion_hpc.errors import DhpcError
from diffusion_hpc.runtime.atomic import atomic_path, atomic_write_bytes  # noqa: F401  (re-exported for callers)


@dataclass
class ManifestRow:
    """One manifest row: what happened to one sample index.

    ``sampler`` and ``backbone`` (diffusion generators) record what ran for the sample: the
    sampler's settings, the steps that ran, blur, and the identity of the weights (see
    :mod:`diffusion_hpc.pipeline.records`). ``estimator`` names the mesh estimator that gave the
    sample its label (modes T, R) or checked it (``--verify``, ``--cycles``): its ``name`` and, for
    a regressor, its checkpoint's content ``fingerprint``. They are left out of the row when None,
    so rows of the render baseline read as before and older readers see only keys they know.
    """

    key: str
    index: int
    shard: int
    seed: int
    status: str  # "ok" or "failed"
    reason: str = ""
    scores: dict | None = None
    unet_evals: int = 0
    timings: dict | None = None
    sampler: dict | None = None
    backbone: dict | None = None
    estimator: dict | None = None

    def to_json(self) -> str:
        row = {k: v for k, v in self.__dict__.items() if v is not None or k not in OPTIONAL_ROW_KEYS}
        return json.dumps(row, sort_keys=True)


#: errno values of a full or read-only output (the user frees space or fixes permissions, then resumes)
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
#: the fix after a full disk, for a run
RETRY = "then rerun the same command with --resume: committed shards are kept"


@contextlib.contextmanager
def storage_errors(label: str, what: str, retry: str = RETRY) -> Iterator[None]:
    """Turn a full or read-only disk into one DhpcError naming the folder (``label``) and the fix."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        raise DhpcError(f"{label}: cannot write {what} ({os.strerror(exc.errno)}); free space there (or make "
                        f"it writable), {retry}") from None


#: row keys written only when set (added after the first datasets: older readers ignore them)
OPTIONAL_ROW_KEYS = ("sampler", "backbone", "estimator")


#: records a shard stream holds at most before :meth:`ShardStream.add` waits for the encoder: with
#: the batch being made, the most records a run holds at once (memory flat in the shard size)
STREAM_DEPTH = 16


def _add_members(tar: tarfile.TarFile, key: str, members: dict[str, bytes]) -> None:
    """Append one record's members (``<key>.<ext>``, deterministic headers) to a WebDataset tar."""
    for ext, data in members.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))


def commit_file(tmp: Path, target: Path) -> None:
    """Make the finished file ``tmp`` (in ``target``'s folder) ``target``: fsync, mode 0644, rename.

    A shard's tar is committed through here (its manifest part through ``atomic_write_bytes``)."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, target)


class ShardStream:
    """One shard being written, streamed: records are PNG-encoded and appended to the shard's
    temporary tar on a writer thread as they come, while the caller makes the next batch.

    At most :data:`STREAM_DEPTH` records wait in the queue (:meth:`add` blocks when it is full), so
    a shard of any size holds about one batch plus the queue in memory. The tar's bytes equal
    those of writing all records at once. :meth:`commit` makes the shard complete (manifest part,
    then tar: the commit point); leaving the ``with`` block without a commit (an error, a full
    disk) removes the temporary tar, and nothing of the shard is committed. A killed process leaves
    the temporary file behind; the next stream of that shard, or the next
    :meth:`DatasetWriter.open` (under the folder's lock), removes it.

    ``waited`` is the time the caller spent in :meth:`add` and :meth:`commit` (encoding and
    writing not hidden behind the caller's work).
    """

    def __init__(self, writer: "DatasetWriter", shard: int, depth: int = STREAM_DEPTH) -> None:
        self.writer, self.shard = writer, shard
        self.target = writer.shard_path(shard)
        self.waited = 0.0
        self._keys: set[str] = set()
        self._error: BaseException | None = None
        self._done = False
        # a worker that died making this shard left its temporary tar (an engine makes a shard in
        # one process at a time, so no live writer owns it)
        for stale in self.target.parent.glob(f".{self.target.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        with self._storage():
            fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
        self.tmp = Path(tmp)
        self._fh = os.fdopen(fd, "wb")
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.USTAR_FORMAT)
        self._queue: "queue.Queue[SampleRecord | None]" = queue.Queue(maxsize=max(1, depth))
        self._thread = threading.Thread(target=self._drain, name=f"dhpc-shard-{shard}", daemon=True)
        self._thread.start()

    def _storage(self):
        return storage_errors(self.writer.label, f"shard {shard_name(self.shard)}", self.writer.retry)

    def _drain(self) -> None:
        """The writer thread: encode and append each queued record, in order, until ``None``."""
        while True:
            record = self._queue.get()
            if record is None:
                return
            if self._error is not None:
                continue  # keep draining so that add() never blocks on a dead writer
            try:
                _add_members(self._tar, record.key, encode(record))
            except BaseException as exc:  # handed to the caller by add() / commit()
                self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None:
            with self._storage():
                raise self._error

    def add(self, records: Iterable[SampleRecord]) -> None:
        """Queue ``records`` (in shard order) for encoding; waits while the queue is full."""
        t0 = time.perf_counter()
        for record in records:
            self._raise_error()
            if record.key in self._keys:  # pragma: no cover - guarded by the pipeline
                raise RuntimeError(f"duplicate key {record.key} in shard {self.shard}")
            self._keys.add(record.key)
            self._queue.put(record)
        self.waited += time.perf_counter() - t0

    def _stop(self) -> None:
        """Let the writer thread finish what is queued and end."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def commit(self, rows: list[ManifestRow]) -> None:
        """Finish the tar and commit the shard: manifest part, then tar (the commit point)."""
        t0 = time.perf_counter()
        self._stop()
        self._raise_error()
        with self._storage():
            self._tar.close()
            self._fh.close()
            manifest = self.writer.manifest_path(self.shard)
            atomic_write_bytes(manifest, "".join(r.to_json() + "\n" for r in rows).encode())
            try:
                commit_file(self.tmp, self.target)
            except BaseException:  # no manifest part without its tar: the shard is not committed
                with contextlib.suppress(OSError):
                    os.unlink(manifest)
                raise
        self._done = True
        self.waited += time.perf_counter() - t0

    def abort(self) -> None:
        """Drop the shard: stop the writer thread, remove the temporary tar (nothing is committed)."""
        self._stop()
        with contextlib.suppress(Exception):
            self._tar.close()
        with contextlib.suppress(Exception):
            self._fh.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)
        self._done = True

    def __enter__(self) -> "ShardStream":
        return self

    def __exit__(self, *exc) -> None:
        if not self._done:
            self.abort()


def same_config(saved_yaml: str, config_yaml: str) -> bool:
    """True when two stored configs describe the same dataset: equal YAML, where a key missing from one
    side equals null on the other (configs written before an option existed lack its key)."""
    if saved_yaml == config_yaml:
        return True
    import yaml

    a, b = yaml.safe_load(saved_yaml) or {}, yaml.safe_load(config_yaml) or {}
    return {k: v for k, v in a.items() if v is not None} == {k: v for k, v in b.items() if v is not None}


class DatasetWriter:
    """Writes shards of a dataset directory; see the module docstring for the layout."""

    def __init__(self, root: str | os.PathLike, config_yaml: str, resume: bool = False) -> None:
        """Check that ``root`` can take this run (nothing is written until :meth:`open`)."""
        self.root = Path(root)
        self.config_yaml = config_yaml
        self.label, self.retry = f"--out {self.root}", RETRY  # named in a full-disk error (merge sets its own)
        if self.root.exists() and not self.root.is_dir():
            raise DhpcError(f"--out {self.root} is a file, not a directory; choose a directory path")
        config_path = self.root / "config.yaml"
        if self.root.exists() and any(not is_lock_file(p.name) for p in self.root.iterdir()):
            if not resume:
                raise DhpcError(
                    f"--out {self.root} already holds data; pass --resume to continue that run, or choose a new --out"
                )
            if not config_path.exists():
                raise DhpcError(f"--out {self.root} is not empty and is not a Diffusion-HPC dataset (no config.yaml)")
            saved = config_path.read_text()
            if not same_config(saved, config_yaml):
                import difflib

                diff = [
                    line
                    for line in difflib.unified_diff(saved.splitlines(), config_yaml.splitlines(), lineterm="", n=0)
                    if line[:1] in "+-" and line[:3] not in ("+++", "---")
                ]
                raise DhpcError(
                    f"--resume: the dataset in {self.root} was made with a different config ({'; '.join(diff[:6])}); "
                    "rerun with the same options, or choose a new --out"
                )

    def open(self) -> "DatasetWriter":
        """Create the directory layout and store the config (idempotent)."""
        with storage_errors(self.label, "the dataset's folders and config.yaml", self.retry):
            (self.root / "shards").mkdir(parents=True, exist_ok=True)
            (self.root / "manifest").mkdir(exist_ok=True)
            if not (self.root / "config.yaml").exists():
                atomic_write_bytes(self.root / "config.yaml", self.config_yaml.encode())
            self._remove_stale_temporaries()
        return self

    def _remove_stale_temporaries(self) -> None:
        """Remove the temporary files a killed run left in shards/ and manifest/ (a shard in the
        making, a manifest part being committed). Called from :meth:`open`, which the engine calls
        under the folder's lock before any shard is made, so no live writer owns them."""
        for folder in (self.root / "shards", self.root / "manifest"):
            for tmp in folder.glob(".shard-*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def shard_path(self, shard: int) -> Path:
        return self.root / "shards" / f"{shard_name(shard)}.tar"

    def manifest_path(self, shard: int) -> Path:
        return self.root / "manifest" / f"{shard_name(shard)}.jsonl"

    def is_complete(self, shard: int) -> bool:
        """True when shard ``shard`` was committed (its tar exists)."""
        return self.shard_path(shard).exists()

    def open_shard(self, shard: int, depth: int = STREAM_DEPTH) -> ShardStream:
        """A :class:`ShardStream` for shard ``shard``: ``with writer.open_shard(s) as stream:``
        ``stream.add(records)`` per batch, then ``stream.commit(rows)``."""
        return ShardStream(self, shard, depth)

    def write_shard(self, shard: int, records: list[SampleRecord], rows: list[ManifestRow]) -> None:
        """Commit one shard of ``records`` at once: manifest part, then tar (the commit point)."""
        with self.open_shard(shard) as stream:
            stream.add(records)
            stream.commit(rows)

    def finalize(self, shards: int | Iterable[int], summary: dict) -> Path:
        """Consolidate the manifest of ``shards`` (a count: shards 0..count-1; or the shard numbers of
        a part) and write ``run.json``; returns the manifest path."""
        manifest = self.root / "manifest.jsonl"
        with storage_errors(self.label, "manifest.jsonl and run.json", self.retry):
            with atomic_path(manifest) as tmp, open(tmp, "wb") as fh:  # streamed: parts end with a newline
                for shard in (range(shards) if isinstance(shards, int) else shards):
                    fh.write(self.manifest_path(shard).read_bytes())
            summary = dict(summary, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
            atomic_write_bytes(self.root / "run.json", json.dumps(summary, indent=2, sort_keys=True).encode())
        return manifest
