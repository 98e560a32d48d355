"""A learned 3D lifter for MediaPipe's landmarks: better hip-centred 3D joints for the fit to follow.

The fit's error budget (``scripts/bench_estimate.py --budget``) is set by MediaPipe's 3D world
landmarks: with the true 3D joints in their place, limb PA-MPJPE drops by a quarter. The lifter is
a small MLP (:class:`LandmarkLifter`, 3 x 384) trained on our own renders (``scripts/train_lifter.py``:
the 575 built-in CMU poses that the bench does not evaluate on and 1725 variants of them from the
pose prior's augmentation, harder poses as modes T and R draw them, random Anny shapes, cameras and
views over procedural and photo backgrounds, MediaPipe run on each render; 18,078 renders with a
detection, mirrored copies doubling them). Its input is MediaPipe's output
for one person (:func:`lifter_features`: the 33 image landmarks relative to the hips and scaled by
the seen landmarks' extent, the 33 world landmarks, the 33 visibilities); its outputs are

- the COCO-17 joints, hip-centred, metres, camera-aligned axes (x right, y down, z away from the
  camera), as a correction of the world landmarks' COCO-17 joints (the MLP predicts the residual),
  with MediaPipe's own left/right labels (it corrects geometry, never the labels the 2D keypoints
  carry, so the fit's ``base`` and ``swap`` hypotheses keep their meaning), and
- a logit that MediaPipe swapped left and right (trained on the renders' truth).

The fit uses the lifted joints where it used the world landmarks' COCO-17 joints
(:class:`~diffusion_hpc.estimate.mediapipe_fit.MediaPipeFitter`, ``lifter=``; the fit's figures are
in its module docstring). The weights ship as ``estimate/data/lifter.safetensors`` (float32, 1.5
MiB, its feature normalisation and training record in the metadata), loaded once per process
(:func:`load_default_lifter`).

Lifted joints alone (limb PA-MPJPE mean / median, no fit), first lifter (3 x 256, 6091 renders of
the 575 poses) -> shipped: validation renders (poses it trained on, other seeds, 1017 renders) 78.2
/ 60.8 -> 77.2 / 59.7 mm (world landmarks 96.4 / 78.1); bench_estimate's seed-2024 renders (poses
never trained on, 62 detected) 67.4 / 57.6 -> 63.9 / 55.9 mm (world landmarks 84.8 / 74.3). The
swap logit catches 22 % of the detector's swaps at 1.8 % false alarms on validation (before: 20 %
at 3.1 %).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffusion_hpc.errors import InputError, MissingModelError
from diffusion_hpc.estimate.fit import COCO17_FLIP
from diffusion_hpc.estimate.landmarks import COCO17_FROM_MEDIAPIPE, MEDIAPIPE33, MEDIAPIPE33_FLIP, MIN_VISIBILITY
from diffusion_hpc.runtime.atomic import atomic_path
from diffusion_hpc.runtime.weights import read_tagged_safetensors

#: ``format`` metadata of a lifter weights file
FORMAT = "dhpc-lifter/1"
#: MediaPipe's hip landmarks (left, right), and COCO-17's
MP_HIPS = np.array([MEDIAPIPE33.index("left_hip"), MEDIAPIPE33.index("right_hip")])
COCO_HIPS = np.array([11, 12])
#: features per person: 33 x (u, v) + 33 x (x, y, z) + 33 visibilities
N_FEATURES = 33 * 6
#: where the world landmarks sit in the feature vector
WORLD_SLICE = slice(33 * 2, 33 * 5)


def lifter_features(landmarks2d: np.ndarray, world: np.ndarray) -> np.ndarray:
    """(..., 198) float32 lifter input from MediaPipe's output for one person.

    The image landmarks are taken relative to their hips' midpoint and divided by the extent (the
    longer side of the bounding box) of the landmarks seen with at least :data:`MIN_VISIBILITY`
    (all of them when fewer than two are seen); the world landmarks are used as they are (metres,
    hip-centred, camera-aligned axes).

    Args:
        landmarks2d: (..., 33, 3) u, v in pixels and visibility; world: (..., 33, 3).
    """
    lm, world = np.asarray(landmarks2d, np.float64), np.asarray(world, np.float64)
    if lm.shape[-2:] != (33, 3) or world.shape[-2:] != (33, 3) or lm.shape[:-2] != world.shape[:-2]:
        raise InputError(f"lifter_features: landmarks2d {lm.shape} and world {world.shape} must both be (..., 33, 3) "
                         "MediaPipe landmarks of the same people")
    uv, vis = lm[..., :2], lm[..., 2]
    seen = vis >= MIN_VISIBILITY
    seen = np.where(seen.sum(-1, keepdims=True) >= 2, seen, True)
    lo = np.where(seen[..., None], uv, np.inf).min(-2)
    hi = np.where(seen[..., None], uv, -np.inf).max(-2)
    extent = np.maximum((hi - lo).max(-1), 1.0)
    rel = (uv - uv[..., MP_HIPS, :].mean(-2, keepdims=True)) / extent[..., None, None]
    flat = lambda a: a.reshape(*a.shape[:-2], -1)  # noqa: E731
    return np.concatenate([flat(rel), flat(world), vis], axis=-1).astype(np.float32)


def mirror_landmarks(landmarks2d: np.ndarray, world: np.ndarray, width: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe landmarks of the horizontally mirrored image: u -> width - 1 - u, world x -> -x, left
    and right exchanged (:data:`MEDIAPIPE33_FLIP`). (..., 33, 3) each; ``width`` (...,) or a number."""
    lm, w = np.array(landmarks2d, np.float64), np.array(world, np.float64)
    lm[..., 0] = np.asarray(width, np.float64)[..., None] - 1.0 - lm[..., 0]
    w[..., 0] = -w[..., 0]
    return lm[..., MEDIAPIPE33_FLIP, :], w[..., MEDIAPIPE33_FLIP, :]


def mirror_joints(coco17: np.ndarray) -> np.ndarray:
    """(..., 17, 3) COCO-17 camera-frame joints of the mirrored scene: x -> -x, left and right exchanged."""
    j = np.array(coco17, np.float64)
    j[..., 0] = -j[..., 0]
    return j[..., COCO17_FLIP, :]


def hip_centred(coco17: np.ndarray) -> np.ndarray:
    """(..., 17, 3) COCO-17 joints minus their hips' midpoint."""
    j = np.asarray(coco17, np.float64)
    return j - j[..., COCO_HIPS, :].mean(-2, keepdims=True)


class LandmarkLifter(nn.Module):
    """MLP: :func:`lifter_features` -> (hip-centred COCO-17 joints, swap logit) (module docstring).

    ``x -> (x - mean) / std -> Linear(198, H), GELU, [Dropout, Linear(H, H), GELU] x (depth - 1) -> Linear(H, 52)``;
    the first 51 outputs are added to the world landmarks' hip-centred COCO-17 joints, the last is
    the logit that MediaPipe swapped left and right.

    Args:
        hidden: H; depth: hidden layers; dropout: the dropout probability while training; mean, std:
            (198,) feature normalisation (training data).
    """

    def __init__(self, hidden: int = 256, depth: int = 3, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.hidden, self.depth = int(hidden), int(depth)
        #: where the weights came from (:func:`load_lifter`): the file's name, its content
        #: fingerprint (sha256, 16 hex digits) and its training record
        self.path_name, self.fingerprint, self.record = "in-memory", "", {}
        self.register_buffer("mean", torch.zeros(N_FEATURES) if mean is None else torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.ones(N_FEATURES) if std is None else torch.as_tensor(std, dtype=torch.float32))
        layers: list[nn.Module] = [nn.Linear(N_FEATURES, self.hidden), nn.GELU()]
        for _ in range(self.depth - 1):
            layers += [nn.Dropout(dropout), nn.Linear(self.hidden, self.hidden), nn.GELU()]
        layers.append(nn.Linear(self.hidden, 17 * 3 + 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """((..., 17, 3) hip-centred COCO-17 joints in metres, (...,) swap logit) from (..., 198) features."""
        out = self.mlp((features - self.mean) / self.std)
        world = features[..., WORLD_SLICE].unflatten(-1, (33, 3))[..., torch.as_tensor(COCO17_FROM_MEDIAPIPE), :]
        world = world - world[..., torch.as_tensor(COCO_HIPS), :].mean(-2, keepdim=True)
        return world + out[..., :51].unflatten(-1, (17, 3)), out[..., 51]

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mean.dtype

    @torch.no_grad()
    def lift(self, landmarks2d: np.ndarray, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((..., 17, 3) float64 lifted joints, (...,) swap probability) of MediaPipe landmarks
        ((..., 33, 3) each), computed on the lifter's device and dtype."""
        x = torch.as_tensor(lifter_features(landmarks2d, world), device=self.device, dtype=self.dtype)
        joints, logit = self(x)
        return joints.double().cpu().numpy(), torch.sigmoid(logit).double().cpu().numpy()


def save_lifter(path: str | os.PathLike, lifter: LandmarkLifter, record: dict[str, Any]) -> Path:
    """Write a lifter's weights (float32) and ``record`` (JSON metadata: data, training, figures) to a
    safetensors file, atomically."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in lifter.state_dict().items()}
    meta = {"format": FORMAT, "hidden": str(lifter.hidden), "depth": str(lifter.depth),
            "dhpc": json.dumps(record, sort_keys=True)}
    with atomic_path(p) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return p


def load_lifter(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> LandmarkLifter:
    """A :class:`LandmarkLifter` from a file of :func:`save_lifter`, in eval mode on ``device`` / ``dtype``.

    Raises:
        MissingModelError: no file at ``path``.
        InputError: the file is not a lifter weights file.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingModelError(f"lifter weights not found: {p}; make them with `python scripts/train_lifter.py --out {p}` "
                                "or leave the path out to use the shipped lifter")
    tensors, meta = read_tagged_safetensors(p, FORMAT, "lifter", " (a file written by scripts/train_lifter.py)")
    lifter = LandmarkLifter(int(meta["hidden"]), int(meta["depth"]))
    lifter.load_state_dict(tensors)
    lifter.record = json.loads(meta.get("dhpc", "{}"))
    lifter.fingerprint = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    lifter.path_name = p.name
    return lifter.to(device=device, dtype=dtype).eval().requires_grad_(False)


def default_lifter_path() -> Path:
    """Path of the shipped lifter (``diffusion_hpc/estimate/data/lifter.safetensors``)."""
    from importlib import resources

    return Path(str(resources.files("diffusion_hpc.estimate").joinpath("data/lifter.safetensors")))


@lru_cache(maxsize=4)
def load_default_lifter(device: str = "cpu", dtype: torch.dtype = torch.float32) -> LandmarkLifter:
    """The shipped lifter, loaded once per process per device and dtype."""
    return load_lifter(default_lifter_path(), device, dtype)


def aligned_joint_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(...,) mean per-joint distance of (..., J, 3) hip-centred joints after rotating ``pred`` onto
    ``target`` (Kabsch about the hips' midpoint, no scale): the error the fit's 3D term sees, which
    aligns its target the same way (``FitWeights.align_3d``)."""
    h = torch.as_tensor(COCO_HIPS, device=pred.device)
    a = pred - pred[..., h, :].mean(-2, keepdim=True)
    b = target - target[..., h, :].mean(-2, keepdim=True)
    u, _, vt = torch.linalg.svd(a.transpose(-1, -2) @ b)
    d = torch.sign(torch.linalg.det(u @ vt)).detach()
    fix = torch.ones(*d.shape, 3, dtype=pred.dtype, device=pred.device)
    fix[..., 2] = d
    rot = (u * fix[..., None, :]) @ vt
    return (a @ rot - b).norm(dim=-1).mean(-1)


def train_lifter(features: np.ndarray, targets: np.ndarray, swapped: np.ndarray, *, hidden: int = 256, depth: int = 3,
                 epochs: int = 300, batch: int = 256, lr: float = 1e-3, weight_decay: float = 1e-4,
                 w_swap: float = 0.05, dropout: float = 0.0, noise: float = 0.0, w_aligned: float = 0.0,
                 seed: int = 0, log_every: int = 0) -> LandmarkLifter:
    """Fit a :class:`LandmarkLifter` (CPU, float32, seeded; deterministic on one thread).

    The loss is the mean per-joint distance (metres) to ``targets``, plus ``w_aligned`` x the same
    after rotation alignment (:func:`aligned_joint_error`), plus ``w_swap`` x the binary
    cross-entropy of the swap logit; AdamW with a one-cycle learning-rate schedule; ``dropout``
    between hidden layers and Gaussian noise of ``noise`` standard deviations on the normalised
    features while training.

    Args:
        features: (N, 198) :func:`lifter_features`; targets: (N, 17, 3) hip-centred COCO-17 joints
            labelled as the detector labelled them; swapped: (N,) bool, the detector swapped left and right.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.float32)
    s = torch.as_tensor(swapped, dtype=torch.float32)
    lifter = LandmarkLifter(hidden, depth, x.mean(0), x.std(0).clamp_min(1e-3), dropout)
    opt = torch.optim.AdamW(lifter.mlp.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    lifter.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for lo in range(0, len(x), batch):
            idx = order[lo:lo + batch]
            xb = x[idx]
            if noise:
                xb = xb + noise * lifter.std * torch.randn(xb.shape, generator=gen)
            joints, logit = lifter(xb)
            loss = (joints - y[idx]).norm(dim=-1).mean() + w_swap * nn.functional.binary_cross_entropy_with_logits(logit, s[idx])
            if w_aligned:
                loss = loss + w_aligned * aligned_joint_error(joints, y[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log_every and (epoch + 1) % log_every == 0:
            print(f"  epoch {epoch + 1}: loss {total / len(x):.4f}", flush=True)
    return lifter.eval()
