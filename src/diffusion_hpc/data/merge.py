"""Parts of a run (job arrays without Ray) and their merge into one dataset.

``dhpc generate --part I/N`` makes only the shards s with ``s % N == I-1`` (round robin: every
part gets full shards from the whole index range, and the short last shard falls to one part)
into its own folder; each shard is exactly the shard the single run makes (samples depend only
on (run seed, sample index), batches keep their composition). ``dhpc merge PART... --out DIR``
joins the parts into the dataset of the single run: the same shard files, manifest parts,
consolidated ``manifest.jsonl`` and ``config.yaml``.

Merge refuses, with one line each: parts of different configs (execution fields aside), a shard
present in two parts, and any shard of the run missing from all parts (it names them and the
part that makes them; rerun that part, with ``--resume`` if it was killed). There is no partial
merge: a merged folder is always the whole run. The output is built in a temporary folder beside
``--out`` (shards hard-linked, or copied across file systems) and renamed into place at the end.
The merge holds the lock of ``--out`` (:mod:`diffusion_hpc.data.lock`) from its checks to the
rename, so it never races a ``dhpc generate`` or another merge into the same folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from diffusion_hpc.config.generate import EXECUTION_FIELDS, GenerateConfig
from diffusion_hpc.data.inspect import write_preview
from diffusion_hpc.data.lock import LOCK_NAME, OutputLock, is_lock_file
from diffusion_hpc.data.reader import Dataset, manifest_totals
from diffusion_hpc.data.seeds import shard_name, shard_ranges
from diffusion_hpc.data.writer import DatasetWriter, storage_errors
from diffusion_hpc.errors import DhpcError

log = logging.getLogger(__name__)

SHARD_FILE = re.compile(r"^shard-(\d{6,})\.tar$")


def part_shards(num_shards: int, part: tuple[int, int] | None) -> list[int]:
    """The shards of part ``(I, N)`` of a run of ``num_shards`` shards: s with s % N == I-1 (all for None)."""
    if part is None:
        return list(range(num_shards))
    i, n = part
    return list(range(i - 1, num_shards, n))


@dataclass
class MergeResult:
    """What :func:`merge` wrote."""

    out: Path
    shards: int
    accepted: int
    failed: int
    linked: int  # files hard-linked from the parts
    copied: int  # files copied (parts on another file system)


def _committed(root: Path) -> list[int]:
    """Shard numbers committed in a dataset folder (tar present; its manifest part is written first)."""
    out = []
    for p in sorted((root / "shards").glob("shard-*.tar")):
        m = SHARD_FILE.match(p.name)
        if m:
            out.append(int(m.group(1)))
    return out


def _content(config: dict) -> dict:
    """A stored config without what may differ between parts of one run (part, execution fields)."""
    return {k: v for k, v in config.items() if k != "part" and k not in EXECUTION_FIELDS and v is not None}


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_differences(va, vb, prefix + k + "."))
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} vs {vb!r}")
    return out


def merge(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> MergeResult:
    """Merge the part folders ``parts`` (``dhpc generate --part I/N``) into one dataset at ``out``."""
    roots = [Path(p) for p in parts]
    if not roots:
        raise DhpcError("merge: no part folders given; pass the folders of dhpc generate --part I/N")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DhpcError(f"merge: --out {out} already exists and is not an empty folder; choose a new --out")
    with OutputLock(out, what="merge: --out"):
        return _merge(roots, out)


def _merge(roots: list[Path], out: Path) -> MergeResult:
    """The merge, under the lock of ``out``."""
    if any(not is_lock_file(p.name) for p in out.iterdir()):
        raise DhpcError(f"merge: --out {out} already exists and is not an empty folder; choose a new --out")
    configs = []
    for root in roots:
        Dataset(root)  # a folder that is no dataset fails here, naming it
        configs.append(yaml.safe_load((root / "config.yaml").read_text()) or {})
    first = _content(configs[0])
    for root, config in zip(roots[1:], configs[1:]):
        diff = _differences(first, _content(config))
        if diff:
            raise DhpcError(f"merge: {root} was made with another config than {roots[0]} ({'; '.join(diff[:4])}); "
                            "merge only the parts of one run (same options and seed)")
    config = GenerateConfig.model_validate({**configs[0], "part": None})
    ranges = shard_ranges(config.n, config.shard_size)

    owner: dict[int, Path] = {}
    for root in roots:
        for s in _committed(root):
            if s in owner:
                raise DhpcError(f"merge: {shard_name(s)} is in both {owner[s]} and {root}; each shard must come "
                                "from one part (was a folder given twice, or a --part run twice?)")
            if s >= len(ranges):
                raise DhpcError(f"merge: {root} holds {shard_name(s)}, beyond the run's {len(ranges)} shards")
            if not (root / "manifest" / f"{shard_name(s)}.jsonl").is_file():
                raise DhpcError(f"merge: {root} has {shard_name(s)}.tar but not its manifest part; "
                                f"delete the tar and rerun that part with --resume")
            owner[s] = root
    missing = [s for s in range(len(ranges)) if s not in owner]
    if missing:
        known = {c["part"].split("/")[1] for c in configs if c.get("part")}
        which = ""
        if len(known) == 1:  # the parts of one N: name the parts that make the missing shards
            n_parts = int(known.pop())
            wanted = sorted({s % n_parts for s in missing})
            which = f" (made by --part {', '.join(f'{i + 1}/{n_parts}' for i in wanted)})"
        shown = ", ".join(shard_name(s) for s in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise DhpcError(f"merge: {len(missing)} of the run's {len(ranges)} shards are in no part: {shown}{which}; "
                        "run the missing parts (with --resume if killed) and merge again")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.merge-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    linked = copied = 0
    try:
        writer = DatasetWriter(tmp, config.dataset_yaml())
        writer.label, writer.retry = f"merge: --out {out}", "then merge again: nothing was merged"
        writer.open()
        for s in range(len(ranges)):
            for src, dst in ((owner[s] / "manifest" / f"{shard_name(s)}.jsonl", writer.manifest_path(s)),
                             (owner[s] / "shards" / f"{shard_name(s)}.tar", writer.shard_path(s))):
                try:
                    os.link(src, dst)
                    linked += 1
                except OSError:  # another file system (or no hard links there): copy
                    with storage_errors(writer.label, f"{dst.name} (copied from {src.parent.parent})", writer.retry):
                        shutil.copyfile(src, dst)
                    copied += 1
        totals = manifest_totals(Dataset(tmp).iter_manifest())
        runs = [json.loads((r / "run.json").read_text()) if (r / "run.json").is_file() else {} for r in roots]
        kept = next((r for r in runs if r.get("generator")), {})
        writer.finalize(len(ranges), {
            **totals, "n": config.n, "mode": config.mode,
            "part": None, "shards": len(ranges), "shards_of_run": len(ranges),
            "merged_from": [{"folder": r.name, "part": c.get("part"), "shards": sum(1 for o in owner.values() if o == r)}
                            for r, c in zip(roots, configs)],
            "generator": config.generator, "sampler": kept.get("sampler"), "backbone": kept.get("backbone"),
        })  # fmt: skip
        try:
            write_preview(tmp)
        except Exception as exc:  # pragma: no cover - the preview is a convenience, as in generate
            log.warning("could not write the preview: %s", exc)
        # the lock moves with the folder: tmp gets it (a hard link), out is emptied and replaced
        os.link(out / LOCK_NAME, tmp / LOCK_NAME)
        os.unlink(out / LOCK_NAME)
        out.rmdir()  # empty (checked above; we hold its lock)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MergeResult(out, len(ranges), totals["accepted"], totals["failed"], linked, copied)
