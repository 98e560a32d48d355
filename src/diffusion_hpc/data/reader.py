"""Reader for datasets written by ``dhpc generate`` (see :mod:`diffusion_hpc.data.writer`)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from diffusion_hpc.data.schema import decode
from diffusion_hpc.errors import InputError


class Dataset:
    """A dataset directory: iterate over decoded samples, read the manifest and config.

    Each sample is a dict (:func:`~diffusion_hpc.data.schema.decode`) with the image-level fields
    ``key``, ``image`` (H, W, 3) uint8, ``mask`` (H, W) bool (the union of the persons), ``depth``
    (H, W) float32 metres of the nearest surface (0 = background), ``instance`` (H, W) int16 person
    index per pixel (-1 = background), ``K`` (3, 3), ``mode``, ``prompt``, ``seed``, ``index``,
    ``scores``, ``image_mask`` (the segmenter's person mask of the final image, or None when
    verification did not run), and ``persons``: one dict per person with ``body_model``, ``params``
    (dict of arrays), ``joints3d`` ({joint set: (J, 3)} camera frame, metres), ``keypoints2d`` (17, 3)
    COCO-17 pixels + visibility (a joint hidden by another person is not visible), ``mask`` (its
    pixels of ``instance``), ``scores``, ``pose_source``, ``visible_fraction`` and ``labels`` (the
    body converted to other body models, ``{}`` when none: ``labels["smpl"]`` is ``{"body_model",
    "params", "joints3d", "fit"}``, see :func:`~diffusion_hpc.data.schema.encode_label` and ``dhpc
    convert``). A sample of a schema-1 dataset (written before persons) has no ``persons``: its one
    person's fields are at the top. :func:`~diffusion_hpc.data.schema.persons_of` lists the persons
    of either.
    """

    def __init__(self, path: str | Path) -> None:
        self.root = Path(path)
        if not (self.root / "config.yaml").is_file():
            raise InputError(f"{self.root} is not a Diffusion-HPC dataset (no config.yaml)")

    @property
    def shards(self) -> list[Path]:
        """Committed shard files, in index order."""
        return sorted((self.root / "shards").glob("shard-*.tar"))

    @property
    def config(self) -> dict:
        import yaml

        return yaml.safe_load((self.root / "config.yaml").read_text())

    @property
    def run_record(self) -> dict:
        """The dataset's ``run.json`` (what ran: sampler, weights, prior and its thresholds), or {}
        before a run has finished once."""
        path = self.root / "run.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def manifest(self) -> list[dict]:
        """Manifest rows of the committed shards (accepted and failed samples), in index order."""
        return list(self.iter_manifest())

    def iter_manifest(self) -> Iterator[dict]:
        """The rows of :meth:`manifest` one at a time (a million-sample manifest is gigabytes as dicts)."""
        for shard in self.shards:
            part = self.root / "manifest" / (shard.stem + ".jsonl")
            with part.open() as fh:
                for line in fh:
                    if line.strip():
                        yield json.loads(line)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for shard in self.shards:
            yield from iter_shard(shard)

    def __len__(self) -> int:
        return sum(1 for row in self.manifest() if row["status"] == "ok")


def manifest_totals(rows: Iterable[dict]) -> dict:
    """run.json's counts of manifest ``rows``: accepted, failed, failures by reason, drifted, UNet evaluations."""
    accepted = failed = 0
    failures: dict[str, int] = {}
    spent = 0.0
    for row in rows:
        spent += row.get("unet_evals", 0)
        if row["status"] == "ok":
            accepted += 1
        else:
            failed += 1
            failures[row["reason"]] = failures.get(row["reason"], 0) + 1
    return {"accepted": accepted, "failed": failed, "failures": failures,
            "drifted": failures.get("verify: drifted", 0), "unet_evals_total": spent,
            "unet_evals_per_accepted": spent / accepted if accepted else None}


#: a sample key as the writer makes it (:func:`~diffusion_hpc.data.seeds.sample_key`): a plain
#: file-name stem, no dot, no folder
SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def check_key(key: object, where: str) -> str:
    """``key`` if it is a plain file-name stem (:data:`SAFE_KEY`), so a file named after it stays in its
    folder; else :class:`InputError` naming it and ``where`` it was found."""
    if not isinstance(key, str) or not SAFE_KEY.match(key):
        raise InputError(f"{where}: sample key {key!r} is not a plain file name (letters, digits, '_', '-'; "
                         "no folders, no dots); the dataset is corrupt or hand-made: regenerate the shard")
    return key


def _decode_checked(members: dict[str, bytes], key: str, path: Path) -> dict[str, Any]:
    try:
        stored = json.loads(members["json"]).get("key") if "json" in members else key
    except (ValueError, AttributeError):
        stored = None
    if stored != key:
        raise InputError(f"shard {path}: member key {key!r} holds a record whose key is {stored!r}; "
                         "the shard is corrupt or hand-made: regenerate it")
    return decode(members)


def iter_shard(path: Path) -> Iterator[dict[str, Any]]:
    """Decoded samples of one shard, grouped by key in file order. Nothing is extracted to disk; a
    member name that is not ``<plain key>.<ext>`` (a folder, ``..``, an absolute path, a link) is an
    :class:`InputError` naming it."""
    for key, members in iter_shard_members(path):
        yield _decode_checked(members, key, path)


def iter_shard_members(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes} in file order) of each sample of one shard, undecoded, with the member-name
    checks of :func:`iter_shard`."""
    current: str | None = None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r") as tar:
            for info in tar:
                if not info.isfile():
                    raise InputError(f"shard {path}: member {info.name!r} is not a regular file (a folder or a link); "
                                     "the shard is corrupt or hand-made: regenerate it")
                key, _, ext = info.name.partition(".")
                check_key(key, f"shard {path} member {info.name!r}")
                if not ext or "/" in ext or "\\" in ext:
                    raise InputError(f"shard {path}: member {info.name!r} is not named <key>.<ext>; "
                                     "the shard is corrupt or hand-made: regenerate it")
                if current is not None and key != current:
                    yield current, members
                    members = {}
                current = key
                members[ext] = tar.extractfile(info).read()
    except tarfile.TarError as exc:
        raise InputError(f"shard {path} is unreadable ({exc}); regenerate it with --resume after deleting it") from exc
    if members:
        yield current, members


def shard_without_timings(tar_bytes: bytes) -> bytes:
    """A shard's members (name + content) with each sample's ``timings``, which vary run to run,
    removed from its JSON. The writer fixes every other header field (mtime 0, mode 0644)."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for info in tar:
            content = tar.extractfile(info).read()
            if info.name.endswith(".json"):
                meta = json.loads(content)
                meta.pop("timings")
                content = json.dumps(meta, sort_keys=True).encode()
            out.append(info.name.encode() + content)
    return b"".join(out)


def dataset_digest(root: str | Path) -> str:
    """SHA-256 of a dataset's shards and manifest parts, per-sample timings excluded: two datasets
    with equal digests hold the same data (e.g. a merged or resumed run and a single unbroken one)."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted((root / "shards").glob("*.tar")):
        h.update(p.name.encode() + shard_without_timings(p.read_bytes()))
    for p in sorted((root / "manifest").glob("*.jsonl")):
        rows = [json.loads(line) for line in p.read_text().splitlines()]
        for r in rows:
            r.pop("timings")
        h.update(p.name.encode() + json.dumps(rows, sort_keys=True).encode())
    return h.hexdigest()
