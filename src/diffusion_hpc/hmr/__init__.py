"""HMR regressor, losses, data and training (SPIN-style downstream fine-tuning, DESIGN §2).

Kept apart as in 4D-Humans: :mod:`.model` (the network: backbone + iterative error-feedback
head), :mod:`.losses` (pure loss functions and their weights), :mod:`.data` (crops, augmentation,
streaming / map-style datasets, the real/synthetic mixer), :mod:`.train` (the Lightning glue,
checkpoints, ``train()``) and :mod:`.validation` (held-out metrics during training, ``best/``).

Importing this package is cheap: nothing heavy (torch, transformers, Lightning) loads until a
name is used.
"""

from __future__ import annotations

_EXPORTS = {
    "HMRRegressor": "model",
    "BodySpec": "model",
    "body_spec": "model",
    "load_regressor": "model",
    "LossWeights": "losses",
    "hmr_losses": "losses",
    "crop_sample": "data",
    "AugmentConfig": "data",
    "SyntheticShards": "data",
    "RealDataset": "data",
    "MixedStream": "data",
    "HMRModule": "train",
    "train": "train",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        module = importlib.import_module(f"diffusion_hpc.hmr.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
