"""SPIN's network layout and checkpoints (Kolotouros et al. 2019, ``model_checkpoint.pt``).

:class:`SPINHMR` re-creates SPIN's ``models/hmr.py`` network in plain torch (torchvision does not
import here), with the same module and parameter names, so SPIN's state dict loads strictly:

- torchvision-style ResNet-50: ``conv1`` (7x7/2), ``bn1``, max-pool, ``layer1..layer4`` of
  ``Bottleneck`` blocks (``conv1/bn1`` 1x1, ``conv2/bn2`` 3x3 with the stride, ``conv3/bn3`` 1x1 x4,
  ``downsample.0/1`` on the first block of a stage), [3, 4, 6, 3] blocks, average pool -> 2048.
  (SPIN uses ``AvgPool2d(7)`` for 224-px crops; this uses adaptive average pooling, identical at
  224 px and usable for other crop sizes.)
- IEF head: ``fc1`` (2048 + 24*6 + 13 -> 1024), ``drop1``, ``fc2`` (1024 -> 1024), ``drop2``,
  ``decpose`` (-> 144), ``decshape`` (-> 10), ``deccam`` (-> 3); note SPIN has no non-linearity
  between fc1 and fc2 (kept as is). The state starts at the mean parameters (buffers
  ``init_pose`` (1, 144), ``init_shape`` (1, 10), ``init_cam`` (1, 3), from
  ``smpl_mean_params.npz``: ``pose``, ``shape``, ``cam``) and is refined 3 times,
  ``x <- x + dec(fc2(fc1([features, x])))``.
- 6D -> rotation matrix as SPIN's ``rot6d_to_rotmat``: each 6-vector viewed as a (3, 2) row-major
  matrix whose columns a1, a2 are Gram-Schmidt-orthonormalised to b1, b2; b3 = b1 x b2; R = [b1 b2 b3].

Input: ImageNet-normalised RGB crops. Outputs: SMPL rotations in SPIN's camera frame, which is the
OpenCV frame used here (x right, y down, z forward: SPIN projects ``K (X + t)`` with a positive
focal onto y-down image rows), betas (10,), and SPIN's weak-perspective camera ``(s, tx, ty)`` with
``t = (tx, ty, 2 * 5000 / (224 s))``: the same convention as :mod:`diffusion_hpc.hmr.model`, so the
crop -> full-image camera conversion of :mod:`diffusion_hpc.estimate.hmr_adapter` applies unchanged.

Checkpoint: ``torch.load(path, weights_only=True)``; a dict with the state dict under ``"model"``
(SPIN's trainer) or a bare state dict; a ``module.`` prefix (DataParallel) is stripped. The mean
buffers come from the checkpoint when it has them, else from ``mean_params`` (SPIN's
``data/smpl_mean_params.npz``; nothing is downloaded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffusion_hpc.errors import InputError, MissingModelError
from diffusion_hpc.geometry.camera import SPIN_CROP
from diffusion_hpc.geometry.rotations import rot6d_to_rotmat
from diffusion_hpc.hmr.model import (
    BODY_SPECS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALISED_FOCAL,
    load_state_strict,
    weak_perspective_to_translation,
)

NPOSE = 24 * 6
MEAN_KEYS = ("init_pose", "init_shape", "init_cam")


class Bottleneck(nn.Module):
    """torchvision / SPIN ResNet bottleneck block (parameter names as theirs)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class SPINHMR(nn.Module):
    """SPIN's ``HMR`` (ResNet-50 + IEF head) with its state-dict layout (module docstring).

    Args:
        mean_params: ``smpl_mean_params.npz`` path (``pose`` (144,), ``shape`` (10,), ``cam`` (3,)),
            or None (zero buffers, to be filled from a checkpoint).
        layers: blocks per stage ([3, 4, 6, 3] = ResNet-50).
    """

    architecture = "spin"
    spec = BODY_SPECS["smpl"]
    #: SPIN's crop side and normalised focal (2 * 5000 / 224); other crop sizes work (adaptive pooling)
    crop_size = SPIN_CROP
    normalised_focal = NORMALISED_FOCAL

    def __init__(self, mean_params: str | Path | None = None, layers=(3, 4, 6, 3), num_iterations: int = 3) -> None:
        super().__init__()
        self.num_iterations = num_iterations
        self.layers = tuple(int(n) for n in layers)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(512 * Bottleneck.expansion + NPOSE + 13, 1024)
        self.drop1 = nn.Dropout()
        self.fc2 = nn.Linear(1024, 1024)
        self.drop2 = nn.Dropout()
        self.decpose = nn.Linear(1024, NPOSE)
        self.decshape = nn.Linear(1024, 10)
        self.deccam = nn.Linear(1024, 3)
        for layer in (self.decpose, self.decshape, self.deccam):
            nn.init.xavier_uniform_(layer.weight, gain=0.01)
        pose, shape, cam = np.zeros(NPOSE, np.float32), np.zeros(10, np.float32), np.zeros(3, np.float32)
        if mean_params is not None:
            pose, shape, cam = load_mean_params(mean_params)
        self.register_buffer("init_pose", torch.as_tensor(pose, dtype=torch.float32)[None])
        self.register_buffer("init_shape", torch.as_tensor(shape, dtype=torch.float32)[None])
        self.register_buffer("init_cam", torch.as_tensor(cam, dtype=torch.float32)[None])
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def config(self) -> dict:
        """JSON-able description that rebuilds this architecture (:func:`diffusion_hpc.hmr.init.load_exported`)."""
        return {"architecture": self.architecture, "layers": list(self.layers), "num_iterations": self.num_iterations}

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, images: torch.Tensor, normalise: bool = True) -> dict[str, torch.Tensor]:
        """(B, 3, S, S) RGB in [0, 1] (``normalise``) -> ``rotmat`` (B, 24, 3, 3), ``betas`` (B, 10),
        ``cam`` (B, 3) (s, tx, ty), plus axis-angle ``global_orient`` (B, 3), ``body_pose`` (B, 23, 3),
        ``shape`` (= betas) and ``cam_t`` (B, 3)."""
        import roma


        x = (images - self.pixel_mean) / self.pixel_std if normalise else images
        batch = x.shape[0]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        xf = self.avgpool(x).flatten(1)
        pose, shape, cam = self.init_pose.expand(batch, -1), self.init_shape.expand(batch, -1), self.init_cam.expand(batch, -1)
        for _ in range(self.num_iterations):
            xc = self.drop2(self.fc2(self.drop1(self.fc1(torch.cat([xf, pose, shape, cam], 1)))))
            pose = self.decpose(xc) + pose
            shape = self.decshape(xc) + shape
            cam = self.deccam(xc) + cam
        rotmat = rot6d_to_rotmat(pose.reshape(batch, 24, 6))
        rotvec = roma.rotmat_to_rotvec(rotmat)
        return {"rotmat": rotmat, "betas": shape, "shape": shape, "cam": cam, "global_orient": rotvec[:, 0],
                "body_pose": rotvec[:, 1:], "cam_t": weak_perspective_to_translation(cam, NORMALISED_FOCAL)}


def load_mean_params(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pose (144,), shape (10,), cam (3,)) from SPIN's ``smpl_mean_params.npz``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingModelError(f"SMPL mean-parameter file {path} does not exist (SPIN's data/smpl_mean_params.npz)")
    try:
        with np.load(path, allow_pickle=False) as data:
            pose, shape, cam = (np.asarray(data[k], np.float32).reshape(-1) for k in ("pose", "shape", "cam"))
    except (KeyError, ValueError, OSError) as exc:
        raise InputError(f"{path} is not an SMPL mean-parameter file with 'pose', 'shape', 'cam': {exc}") from None
    if pose.shape != (NPOSE,) or shape.shape != (10,) or cam.shape != (3,):
        raise InputError(f"{path}: expected pose (144,), shape (10,), cam (3,), got {pose.shape}, {shape.shape}, {cam.shape}")
    return pose, shape, cam


def load_spin(checkpoint: str | Path, mean_params: str | Path | None = None) -> SPINHMR:
    """A :class:`SPINHMR` with SPIN checkpoint weights (strict; see the module docstring)."""

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise MissingModelError(f"SPIN checkpoint {path} does not exist (SPIN's model_checkpoint.pt)")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise InputError(f"cannot read SPIN checkpoint {path}: {exc}") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise InputError(f"{path} holds no state dict (expected {{'model': state_dict, ...}})")
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    model = SPINHMR(mean_params)
    has_means = all(k in state for k in MEAN_KEYS)
    if not has_means:  # the network's own (zero or mean_params) buffers, checked after the other keys
        own = model.state_dict()
        state = {**{k: own[k] for k in MEAN_KEYS}, **{k: v for k, v in state.items() if k not in MEAN_KEYS}}
    load_state_strict(model, state, source=f"SPIN checkpoint {path}")
    if not has_means and mean_params is None:
        raise MissingModelError(f"{path} has no mean parameters ({', '.join(MEAN_KEYS)}); pass mean_params= "
                                "(SPIN's smpl_mean_params.npz)")
    return model.eval()
