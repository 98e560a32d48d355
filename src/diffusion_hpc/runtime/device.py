"""Device and precision choice: ``--device`` / ``--dtype`` names resolved to torch objects.

Pure functions, resolved once per command before any model loads; every model of the command is
then moved to the resulting :class:`Placement` once. Nothing falls back quietly: a device that is
not there, or a precision the device cannot run, is a :class:`~diffusion_hpc.errors.ConfigError`
naming the value and the fix.

- ``device``: ``auto`` (the first CUDA device if one is visible, else the CPU; MPS only when asked
  for), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
- ``dtype``: ``auto`` (float16 for diffusion models on CUDA, float32 everywhere else), ``float32``,
  ``float16`` (CUDA / MPS only), ``bfloat16``.

Importing this module does not import torch (the config layer validates the names with
:data:`DEVICE_PATTERN` and :data:`DTYPES` alone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from diffusion_hpc.errors import ConfigError

#: the accepted ``--device`` values (checked without torch)
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
#: the accepted ``--dtype`` values
DTYPES = ("auto", "float32", "float16", "bfloat16")


def check_device_name(value: str) -> str:
    """A config validator: ``value`` is a ``--device`` name (:data:`DEVICE_PATTERN`); no torch import.

    Raises:
        ValueError: naming the value and the accepted ones.
    """
    if not re.match(DEVICE_PATTERN, str(value).strip().lower()):
        raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N (N: the GPU's index) or mps")
    return str(value).strip().lower()


def _torch():
    import torch

    return torch


def _cuda_missing(torch) -> str:
    built = torch.version.cuda
    why = f"torch {torch.__version__} built without CUDA" if not built else f"torch {torch.__version__} (CUDA {built}) sees no GPU"
    return f"CUDA is not available ({why})"


def resolve_device(spec: str) -> Any:
    """The ``torch.device`` of a ``--device`` value.

    Raises:
        ConfigError: an unknown value, or a device that is not available here (no silent CPU run).
    """
    torch = _torch()
    text = str(spec).strip().lower()
    if not re.match(DEVICE_PATTERN, text):
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps")
    if text == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"--device mps: MPS is not available (torch {torch.__version__} on this machine has no "
                              "Apple GPU backend); pass --device cpu")  # fmt: skip
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {text}: {_cuda_missing(torch)}; pass --device cpu")
    device = torch.device(text)
    index = 0 if device.index is None else device.index
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"--device {text}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1}); "
                          "pass one of them or --device cuda")  # fmt: skip
    return torch.device("cuda", index)


def resolve_dtype(spec: str, device: Any, diffusion: bool = True) -> Any:
    """The ``torch.dtype`` of a ``--dtype`` value on ``device``.

    Args:
        diffusion: ``auto`` picks float16 for diffusion models on CUDA; other models (body fits,
            regressors, Inception) get float32 from ``auto``.

    Raises:
        ConfigError: an unknown value, or float16 on the CPU (slow and unsupported by many CPU
            kernels: bfloat16 or float32 are the CPU's half and full precision).
    """
    torch = _torch()
    text = str(spec).strip().lower()
    if text not in DTYPES:
        raise ConfigError(f"unknown dtype {spec!r}; use {', '.join(DTYPES)}")
    kind = torch.device(device).type
    if text == "auto":
        return torch.float16 if (diffusion and kind == "cuda") else torch.float32
    if text == "float16" and kind == "cpu":
        raise ConfigError("--dtype float16 on --device cpu: CPU kernels do not run float16; pass --dtype bfloat16 "
                          "(or float32) on the CPU, or --device cuda")  # fmt: skip
    return getattr(torch, text)


def dtype_name(dtype: Any) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class Placement:
    """Where a command's models run: a ``torch.device`` and a ``torch.dtype``."""

    device: Any
    dtype: Any

    @property
    def names(self) -> dict[str, str]:
        """``{"device": "cuda:0", "dtype": "float16"}``: what ran, for manifests and reports."""
        return {"device": str(self.device), "dtype": dtype_name(self.dtype)}


#: ``--offload`` values: weights on the device (none), or on the CPU between uses (CUDA only)
OFFLOADS = ("none", "model", "sequential")


def check_offload(offload: str, device: Any) -> None:
    """``--offload`` fits ``device``: CPU offload moves weights between the CPU and a CUDA device.

    Raises:
        ConfigError: an unknown value, or offload on a device that is not CUDA.
    """
    if offload not in OFFLOADS:
        raise ConfigError(f"unknown offload {offload!r}; use {', '.join(OFFLOADS)}")
    if offload != "none" and _torch().device(device).type != "cuda":
        raise ConfigError(f"--offload {offload} keeps weights on the CPU between uses of a GPU, but the device is "
                          f"{device}; pass --offload none (or --device cuda)")  # fmt: skip


def resolve_placement(device: str = "auto", dtype: str = "auto", diffusion: bool = True) -> Placement:
    """:func:`resolve_device` and :func:`resolve_dtype` together."""
    dev = resolve_device(device)
    return Placement(dev, resolve_dtype(dtype, dev, diffusion=diffusion))
