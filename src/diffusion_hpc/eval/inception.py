"""The FID Inception-v3 feature network (pytorch-fid / TF-FID variant), in plain torch.

No maintained FID library imports here: torchvision does not load beside our torch build, and
clean-fid, pytorch-fid (``inception.py`` subclasses torchvision's blocks) and torch-fidelity (its
package ``__init__`` imports the CLIP / VGG / DINOv2 extractors, which import torchvision; torchmetrics'
FID uses torch-fidelity's extractor) all import torchvision. So this module re-implements the network.

Architecture and state-dict layout match pytorch-fid's ``fid_inception_v3()`` key for key: torchvision's
``Inception3(num_classes=1008, aux_logits=False)`` with ``Mixed_5b/5c/5d`` = ``FIDInceptionA``,
``Mixed_6b..6e`` = ``FIDInceptionC``, ``Mixed_7b`` = ``FIDInceptionE_1``, ``Mixed_7c`` =
``FIDInceptionE_2`` (average pools exclude padding; ``Mixed_7c``'s pool branch is a max pool). Keys:

- ``Conv2d_1a_3x3``, ``Conv2d_2a_3x3``, ``Conv2d_2b_3x3``, ``Conv2d_3b_1x1``, ``Conv2d_4a_3x3``: a
  ``BasicConv2d`` = ``.conv.weight`` (bias-free) + ``.bn.{weight,bias,running_mean,running_var,
  num_batches_tracked}`` (BatchNorm eps 0.001);
- ``Mixed_5b..5d``: ``branch1x1``, ``branch5x5_1``, ``branch5x5_2``, ``branch3x3dbl_1..3``, ``branch_pool``;
- ``Mixed_6a``: ``branch3x3``, ``branch3x3dbl_1..3``;
- ``Mixed_6b..6e``: ``branch1x1``, ``branch7x7_1..3``, ``branch7x7dbl_1..5``, ``branch_pool``;
- ``Mixed_7a``: ``branch3x3_1``, ``branch3x3_2``, ``branch7x7x3_1..4``;
- ``Mixed_7b``, ``Mixed_7c``: ``branch1x1``, ``branch3x3_1``, ``branch3x3_2a``, ``branch3x3_2b``,
  ``branch3x3dbl_1``, ``branch3x3dbl_2``, ``branch3x3dbl_3a``, ``branch3x3dbl_3b``, ``branch_pool``;
- ``fc.weight`` (1008, 2048), ``fc.bias`` (1008) (loaded, unused for pool3 features).

The same names hold torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``, which loads too.

Input: (B, 3, 299, 299) float RGB in [0, 1]; normalised as pytorch-fid does (``2 x - 1``); output:
(B, 2048) pool3 features. Weights come from a local file only (never downloaded):
:func:`find_weights` / :func:`load_inception`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffusion_hpc.errors import InputError, MissingModelError
from diffusion_hpc.runtime.device import Placement, dtype_name, resolve_placement
from diffusion_hpc.runtime.paths import cache_dir

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_NAME
ALT_NAMES = (
    WEIGHTS_NAME,
    "pt_inception-2015-12-05-6726825d.safetensors",
    "weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity's conversion (same key layout)
)
ENV_VAR = "DHPC_FID_WEIGHTS"
FEATURE_DIM = 2048
INPUT_SIZE = 299


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 0.001) + ReLU: (B, C_in, H, W) -> (B, C_out, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's average pool does not count the padded zeros.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """(B, in, 35, 35) -> (B, 224 + pool_features, 35, 35)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """(B, in, 35, 35) -> (B, 480 + in, 17, 17)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class FIDInceptionC(nn.Module):
    """(B, 768, 17, 17) -> (B, 768, 17, 17)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """(B, 768, 17, 17) -> (B, 1280, 8, 8)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class _FIDInceptionE(nn.Module):
    """(B, in, 8, 8) -> (B, 2048, 8, 8); subclasses choose the pool of the pool branch."""

    max_pool = False

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:
            # The FID Inception's last block max-pools (a quirk of the TF graph, kept for comparability).
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool(x)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], 1)


class FIDInceptionE_1(_FIDInceptionE):
    max_pool = False


class FIDInceptionE_2(_FIDInceptionE):
    max_pool = True


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3: (B, 3, 299, 299) float RGB in [0, 1] -> (B, 2048) pool3 features.

    Randomly initialised on construction (PyTorch defaults); load real weights with
    :func:`load_inception`. ``normalize_input`` applies pytorch-fid's ``2 x - 1``.
    """

    def __init__(self, normalize_input: bool = True) -> None:
        super().__init__()
        self.normalize_input = normalize_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE_1(1280)
        self.Mixed_7c = FIDInceptionE_2(2048)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 299, 299) float in [0, 1] -> (B, 2048)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FIDInceptionV3 expects (B, 3, 299, 299) RGB in [0, 1], got {tuple(x.shape)}")
        if self.normalize_input:
            x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)


def init_random_(model: FIDInceptionV3, seed: int = 0) -> FIDInceptionV3:
    """Re-initialise ``model`` in place with variance-preserving random weights (for tests and timing).

    He-normal convolutions, unit BatchNorm, and BatchNorm running statistics of a calibration
    forward pass on uniform noise (128 px) so that activations stay O(1) through all 94 convolutions
    (PyTorch's default init shrinks them towards float32 noise). Deterministic for a given ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.reset_running_stats()
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.01)
                m.bias.zero_()
        # Calibrate the running statistics on noise (cumulative average over one batch, no bias).
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        model.train()
        model(torch.rand(2, 3, 128, 128, generator=gen))  # small input: same statistics, 5x cheaper
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
    return model


def find_weights(weights: str | os.PathLike | None = None) -> Path:
    """The local FID Inception weights file: ``weights`` (flag), else ``$DHPC_FID_WEIGHTS``, else
    ``cache_dir()/fid/<one of ALT_NAMES>``. Raises :class:`MissingModelError` naming what was tried.

    A directory given by flag or env var is searched for the known file names.
    """
    tried: list[str] = []

    def _check(path: Path, origin: str) -> Path | None:
        path = path.expanduser()
        if path.is_dir():
            for name in ALT_NAMES:
                if (path / name).is_file():
                    return path / name
            tried.append(f"{path}/{{{','.join(ALT_NAMES)}}} ({origin})")
            return None
        if path.is_file():
            return path
        tried.append(f"{path} ({origin})")
        return None

    if weights is not None:
        found = _check(Path(weights), "--fid-weights")
        if found is None:
            raise MissingModelError(_missing_message(tried))
        return found
    env = os.environ.get(ENV_VAR)
    if env:
        found = _check(Path(env), f"${ENV_VAR}")
        if found is not None:
            return found
    fid_dir = cache_dir() / "fid"
    for name in ALT_NAMES:
        if (fid_dir / name).is_file():
            return fid_dir / name
    tried.append(f"{fid_dir}/{{{','.join(ALT_NAMES)}}} (cache_dir()/fid)")
    raise MissingModelError(_missing_message(tried))


def _missing_message(tried: list[str]) -> str:
    return (
        f"FID Inception weights {WEIGHTS_NAME} not found; looked in: {'; '.join(tried)}. Fix: download "
        f"{WEIGHTS_URL} (pytorch-fid's release; we never download) and pass --fid-weights FILE, set "
        f"{ENV_VAR}=FILE, or put it in {cache_dir() / 'fid'}/"
    )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors`` file."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
        raise InputError(
            f"FID weights {path} are unreadable ({type(exc).__name__}: {exc}); use pytorch-fid's "
            f"{WEIGHTS_NAME} ({WEIGHTS_URL}) or a safetensors conversion of it"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"FID weights {path} hold a {type(state).__name__}, not a state dict")
    return state


def load_inception(weights: str | os.PathLike | None = None, device="cpu", dtype="float32") -> FIDInceptionV3:
    """The FID Inception-v3 in eval mode, weights from :func:`find_weights` (strict key match), moved
    once to ``device`` / ``dtype`` (names as ``--device`` / ``--dtype``, torch objects, or a
    :class:`~diffusion_hpc.runtime.device.Placement`; ``auto``: the first CUDA device, float32).

    Missing ``num_batches_tracked`` buffers (files saved by old torch) are tolerated; any other
    missing or unexpected key raises :class:`InputError` naming the first few.
    """
    placement = device if isinstance(device, Placement) else resolve_placement(
        str(device), dtype if isinstance(dtype, str) else dtype_name(dtype), diffusion=False)
    path = find_weights(weights)
    state = load_state_dict_file(path)
    model = FIDInceptionV3()
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shape_bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape_bad:
        raise InputError(
            f"FID weights {path} do not match the FID Inception-v3 layout (missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}, wrong shape {shape_bad[:4]}; {len(missing)}/{len(unexpected)}/{len(shape_bad)} "
            f"in all); use pytorch-fid's {WEIGHTS_NAME} ({WEIGHTS_URL})"
        )
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    return model.eval().to(device=placement.device, dtype=placement.dtype)


def save_state_dict(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s state dict to ``path`` (``.safetensors`` or ``.pth``); for tests and conversions."""
    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
