"""HMR training losses: pure functions, each masked per sample by what the sample has.

Every loss returns a scalar: the mean over the samples whose mask is set of a per-sample mean
squared error (0 when no sample has the label, so a batch of only real images trains on 2D alone).
Masks come from the batch (``has_2d``, ``has_3d``, ``has_params``, ``is_real``; float or bool, (B,)).

Two named loss sets (:data:`LOSS_SETS`, ``dhpc train --losses NAME``):

- ``paper``: exactly the paper's fine-tuning terms (Diffusion-HPC, DESIGN §2): 2D keypoints x5 on
  every sample with 2D labels; rotation matrices x1 and shape x0.001 on the synthetic samples
  (``has_params`` and not ``is_real``: real pseudo ground truth, e.g. a SPIN npz's SMPL fits, is not used).
- ``dhpc`` (the default): the paper's three terms (rotations and shape wherever parameters exist,
  real SPIN fits included when training SMPL) plus SPIN's two extra terms: the root-centred 3D-joint
  loss (x5) where 3D joints exist, and the camera regulariser ``exp(-10 s)^2`` (x1) that keeps the
  weak-perspective scale positive.

Weights of a set's terms can be overridden (``loss_weights``); a term outside the set cannot be.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import torch


@dataclass
class LossWeights:
    """Weights of the ``dhpc`` loss set's terms (DESIGN §2 / SPIN defaults)."""

    keypoints2d: float = 5.0
    joints3d: float = 5.0
    rotmat: float = 1.0
    shape: float = 0.001
    camera: float = 1.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


#: the named loss sets: term -> default weight (module docstring)
LOSS_SETS: dict[str, dict[str, float]] = {
    "dhpc": LossWeights().as_dict(),
    "paper": {"keypoints2d": 5.0, "rotmat": 1.0, "shape": 0.001},
}
#: which samples a set's parameter terms (rotmat, shape) are averaged over
PARAM_SAMPLES = {"dhpc": "every sample with parameters", "paper": "synthetic samples with parameters"}


def loss_weights(losses: str = "dhpc", overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The weights of loss set ``losses`` with ``overrides`` applied.

    Raises:
        ValueError: an unknown set, or an override of a term the set does not have.
    """
    if losses not in LOSS_SETS:
        raise ValueError(f"unknown loss set {losses!r}; choose one of {sorted(LOSS_SETS)}")
    weights = dict(LOSS_SETS[losses])
    extra = sorted(set(overrides or {}) - set(weights))
    if extra:
        raise ValueError(f"loss set {losses!r} has no term {', '.join(extra)} (its terms: {', '.join(weights)}); "
                         f"drop the override or use --losses dhpc")
    weights.update({k: float(v) for k, v in (overrides or {}).items()})
    return weights


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


def hmr_losses(pred: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
               weights: LossWeights | Mapping[str, float] = LossWeights(), losses: str = "dhpc") -> dict[str, torch.Tensor]:
    """The terms of loss set ``losses`` and their weighted sum ``total``.

    Args:
        pred: ``keypoints2d`` (B, J, 2) normalised, ``rotmat`` (B, R, 3, 3), ``shape`` (B, D), and
            for ``dhpc`` ``joints3d`` (B, J3, 3) and ``cam`` (B, 3).
        batch: ``keypoints2d`` (B, J, 3), ``rotmat`` (B, R, 3, 3), ``shape`` (B, D), ``joints3d``
            (B, J3, 4), masks ``has_2d``, ``has_3d``, ``has_params`` and (``paper``) ``is_real`` (B,).
        weights: a weight per term of the set (:func:`loss_weights`).
        losses: ``"dhpc"`` or ``"paper"`` (:data:`LOSS_SETS`).
    Returns:
        the set's terms, unweighted (``paper``: ``keypoints2d``, ``rotmat``, ``shape``; ``dhpc``:
        also ``joints3d`` and ``camera``), and ``total``.
    """
    w = weights.as_dict() if isinstance(weights, LossWeights) else dict(weights)
    names = LOSS_SETS[losses] if losses in LOSS_SETS else loss_weights(losses)
    params = batch.get("has_params")
    if losses == "paper":
        params = batch["has_params"].float() * (1.0 - batch["is_real"].float())
    terms = {
        "keypoints2d": keypoint2d_loss(pred["keypoints2d"], batch["keypoints2d"], batch.get("has_2d")),
        "rotmat": rotmat_loss(pred["rotmat"], batch["rotmat"], params),
        "shape": shape_loss(pred["shape"], batch["shape"], params),
    }
    if "joints3d" in names:
        terms["joints3d"] = joints3d_loss(pred["joints3d"], batch["joints3d"], batch.get("has_3d"))
    if "camera" in names:
        terms["camera"] = camera_regulariser(pred["cam"])
    terms["total"] = sum(w[k] * terms[k] for k in names)
    return terms
