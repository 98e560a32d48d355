"""Which weights ran: a short, path-free identity of a backbone, a ControlNet and LoRA weights.

A dataset records the identity of the models that made it (manifest rows and ``run.json``), never
a machine path:

- ``spec``: a hub id as given, or, for a local folder or file, its name only;
- ``commit``: the Hugging Face snapshot commit when the folder came from the HF cache
  (``.../models--owner--name/snapshots/<commit>``), else None;
- ``fingerprint``: 16 hex digits of a SHA-256 over the folder's files, in path order: the content
  of every small text file (``model_index.json``, the ``config.json`` / scheduler / tokenizer
  files, a ``dhpc_backbone.json`` bundle) and, for each weight file, the content hash the HF cache
  names its blob by (symlinked snapshots) or else its size. Same folder, same fingerprint, on any
  machine; a retrained or swapped weight file changes it (the HF blob hash always, a local file
  when its size or any config changes). Reading gigabytes of weights at every run is avoided.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Optional

from diffusion_hpc.runtime.weights import BackboneSet, looks_like_hub_id

#: files hashed by content (configs, scheduler, tokenizer, bundle description)
TEXT_SUFFIXES = (".json", ".txt", ".yaml", ".yml", ".model")
#: at most this many bytes of a text file are hashed (tokenizer vocabularies are ~1-3 MB)
TEXT_LIMIT = 8 << 20
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _file_token(path: Path) -> str:
    """What identifies one file: its text's hash, its HF blob name, or its size."""
    if path.suffix in TEXT_SUFFIXES and path.stat().st_size <= TEXT_LIMIT:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_symlink():
        blob = Path(os.readlink(path)).name
        if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", blob):  # the HF cache names blobs by git / LFS hash
            return "blob:" + blob
    return f"size:{path.stat().st_size}"


def fingerprint(path: str | os.PathLike) -> str:
    """16 hex digits identifying a model folder or file (see the module docstring)."""
    root = Path(path)
    h = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for f in files:
        rel = f.name if f == root else f.relative_to(root).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts):  # .cache / .gitattributes: not the model
            continue
        h.update(f"{rel}\0{_file_token(f)}\n".encode())
    return h.hexdigest()[:16]


def model_identity(spec: str, resolved: str | os.PathLike) -> dict:
    """``{"spec", "commit", "fingerprint"}`` of a model given as ``spec`` and found at ``resolved``."""
    folder = Path(resolved)
    commit = folder.name if folder.parent.name == "snapshots" and _COMMIT.match(folder.name) else None
    shown = spec if looks_like_hub_id(spec) else folder.name
    return {"spec": shown, "commit": commit, "fingerprint": fingerprint(folder)}


def backbone_identity(spec: str, backbones: BackboneSet, controlnet: Optional[str] = None,
                      lora: Optional[Path] = None, lora_scale: float = 1.0) -> dict:  # fmt: skip
    """The identity of a run's diffusion weights: the backbone, plus ``controlnet`` (the
    ``--controlnet`` model, when one overrides the bundle's) and ``lora`` (the resolved LoRA file,
    see :func:`~diffusion_hpc.generate.diffusion.lora_file`) when given."""
    out = model_identity(spec, backbones.root)
    if controlnet is not None and backbones.controlnet_depth is not None:
        out["controlnet"] = model_identity(controlnet, backbones.controlnet_depth)
    if lora is not None:
        out["lora"] = {"file": Path(lora).name, "fingerprint": fingerprint(lora), "scale": float(lora_scale)}
    return out
