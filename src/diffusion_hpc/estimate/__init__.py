"""Mesh estimation: a body mesh (pose, shape, camera) for the person in a photo.

``get_estimator("mediapipe")`` is the default (free, offline, CPU): MediaPipe Pose landmarks, then a
batched body-model fit. MediaPipe itself loads with the first estimator.

    from diffusion_hpc.estimate import get_estimator, load_image
    est = get_estimator()                   # Anny, regularised by the shipped Anny pose prior
    [e] = est.estimate([load_image("person.jpg")])
    e.ok, e.params["body_pose"].shape, e.keypoints2d
"""

from __future__ import annotations

from diffusion_hpc.estimate.base import Estimate, MeshEstimator
from diffusion_hpc.estimate.hmr_adapter import HMREstimator
from diffusion_hpc.estimate.mediapipe_fit import MediaPipeFitter
from diffusion_hpc.estimate.spin import SPINEstimator
from diffusion_hpc.prior.base import PosePrior
from diffusion_hpc.runtime.images import check_image, load_image

ESTIMATORS = ("mediapipe", "hmr", "spin")


def get_estimator(name: str = "mediapipe", body_model: str = "anny", prior: PosePrior | str | None = "default",
                  **kwargs) -> MeshEstimator:
    """A mesh estimator.

    Args:
        name: backend; ``"mediapipe"`` (default), ``"hmr"`` (the project's regressor, ``checkpoint=``
            the folder from ``dhpc train``) or ``"spin"`` (SPIN's ``model_checkpoint.pt``, ``smpl_path=``).
        body_model: ``"anny"`` (default) or ``"smpl"``/``"smplx"`` (pass ``model_path=``); mediapipe only
            (a regressor's body model is its checkpoint's).
        prior: pose prior whose ``penalty`` regularises the fit; ``"default"`` (default): the shipped
            Anny prior when ``body_model`` is Anny, else the fallback; None: a documented L2 +
            joint-limit regulariser (:func:`diffusion_hpc.estimate.fit.fallback_pose_penalty`).
        **kwargs: backend options (mediapipe: ``fov_deg``, ``weights``, ``model_path``; hmr / spin: see
            :class:`~diffusion_hpc.estimate.hmr_adapter.HMREstimator` / :class:`~diffusion_hpc.estimate.spin.SPINEstimator`).
    """
    if name == "mediapipe":
        return MediaPipeFitter(body_model=body_model, prior=prior, **kwargs)
    # regressor checkpoints: the body model is the checkpoint's
    if name == "hmr":
        return HMREstimator(**kwargs)
    if name == "spin":
        return SPINEstimator(**kwargs)
    raise ValueError(f"unknown mesh estimator {name!r}; choose one of {ESTIMATORS}")


__all__ = ["Estimate", "MeshEstimator", "get_estimator", "load_image", "check_image", "ESTIMATORS"]
