"""Anny (the default body model), through the ``anny`` package, with its ``cmu_mb`` rig.

We use the ``cmu_mb`` rig (31 bones named like the CMU mocap skeleton): mocap poses apply to it
directly, and it has a size comparable to SMPL's 24 joints for fitting and priors. The model is
built once (about 80 s and 1.5 GB peak on a 2-core CPU) into the project cache
(:func:`diffusion_hpc.runtime.paths.anny_cache_dir`, about 800 MB) and loads in under a second afterwards.

Canonical frame of Anny: metres, Z up, the body faces -Y, its left side at +X, the root (Hips)
joint at the origin when ``global_orient`` and ``transl`` are zero.

Parameters (see :mod:`diffusion_hpc.body.base`):
    global_orient (B, 3), body_pose (B, 30, 3) axis-angle local rotations of bones 1..30 in Anny's
    ``local-ref`` parameterisation (rotations about each bone's head, in the rest pose's
    world-aligned reference frame), phenotype (B, 6) in [0, 1] (gender, age, muscle, weight,
    height, proportions; 0.5 is the mean), transl (B, 3).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Mapping

import numpy as np
import torch

from diffusion_hpc.body.base import BodyModel, BodyOutput
from diffusion_hpc.body.joint_sets import ANNY_CMU31, ANNY_H36M17_FROM_BONES, H36M17
from diffusion_hpc.runtime.native_log import WARP_CHATTER, filtered_native_stderr
from diffusion_hpc.runtime.paths import anny_cache_dir

log = logging.getLogger(__name__)

PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")
RIG = "cmu_mb"

_LOCK = threading.Lock()
_CORE_CACHE: dict[str, object] = {}


def _load_anny_core():
    """Build or load the Anny model once per process (the cache dir is set before import)."""
    with _LOCK:
        if RIG in _CORE_CACHE:
            return _CORE_CACHE[RIG]

        cache = anny_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("ANNY_CACHE_DIR", str(cache))
        try:  # anny's skinning kernels use NVIDIA warp, which prints a banner on first use
            import warp

            warp.config.quiet = True  # older warp
            warp.config.log_level = 40  # warp >= 1.19: LOG_ERROR (its banner and kernel-cache lines are INFO)
            with filtered_native_stderr(WARP_CHATTER):  # initialise now, without the no-GPU notice
                warp.init()
        except ImportError:  # pragma: no cover
            pass
        import anny
        import anny.paths

        anny.paths.set_anny_cache_path(cache)
        first = not any(cache.glob("**/*"))
        if first:
            log.warning("building the Anny body model into %s (once; about 1-2 minutes)", cache)
        core = anny.Anny(rig=RIG).to(torch.float32)
        core.requires_grad_(False)
        regressor = anny.KeypointsRegressor.coco(core).to(torch.float32)
        _CORE_CACHE[RIG] = (core, regressor)
        return core, regressor


class _DtypeProxy:
    """What ``anny.shape_distribution.SimpleShapeDistribution`` reads from a model (float64 CPU)."""

    dtype = torch.float64
    device = torch.device("cpu")
    phenotype_labels = list(PHENOTYPES)


class AnnyBody(BodyModel):
    """Anny with the ``cmu_mb`` rig as a :class:`BodyModel`.

    Joint sets: ``coco17`` (Anny's vertex regressor), ``h36m17`` (from bones, see
    :data:`~diffusion_hpc.body.joint_sets.ANNY_H36M17_FROM_BONES`), ``anny_cmu31`` (bone heads).
    """

    name = "anny"
    shape_key = "phenotype"
    shape_dim = 6
    num_body_joints = len(ANNY_CMU31) - 1
    joint_sets = ("coco17", "h36m17", "anny_cmu31")
    neutral_shape_value = 0.5

    def __init__(self) -> None:
        super().__init__()
        core, regressor = _load_anny_core()
        # Shared, frozen, not registered as submodules: one copy per process however many wrappers.
        object.__setattr__(self, "_core", core)
        object.__setattr__(self, "_regressor", regressor)
        bones = list(core.bone_labels)
        if tuple(bones) != ANNY_CMU31:
            raise RuntimeError(f"unexpected Anny cmu_mb bone order: {bones}")
        heads, tails = [], []
        for name in H36M17:
            bone, end = ANNY_H36M17_FROM_BONES[name]
            (heads if end == "head" else tails).append(bones.index(bone))
        self._h36m_bone = torch.tensor([bones.index(ANNY_H36M17_FROM_BONES[n][0]) for n in H36M17])
        self._h36m_is_tail = torch.tensor([ANNY_H36M17_FROM_BONES[n][1] == "tail" for n in H36M17])
        # Rx(+90 deg): Z up / facing -Y  ->  -y up / facing -z (towards an OpenCV camera).
        self.canonical_to_camera = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        self._shape_distributions: dict = {}

    @property
    def faces(self) -> torch.Tensor:
        return self._core.faces.long()

    @property
    def vertex_bone_weights(self) -> np.ndarray:
        """(V, K) skinning weights (for body-part labels)."""
        return self._core.vertex_bone_weights.detach().cpu().numpy()

    @property
    def vertex_bone_indices(self) -> np.ndarray:
        """(V, K) bone index per skinning weight."""
        return self._core.vertex_bone_indices.detach().cpu().numpy()

    def sample_shape(self, rng: np.random.Generator, age_years: tuple[float, float] = (16.0, 70.0)) -> np.ndarray:
        """(6,) phenotype drawn from Anny's shape distribution (calibrated on WHO height-for-age
        data), with the morphological age uniform in ``age_years``. Deterministic given ``rng``."""
        from anny.shape_distribution import SimpleShapeDistribution

        key = tuple(float(a) for a in age_years)
        dist = self._shape_distributions.get(key)
        if dist is None:
            age = torch.distributions.Uniform(torch.tensor(key[0], dtype=torch.float64), torch.tensor(key[1], dtype=torch.float64))
            dist = SimpleShapeDistribution(_DtypeProxy(), morphological_age_distribution=age)
            self._shape_distributions[key] = dist
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            _, values = dist.sample(1)
        return np.array([float(values[name][0]) for name in PHENOTYPES], dtype=np.float32).clip(0.0, 1.0)

    def root_rest_position(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # With zero global_orient and transl the root joint sits at the origin.
        return torch.zeros_like(params["transl"])

    def pose_transforms(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, 31, 4, 4) Anny ``local-ref`` pose parameters from our axis-angle parameters."""
        import roma

        rotvec = torch.cat([params["global_orient"][:, None], params["body_pose"]], dim=1)
        batch = rotvec.shape[0]
        transforms = torch.zeros(batch, rotvec.shape[1], 4, 4, dtype=rotvec.dtype, device=rotvec.device)
        transforms[:, :, :3, :3] = roma.rotvec_to_rotmat(rotvec)
        transforms[:, :, 3, 3] = 1.0
        transforms[:, 0, :3, 3] = params["transl"]
        return transforms

    def forward(self, params: Mapping[str, torch.Tensor]) -> BodyOutput:
        """Batched forward pass.

        Args:
            params: global_orient (B, 3), body_pose (B, 30, 3), phenotype (B, 6), transl (B, 3).
        Returns:
            :class:`BodyOutput` with vertices (B, 13718, 3) and joints coco17 (B, 17, 3),
            h36m17 (B, 17, 3), anny_cmu31 (B, 31, 3), float32 metres.
        """
        self.check_params(params)
        params = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in params.items()}
        out = self._core(
            pose_parameters=self.pose_transforms(params),
            phenotype_kwargs=params["phenotype"],
            return_bone_ends=True,
        )
        vertices = out["vertices"]
        heads, tails = out["bone_heads"], out["bone_tails"]
        h36m = torch.where(
            self._h36m_is_tail[None, :, None], tails[:, self._h36m_bone], heads[:, self._h36m_bone]
        )
        coco = self._regressor({"vertices": vertices})[:, :17]
        return BodyOutput(
            vertices=vertices,
            faces=self.faces,
            joints={"coco17": coco, "h36m17": h36m, "anny_cmu31": heads},
        )
