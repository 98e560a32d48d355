"""Mesh estimation: a body mesh (pose, shape, camera) for the person in a photo.

``get_estimator("mediapipe")`` is the default (free, offline, CPU): MediaPipe Pose landmarks, then a
batched body-model fit. MediaPipe itself loads with the first estimator.

    from diffusion_hpc.estimate import get_estimator, load_image
    est = get_estimator()                   # Anny, regularised by the shipped Anny pose prior
    [e] = est.estimate([load_image("person.jpg")])
    e.ok, e.params["body_pose"].shape, e.keypoints2d
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from diffusion_hpc.errors import ConfigError, MissingModelError
from diffusion_hpc.estimate.base import Estimate, MeshEstimator
from diffusion_hpc.estimate.hmr2 import HMR2Estimator
from diffusion_hpc.estimate.hmr_adapter import HMREstimator, exported_body_model
from diffusion_hpc.estimate.mediapipe_fit import MediaPipeFitter
from diffusion_hpc.estimate.pose_detector_model import landmark_runtime as resolve_landmark_runtime, pose_models
from diffusion_hpc.estimate.spin import SPINEstimator
from diffusion_hpc.prior.base import PosePrior
from diffusion_hpc.runtime.compiler import require_cpp_compiler
from diffusion_hpc.runtime.images import check_image, load_image

ESTIMATORS = ("mediapipe", "hmr", "spin", "hmr2")
#: the estimators that regress a mesh from a checkpoint
REGRESSOR_ESTIMATORS = ("hmr", "spin", "hmr2")
#: the body model of each regressor whose network fixes it (``hmr``: its checkpoint's, see :func:`estimator_body_model`)
FIXED_BODY_MODELS = {"spin": "smpl", "hmr2": "smpl"}


def get_estimator(name: str = "mediapipe", body_model: str = "anny", prior: PosePrior | str | None = "default",
                  **kwargs) -> MeshEstimator:
    """A mesh estimator.

    Args:
        name: backend; ``"mediapipe"`` (default), ``"hmr"`` (a regressor from ``dhpc train``,
            ``checkpoint=`` its run folder), ``"spin"`` (SPIN's ``model_checkpoint.pt``, ``smpl_path=``)
            or ``"hmr2"`` (a 4D-Humans HMR 2.0 checkpoint, ``smpl_path=``).
        body_model: ``"anny"`` (default) or ``"smpl"``/``"smplx"`` (pass ``model_path=``); mediapipe only
            (a regressor's body model is its checkpoint's).
        prior: pose prior whose ``penalty`` regularises the fit; ``"default"`` (default): the shipped
            Anny prior when ``body_model`` is Anny, else the fallback; None: a documented L2 +
            joint-limit regulariser (:func:`diffusion_hpc.estimate.fit.fallback_pose_penalty`).
        **kwargs: backend options (mediapipe: ``fov_deg``, ``weights``, ``model_path``, ``lifter``,
            ``compile_fit``; hmr / spin / hmr2:
            see :class:`~diffusion_hpc.estimate.hmr_adapter.HMREstimator`,
            :class:`~diffusion_hpc.estimate.spin.SPINEstimator`, :class:`~diffusion_hpc.estimate.hmr2.HMR2Estimator`).

    Raises:
        ConfigError: mediapipe with ``compile_fit=True`` and no C++ compiler for ``torch.compile``.
    """
    if name == "mediapipe":
        if kwargs.get("compile_fit"):
            require_cpp_compiler("compile_fit")
        return MediaPipeFitter(body_model=body_model, prior=prior, **kwargs)
    # regressor checkpoints: the body model is the checkpoint's
    if name == "hmr":
        return HMREstimator(**kwargs)
    if name == "spin":
        return SPINEstimator(**kwargs)
    if name == "hmr2":
        return HMR2Estimator(**kwargs)
    raise ValueError(f"unknown mesh estimator {name!r}; choose one of {ESTIMATORS}")


def mediapipe_fitter_for_run(*, body_model: str, prior: PosePrior | str | None, model_path, lifter: str | None,
                             views: Sequence[str] | None, compile_fit: bool, landmark_runtime: str | None, device,
                             dtype=None) -> MediaPipeFitter:
    """The MediaPipe fit as a run's settings ask for it (``dhpc generate`` and ``dhpc estimate``; their
    config fields of the same names): ``lifter`` / ``views`` None -> the fitter's defaults (the
    shipped lifter, one reading of each person); Pose's person detector and landmark model as torch
    ops on ``device`` in ``dtype`` where ``landmark_runtime`` resolves to ``"torch"``
    (:func:`~diffusion_hpc.estimate.pose_detector_model.landmark_runtime`: by default on a GPU), else
    MediaPipe's own graph on the CPU."""
    on_device = pose_models(device, dtype) if resolve_landmark_runtime(landmark_runtime, device) == "torch" else {}
    defaults_unless_set = {k: v for k, v in (("lifter", lifter), ("views", views)) if v is not None}
    return get_estimator("mediapipe", body_model=body_model, prior=prior, model_path=model_path,
                         compile_fit=compile_fit, **defaults_unless_set, **on_device)


def estimator_body_model(name: str, checkpoint: str | Path | None = None, fit_body_model: str = "anny") -> str:
    """The body model whose parameters estimator ``name`` gives, found without loading any weights:
    the fit's ``fit_body_model`` (mediapipe), SMPL (spin), or what an exported regressor's
    ``regressor.json`` names (hmr).

    Raises:
        MissingModelError: a regressor's checkpoint is not given or does not exist.
    """
    if name == "mediapipe":
        return fit_body_model
    if name not in ESTIMATORS:
        raise ValueError(f"unknown mesh estimator {name!r}; choose one of {ESTIMATORS}")
    if checkpoint is None:
        raise MissingModelError(f"estimator {name!r} regresses from a checkpoint: pass its path")
    if name == "hmr":
        return exported_body_model(checkpoint)
    if not Path(checkpoint).expanduser().is_file():
        raise MissingModelError(f"{name} checkpoint {checkpoint} does not exist (pass the network's weights file)")
    return FIXED_BODY_MODELS[name]


def check_estimator(name: str, checkpoint: str | Path | None, body_model: str, flag: str = "--estimator-checkpoint") -> None:
    """Before any work: the checkpoint of estimator ``name`` exists and labels ``body_model`` bodies.

    A regressor's bodies become the labels (and the poses the prior scores), so a regressor of one
    body model cannot feed a run of another.

    Raises:
        MissingModelError: the checkpoint is missing (``flag`` names the option that gives it).
        ConfigError: the estimator's body model is not ``body_model``.
    """
    try:
        own = estimator_body_model(name, checkpoint, body_model)
    except MissingModelError as exc:
        raise MissingModelError(f"{flag}: {exc}") from None
    if own != body_model:
        fix = (f"pass --body-model {own}" + (" --smpl-path PATH" if own in ("smpl", "smplx") else "")
               + f", or a checkpoint of a {body_model} regressor")
        raise ConfigError(f"--estimator {name}: {checkpoint} regresses {own!r} bodies but the run's --body-model is "
                          f"{body_model!r}; {fix}")


def describe_estimator(estimator: MeshEstimator) -> dict:
    """Which estimator ran, without a machine path (run.json): a regressor's ``describe()`` (name,
    body model, checkpoint name, content fingerprint), else its ``name`` and ``body_model``."""
    describe = getattr(estimator, "describe", None)
    return describe() if describe is not None else {"name": estimator.name, "body_model": estimator.body_model}


__all__ = ["Estimate", "MeshEstimator", "get_estimator", "load_image", "check_image", "ESTIMATORS",
           "REGRESSOR_ESTIMATORS", "check_estimator", "describe_estimator", "estimator_body_model",
           "mediapipe_fitter_for_run"]
