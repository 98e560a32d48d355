"""Mesh estimation from a SPIN checkpoint (SMPL): the network of :mod:`diffusion_hpc.hmr.spin`
behind the regressor estimator of :mod:`.hmr_adapter` (same person boxes, crops and camera conversion).
"""

from __future__ import annotations

from pathlib import Path

from diffusion_hpc.estimate.hmr_adapter import HMREstimator


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
    spec_kind = "spin"

    def __init__(self, checkpoint: str | Path, smpl_path: str | Path | None = None, mean_params: str | Path | None = None,
                 detector: str | None = "mediapipe", crop_size: int | None = None, principal_point: str = "image",
                 device="cpu", dtype="float32") -> None:  # fmt: skip
        path = Path(checkpoint).expanduser()
        self._load(path, [path], "smpl", smpl_path, detector, principal_point, crop_size, device, dtype, mean_params)
