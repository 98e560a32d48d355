"""SMPL and SMPL-X through ``smplx``, from model files the user downloaded (licence-gated).

Only ``.npz`` model files are read, and only if they hold plain arrays (checked with
``allow_pickle=False`` first): we never unpickle files we did not write. The official ``.pkl``
files must be converted to ``.npz`` once by the user (e.g. with the ``smplx`` repository's tools).

Canonical frame of SMPL: metres, Y up, the body faces +Z, its left side at +X.
Joint sets: ``smpl24`` (the kinematic joints), ``coco17`` (SMPL joints plus the nose, eye and
ear vertices smplx selects), ``h36m17`` (approximated from SMPL joints and the head-top vertex;
use an H36M joint regressor for benchmark evaluation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from diffusion_hpc.body.base import BodyModel, BodyOutput
from diffusion_hpc.body.joint_sets import COCO17, H36M17
from diffusion_hpc.errors import MissingModelError

HOW_TO_GET = (
    "register at https://smpl.is.tue.mpg.de (SMPL) or https://smpl-x.is.tue.mpg.de (SMPL-X), download the "
    "model, convert it to .npz, and pass its file or folder with --smpl-path"
)

# Index of each COCO-17 joint in smplx's SMPL output (24 joints, then nose, reye, leye, rear, lear, ...).
_SMPL_COCO17 = {
    "nose": 24, "left_eye": 26, "right_eye": 25, "left_ear": 28, "right_ear": 27,
    "left_shoulder": 16, "right_shoulder": 17, "left_elbow": 18, "right_elbow": 19,
    "left_wrist": 20, "right_wrist": 21, "left_hip": 1, "right_hip": 2, "left_knee": 4,
    "right_knee": 5, "left_ankle": 7, "right_ankle": 8,
}  # fmt: skip
# H36M-17 from SMPL joints; head_top from a vertex (SMPL vertex 411 is the crown of the head).
_SMPL_H36M17 = {
    "pelvis": 0, "right_hip": 2, "right_knee": 5, "right_ankle": 8, "left_hip": 1, "left_knee": 4,
    "left_ankle": 7, "spine": 6, "thorax": 12, "neck": 15, "head_top": -1, "left_shoulder": 16,
    "left_elbow": 18, "left_wrist": 20, "right_shoulder": 17, "right_elbow": 19, "right_wrist": 21,
}  # fmt: skip
_HEAD_TOP_VERTEX = 411


def resolve_model_file(model_path: str | Path | None, kind: str, gender: str) -> Path:
    """The ``.npz`` model file for ``kind``/``gender`` from a file or folder path, or one clear error."""
    if model_path is None:
        raise MissingModelError(f"body model {kind!r} needs its model file: {HOW_TO_GET}")
    path = Path(model_path).expanduser()
    if path.is_dir():
        stem = f"{kind.upper()}_{gender.upper()}"
        candidates = [path / f"{stem}.npz", path / kind / f"{stem}.npz"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            pkl = [c.with_suffix(".pkl") for c in candidates if c.with_suffix(".pkl").is_file()]
            hint = f" (found {pkl[0].name}: convert it to .npz)" if pkl else ""
            raise MissingModelError(
                f"no {stem}.npz in {path} or {path / kind}{hint}; {HOW_TO_GET}"
            )
        path = found
    if not path.is_file():
        raise MissingModelError(f"--smpl-path {path} does not exist; {HOW_TO_GET}")
    if path.suffix != ".npz":
        raise MissingModelError(
            f"--smpl-path {path}: only .npz model files are read (a .pkl would have to be unpickled); convert it to .npz"
        )
    return path


def load_plain_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz, refusing any that would need unpickling."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:
        raise MissingModelError(f"{path} holds pickled objects ({exc}); re-save it with plain arrays") from None
    except Exception as exc:  # zipfile.BadZipFile, OSError
        raise MissingModelError(f"{path} is not a readable .npz model file ({exc})") from None


class SMPLBody(BodyModel):
    """SMPL (``kind="smpl"``) or SMPL-X (``kind="smplx"``) as a :class:`BodyModel`."""

    shape_key = "betas"
    shape_dim = 10
    joint_sets = ("coco17", "h36m17", "smpl24")
    neutral_shape_value = 0.0

    def __init__(self, kind: str = "smpl", model_path: str | Path | None = None, gender: str = "neutral") -> None:
        super().__init__()
        import smplx

        if kind not in ("smpl", "smplx"):
            raise ValueError(f"kind must be 'smpl' or 'smplx', got {kind!r}")
        self.name = kind
        path = resolve_model_file(model_path, kind, gender)
        arrays = load_plain_npz(path)
        if kind == "smpl":
            missing = {"v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table"} - set(arrays)
            if missing:
                raise MissingModelError(f"{path} is not an SMPL model file: it lacks {sorted(missing)}")
            self.model = smplx.SMPL(str(path), data_struct=smplx.utils.Struct(**arrays), num_betas=10, gender=gender)
            self.num_body_joints = 23
        else:
            # smplx reads SMPL-X npz files itself; the plain-array check above makes that safe.
            self.model = smplx.SMPLX(str(path), ext="npz", num_betas=10, gender=gender, use_pca=False)
            self.num_body_joints = 21
        self.model.requires_grad_(False)
        # smplx appends nose, eyes and ears after the kinematic joints: at 24 for SMPL, 55 for SMPL-X.
        face_base = 24 if kind == "smpl" else 55
        self._coco = torch.tensor([i if i < 24 else face_base + i - 24 for i in (_SMPL_COCO17[n] for n in COCO17)])
        self._h36m = torch.tensor([_SMPL_H36M17[n] for n in H36M17])
        self.joint_sets = ("coco17", "h36m17", "smpl24") if kind == "smpl" else ("coco17", "h36m17")
        # Rx(180 deg): Y up / facing +Z  ->  -y up / facing -z.
        self.canonical_to_camera = torch.diag(torch.tensor([1.0, -1.0, -1.0]))

    @property
    def faces(self) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.model.faces, dtype=np.int64))

    def sample_shape(self, rng: np.random.Generator, **_: object) -> np.ndarray:
        """(10,) betas ~ N(0, 1), clipped to [-2.5, 2.5]."""
        return np.clip(rng.standard_normal(10), -2.5, 2.5).astype(np.float32)

    def root_rest_position(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        batch = params["betas"].shape[0]
        out = self.model(betas=params["betas"].float(), body_pose=torch.zeros(batch, 3 * self.num_body_joints),
                         global_orient=torch.zeros(batch, 3), transl=torch.zeros(batch, 3))
        return out.joints[:, 0]

    def forward(self, params: Mapping[str, torch.Tensor]) -> BodyOutput:
        """Batched forward pass: global_orient (B, 3), body_pose (B, 23|21, 3), betas (B, 10), transl (B, 3)."""
        self.check_params(params)
        p = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in params.items()}
        batch = p["betas"].shape[0]
        out = self.model(
            betas=p["betas"],
            body_pose=p["body_pose"].reshape(batch, -1),
            global_orient=p["global_orient"],
            transl=p["transl"],
        )
        joints = out.joints
        if self.name == "smpl":
            head_top = out.vertices[:, _HEAD_TOP_VERTEX : _HEAD_TOP_VERTEX + 1]
        else:  # no agreed SMPL-X crown vertex: the head joint stands in
            head_top = joints[:, 15:16]
        with_top = torch.cat([joints, head_top], dim=1)
        h36m_index = torch.where(self._h36m < 0, torch.tensor(joints.shape[1]), self._h36m)
        result = {"coco17": joints[:, self._coco], "h36m17": with_top[:, h36m_index]}
        if self.name == "smpl":
            result["smpl24"] = joints[:, :24]
        return BodyOutput(vertices=out.vertices, faces=self.faces, joints=result)
