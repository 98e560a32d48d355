"""VPoser v2 (V02_05) adapter for SMPL users who have the weights on disk.

VPoser (Pavlakos et al. 2019, ``human_body_prior``) is a VAE over the 21 SMPL body joints
(63 axis-angle values). This module re-implements the v2 architecture in plain torch, with the
module indices of the original so that its checkpoints load unchanged:

    encoder_net: 0 flatten, 1 BatchNorm1d(63), 2 Linear(63, 512), 3 LeakyReLU, 4 BatchNorm1d(512),
                 5 Dropout(0.1), 6 Linear(512, 512), 7 Linear(512, 512),
                 8 NormalDistDecoder: mu = Linear(512, 32), logvar = Linear(512, 32), std = softplus
    decoder_net: 0 Linear(32, 512), 1 LeakyReLU, 2 Dropout(0.1), 3 Linear(512, 512), 4 LeakyReLU,
                 5 Linear(512, 126), 6 continuous 6D -> rotation matrix (Gram–Schmidt on the
                 (3, 2) columns) -> axis-angle (21 joints)

Checkpoint layout (assumption, from the public ``human_body_prior`` v2 code): the V02_05 folder
holds ``snapshots/V02_05_epoch=*_val_loss=*.ckpt``, a PyTorch-Lightning checkpoint whose
``state_dict`` keys are ``vp_model.encoder_net.1.weight``, ..., ``vp_model.decoder_net.5.bias``.
We read it with ``torch.load(weights_only=True)`` (no arbitrary pickles), take ``state_dict`` if
present and strip the ``vp_model.`` / ``module.`` / ``model.`` prefixes. A plain state dict in a
``.pt`` / ``.pth`` or ``.safetensors`` file works too.

Prior semantics (as in Diffusion-HPC, DESIGN §2 step 4):

* ``score`` = ‖μ‖², the squared norm of the encoder mean; hard when ≥ 30 (``hard_threshold``).
* ``augment_latent``: z ← z · (1.5 + 0.3 N(0, 1)) (an independent normal per latent dimension),
  then decode. ``perturb(strength)`` generalises it: z · (1 + strength (0.5 + 0.3 N)), so strength 1
  is the original augmentation and 0 returns the input.
* ``augment_orientation``: global orientation + N(0, 1) · 10° per axis (axis-angle added).
* ``augment_betas``: β · (1 + 0.1 N(0, 1)).
* ``is_plausible``: ‖μ‖² ≤ ``plausible_threshold`` (default 150, our choice: the original has no
  gate; 150 lets the original augmentation of typical poses through: E‖1.5 z‖² ≈ 2.25 · 32 = 72).

Get VPoser from https://smpl-x.is.tue.mpg.de (download "VPoser v2.0", V02_05; licence of the MPI).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from diffusion_hpc.errors import InputError, MissingModelError
from diffusion_hpc.geometry.rotations import rot6d_to_rotmat
from diffusion_hpc.prior.base import PosePrior, as_generator

NUM_JOINTS = 21
LATENT_DIM = 32
NUM_NEURONS = 512
HARD_THRESHOLD = 30.0
PLAUSIBLE_THRESHOLD = 150.0
ORIENT_JITTER_DEG = 10.0
BETA_JITTER = 0.1
LATENT_SCALE_MEAN, LATENT_SCALE_STD = 1.5, 0.3
STRIP_PREFIXES = ("vp_model.", "module.", "model.")
HOW_TO_GET = "download VPoser v2.0 (V02_05) from https://smpl-x.is.tue.mpg.de and pass its .ckpt file or folder"


def augment_latent(z: torch.Tensor, generator: torch.Generator | None = None, strength: float = 1.0) -> torch.Tensor:
    """(B, L) -> (B, L): z · (1 + strength · (0.5 + 0.3 N(0, 1))); strength 1 = z · (1.5 + 0.3 N)."""
    eps = torch.randn(z.shape, generator=as_generator(generator)).to(z)
    return z * (1.0 + strength * ((LATENT_SCALE_MEAN - 1.0) + LATENT_SCALE_STD * eps))


def augment_orientation(global_orient: torch.Tensor, generator: torch.Generator | None = None, degrees: float = ORIENT_JITTER_DEG) -> torch.Tensor:
    """(B, 3) axis-angle + N(0, 1) · ``degrees``° per axis (the original adds to the axis-angle)."""
    go = torch.as_tensor(global_orient, dtype=torch.float32)
    eps = torch.randn(go.shape, generator=as_generator(generator))
    return go + eps * math.radians(degrees)


def augment_betas(betas: torch.Tensor, generator: torch.Generator | None = None, scale: float = BETA_JITTER) -> torch.Tensor:
    """(B, S) SMPL betas · (1 + ``scale`` · N(0, 1)), independently per coefficient."""
    b = torch.as_tensor(betas, dtype=torch.float32)
    return b * (1.0 + scale * torch.randn(b.shape, generator=as_generator(generator)))


class _NormalDistDecoder(nn.Module):
    def __init__(self, num_feat_in: int, latent_dim: int) -> None:
        super().__init__()
        self.mu = nn.Linear(num_feat_in, latent_dim)
        self.logvar = nn.Linear(num_feat_in, latent_dim)

    def forward(self, h: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.mu(h), F.softplus(self.logvar(h)))


class _Cont6d(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rot6d_to_rotmat(x.reshape(x.shape[0], -1, 6))


class VPoserNet(nn.Module):
    """The VPoser v2 network (module indices as the original; see the module docstring)."""

    def __init__(self, num_neurons: int = NUM_NEURONS, latent_dim: int = LATENT_DIM) -> None:
        super().__init__()
        n = NUM_JOINTS * 3
        self.latent_dim = latent_dim
        self.encoder_net = nn.Sequential(
            nn.Flatten(), nn.BatchNorm1d(n), nn.Linear(n, num_neurons), nn.LeakyReLU(),
            nn.BatchNorm1d(num_neurons), nn.Dropout(0.1), nn.Linear(num_neurons, num_neurons),
            nn.Linear(num_neurons, num_neurons), _NormalDistDecoder(num_neurons, latent_dim),
        )  # fmt: skip
        self.decoder_net = nn.Sequential(
            nn.Linear(latent_dim, num_neurons), nn.LeakyReLU(), nn.Dropout(0.1),
            nn.Linear(num_neurons, num_neurons), nn.LeakyReLU(), nn.Linear(num_neurons, NUM_JOINTS * 6), _Cont6d(),
        )  # fmt: skip

    def encode(self, pose_body: torch.Tensor) -> torch.distributions.Normal:
        """(B, 21, 3) or (B, 63) axis-angle -> Normal over (B, 32) latents."""
        return self.encoder_net(pose_body.reshape(pose_body.shape[0], -1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, 32) -> (B, 21, 3) axis-angle."""
        import roma

        return roma.rotmat_to_rotvec(self.decoder_net(z))


def _strip(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def resolve_weights(path: str | os.PathLike | None) -> Path:
    """The weights file for ``path`` (a file, or a V02_05 folder holding ``snapshots/*.ckpt``);
    :class:`MissingModelError` if nothing is there."""
    if path is None:
        raise MissingModelError(f"the VPoser prior needs its weights file: {HOW_TO_GET} (e.g. --prior-path PATH)")
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(p.glob("snapshots/*.ckpt")) or sorted(p.glob("*.ckpt")) or sorted(p.glob("*.pt")) or sorted(p.glob("*.safetensors"))
        if not found:
            raise MissingModelError(f"no VPoser weights (*.ckpt, *.pt, *.safetensors) in the folder {p}: {HOW_TO_GET}")
        return found[-1]
    if not p.is_file():
        raise MissingModelError(f"VPoser weights not found at {p}: {HOW_TO_GET}")
    return p


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a VPoser state dict (``.ckpt`` / ``.pt`` / ``.pth`` via ``torch.load(weights_only=True)``,
    or ``.safetensors``), prefixes stripped."""
    p = resolve_weights(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{p}: cannot read VPoser weights ({type(exc).__name__}: {exc}); expected a V02_05 .ckpt, a state-dict .pt or a .safetensors file") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{p}: holds a {type(state).__name__}, not a state dict")
    return _strip({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})


class VPoserPrior(PosePrior):
    """:class:`PosePrior` over SMPL ``body_pose`` (B, 23, 3) (or (B, 21, 3)) backed by VPoser v2.

    Only the first 21 joints are modelled; the two hand joints of a 23-joint pose pass through
    unchanged (``sample`` sets them to 0).

    Args:
        path: V02_05 ``.ckpt`` / folder, a ``.pt`` state dict or ``.safetensors`` file.
        plausible_threshold: ‖μ‖² at or below which a pose is plausible.
    """

    name = "vposer"
    body_model = "smpl"
    hard_threshold = HARD_THRESHOLD

    def __init__(self, path: str | os.PathLike | None, plausible_threshold: float = PLAUSIBLE_THRESHOLD) -> None:
        super().__init__()
        self.path = resolve_weights(path)
        self.net = VPoserNet()
        state = load_state_dict(self.path)
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing:
            raise InputError(f"{self.path}: not a VPoser v2 checkpoint; missing keys {missing[:5]}{'...' if len(missing) > 5 else ''} ({HOW_TO_GET})")
        self.unexpected_keys = list(unexpected)
        self.plausible_threshold = float(plausible_threshold)
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    @staticmethod
    def _body21(body_pose: torch.Tensor) -> torch.Tensor:
        bp = torch.as_tensor(body_pose, dtype=torch.float32)
        if bp.ndim == 2 and bp.shape[1] == NUM_JOINTS * 3:
            bp = bp.reshape(-1, NUM_JOINTS, 3)
        if bp.ndim != 3 or bp.shape[1] not in (NUM_JOINTS, 23) or bp.shape[2] != 3:
            raise ValueError(f"body_pose must have shape (B, 21, 3), (B, 23, 3) or (B, 63); got {tuple(bp.shape)}")
        return bp[:, :NUM_JOINTS]

    def encode(self, body_pose: torch.Tensor) -> torch.distributions.Normal:
        """Normal over (B, 32) latents."""
        self.net.eval()
        return self.net.encode(self._body21(body_pose))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, 32) -> (B, 21, 3) axis-angle."""
        self.net.eval()
        return self.net.decode(z)

    def score(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) ‖μ‖² of the encoder mean (hard when >= 30)."""
        return (self.encode(body_pose).mean ** 2).sum(-1)

    def penalty(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) ‖μ‖² (the usual VPoser fitting regulariser); differentiable in ``body_pose``."""
        return self.score(body_pose)

    def is_plausible(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,) bool: ‖μ‖² <= plausible_threshold."""
        with torch.no_grad():
            return self.score(body_pose) <= self.plausible_threshold

    def _with_hands(self, body21: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        like = torch.as_tensor(like, dtype=torch.float32)
        if like.ndim == 3 and like.shape[1] == 23:
            return torch.cat([body21, like[:, NUM_JOINTS:]], dim=1)
        return body21.reshape(like.shape) if like.ndim == 2 else body21

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 23, 3): decoded z ~ N(0, I), hand joints 0."""
        z = torch.randn(int(n), self.net.latent_dim, generator=as_generator(generator))
        with torch.no_grad():
            body = self.decode(z)
        return torch.cat([body, torch.zeros(int(n), 2, 3)], dim=1)

    def perturb(self, body_pose: torch.Tensor, strength: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Variants by latent scaling z · (1 + strength (0.5 + 0.3 N)) of the encoder mean, decoded;
        same shape as ``body_pose``. ``strength == 0`` returns a copy of the input."""
        bp = torch.as_tensor(body_pose, dtype=torch.float32)
        if float(strength) == 0.0:
            return bp.clone()
        with torch.no_grad():
            z = augment_latent(self.encode(bp).mean, generator, float(strength))
            return self._with_hands(self.decode(z), bp)
