"""Anny (the default body model), through the ``anny`` package, with its ``cmu_mb`` rig.

We use the ``cmu_mb`` rig (31 bones named like the CMU mocap skeleton): mocap poses apply to it
directly, and it has a size comparable to SMPL's 24 joints for fitting and priors. The model is
built once (about 80 s and 1.5 GB peak on a 2-core CPU) into the project cache
(:func:`diffusion_hpc.runtime.paths.anny_cache_dir`, about 800 MB) and loads in under a second afterwards.

Device and precision: the model (its ``anny.Anny`` core, about 26 MB of buffers, and the COCO
regressor) is loaded once per process on the CPU in float32 and shared by every :class:`AnnyBody`.
``body.to(device, dtype)`` (or ``AnnyBody(device=..., dtype=...)``) points the body at the process's
copy on that device and precision, made once from the loaded one (the model is not read again, the
CPU copy is never changed), so every body on the training GPU shares one copy there too.

Canonical frame of Anny: metres, Z up, the body faces -Y, its left side at +X, the root (Hips)
joint at the origin when ``global_orient`` and ``transl`` are zero.

Parameters (see :mod:`diffusion_hpc.body.base`):
    global_orient (B, 3), body_pose (B, 30, 3) axis-angle local rotations of bones 1..30 in Anny's
    ``local-ref`` parameterisation (rotations about each bone's head, in the rest pose's
    world-aligned reference frame), phenotype (B, 6) in [0, 1] (gender, age, muscle, weight,
    height, proportions; 0.5 is the mean), transl (B, 3).

:class:`AnnyReducedForward` gives the COCO-17 keypoints and bone heads without the per-vertex work
(exact, for optimisation loops such as the mesh estimator's fit).
"""

from __future__ import annotations

import copy
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
#: (rig, device, dtype) -> (anny.Anny core, COCO KeypointsRegressor): one copy per process for each
_CORE_CACHE: dict[tuple[str, torch.device, torch.dtype], tuple] = {}
#: where the model is loaded: every other placement is a copy of this one
LOADED_PLACEMENT = (torch.device("cpu"), torch.float32)


def module_copy_to(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``module`` with every tensor it holds on ``device``, the floating ones in ``dtype``.

    Buffers, parameters and plain tensor attributes (``anny.Anny.faces`` is one, not a buffer) are
    moved straight to their new placement: ``module`` is untouched and never copied on its own
    device first. The rest of its state (labels, the skinning function) is deep-copied as usual.
    """
    memo: dict[int, object] = {}
    for sub in module.modules():
        for name, value in [*sub._parameters.items(), *sub._buffers.items(), *vars(sub).items()]:
            if isinstance(value, torch.Tensor) and id(value) not in memo:
                moved = value.detach().to(device, dtype if value.is_floating_point() else None)
                if isinstance(value, torch.nn.Parameter):
                    moved = torch.nn.Parameter(moved, requires_grad=value.requires_grad)
                memo[id(value)] = moved
    return copy.deepcopy(module, memo)


def _load_anny_core(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """The Anny core and its COCO-17 regressor on ``device`` in ``dtype``, once per process each.

    The model is built or loaded (the cache dir is set before import) on the CPU in float32, once;
    another placement is :func:`module_copy_to` of that one, made on first use and kept.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with _LOCK:
        key = (RIG, device, dtype)
        if key not in _CORE_CACHE:
            loaded = _CORE_CACHE.get((RIG, *LOADED_PLACEMENT)) or _build_anny_core()
            if key not in _CORE_CACHE:  # another placement than the loaded one
                _CORE_CACHE[key] = tuple(module_copy_to(module, device, dtype) for module in loaded)
        return _CORE_CACHE[key]


def _build_anny_core():
    """Build or load the Anny model on the CPU in float32 and keep it (under ``_LOCK``)."""
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
    _CORE_CACHE[(RIG, *LOADED_PLACEMENT)] = (core, regressor)
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

    Args:
        device, dtype: where the forward pass runs and in which precision (default: the CPU,
            float32); ``.to(device, dtype)`` moves the body later. The model is shared: see the
            module's docstring. ``canonical_to_camera`` stays a CPU float32 constant (as SMPL's).
    """

    name = "anny"
    shape_key = "phenotype"
    shape_dim = 6
    num_body_joints = len(ANNY_CMU31) - 1
    joint_sets = ("coco17", "h36m17", "anny_cmu31")
    neutral_shape_value = 0.5

    def __init__(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self._attach_core(torch.device(device), dtype)
        bones = list(self._core.bone_labels)
        if tuple(bones) != ANNY_CMU31:
            raise RuntimeError(f"unexpected Anny cmu_mb bone order: {bones}")
        # buffers (not saved): they follow the body's device
        self.register_buffer("_h36m_bone", torch.tensor([bones.index(ANNY_H36M17_FROM_BONES[n][0]) for n in H36M17],
                                                        device=self.device), persistent=False)  # fmt: skip
        self.register_buffer("_h36m_is_tail", torch.tensor([ANNY_H36M17_FROM_BONES[n][1] == "tail" for n in H36M17],
                                                           device=self.device), persistent=False)  # fmt: skip
        # Rx(+90 deg): Z up / facing -Y  ->  -y up / facing -z (towards an OpenCV camera).
        self.canonical_to_camera = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        self._shape_distributions: dict = {}

    def _attach_core(self, device: torch.device, dtype: torch.dtype) -> None:
        """Point the body at the process's shared, frozen core on ``device`` in ``dtype``; the core is
        not a registered submodule, so ``state_dict`` and ``nn.Module.to`` never copy it."""
        core, regressor = _load_anny_core(device, dtype)
        object.__setattr__(self, "_core", core)
        object.__setattr__(self, "_regressor", regressor)

    @property
    def device(self) -> torch.device:
        """Where the forward pass runs (the shared core's device)."""
        return self._core.device

    @property
    def dtype(self) -> torch.dtype:
        """The forward pass's precision (the shared core's)."""
        return self._core.dtype

    def _apply(self, fn, recurse: bool = True):
        """``to`` / ``cuda`` / ``double`` / ...: the body's own buffers move as in any module, and the
        body takes the shared core of the placement ``fn`` gives a floating tensor (the shared
        core itself is never changed in place)."""
        super()._apply(fn, recurse)
        probe = fn(torch.zeros((), device=self.device, dtype=self.dtype))
        self._attach_core(probe.device, probe.dtype)
        return self

    def __deepcopy__(self, memo: dict) -> "AnnyBody":
        """A copy sharing the process's core (its own buffers copied): ``copy.deepcopy(body).to(device)``
        moves the copy without copying the model."""
        memo[id(self._core)], memo[id(self._regressor)] = self._core, self._regressor
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in vars(self).items():
            object.__setattr__(new, key, copy.deepcopy(value, memo))
        return new

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
            h36m17 (B, 17, 3), anny_cmu31 (B, 31, 3), metres, on the body's device in its dtype
            (float32 unless moved); ``params`` are brought there.
        """
        self.check_params(params)
        params = {k: torch.as_tensor(v, dtype=self.dtype, device=self.device) for k, v in params.items()}
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


# ---------------------------------------------------------------------------------------------
# reduced forward pass: keypoints without per-vertex work


def contract_keypoint_regressor(regressor: torch.Tensor, bone_weights: torch.Tensor, bone_indices: torch.Tensor,
                                template: torch.Tensor, blendshapes: torch.Tensor, num_bones: int) -> dict[str, torch.Tensor]:
    """Contract a linear keypoint regressor with linear blend skinning and the shape blendshapes.

    A keypoint regressed from the posed vertices is ``k_j = sum_v W_jv sum_n w_vn (R_n v_v + t_n)``
    with (R_n, t_n) the bone transforms, W the regressor and w the skinning weights, so

        k_j = sum_n R_n A_jn + c_jn t_n,   A_jn = sum_v W_jv w_vn v_v,   c_jn = sum_v W_jv w_vn,

    and A_jn is linear in the rest vertices v_v = template_v + sum_c coeff_c blendshape_cv. Only
    the vertices some keypoint uses and the bones that move some keypoint are kept.

    Args:
        regressor: (J, V) keypoint regression weights.
        bone_weights, bone_indices: (V, K) skinning weights and the bone index of each.
        template: (V, 3) template vertices; blendshapes: (C, V, 3) shape blendshapes.
        num_bones: number of bones of the rig.
    Returns:
        float32 tensors ``bones`` (N',) int64 bones kept, ``const`` (J, N') c_jn,
        ``template`` (J, N', 3) the template part of A_jn, ``blend`` (C, J, N', 3) its blendshape part.
    """
    weights = regressor.detach().double()
    support = torch.nonzero(weights.abs().sum(0) > 0).squeeze(1)  # vertices any keypoint uses
    dense = torch.zeros(len(support), num_bones, dtype=torch.float64, device=weights.device).scatter_add_(
        1, bone_indices[support].long(), bone_weights[support].double())  # (S, N) skinning weights
    m = weights[:, support, None] * dense[None]  # (J, S, N)
    bones = torch.nonzero(m.abs().sum((0, 1)) > 0).squeeze(1)  # bones that move a keypoint
    m = m[:, :, bones]
    return {
        "bones": bones,
        "const": m.sum(1).float(),
        "template": torch.einsum("jsn,sd->jnd", m, template[support].double()).float(),
        "blend": torch.einsum("jsn,csd->cjnd", m, blendshapes[:, support].double()).float(),
    }


def keypoint_basis(coeffs: torch.Tensor, contraction: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B, J, N', 3) the shape's part A_jn of :func:`contract_keypoint_regressor` for (B, C) blendshape
    coefficients (depends on the shape only)."""
    return contraction["template"][None] + torch.einsum("bc,cjnd->bjnd", coeffs.float(), contraction["blend"])


def contracted_keypoints(transforms: torch.Tensor, basis: torch.Tensor, contraction: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B, J, 3) keypoints from (B, N', 4, 4) bone transforms of the kept bones and the shape's
    (B, J, N', 3) :func:`keypoint_basis`, with a :func:`contract_keypoint_regressor` ``contraction``."""
    return (torch.einsum("bnid,bjnd->bji", transforms[..., :3, :3], basis)
            + torch.einsum("jn,bni->bji", contraction["const"], transforms[..., :3, 3]))


class AnnyReducedForward:
    """COCO-17 keypoints and bone heads of Anny from a reduced forward pass (no per-vertex work).

    Computes the rest skeleton from the phenotype and the forward kinematics, but never the 13,718
    skinned vertices: the COCO-17 regressor and skinning are contracted in advance
    (:func:`contract_keypoint_regressor`, 17 x bones x 3 numbers per blendshape). The keypoints
    equal :meth:`AnnyBody.forward`'s up to float rounding (checked in the tests). Relies on anny
    0.6.2 internals (``get_rest_model`` parts, ``get_bone_transforms``).

    Args:
        body: the Anny body model.
    """

    def __init__(self, body: AnnyBody) -> None:
        core = body._core
        self.body = body
        self.core = core
        self.contraction = contract_keypoint_regressor(
            body._regressor.regression_weights[:17], core.vertex_bone_weights, core.vertex_bone_indices,
            core.template_vertices, core.blendshapes, int(core.template_bone_heads.shape[0]))

    def __call__(self, params: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(coco17 (B, 17, 3), bone heads (B, 31, 3)) in the frame of ``params`` (as :meth:`AnnyBody.forward`)."""
        return self._forward(params, with_heads=True)  # type: ignore[return-value]

    def keypoints(self, params: Mapping[str, torch.Tensor], skeleton: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, 17, 3) COCO-17 keypoints only (the fit's inner loop: no bone ends are computed).

        ``skeleton``: :meth:`rest_skeleton` of ``params["phenotype"]`` computed earlier (its gradient
        then stops there: the shape is held fixed); None: computed now.
        """
        return self._forward(params, with_heads=False, skeleton=skeleton)[0]

    def rest_skeleton(self, phenotype: torch.Tensor, kinematics: bool = True) -> dict[str, torch.Tensor]:
        """The shape's part of the forward pass for (B, 6) ``phenotype``: bone ``heads`` (B, 31, 3)
        and the keypoints' ``basis`` (:func:`keypoint_basis`), and with ``kinematics`` what anny's 4x4
        kinematics (:meth:`keypoints`, the bone ends) also read: bone ``tails`` (B, 31, 3) and
        ``rest_poses`` (B, 31, 4, 4). The fit's bone chain reads only the first two
        (``kinematics=False``: about a third less work per shape, the same heads and basis)."""
        import anny.skinning.skinning as skinning  # loaded with the model (see _load_anny_core)
        import anny.utils.kinematics as anny_kinematics

        core = self.core
        _, phen, lc, fa = core.get_tensor_inputs(None, phenotype, None, None)
        coeffs = core._get_phenotype_blendshape_coefficients(phen, lc, fa)
        heads = skinning.apply_linear_blendshape(core.template_bone_heads, core.bone_heads_blendshapes, coeffs)
        basis = keypoint_basis(coeffs, self.contraction)
        if not kinematics:
            return {"heads": heads, "basis": basis}
        tails = skinning.apply_linear_blendshape(core.template_bone_tails, core.bone_tails_blendshapes, coeffs)
        rest_poses = anny_kinematics.get_bone_poses(heads, tails, core.bone_rolls_rotmat, y_axis=core.y_axis,
                                                    degenerate_rotation=core.degenerate_rotation)
        if core.root_identity_orientation:
            rest_poses = rest_poses.clone()
            rest_poses[:, 0, :3, :3] = torch.eye(3, dtype=rest_poses.dtype, device=rest_poses.device)
        return {"heads": heads, "tails": tails, "rest_poses": rest_poses, "basis": basis}

    def chain_skeleton(self, phenotype: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`rest_skeleton` without anny's kinematics (``heads`` and ``basis``): what the fit's
        bone chain reads (:class:`~diffusion_hpc.estimate.fit.BoneChain`)."""
        return self.rest_skeleton(phenotype, kinematics=False)

    def _forward(self, params: Mapping[str, torch.Tensor], with_heads: bool,
                 skeleton: Mapping[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        core = self.core
        sk = self.rest_skeleton(params["phenotype"]) if skeleton is None else skeleton
        transforms, poses = core.get_bone_transforms(self.body.pose_transforms(params), sk["rest_poses"])
        coco = contracted_keypoints(transforms[:, self.contraction["bones"]].float(), sk["basis"], self.contraction)
        if not with_heads:
            return coco, None
        bone_heads, _ = core.get_bone_ends(sk["heads"], sk["tails"], sk["rest_poses"], poses)
        return coco, bone_heads
