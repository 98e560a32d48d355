"""Mesh estimation from a SPIN checkpoint (SMPL): the network of :mod:`diffusion_hpc.hmr.spin`
behind the regressor estimator of :mod:`.hmr_adapter` (same person boxes, crops and camera conversion).
"""

from __future__ import annotations

from pathlib import Path

from diffusion_hpc.estimate.hmr_adapter import HMREstimator, check_regressor_options
from diffusion_hpc.geometry.camera import SPIN_CROP
from diffusion_hpc.hmr.spin import load_spin


class SPINEstimator(HMREstimator):
    """Mesh estimator from a SPIN checkpoint (SMPL). Same pipeline and camera conversion as
    :class:`~diffusion_hpc.estimate.hmr_adapter.HMREstimator`.

    Args:
        checkpoint: SPIN's ``model_checkpoint.pt``.
        smpl_path: the user's SMPL model file or folder (neutral).
        mean_params: ``smpl_mean_params.npz``, needed only when the checkpoint lacks the
            ``init_*`` buffers.
        detector, crop_size (default 224, SPIN's), principal_point: as for HMREstimator.
    """

    name = "spin"

    def __init__(self, checkpoint: str | Path, smpl_path: str | Path | None = None, mean_params: str | Path | None = None,
                 detector: str | None = "mediapipe", crop_size: int | None = None, principal_point: str = "image",
                 device="cpu", dtype="float32") -> None:  # fmt: skip
        check_regressor_options(detector, principal_point)
        self._setup(load_spin(checkpoint, mean_params), "smpl", "betas", smpl_path, detector, principal_point,
                    int(crop_size) if crop_size else SPIN_CROP, device, dtype, [Path(checkpoint).expanduser()])
