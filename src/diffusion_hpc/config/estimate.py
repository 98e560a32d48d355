"""The config of ``dhpc estimate`` (:func:`diffusion_hpc.estimate.run.estimate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, get_args

from pydantic import Field, field_validator, model_validator

from diffusion_hpc.config.base import CommandConfig
from diffusion_hpc.runtime.device import check_device_name

#: the estimators that regress a mesh from a checkpoint (their body model is the checkpoint's)
REGRESSORS = ("hmr", "spin", "hmr2")
#: the MediaPipe fit's lifter choices besides a weights file
LIFTER_CHOICES = ("on", "off")


#: a view of a photo the MediaPipe estimator can read and merge (diffusion_hpc.estimate.views)
LandmarkView = Literal["image", "mirror", "grey"]
#: the views, in reading order
LANDMARK_VIEWS: tuple[str, ...] = get_args(LandmarkView)
#: the views it reads when none are set (one reading; estimate.views has the figures of the others)
DEFAULT_LANDMARK_VIEWS = ("image",)


def check_landmark_views(value: Optional[list[str]]) -> Optional[list[str]]:
    """A ``landmark_views`` setting in reading order (:data:`LANDMARK_VIEWS`); None stays None.

    Raises:
        ValueError: a view not in :data:`LANDMARK_VIEWS`, a repeated one, or no ``image`` (before a model loads).
    """
    if value is None:
        return None
    value = list(value)
    if any(v not in LANDMARK_VIEWS for v in value) or len(set(value)) != len(value) or "image" not in value:
        raise ValueError(f"landmark_views: {value} must name distinct views of {list(LANDMARK_VIEWS)}, among them image "
                         "(the photo as it is), e.g. --landmark-views image (one reading) or image mirror grey")
    return [v for v in LANDMARK_VIEWS if v in value]


def check_lifter(value: Optional[str]) -> Optional[str]:
    """A ``lifter`` setting: ``on``, ``off`` or an existing ``.safetensors`` file (any other value fails here,
    before a model loads)."""
    if value is None or value in LIFTER_CHOICES:
        return value
    path = Path(value).expanduser()
    if path.suffix != ".safetensors":
        raise ValueError(f"lifter: {value!r} is neither on, off nor a lifter weights file (.safetensors, made by "
                         "scripts/train_lifter.py --out FILE)")
    if not path.is_file():
        raise ValueError(f"lifter: {value} does not exist; make it with `python scripts/train_lifter.py --out "
                         f"{value}`, or pass --lifter on (the shipped lifter) or off")
    return value


class EstimateConfig(CommandConfig):
    """Body meshes for the people in images: one result per image in one npz, plus previews."""

    images: list[Path] = Field(min_length=1)
    """image files or folders (a folder's images sorted by name)"""
    out: Path
    """results file (.npz)"""
    estimator: Literal["mediapipe", "hmr", "spin", "hmr2"] = "mediapipe"
    """mediapipe: landmarks + body-model fit; hmr: a regressor from dhpc train (the checkpoint is its run
    folder); spin: SPIN's SMPL model_checkpoint.pt; hmr2: a 4D-Humans HMR 2.0 checkpoint (both with the SMPL
    model files)"""
    checkpoint: Optional[Path] = None
    """hmr / spin / hmr2: the regressor's weights"""
    mean_params: Optional[Path] = None
    """spin: smpl_mean_params.npz, when the checkpoint lacks the mean-parameter buffers"""
    body_model: Optional[Literal["anny", "smpl", "smplx"]] = None
    """body model of the MediaPipe fit (default: anny); a regressor's is its checkpoint's"""
    smpl_path: Optional[Path] = None
    """SMPL / SMPL-X model file or folder (the smpl / smplx fit, SMPL regressors, spin)"""
    preview: Optional[Path] = None
    """folder for the preview PNGs (default: beside the results file, e.g. fits_preview/ for fits.npz)"""
    batch_size: int = Field(16, ge=1)
    """images estimated together"""
    prior: bool = True
    """mediapipe: regularise the fit with the pose prior (False: a plain L2 / joint-limit penalty)"""
    masks: bool = True
    """mediapipe: keep the fit on the person mask the segmenter finds in each photo (a landmark on a background
    object or another person no longer drags the body); --no-masks fits to the landmarks alone"""
    lifter: Optional[str] = None
    """mediapipe: the fit's 3D target: on (the shipped learned lifter of MediaPipe's landmarks; default), off
    (MediaPipe's world landmarks) or a lifter weights file made by scripts/train_lifter.py"""
    compile_fit: bool = False
    """mediapipe with Anny: run the fit compiled (torch.compile; needs a C++ compiler): the same fits, about 2.5x
    less CPU per image, after a one-off compilation of about a minute per process; pays off from a few hundred
    images"""
    landmark_views: Optional[list[LandmarkView]] = None
    """mediapipe: the views of each photo MediaPipe Pose reads, their landmarks merged (per landmark the median;
    diffusion_hpc.estimate.views): image (as it is), mirror (flipped left to right), grey (the background away
    from the person painted grey). Not set: image (one reading); image mirror grey costs about three"""
    landmark_runtime: Optional[Literal["mediapipe", "torch"]] = None
    """mediapipe: how MediaPipe Pose's person detector and landmark model run: mediapipe (MediaPipe's own graph, one
    image at a time on the CPU) or torch (the same weights as torch operations, a batch at once on --device in
    --dtype; float16 for bfloat16). Not set: torch when --device is a GPU, else mediapipe. The fit itself runs on
    the CPU either way"""
    segmenter: str = "mediapipe"
    """the person masks' segmenter: mediapipe (selfie, ships in the wheel), mediapipe:pose, or a local transformers
    instance-segmentation checkpoint folder"""
    device: str = "auto"
    """torch device of the regressor (hmr / spin / hmr2) or of MediaPipe Pose's models (mediapipe with
    landmark_runtime torch; the fit runs on the CPU): auto (the first CUDA device, else the CPU), cpu, cuda, cuda:N
    or mps"""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """precision of the regressor or of Pose's models on the device: auto (float32), float32, float16 (GPU only) or
    bfloat16 (Pose's models: float16)"""

    _device = field_validator("device")(check_device_name)
    _lifter = field_validator("lifter")(check_lifter)
    _landmark_views = field_validator("landmark_views")(check_landmark_views)

    @property
    def fit_body_model(self) -> str:
        """The MediaPipe fit's body model (``body_model``, default ``"anny"``)."""
        return self.body_model or "anny"

    @property
    def preview_dir(self) -> Path:
        """Where the previews go: ``preview``, else ``OUT_preview`` beside ``out``."""
        return self.preview if self.preview is not None else self.out.with_name(self.out.stem + "_preview")

    @model_validator(mode="after")
    def _rules(self):
        if self.out.suffix != ".npz":
            raise ValueError(f"out: {self.out} must end in .npz, e.g. {self.out.with_suffix('.npz')}")
        if self.estimator in REGRESSORS:
            if self.checkpoint is None:
                raise ValueError(f"checkpoint: --estimator {self.estimator} needs --checkpoint PATH (the "
                                 "regressor's weights)")
            if self.body_model is not None:
                raise ValueError(f"body_model: --estimator {self.estimator} uses its checkpoint's body model; leave "
                                 f"--body-model {self.body_model} out (pass --smpl-path for SMPL checkpoints)")
            if not self.prior:
                raise ValueError(f"prior: --no-prior changes the MediaPipe fit; --estimator {self.estimator} "
                                 "regresses without a pose prior, leave --no-prior out")
            if self.lifter is not None:
                raise ValueError(f"lifter: --lifter changes the MediaPipe fit; --estimator {self.estimator} "
                                 f"regresses without landmarks, leave --lifter {self.lifter} out")
            if self.compile_fit:
                raise ValueError(f"compile_fit: --compile-fit compiles the MediaPipe fit; --estimator {self.estimator} "
                                 "regresses without a fit, leave --compile-fit out")
            if self.landmark_runtime is not None:
                raise ValueError(f"landmark_runtime: --landmark-runtime runs MediaPipe Pose's models for the MediaPipe "
                                 f"fit; --estimator {self.estimator} regresses without them, leave it out")
            if self.landmark_views is not None:
                raise ValueError(f"landmark_views: --landmark-views sets what MediaPipe Pose reads for the MediaPipe "
                                 f"fit; --estimator {self.estimator} regresses without it, leave it out")
            if not self.masks:
                raise ValueError(f"masks: --no-masks changes the MediaPipe fit; --estimator {self.estimator} "
                                 "regresses from the crop without person masks, leave --no-masks out")
            if self.estimator in ("spin", "hmr2") and self.smpl_path is None:
                raise ValueError(f"smpl_path: --estimator {self.estimator} regresses SMPL parameters; pass --smpl-path PATH "
                                 "(the SMPL model file or folder)")
        else:
            if self.checkpoint is not None:
                raise ValueError(f"checkpoint: --checkpoint is for --estimator hmr|spin|hmr2; the {self.estimator} fit "
                                 "has no checkpoint")
            if self.fit_body_model in ("smpl", "smplx") and self.smpl_path is None:
                raise ValueError(f"smpl_path: body_model {self.body_model!r} needs the model files: pass "
                                 "--smpl-path PATH")
            if self.compile_fit and self.fit_body_model != "anny":
                raise ValueError(f"compile_fit: --compile-fit compiles the fit of Anny's bone chain; the "
                                 f"{self.fit_body_model} fit runs eagerly only, leave --compile-fit out")
        if self.mean_params is not None and self.estimator != "spin":
            raise ValueError("mean_params: --mean-params is for --estimator spin")
        return self
