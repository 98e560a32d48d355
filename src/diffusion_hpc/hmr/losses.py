"""HMR training losses: pure functions, each masked per sample by what the sample has.

Every loss returns a scalar: the mean over the samples whose mask is set of a per-sample mean
squared error (0 when no sample has the label, so a batch of only real images trains on 2D alone).
Masks come from the batch (``has_2d``, ``has_3d``, ``has_params``; float or bool, (B,)).

Default weights (:class:`LossWeights`) follow DESIGN §2 / SPIN: 2D keypoints x5 on all samples,
rotation matrices x1 and shape x0.001 where parameters exist (synthetic samples). SPIN's code also
applies its 3D-joint loss (x5, root-centred) where 3D joints exist and a camera regulariser
``exp(-10 s)^2`` (x1) that keeps the weak-perspective scale positive; both are on by default
(set them to 0 for the paper's exact list).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import torch


@dataclass
class LossWeights:
    """Weights of the loss terms (DESIGN §2 defaults)."""

    keypoints2d: float = 5.0
    joints3d: float = 5.0
    rotmat: float = 1.0
    shape: float = 0.001
    camera: float = 1.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _masked_mean(per_sample: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B,) values over samples with ``mask`` set; 0 (with gradient) if none."""
    if mask is None:
        return per_sample.mean()
    m = mask.to(per_sample.dtype).reshape(per_sample.shape)
    return (per_sample * m).sum() / m.sum().clamp(min=1.0)


def keypoint2d_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Confidence-weighted squared error of 2D keypoints in normalised crop coordinates.

    Args:
        pred: (B, J, 2) projected keypoints, crop spans [-1, 1].
        gt: (B, J, 3) u, v (same coordinates) and confidence (0 = unlabelled).
        mask: (B,) samples that have 2D labels.
    """
    conf = gt[..., 2:3]
    per = (conf * (pred - gt[..., :2]) ** 2).mean(dim=(1, 2))
    return _masked_mean(per, mask)


def joints3d_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None, root_index: int = 0) -> torch.Tensor:
    """Squared error of root-centred 3D joints (metres).

    Args:
        pred: (B, J, 3) predicted joints (any translation).
        gt: (B, J, 3) or (B, J, 4) with a confidence column (0 = missing joint).
        mask: (B,) samples that have 3D joints.
        root_index: joint each skeleton is centred on (0 = H36M pelvis).
    """
    conf = gt[..., 3:4] if gt.shape[-1] == 4 else torch.ones_like(gt[..., :1])
    g = gt[..., :3] - gt[:, root_index : root_index + 1, :3]
    p = pred - pred[:, root_index : root_index + 1]
    per = (conf * (p - g) ** 2).mean(dim=(1, 2))
    return _masked_mean(per, mask)


def rotmat_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error of rotation matrices, (B, R, 3, 3) each (root + body joints)."""
    per = ((pred - gt) ** 2).flatten(1).mean(dim=1)
    return _masked_mean(per, mask)


def shape_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error of shape parameters (phenotypes or betas), (B, D) each."""
    per = ((pred - gt) ** 2).mean(dim=1)
    return _masked_mean(per, mask)


def camera_regulariser(cam: torch.Tensor) -> torch.Tensor:
    """SPIN's ``mean(exp(-10 s)^2)`` on the weak-perspective scale of (B, 3) cameras."""
    return (torch.exp(-10.0 * cam[:, 0]) ** 2).mean()


def hmr_losses(pred: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """All terms and their weighted sum ``total``.

    Args:
        pred: ``keypoints2d`` (B, J, 2) normalised, ``joints3d`` (B, J3, 3), ``rotmat`` (B, R, 3, 3),
            ``shape`` (B, D), ``cam`` (B, 3).
        batch: ``keypoints2d`` (B, J, 3), ``joints3d`` (B, J3, 4), ``rotmat`` (B, R, 3, 3),
            ``shape`` (B, D), masks ``has_2d``, ``has_3d``, ``has_params`` (B,).
    Returns:
        ``keypoints2d``, ``joints3d``, ``rotmat``, ``shape``, ``camera`` (unweighted) and ``total``.
    """
    terms = {
        "keypoints2d": keypoint2d_loss(pred["keypoints2d"], batch["keypoints2d"], batch.get("has_2d")),
        "joints3d": joints3d_loss(pred["joints3d"], batch["joints3d"], batch.get("has_3d")),
        "rotmat": rotmat_loss(pred["rotmat"], batch["rotmat"], batch.get("has_params")),
        "shape": shape_loss(pred["shape"], batch["shape"], batch.get("has_params")),
        "camera": camera_regulariser(pred["cam"]),
    }
    w = weights.as_dict()
    terms["total"] = sum(w[k] * v for k, v in terms.items())
    return terms
