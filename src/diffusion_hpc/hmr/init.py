"""Regressors from checkpoint specs: ``spin:PATH``, ``hmr2:PATH``, ``dhpc:RUN`` (or a bare ``RUN``).

One entry point for every command that runs or fine-tunes a regressor (``dhpc evaluate
--checkpoint``, ``dhpc train --init``, ``dhpc generate --estimator``)::

    from diffusion_hpc.hmr.init import load_regressor_spec

    loaded = load_regressor_spec("hmr2:epoch=35-step=1000000.ckpt", device="cuda", dtype=torch.float32)
    crops = ...  # (B, 3, loaded.crop_size, loaded.crop_size) RGB in [0, 1]
    out = loaded.network(crops)  # rotmat, global_orient, body_pose, betas/phenotype, shape, cam, cam_t
    # with the body model: diffusion_hpc.hmr.model.regress(loaded.network, body, crops)

:class:`LoadedRegressor` fields (stable API):

- ``network``: an ``nn.Module`` in eval mode on ``device`` / ``dtype``; ``forward(images)`` takes
  (B, 3, S, S) RGB crops in [0, 1] (it applies its own normalisation) and returns ``rotmat``
  (B, J+1, 3, 3), axis-angle ``global_orient`` (B, 3) and ``body_pose`` (B, J, 3) in the OpenCV
  camera frame, ``shape`` (B, D) (also under the body's key: ``betas`` / ``phenotype``), the crop
  camera ``cam`` (B, 3) = (s, tx, ty) and ``cam_t`` (B, 3) = (tx, ty, normalised_focal / s).
  It has ``.spec`` (:class:`~diffusion_hpc.hmr.model.BodySpec`), ``.normalised_focal`` and
  ``.architecture``.
- ``kind``: ``"spin"``, ``"hmr2"`` or ``"dhpc"`` (how the spec was read); ``architecture``: the
  network's layout (``"spin"``, ``"hmr2"`` or ``"dhpc"``; a run fine-tuned from SPIN is ``dhpc`` /
  ``spin``).
- ``body_model``: ``"smpl"`` (SPIN, HMR 2.0), or the run's (``"anny"``, ``"smpl"``, ``"smplx"``).
- ``crop_size``: the square crop side the network expects: SPIN 224, HMR 2.0 256 (``MODEL.IMAGE_SIZE``),
  a run of ours its ``train.yaml`` ``crop_size`` (224 when unknown).
- ``normalised_focal``: ``2 f / S`` of the network's crop camera (SPIN 2*5000/224, HMR 2.0
  2*5000/256): a crop pixel focal of ``normalised_focal * crop_px / 2`` for a crop of ``crop_px``.
- ``pixel_mean`` / ``pixel_std``: the normalisation the network applies inside (ImageNet's for all).
- ``source``: the spec as given.

Spec forms (:func:`parse_spec`): ``spin:FILE`` SPIN's ``model_checkpoint.pt``
(:mod:`.spin`); ``hmr2:FILE`` a 4D-Humans checkpoint (:mod:`.hmr2`); ``dhpc:RUN`` or ``RUN`` a
``dhpc train`` run folder, ``RUN/best`` or its ``regressor.safetensors`` (``regressor.json`` next to
it names the architecture). ``imagenet:DIR`` (a backbone folder) only starts a training
(:func:`diffusion_hpc.hmr.train.train`), it is not a regressor. Every file is read with
``weights_only=True`` / safetensors and loaded strictly: a wrong file is one
:class:`~diffusion_hpc.errors.InputError` naming it and its mismatched keys / shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from diffusion_hpc.config.train import TRAIN_CONFIG_FILE, TrainConfig
from diffusion_hpc.errors import InputError, MissingModelError
from diffusion_hpc.hmr.hmr2 import HMR2, HMR2Config, load_hmr2
from diffusion_hpc.hmr.model import (
    EXPORT_CONFIG,
    EXPORT_WEIGHTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALISED_FOCAL,
    load_state_strict,
    regressor_from_config,
)
from diffusion_hpc.hmr.spin import SPINHMR, load_spin

#: spec prefixes and what they name
SPEC_KINDS = {
    "spin": "SPIN's model_checkpoint.pt",
    "hmr2": "a 4D-Humans HMR 2.0 checkpoint (.ckpt)",
    "dhpc": "a dhpc train run folder, RUN/best or its regressor.safetensors",
    "imagenet": "a transformers save_pretrained backbone folder (training only)",
}
SPEC_FORMS = "spin:PATH, hmr2:PATH, dhpc:RUN (or a bare run folder)"


@dataclass
class LoadedRegressor:
    """A regressor network and what it needs to run (module docstring)."""

    network: nn.Module
    kind: str
    architecture: str
    body_model: str
    crop_size: int
    normalised_focal: float
    source: str
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def describe(self) -> dict[str, Any]:
        """JSON-able record of what was loaded (for run records)."""
        return {"source": self.source, "kind": self.kind, "architecture": self.architecture, "body_model": self.body_model,
                "crop_size": self.crop_size, "normalised_focal": self.normalised_focal}


def parse_spec(spec: str | Path, *, allow: tuple[str, ...] = ("spin", "hmr2", "dhpc"), option: str = "--checkpoint") -> tuple[str, Path]:
    """(kind, path) of a spec; a bare path is ``dhpc``. ``option`` names the flag in errors.

    Raises:
        InputError: an unknown or disallowed prefix, or a path that does not exist.
    """
    text = str(spec)
    kind, sep, rest = text.partition(":")
    if sep and kind in SPEC_KINDS:
        if kind not in allow:
            raise InputError(f"{option} {text}: {kind}: is {SPEC_KINDS[kind]}, not usable here; pass one of "
                             f"{', '.join(k + ':PATH' for k in allow)}")
        if not rest:
            raise InputError(f"{option} {text}: give the path after '{kind}:' ({SPEC_KINDS[kind]})")
        path = Path(rest).expanduser()
    else:
        kind, path = "dhpc", Path(text).expanduser()
    if not path.exists():
        raise MissingModelError(f"{option} {text}: {path} does not exist ({SPEC_KINDS[kind]}); pass {SPEC_FORMS}")
    return kind, path


def _export_files(path: Path) -> tuple[Path, Path]:
    root = path.parent if path.is_file() else path
    return root / EXPORT_CONFIG, (path if path.is_file() else root / EXPORT_WEIGHTS)


def network_from_config(config: Mapping[str, Any]) -> nn.Module:
    """An untrained network of the architecture an export's ``regressor.json`` describes."""

    arch = config.get("architecture", "dhpc")
    if arch == "dhpc":
        return regressor_from_config(config)
    if arch == "spin":
        return SPINHMR(layers=tuple(config["layers"]), num_iterations=int(config["num_iterations"]))
    if arch == "hmr2":
        return HMR2(HMR2Config(**config["hmr2"]))
    raise InputError(f"unknown regressor architecture {arch!r} in {EXPORT_CONFIG} (this version reads dhpc, spin, hmr2)")


def load_exported(path: str | Path) -> nn.Module:
    """A network exported by ``dhpc train`` (folder with ``regressor.json`` + ``regressor.safetensors``,
    or the weights file), of any architecture (ours, SPIN's, HMR 2.0's), weights loaded strictly."""
    from safetensors.torch import load_file

    cfg, weights = _export_files(Path(path))
    if not (cfg.is_file() and weights.is_file()):
        raise MissingModelError(f"{path} holds no exported regressor ({EXPORT_CONFIG} + {EXPORT_WEIGHTS}); pass a dhpc "
                                f"train run folder, RUN/best, or {SPEC_FORMS}")
    network = network_from_config(json.loads(cfg.read_text()))
    load_state_strict(network, load_file(str(weights)), source=str(weights))
    return network


def run_crop_size(path: str | Path) -> int | None:
    """The ``crop_size`` of the ``train.yaml`` of the run an export belongs to (RUN, RUN/best), or None."""

    root = Path(path)
    root = root.parent if root.is_file() else root
    for folder in (root, root.parent):
        if (folder / TRAIN_CONFIG_FILE).is_file():
            try:
                return TrainConfig.from_yaml(folder / TRAIN_CONFIG_FILE).crop_size
            except Exception:  # noqa: BLE001 - an unreadable record only loses the default crop size
                return None
    return None


def load_network(kind: str, path: Path, *, mean_params: str | Path | None = None) -> nn.Module:
    """The network a parsed spec names (CPU, float32, eval mode)."""
    if kind == "spin":
        return load_spin(path, mean_params)
    if kind == "hmr2":
        return load_hmr2(path)
    return load_exported(path).eval()


def load_regressor_spec(spec: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        mean_params: str | Path | None = None, option: str = "--checkpoint") -> LoadedRegressor:
    """The regressor a spec names, on ``device`` in ``dtype`` (default CPU float32), eval mode.

    Args:
        spec: ``spin:PATH``, ``hmr2:PATH``, ``dhpc:RUN`` or a bare run path (module docstring).
        device, dtype: where the network runs.
        mean_params: SPIN's ``smpl_mean_params.npz``, only for a SPIN checkpoint without its mean buffers.
        option: the flag the spec came from, named in errors.
    Raises:
        MissingModelError: a file that does not exist. InputError: a file that is not such a network.
    """
    kind, path = parse_spec(spec, option=option)
    network = load_network(kind, path, mean_params=mean_params)
    crop = getattr(network, "crop_size", None)
    if kind == "dhpc" and network.architecture == "dhpc":
        crop = run_crop_size(path) or crop
    network = network.to(device=device or "cpu", dtype=dtype or torch.float32).eval()
    return LoadedRegressor(
        network=network, kind=kind, architecture=network.architecture, body_model=network.spec.name,
        crop_size=int(crop or 224), normalised_focal=float(getattr(network, "normalised_focal", NORMALISED_FOCAL)),
        source=str(spec),
    )  # fmt: skip
