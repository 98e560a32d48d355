"""The body-model interface: batched parameters -> vertices, faces and named joint sets.

Every backend (Anny by default, SMPL / SMPL-X through ``smplx``) returns the same
:class:`BodyOutput`, in float32, with gradients flowing from the parameters.

Parameters are a plain ``dict[str, Tensor]`` (batched first), so they can be written to and read
from ``.npz`` files unchanged. Keys shared by all backends:

- ``global_orient`` (B, 3): axis-angle rotation of the root, about the root joint.
- ``body_pose`` (B, J-1, 3): axis-angle local rotations of the other joints, relative to rest.
- ``transl`` (B, 3): translation added to every vertex and joint, metres.

plus one shape key, :attr:`BodyModel.shape_key` (``phenotype`` for Anny, ``betas`` for SMPL).
The frame of the output is the frame the parameters are expressed in: a dataset stores them in the
camera frame (OpenCV: x right, y down, z forward), so the forward pass gives camera-frame vertices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

Params = dict[str, torch.Tensor]


@dataclass
class BodyOutput:
    """Result of a batched forward pass.

    Attributes:
        vertices: (B, V, 3) float32, metres.
        faces: (F, 3) int64 triangle indices (shared by the batch).
        joints: joint-set name -> (B, J, 3) float32 joints in the same frame as ``vertices``.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    joints: dict[str, torch.Tensor] = field(default_factory=dict)


class BodyModel(torch.nn.Module):
    """Interface of a parametric body model. Subclasses implement :meth:`forward`."""

    #: registry name, e.g. ``"anny"``
    name: str = ""
    #: name of the shape parameter in :data:`Params`
    shape_key: str = ""
    #: number of values of the shape parameter
    shape_dim: int = 0
    #: number of joints in ``body_pose`` (root excluded)
    num_body_joints: int = 0
    #: joint sets this model provides in :attr:`BodyOutput.joints`
    joint_sets: tuple[str, ...] = ()
    #: (3, 3) rotation taking the model's canonical frame (body upright, facing its own "front")
    #: to the OpenCV camera frame with the person upright and facing the camera.
    canonical_to_camera: torch.Tensor

    def forward(self, params: Mapping[str, torch.Tensor]) -> BodyOutput:  # pragma: no cover
        raise NotImplementedError

    @property
    def faces(self) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def neutral_params(self, batch_size: int = 1) -> Params:
        """Rest pose, mean shape, no translation."""
        shape = torch.full((batch_size, self.shape_dim), self.neutral_shape_value)
        return {
            "global_orient": torch.zeros(batch_size, 3),
            "body_pose": torch.zeros(batch_size, self.num_body_joints, 3),
            self.shape_key: shape,
            "transl": torch.zeros(batch_size, 3),
        }

    neutral_shape_value: float = 0.0

    def sample_shape(self, rng, **kwargs) -> "np.ndarray":  # pragma: no cover
        """(shape_dim,) shape parameters drawn from the model's shape distribution, given ``rng``."""
        raise NotImplementedError

    def root_rest_position(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, 3) position of the root joint at rest for this shape, the pivot of ``global_orient``."""
        raise NotImplementedError  # pragma: no cover

    def check_params(self, params: Mapping[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` naming the key and the expected shape if ``params`` is malformed."""
        expected = {
            "global_orient": (3,),
            "body_pose": (self.num_body_joints, 3),
            self.shape_key: (self.shape_dim,),
            "transl": (3,),
        }
        batch = None
        for key, tail in expected.items():
            if key not in params:
                raise ValueError(f"{self.name} parameters lack {key!r}; expected keys {sorted(expected)}")
            value = params[key]
            if tuple(value.shape[1:]) != tail:
                raise ValueError(
                    f"{self.name} parameter {key!r} has shape {tuple(value.shape)}; expected (B, {', '.join(map(str, tail))})"
                )
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise ValueError(f"{self.name} parameters disagree on batch size ({key!r}: {value.shape[0]} vs {batch})")


def transform_params(
    model: BodyModel, params: Mapping[str, torch.Tensor], rotation: torch.Tensor, translation: torch.Tensor
) -> Params:
    """Parameters whose forward pass equals ``rotation @ x + translation`` of the original body.

    Args:
        model: the body model (gives the rest root position, the pivot of ``global_orient``).
        params: batched parameters.
        rotation: (B, 3, 3) or (3, 3).
        translation: (B, 3) or (3,).

    Both backends rotate about the root joint p: x' = R_g (x - p) + p + t. Composing with (R, T)
    gives R R_g (x - p) + p + [R (p + t) - p + T].
    """
    import roma

    batch = params["global_orient"].shape[0]
    dtype = params["global_orient"].dtype
    rotation = rotation.to(dtype).expand(batch, 3, 3)
    translation = translation.to(dtype).expand(batch, 3)
    pivot = model.root_rest_position(params).to(dtype)
    r_global = roma.rotvec_to_rotmat(params["global_orient"])
    out = dict(params)
    out["global_orient"] = roma.rotmat_to_rotvec(rotation @ r_global)
    out["transl"] = (rotation @ (pivot + params["transl"])[..., None])[..., 0] - pivot + translation
    return out
