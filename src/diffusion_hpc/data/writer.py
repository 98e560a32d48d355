"""Atomic, resumable dataset writer: WebDataset tar shards, a per-shard manifest and the run config.

Layout of a dataset directory::

    config.yaml              the run's full config (a resumed run must match it)
    shards/shard-000000.tar  WebDataset shard: the accepted samples of indices [0, S)
    manifest/shard-000000.jsonl  one row per sample index of the shard (accepted or failed)
    manifest.jsonl           all rows, consolidated when the run finishes
    preview.png              image | depth | silhouette and keypoints, a few samples

A shard is committed in two atomic renames: its manifest part first, then its tar. A shard is
complete when its tar exists; a run killed at any point loses at most the shards in progress, and
``resume`` regenerates exactly those (samples are reproducible from (seed, index)), so no sample is
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
import tarfile
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
    :mod:`diffusion_hpc.pipeline.records`). They are left out of the row when None, so rows of
    the render baseline read as before and older readers see only keys they know.
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
OPTIONAL_ROW_KEYS = ("sampler", "backbone")


def _tar_bytes(records: Iterable[SampleRecord]) -> bytes:
    """A WebDataset tar (members ``<key>.<ext>``, deterministic headers) of ``records``."""
    from concurrent.futures import ThreadPoolExecutor

    # PNG encoding releases the GIL: encode the records on all cores, write them in order.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        encoded = list(pool.map(encode, records))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for record, members in zip(records, encoded):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{record.key}.{ext}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


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
        return self

    def shard_path(self, shard: int) -> Path:
        return self.root / "shards" / f"{shard_name(shard)}.tar"

    def manifest_path(self, shard: int) -> Path:
        return self.root / "manifest" / f"{shard_name(shard)}.jsonl"

    def is_complete(self, shard: int) -> bool:
        """True when shard ``shard`` was committed (its tar exists)."""
        return self.shard_path(shard).exists()

    def write_shard(self, shard: int, records: list[SampleRecord], rows: list[ManifestRow]) -> None:
        """Commit one shard: manifest part, then tar (the commit point)."""
        keys = [r.key for r in records]
        if len(set(keys)) != len(keys):  # pragma: no cover - guarded by the pipeline
            raise RuntimeError(f"duplicate keys in shard {shard}")
        data = _tar_bytes(records)
        with storage_errors(self.label, f"shard {shard_name(shard)}", self.retry):
            atomic_write_bytes(self.manifest_path(shard), "".join(r.to_json() + "\n" for r in rows).encode())
            try:
                atomic_write_bytes(self.shard_path(shard), data)
            except BaseException:  # no manifest part without its tar: the shard is not committed
                with contextlib.suppress(OSError):
                    os.unlink(self.manifest_path(shard))
                raise

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
