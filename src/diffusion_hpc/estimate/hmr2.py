"""Mesh estimation from a 4D-Humans HMR 2.0 checkpoint (SMPL): the network of
:mod:`diffusion_hpc.hmr.hmr2` behind the regressor estimator of :mod:`.hmr_adapter` (same person
boxes and camera conversion; HMR 2.0's own 256-px crops and focal 5000 at 256 px, so its crop
camera's normalised focal is ``2 * 5000 / 256``).
"""

from __future__ import annotations

from pathlib import Path

from diffusion_hpc.estimate.hmr_adapter import HMREstimator


class HMR2Estimator(HMREstimator):
    """Mesh estimator from a 4D-Humans checkpoint (ViT backbone + transformer SMPL head).

    Args:
        checkpoint: the 4D-Humans Lightning checkpoint (e.g. ``epoch=35-step=1000000.ckpt``),
            read with ``weights_only=True`` (:func:`diffusion_hpc.hmr.hmr2.load_hmr2`).
        smpl_path: the user's SMPL model file or folder (neutral).
        detector, principal_point, device, dtype: as for
            :class:`~diffusion_hpc.estimate.hmr_adapter.HMREstimator`; crops are the network's 256 px.
    """

    name = "hmr2"
    spec_kind = "hmr2"

    def __init__(self, checkpoint: str | Path, smpl_path: str | Path | None = None, detector: str | None = "mediapipe",
                 principal_point: str = "image", device="cpu", dtype="float32") -> None:  # fmt: skip
        path = Path(checkpoint).expanduser()
        self._load(path, [path], "smpl", smpl_path, detector, principal_point, None, device, dtype)
