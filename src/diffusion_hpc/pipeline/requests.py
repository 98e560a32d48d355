"""Sample requests: every random draw of a sample, from (run seed, sample index) alone.

A :class:`SampleRequest` fixes the pose, the body shape, the camera and the seed of the image
generator before any model runs, so a sample is the same whatever batch, shard or process makes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data.seeds import sample_key, sample_rng, sample_seed
from diffusion_hpc.geometry.camera import intrinsics_from_fov, rotation_x, rotation_y, rotation_z


@dataclass
class SampleRequest:
    """What one sample will be. Angles in radians; rotation (3, 3) takes the body model's canonical
    frame to camera orientation (placement in depth is solved later, once the mesh is known)."""

    index: int
    key: str
    seed: int
    pose_index: int
    shape: np.ndarray  # (shape_dim,)
    K: np.ndarray  # (3, 3)
    rotation: np.ndarray  # (3, 3) canonical -> camera
    fill: float
    offset: tuple[float, float]
    generator_seed: int


def camera_rotation(canonical_to_camera: np.ndarray, yaw: float, elevation: float, roll: float) -> np.ndarray:
    """(3, 3) rotation: the body turned by ``yaw`` about its vertical axis, seen from ``elevation``
    above (positive: the camera looks down, the head comes nearer), with camera ``roll``.

    In the upright camera frame the body's vertical axis is -y, so yaw is a rotation about y,
    elevation about x, roll about the optical axis z.
    """
    return rotation_z(roll) @ rotation_x(elevation) @ rotation_y(yaw) @ canonical_to_camera


def make_request(config: GenerateConfig, index: int, num_poses: int, shape_sampler, canonical_to_camera: np.ndarray) -> SampleRequest:
    """Draw everything random about sample ``index``.

    Args:
        shape_sampler: callable(rng) -> (shape_dim,) array (the body model's shape distribution).
        canonical_to_camera: (3, 3) of the body model.
    """
    rng = sample_rng(config.seed, index)
    cam = config.camera
    height, width = config.image_size
    pose_index = int(rng.integers(num_poses))
    fov = rng.uniform(*cam.fov_deg)
    yaw, elevation, roll = (np.deg2rad(rng.uniform(*r)) for r in (cam.yaw_deg, cam.elevation_deg, cam.roll_deg))
    fill = float(rng.uniform(*cam.fill))
    offset = (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)))
    generator_seed = int(rng.integers(2**63 - 1))
    shape = np.asarray(shape_sampler(np.random.default_rng(rng.integers(2**63 - 1))), np.float32)
    return SampleRequest(
        index=index,
        key=sample_key(index),
        seed=sample_seed(config.seed, index),
        pose_index=pose_index,
        shape=shape,
        K=intrinsics_from_fov(fov, width, height),
        rotation=camera_rotation(canonical_to_camera, yaw, elevation, roll),
        fill=fill,
        offset=offset,
        generator_seed=generator_seed,
    )
