"""The HMR regressor: an image backbone and an iterative error-feedback (IEF) head.

Input: person crops ``(B, 3, S, S)`` float RGB in [0, 1] (ImageNet normalisation happens inside).
Output (:meth:`HMRRegressor.forward`), for a body model with ``J`` body joints and shape size ``D``:

- ``pose6d`` (B, J+1, 6): continuous 6D rotations (Zhou et al. 2019), root first; the two columns
  of the rotation matrix, stored row-major as a (3, 2) matrix, as in SPIN.
- ``rotmat`` (B, J+1, 3, 3): :func:`~diffusion_hpc.geometry.rotations.rot6d_to_rotmat` of ``pose6d``.
- ``global_orient`` (B, 3), ``body_pose`` (B, J, 3): axis-angle (``roma.rotmat_to_rotvec``), in
  the camera frame (OpenCV), ready for :class:`diffusion_hpc.body.BodyModel`.
- ``shape`` (B, D): Anny phenotypes through a sigmoid (they live in [0, 1]), SMPL betas unbounded;
  also under the body model's own key (``phenotype`` / ``betas``).
- ``cam`` (B, 3): SPIN's weak-perspective camera (s, tx, ty) in normalised crop coordinates
  (crop spans [-1, 1]), and ``cam_t`` (B, 3) the equivalent translation
  ``(tx, ty, 2 f / (S s))`` for a pinhole camera of focal ``f = 5000 px`` at ``S = 224`` (SPIN's
  convention; f scales with the crop so the normalised focal ``2 f / S`` is fixed).

Head (HMR, Kanazawa et al. 2018; SPIN, Kolotouros et al. 2019): the state
``x = [pose6d, shape, cam]`` starts at a mean (rest pose, the body upright and facing the camera,
neutral shape, ``s = 0.9``) and is refined ``num_iterations`` times by
``x <- x + MLP([features, x])`` (two 1024-unit layers with dropout, then linear decoders
initialised near zero, so the first forward pass returns about the mean). Each step sees its own
previous estimate: the network learns corrections, not absolute values.

Backbones come from ``transformers`` (no torchvision): ``"resnet50"`` (``ResNetModel``, 2048-d
pooled features), ``"vit"`` (``ViTModel``, the CLS token; ViT-B/16 at 224 px by default) and
``"tiny"`` (a 2-stage basic ResNet for tests). Weights are random unless ``pretrained_path`` names
a local ``save_pretrained`` directory (read with ``local_files_only=True``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from diffusion_hpc.body.joint_sets import ANNY_CMU31
from diffusion_hpc.errors import InputError, MissingModelError
from diffusion_hpc.geometry.camera import SPIN_CROP, SPIN_FOCAL
from diffusion_hpc.geometry.rotations import rot6d_to_rotmat, rotmat_to_rot6d
from diffusion_hpc.runtime.atomic import atomic_path, atomic_write_bytes

#: Focal length in normalised crop units (crop spans [-1, 1]): 2 f / S, independent of S.
NORMALISED_FOCAL = 2.0 * SPIN_FOCAL / SPIN_CROP
#: Initial weak-perspective scale of the mean state (SPIN's mean camera).
MEAN_CAMERA = (0.9, 0.0, 0.0)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BACKBONES = ("resnet50", "vit", "tiny")
#: Keyword arguments of each backbone's ``transformers`` config (random-init architectures).
BACKBONE_CONFIGS: dict[str, dict[str, Any]] = {
    "resnet50": {"kind": "resnet"},  # ResNetConfig defaults = ResNet-50 (bottleneck, 3-4-6-3)
    "vit": {"kind": "vit", "image_size": 224, "patch_size": 16},  # ViT-B/16 defaults
    "tiny": {"kind": "resnet", "embedding_size": 8, "hidden_sizes": [16, 32], "depths": [1, 1], "layer_type": "basic"},
}


@dataclass(frozen=True)
class BodySpec:
    """What the head needs to know about a body model (no model files needed).

    ``canonical_to_camera``: rotation (row-major 3x3) taking the model's canonical frame to the
    camera frame with the body upright and facing the camera (the mean root orientation).
    """

    name: str
    num_body_joints: int
    shape_key: str
    shape_dim: int
    shape_activation: str  # "sigmoid" (values in [0, 1]) or "none"
    neutral_shape: float
    canonical_to_camera: tuple[tuple[float, ...], ...]
    #: joint set whose names give the left/right pairs of (root, body joints), for flips
    pose_joint_set: str
    pose_joint_count: int


#: Body models by name, as data (sizes match :mod:`diffusion_hpc.body`).
BODY_SPECS: dict[str, BodySpec] = {
    "anny": BodySpec(
        "anny", len(ANNY_CMU31) - 1, "phenotype", 6, "sigmoid", 0.5,
        ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)), "anny_cmu31", len(ANNY_CMU31),
    ),
    "smpl": BodySpec(
        "smpl", 23, "betas", 10, "none", 0.0, ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0)), "smpl24", 24,
    ),
    "smplx": BodySpec(
        "smplx", 21, "betas", 10, "none", 0.0, ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0)), "smpl24", 22,
    ),
}  # fmt: skip


def body_spec(body_model) -> BodySpec:
    """The :class:`BodySpec` of a body-model name or :class:`~diffusion_hpc.body.BodyModel` instance.

    An instance's own ``num_body_joints`` / ``shape_dim`` win over the table (so any backend works).
    """
    if isinstance(body_model, BodySpec):
        return body_model
    if isinstance(body_model, str):
        if body_model not in BODY_SPECS:
            raise ValueError(f"unknown body model {body_model!r}; choose one of {sorted(BODY_SPECS)}")
        return BODY_SPECS[body_model]
    base = BODY_SPECS.get(getattr(body_model, "name", ""), BODY_SPECS["smpl"])
    c2c = getattr(body_model, "canonical_to_camera", None)
    return BodySpec(
        name=body_model.name,
        num_body_joints=int(body_model.num_body_joints),
        shape_key=body_model.shape_key,
        shape_dim=int(body_model.shape_dim),
        shape_activation="sigmoid" if body_model.shape_key == "phenotype" else "none",
        neutral_shape=float(getattr(body_model, "neutral_shape_value", 0.0)),
        canonical_to_camera=tuple(map(tuple, c2c.tolist())) if c2c is not None else base.canonical_to_camera,
        pose_joint_set=base.pose_joint_set,
        pose_joint_count=int(body_model.num_body_joints) + 1,
    )


# ----------------------------------------------------------------------------------------------
# Rotation helpers (pure).


def inverse_sigmoid(p: float) -> float:
    return math.log(p / (1.0 - p))


# ----------------------------------------------------------------------------------------------
# Backbone.


def _backbone_module(backbone: str, pretrained_path: str | Path | None, config_overrides: Mapping | None):
    """(transformers model, feature size, config dict) for a backbone name."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
    kind = BACKBONE_CONFIGS[backbone]["kind"]
    from transformers import ResNetConfig, ResNetModel, ViTConfig, ViTModel

    model_cls, config_cls = (ResNetModel, ResNetConfig) if kind == "resnet" else (ViTModel, ViTConfig)
    kwargs = {"add_pooling_layer": False} if kind == "vit" else {}
    if pretrained_path is not None:
        path = Path(pretrained_path).expanduser()
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise MissingModelError(
                f"pretrained backbone directory {path} not found (it must be a transformers save_pretrained "
                f"folder with config.json and weights); pass an existing folder or omit it for random weights"
            )
        try:
            model = model_cls.from_pretrained(str(path), local_files_only=True, **kwargs)
        except (OSError, ValueError) as exc:
            raise MissingModelError(f"cannot load a {model_cls.__name__} from {path}: {exc}") from None
    else:
        if config_overrides is not None:
            config = config_cls.from_dict(dict(config_overrides))
        else:
            config = config_cls(**{k: v for k, v in BACKBONE_CONFIGS[backbone].items() if k != "kind"})
        model = model_cls(config, **kwargs)
    dim = model.config.hidden_sizes[-1] if kind == "resnet" else model.config.hidden_size
    return model, int(dim), kind


class HMRRegressor(nn.Module):
    """Image crop -> body rotations (6D), shape and weak-perspective camera (see the module doc).

    Args:
        body_model_name: ``"anny"`` / ``"smpl"`` / ``"smplx"``, a :class:`BodySpec` or a body-model
            instance; the head's sizes come from its ``num_body_joints`` and ``shape_dim``.
        backbone: ``"resnet50"``, ``"vit"`` or ``"tiny"``.
        pretrained_path: local ``save_pretrained`` folder of the backbone, or ``None`` (random init).
        num_iterations: IEF refinement steps (3 as in HMR / SPIN).
        hidden: width of the IEF MLP.
        backbone_config: a full ``transformers`` config dict (overrides the named architecture;
            used to rebuild exported models without the pretrained folder).
    """

    architecture = "dhpc"
    normalised_focal = NORMALISED_FOCAL

    def __init__(
        self,
        body_model_name="anny",
        backbone: str = "resnet50",
        pretrained_path: str | Path | None = None,
        num_iterations: int = 3,
        hidden: int = 1024,
        dropout: float = 0.5,
        backbone_config: Mapping | None = None,
    ) -> None:
        super().__init__()
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        self.spec = body_spec(body_model_name)
        self.backbone_name = backbone
        self.num_iterations = int(num_iterations)
        self.backbone, self.feature_dim, self._kind = _backbone_module(backbone, pretrained_path, backbone_config)
        self.num_rotations = self.spec.num_body_joints + 1
        self.pose_dim = 6 * self.num_rotations
        self.shape_dim = self.spec.shape_dim
        state_dim = self.pose_dim + self.shape_dim + 3
        self.fc1 = nn.Linear(self.feature_dim + state_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)
        self.dec_pose = nn.Linear(hidden, self.pose_dim)
        self.dec_shape = nn.Linear(hidden, self.shape_dim)
        self.dec_cam = nn.Linear(hidden, 3)
        for layer in (self.dec_pose, self.dec_shape, self.dec_cam):
            nn.init.xavier_uniform_(layer.weight, gain=0.01)
            nn.init.zeros_(layer.bias)
        self.register_buffer("init_state", self.mean_state(self.spec), persistent=True)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def mean_state(spec: BodySpec) -> torch.Tensor:
        """(P,) initial state [pose6d (root = upright facing the camera, joints = rest), shape, cam]."""
        root = torch.tensor(spec.canonical_to_camera, dtype=torch.float32)
        rot = torch.eye(3).expand(spec.num_body_joints + 1, 3, 3).clone()
        rot[0] = root
        if spec.shape_activation == "sigmoid":
            shape = torch.full((spec.shape_dim,), inverse_sigmoid(spec.neutral_shape))
        else:
            shape = torch.full((spec.shape_dim,), float(spec.neutral_shape))
        return torch.cat([rotmat_to_rot6d(rot).reshape(-1), shape, torch.tensor(MEAN_CAMERA)])

    def config(self) -> dict:
        """JSON-able arguments that rebuild this architecture (see :func:`load_regressor`)."""
        return {
            "body_spec": asdict(self.spec),
            "backbone": self.backbone_name,
            "num_iterations": self.num_iterations,
            "hidden": self.fc1.out_features,
            "dropout": self.drop1.p,
            "backbone_config": self.backbone.config.to_dict(),
        }

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, feature_dim) backbone features."""
        x = (images - self.pixel_mean) / self.pixel_std
        if self._kind == "resnet":
            return self.backbone(pixel_values=x).pooler_output.flatten(1)
        out = self.backbone(pixel_values=x, interpolate_pos_encoding=x.shape[-1] != self.backbone.config.image_size)
        return out.last_hidden_state[:, 0]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Regress body parameters from crops; returns the dict described in the module docstring.

        Also ``states`` (num_iterations, B, P): the raw IEF state after each step.
        """
        feats = self.features(images)
        batch = feats.shape[0]
        state = self.init_state.to(feats.dtype).expand(batch, -1)
        states = []
        for _ in range(self.num_iterations):
            h = self.drop1(torch.relu(self.fc1(torch.cat([feats, state], dim=1))))
            h = self.drop2(torch.relu(self.fc2(h)))
            state = state + torch.cat([self.dec_pose(h), self.dec_shape(h), self.dec_cam(h)], dim=1)
            states.append(state)
        return self.decode(state) | {"states": torch.stack(states)}

    def decode(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, P) IEF state -> named outputs (pure given the spec)."""
        import roma

        batch = state.shape[0]
        pose6d = state[:, : self.pose_dim].reshape(batch, self.num_rotations, 6)
        raw_shape = state[:, self.pose_dim : self.pose_dim + self.shape_dim]
        cam = state[:, self.pose_dim + self.shape_dim :]
        rotmat = rot6d_to_rotmat(pose6d)
        rotvec = roma.rotmat_to_rotvec(rotmat)
        shape = torch.sigmoid(raw_shape) if self.spec.shape_activation == "sigmoid" else raw_shape
        return {
            "pose6d": pose6d,
            "rotmat": rotmat,
            "global_orient": rotvec[:, 0],
            "body_pose": rotvec[:, 1:],
            "shape": shape,
            self.spec.shape_key: shape,
            "cam": cam,
            "cam_t": weak_perspective_to_translation(cam),
        }


def weak_perspective_to_translation(cam: torch.Tensor, normalised_focal: float = NORMALISED_FOCAL) -> torch.Tensor:
    """(B, 3) SPIN camera (s, tx, ty) -> (B, 3) translation (tx, ty, 2f / (S s)); s is clamped > 0."""
    s = cam[:, 0].clamp(min=1e-3)
    return torch.stack([cam[:, 1], cam[:, 2], normalised_focal / s], dim=1)


def project_normalised(points: torch.Tensor, cam_t: torch.Tensor, normalised_focal: float = NORMALISED_FOCAL) -> torch.Tensor:
    """(B, N, 3) model-frame points + (B, 3) translation -> (B, N, 2) normalised crop coordinates.

    Pinhole with the principal point at the crop centre: ``u = f_n (X + t) / (Z + t_z)``, where the
    crop spans [-1, 1] (pixel u_px = (u + 1) S / 2 - 0.5 under the pixel-centre convention).
    """
    p = points + cam_t[:, None]
    z = p[..., 2:3].clamp(min=1e-3)
    return normalised_focal * p[..., :2] / z


def body_device(body_model) -> torch.device:
    """The device a body model computes on: that of its buffers (SMPL's ``smplx`` buffers, Anny's
    index buffers, which follow its shared core), else the CPU."""
    tensor = next(iter(body_model.buffers()), None) if isinstance(body_model, nn.Module) else None
    return torch.device("cpu") if tensor is None else tensor.device


def body_on_device(body_model, device: torch.device | str):
    """``body_model`` computing on ``device``: itself when it is there or cannot move, else a copy
    moved there (the process-wide instance stays put).

    SMPL's copy holds its own buffers on ``device``; Anny's copy takes the process's shared core on
    ``device`` (:class:`~diffusion_hpc.body.anny.AnnyBody`: the model is not loaded again, and every
    Anny body on that device shares it)."""
    device = torch.device(device)
    movable = isinstance(body_model, nn.Module) and next(iter(body_model.buffers()), None) is not None
    if not movable or body_device(body_model) == device:
        return body_model
    import copy

    return copy.deepcopy(body_model).to(device)


def regress(regressor: nn.Module, body_model, images: torch.Tensor, with_vertices: bool = False) -> dict[str, torch.Tensor]:
    """Regressor + body-model forward: the regressor's outputs plus the body's joints.

    Works for every network of :mod:`diffusion_hpc.hmr` (ours, SPIN's, HMR 2.0's): it reads the
    shape key from ``regressor.spec`` and the camera from ``regressor.normalised_focal`` (SPIN's
    ``2 * 5000 / 224`` when absent). Adds ``joints`` ({joint set: (B, J, 3)}, body at the origin: no
    translation), ``vertices`` (B, V, 3) if ``with_vertices``, and ``keypoints2d`` (B, 17, 2) normalised crop coordinates
    of the projected COCO-17 joints (with ``cam_t``). The body model runs on its own device
    (:func:`body_device`: the training device for a body moved by :func:`body_on_device`), in float32;
    results come back to the images' device (no copy when the devices agree).
    """
    pred = regressor(images)
    spec = regressor.spec
    device = body_device(body_model)
    params = {  # the body model runs in float32 whatever the regressor's precision
        "global_orient": pred["global_orient"].to(device, torch.float32),
        "body_pose": pred["body_pose"].to(device, torch.float32),
        spec.shape_key: pred["shape"].to(device, torch.float32),
        "transl": torch.zeros_like(pred["global_orient"]).to(device, torch.float32),
    }
    out = body_model(params)
    pred["joints"] = {k: v.to(images.device) for k, v in out.joints.items()}
    if with_vertices:
        pred["vertices"] = out.vertices.to(images.device)
    pred["keypoints2d"] = project_normalised(pred["joints"]["coco17"], pred["cam_t"],
                                             getattr(regressor, "normalised_focal", NORMALISED_FOCAL))
    return pred


# ----------------------------------------------------------------------------------------------
# Export / import.

EXPORT_WEIGHTS = "regressor.safetensors"
EXPORT_CONFIG = "regressor.json"


def export_regressor(model: HMRRegressor, out_dir: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``regressor.safetensors`` (weights) and ``regressor.json`` (architecture) to ``out_dir``.

    Each file is replaced atomically. ``metadata``: strings stored in the safetensors header
    (read back with :func:`export_metadata`), e.g. the validation a ``best`` export came from.
    """
    from safetensors.torch import save_file


    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / EXPORT_CONFIG, json.dumps(model.config(), indent=1, sort_keys=True, default=str).encode())
    with atomic_path(out / EXPORT_WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata=None if metadata is None else {str(k): str(v) for k, v in metadata.items()})
    return out / EXPORT_WEIGHTS


def export_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors header metadata of an exported regressor (folder or weights file); {} if none."""
    from safetensors import safe_open

    p = Path(path)
    p = p / EXPORT_WEIGHTS if p.is_dir() else p
    with safe_open(str(p), framework="pt") as f:
        return dict(f.metadata() or {})


def regressor_from_config(config: Mapping) -> HMRRegressor:
    """Rebuild an (untrained) :class:`HMRRegressor` from :meth:`HMRRegressor.config`."""
    spec = BodySpec(**{k: (tuple(map(tuple, v)) if k == "canonical_to_camera" else v) for k, v in config["body_spec"].items()})
    return HMRRegressor(
        spec,
        backbone=config["backbone"],
        num_iterations=config["num_iterations"],
        hidden=config["hidden"],
        dropout=config["dropout"],
        backbone_config=config["backbone_config"],
    )


def load_regressor(path: str | Path) -> HMRRegressor:
    """Load an exported regressor (a folder with ``regressor.json`` + ``regressor.safetensors``)."""
    from safetensors.torch import load_file

    root = Path(path)
    if root.is_file():
        root = root.parent
    cfg, weights = root / EXPORT_CONFIG, root / EXPORT_WEIGHTS
    if not (cfg.is_file() and weights.is_file()):
        raise MissingModelError(f"{root} holds no exported regressor ({EXPORT_CONFIG} + {EXPORT_WEIGHTS})")
    config = json.loads(cfg.read_text())
    if config.get("architecture", "dhpc") != "dhpc":
        raise InputError(f"{root} holds a {config['architecture']} network fine-tuned by dhpc train; load it with "
                         "diffusion_hpc.hmr.init.load_regressor_spec (dhpc evaluate / generate take it as dhpc:RUN)")
    model = regressor_from_config(config)
    load_state_strict(model, load_file(str(weights)), source=str(weights))
    return model


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict(state)`` with one clear :class:`InputError` on any key or shape mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches ({'; '.join(wrong[:4])}{'; ...' if len(wrong) > 4 else ''})")
        if missing:
            parts.append(f"{len(missing)} missing keys ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''})")
        raise InputError(
            f"{source} does not fit this regressor: {'; '.join(parts)}. Use the same body model and backbone "
            "it was trained with"
        )
    model.load_state_dict(dict(state), strict=True)
