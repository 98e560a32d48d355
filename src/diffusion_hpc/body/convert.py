"""Body-model conversion: fit a target body model to a posed source mesh, without vertex correspondence.

For each person, the target's pose, shape and translation (in the source's frame, the camera frame
for a dataset) minimise

    E = w_surface * ( mean_t d(t, S)^2  +  w_back * mean_s || s - nn_T(s) ||^2 )   surface
      + w_joints  * mean_j || J_j - J*_j ||^2                                    shared joints
      + w_prior   * prior.penalty(body_pose)     (the target's pose prior, when one is given)
      + w_pose    * || body_pose ||^2  +  w_shape * || shape - neutral ||^2

with t the target's vertices (a fixed area-weighted subset of them), S the source surface, d the
point-to-surface distance (to the nearest triangle around the nearest source vertex, see
:meth:`Mesh.nearest_triangles`), s a fixed area-weighted subset of the source's vertices and nn_T(s)
its nearest target vertex, J the target's joints of the joint sets both models define
(``coco17``, ``h36m17``: :func:`shared_joint_sets`) and J* the source's. Distances are in
centimetres inside the energy (metres everywhere else). Each stage runs L-BFGS (strong Wolfe
line search) on the batch's summed energy (the people share no variable); the nearest neighbours
are searched again every :attr:`ConvertWeights.nn_every` iterations (ICP style): a k-d tree per
person on the CPU, else brute force in chunks of at most :data:`NN_CHUNK_ELEMENTS` distances, so
a batch of 64 stays within a few hundred MB whatever the mesh sizes. When source and target are the same model in the same pose, every term is zero:
the truth is a global minimum.

Stages (:func:`convert_bodies`):

    1. initialisation: the target's rest body (mean shape) rotated onto the source by a Kabsch
       fit of the shared torso joints (:data:`INIT_JOINTS`), translated onto their centroid
    2. pose: everything (orientation, translation, pose, shape) on the joints and a coarse
       surface (:attr:`ConvertWeights.points_pose` points a side)
    3. refine: the same on a denser surface (:attr:`ConvertWeights.points_refine`) with the
       joints weighted down (:attr:`ConvertWeights.w_joints_refine`): the two models place
       their joints differently (Anny's hips and shoulders are not SMPL's), the surface is what
       must agree

Quality of each person (:class:`Conversion`): ``surface_mm``, the mean symmetric surface distance
(target vertices to the source surface and source points to the target surface, averaged),
``joints_mm``, the mean distance of the shared joints, and ``flagged`` when ``surface_mm``
exceeds :data:`FLAG_SURFACE_MM`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from diffusion_hpc.body.base import BodyModel, Params, transform_params
from diffusion_hpc.body.joint_sets import get_joint_set
from diffusion_hpc.geometry.rotations import rigid_rotation

#: joint sets a conversion compares, when both models define them
SHARED_JOINT_SETS = ("coco17", "h36m17")
#: joints the initial Kabsch fit uses (they move least with the pose), by joint-set name
INIT_JOINTS = {"h36m17": ("pelvis", "left_hip", "right_hip", "spine", "thorax", "neck", "left_shoulder",
                          "right_shoulder"),
               "coco17": ("left_hip", "right_hip", "left_shoulder", "right_shoulder")}
#: a conversion whose mean symmetric surface distance exceeds this (mm) is flagged: above every
#: Anny -> Anny fit of scripts/bench_convert.py (200 built-in poses at batch 64: median 2.6, 95th
#: percentile 5.0, max 8.0 mm), so a flag means the target could not take the body's shape or pose
FLAG_SURFACE_MM = 15.0
#: most squared distances one nearest-neighbour chunk holds (float32: 4 bytes each)
NN_CHUNK_ELEMENTS = 2**25


@dataclass(frozen=True)
class ConvertWeights:
    """Weights and schedule of :func:`convert_bodies` (see the module docstring for the energy)."""

    w_surface: float = 1.0
    #: weight of the source -> target direction of the surface term (relative to target -> source)
    w_back: float = 0.5
    #: weight of the shared joints in the pose stage (0: surface only; the joints still place the start)
    w_joints: float = 1.0
    #: weight of the shared joints in the refine stage
    w_joints_refine: float = 0.5
    #: weight of ``prior.penalty`` when a prior is given
    w_prior: float = 1e-3
    #: L2 on the pose (keeps joints the surface does not see, e.g. SMPL's hands, near rest)
    w_pose: float = 1e-4
    #: L2 of the shape from the model's neutral shape
    w_shape: float = 1e-3
    iters_pose: int = 60
    iters_refine: int = 240
    #: points a side of the surface term in the pose stage and in the refine stage
    points_pose: int = 1500
    points_refine: int = 4000
    #: L-BFGS curvature pairs kept
    history: int = 30
    #: nearest neighbours searched again every this many iterations
    nn_every: int = 10
    #: source points the reported ``surface_mm`` is measured on
    points_report: int = 6000


@dataclass
class Conversion:
    """The target model fitted to B source bodies.

    Attributes:
        body_model: the target's name.
        params: the target's own parameters (``global_orient`` (B, 3), ``body_pose`` (B, J-1, 3),
            its shape key, ``transl`` (B, 3)), detached, in the source's frame.
        vertices: (B, V, 3) the target's vertices; joints: joint-set name -> (B, J, 3).
        surface_mm: (B,) mean symmetric surface distance in mm; joints_mm: (B,) mean shared-joint
            distance in mm (NaN when no joint set is shared); flagged: (B,) surface_mm > threshold.
    """

    body_model: str
    params: Params
    vertices: torch.Tensor
    joints: dict[str, torch.Tensor]
    surface_mm: torch.Tensor
    joints_mm: torch.Tensor
    flagged: torch.Tensor


# ---------------------------------------------------------------------------------------------
# geometry: nearest neighbours, point-to-triangle distance, mesh adjacency


def nearest_indices(queries: torch.Tensor, points: torch.Tensor, chunk_elements: int = NN_CHUNK_ELEMENTS) -> torch.Tensor:
    """(B, Q) index of the nearest of (B, P, 3) ``points`` to each of (B, Q, 3) ``queries``, no gradient.

    On the CPU a k-d tree per person (``scipy.spatial.cKDTree``: about a hundred times faster than
    brute force there); on other devices brute force, in chunks of at most ``chunk_elements``
    squared distances. Both are exact (ties aside).
    """
    with torch.no_grad():
        if queries.device.type == "cpu":
            from scipy.spatial import cKDTree

            q, p = queries.double().numpy(), points.double().numpy()
            found = [cKDTree(p[i]).query(q[i], k=1)[1] for i in range(len(q))]
            return torch.as_tensor(np.stack(found), dtype=torch.long)
        b, q, p = queries.shape[0], queries.shape[1], points.shape[1]
        sq = (points * points).sum(-1)  # (B, P)
        out = torch.empty(b, q, dtype=torch.long, device=queries.device)
        per = max(1, min(q, chunk_elements // max(p, 1)))  # queries per chunk
        for i in range(b):
            for lo in range(0, q, per):
                d = sq[i, None, :] - 2.0 * queries[i, lo:lo + per] @ points[i].T
                out[i, lo:lo + per] = d.argmin(-1)
        return out


def closest_point_on_triangle(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(..., 3) the point of triangle (a, b, c) nearest to ``p``, all (..., 3) (Ericson, Real-Time
    Collision Detection, 5.1.5: the Voronoi region of p). Degenerate triangles (a point, a
    segment) give a point of them. Differentiable in ``p`` almost everywhere."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    bp = p - b
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    cp = p - c
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    eps = torch.finfo(p.dtype).tiny

    def ratio(num, den):
        return num / torch.where(den.abs() > eps, den, torch.full_like(den, eps))

    # interior (the default), then each edge and vertex region overrides it, most specific last
    denom = va + vb + vc
    v, w = ratio(vb, denom), ratio(vc, denom)
    out = a + ab * v[..., None] + ac * w[..., None]
    edge_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    t = ratio(d4 - d3, (d4 - d3) + (d5 - d6))
    out = torch.where(edge_bc[..., None], b + (c - b) * t[..., None], out)
    edge_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    out = torch.where(edge_ac[..., None], a + ac * ratio(d2, d2 - d6)[..., None], out)
    edge_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    out = torch.where(edge_ab[..., None], a + ab * ratio(d1, d1 - d3)[..., None], out)
    out = torch.where(((d6 >= 0) & (d5 <= d6))[..., None], c, out)
    out = torch.where(((d3 >= 0) & (d4 <= d3))[..., None], b, out)
    out = torch.where(((d1 <= 0) & (d2 <= 0))[..., None], a, out)
    return out


def mesh_rings(faces: torch.Tensor, num_vertices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The triangles around each vertex, for point-to-surface queries.

    Returns:
        faces (F + L, 3): ``faces`` followed by a degenerate triangle (v, v, v) for each of the L
        vertices no face uses (so that every vertex has one), and ring (V, K): indices into it of
        the triangles around each vertex (K = the largest valence; a vertex with fewer repeats its
        first).
    """
    f = faces.detach().cpu().numpy().astype(np.int64)
    used = np.zeros(num_vertices, bool)
    used[f.ravel()] = True
    f = np.concatenate([f, np.repeat(np.flatnonzero(~used)[:, None], 3, axis=1)])
    vert = f.ravel()
    order = np.argsort(vert, kind="stable")
    vert, face = vert[order], np.repeat(np.arange(len(f)), 3)[order]
    counts = np.bincount(vert, minlength=num_vertices)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ring = np.repeat(face[start][:, None], counts.max(), axis=1)
    ring[vert, np.arange(len(vert)) - start[vert]] = face
    return torch.as_tensor(f), torch.as_tensor(ring)


@dataclass
class Mesh:
    """A triangle mesh's topology for point-to-surface queries (:func:`mesh_rings`)."""

    faces: torch.Tensor
    ring: torch.Tensor

    @classmethod
    def of(cls, faces: torch.Tensor, num_vertices: int, device=None) -> "Mesh":
        extended, ring = mesh_rings(faces, num_vertices)
        return cls(extended.to(device), ring.to(device))

    def nearest_triangles(self, points: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
        """(B, Q, 3, 3) for each of (B, Q, 3) ``points``, the triangle of this mesh (posed as (B, V, 3)
        ``vertices``) nearest to it among those around its nearest vertex: the mesh's nearest
        triangle unless the nearest surface point lies on a triangle not touching the nearest
        vertex. No gradient; one person at a time (bounded memory)."""
        with torch.no_grad():
            nearest = nearest_indices(points, vertices)
            out = []
            for i in range(points.shape[0]):
                tri = vertices[i][self.faces[self.ring[nearest[i]]]]  # (Q, K, 3, 3)
                p = points[i][:, None].expand(-1, tri.shape[1], -1)
                d = ((p - closest_point_on_triangle(p, tri[..., 0, :], tri[..., 1, :], tri[..., 2, :])) ** 2).sum(-1)
                out.append(tri[torch.arange(len(tri)), d.argmin(1)])
            return torch.stack(out)


def point_to_triangle(points: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """(...,) squared distance of (..., 3) ``points`` to their (..., 3, 3) ``triangles``."""
    q = closest_point_on_triangle(points, triangles[..., 0, :], triangles[..., 1, :], triangles[..., 2, :])
    return ((points - q) ** 2).sum(-1)


def vertex_areas(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, V) a third of the area of the triangles around each vertex of (B, V, 3) ``vertices``."""
    a, b, c = (vertices[:, faces[:, i]] for i in range(3))
    area = 0.5 * torch.linalg.cross(b - a, c - a).norm(dim=-1)  # (B, F)
    out = torch.zeros(vertices.shape[:2], dtype=vertices.dtype, device=vertices.device)
    for i in range(3):
        out.index_add_(1, faces[:, i], area / 3.0)
    return out


def area_sample(areas: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """(B, N) indices of N = min(count, V) distinct vertices per row, drawn with probability
    proportional to (B, V) ``areas`` (an even cover of the surface, whatever the mesh's density)."""
    weights = areas.double().cpu().clamp_min(0) + 1e-12
    n = min(count, weights.shape[1])
    return torch.multinomial(weights, n, replacement=False, generator=generator).to(areas.device)


# ---------------------------------------------------------------------------------------------
# the conversion


def shared_joint_sets(source_joints: Mapping[str, torch.Tensor], target: BodyModel) -> tuple[str, ...]:
    """The joint sets of :data:`SHARED_JOINT_SETS` that ``source_joints`` holds and ``target`` provides."""
    return tuple(n for n in SHARED_JOINT_SETS if n in source_joints and n in target.joint_sets)


def initial_params(target: BodyModel, source_joints: Mapping[str, torch.Tensor], shared: tuple[str, ...],
                   device, dtype) -> Params:
    """The start of the fit: the target's rest body (neutral shape) rotated by the Kabsch fit of its
    :data:`INIT_JOINTS` onto the source's, and moved onto their centroid."""
    batch = next(iter(source_joints.values())).shape[0]
    params = {k: v.to(device, dtype) for k, v in target.neutral_params(batch).items()}
    with torch.no_grad():
        rest = target({k: v for k, v in params.items()}).joints
        src, dst = [], []
        for name in shared:
            idx = [get_joint_set(name).index(j) for j in INIT_JOINTS[name]]
            src.append(rest[name][:, idx].to(device, dtype))
            dst.append(source_joints[name][:, idx].to(device, dtype))
        src, dst = torch.cat(src, 1), torch.cat(dst, 1)
        rotation = rigid_rotation(src, dst)
        translation = dst.mean(1) - (rotation @ src.mean(1)[..., None])[..., 0]
        return {k: v.detach() for k, v in transform_params(target, params, rotation, translation).items()}


class _Surface:
    """The surface term's fixed parts for one stage: the source points and target vertex subsets,
    the source mesh, and the nearest neighbours (refreshed by :meth:`update`)."""

    def __init__(self, source: torch.Tensor, source_mesh: Mesh, source_areas: torch.Tensor,
                 target_areas: torch.Tensor, count: int, generator: torch.Generator) -> None:
        self.source, self.mesh = source, source_mesh
        self.batch = torch.arange(source.shape[0], device=source.device)[:, None]
        self.source_points = source[self.batch, area_sample(source_areas, count, generator)]  # (B, N, 3)
        self.target_index = area_sample(target_areas, count, generator)  # (B, N)

    def update(self, vertices: torch.Tensor) -> None:
        """Nearest source triangle of each target point, nearest target vertex of each source point."""
        with torch.no_grad():
            self.triangles = self.mesh.nearest_triangles(vertices[self.batch, self.target_index], self.source)
            self.back = nearest_indices(self.source_points, vertices)

    def energy(self, vertices: torch.Tensor, w_back: float) -> torch.Tensor:
        """(B,) the surface term in cm^2."""
        forward = point_to_triangle(vertices[self.batch, self.target_index], self.triangles).mean(1)
        back = ((self.source_points - vertices[self.batch, self.back]) ** 2).sum(-1).mean(1)
        return 1e4 * (forward + w_back * back)


def convert_bodies(source_vertices: torch.Tensor, source_faces: torch.Tensor,
                   source_joints: Mapping[str, torch.Tensor], target: BodyModel, prior=None,
                   weights: ConvertWeights = ConvertWeights(), device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32, seed: int = 0, start: Params | None = None) -> Conversion:
    """Fit ``target`` to B posed source meshes (no vertex correspondence; see the module docstring).

    Args:
        source_vertices: (B, V, 3) the source meshes, metres (e.g. camera frame).
        source_faces: (F, 3) their triangles.
        source_joints: joint-set name -> (B, J, 3) the source's joints; the sets ``target`` also has
            (:func:`shared_joint_sets`, at least one) place the start and enter the joint term.
        target: the body model to fit; it must run on ``device`` (its forward computes in float32).
        prior: the target's :class:`~diffusion_hpc.prior.base.PosePrior` (its ``penalty``), or None.
        weights: energy weights and schedule.
        device, dtype: where and in which precision the parameters and the energy live (default:
            the source's device, float32).
        seed: seeds the surface subsets (the result is deterministic given the inputs).
        start: the target parameters to start from (e.g. the previous frame's); None: step 1.
    Returns:
        :class:`Conversion`.
    """
    device = torch.device(device) if device is not None else source_vertices.device
    shared = shared_joint_sets(source_joints, target)
    if not shared:
        raise ValueError(f"source joints {sorted(source_joints)} share no joint set with {target.name} "
                         f"({list(target.joint_sets)}); pass at least one of {SHARED_JOINT_SETS}")
    if source_vertices.ndim != 3 or source_vertices.shape[-1] != 3:
        raise ValueError(f"source_vertices has shape {tuple(source_vertices.shape)}; expected (B, V, 3)")
    source = source_vertices.detach().to(device, dtype)
    joints_src = {n: source_joints[n].detach().to(device, dtype) for n in shared}
    faces_src = source_faces.to(device).long()
    mesh_src = Mesh.of(faces_src, source.shape[1], device)
    faces_tgt = target.faces.to(device).long()
    generator = torch.Generator().manual_seed(seed)
    cw = weights

    # 1. initialisation
    if start is None:
        start = initial_params(target, joints_src, shared, device, dtype)
    start = {k: torch.as_tensor(v).detach().to(device, dtype) for k, v in start.items()}
    key = target.shape_key
    neutral = torch.full_like(start[key], target.neutral_shape_value)
    free = {k: v.clone().requires_grad_(True) for k, v in start.items()}

    def forward() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = dict(free)
        if key == "phenotype":
            p[key] = p[key].clamp(0.0, 1.0)
        out = target(p)
        return out.vertices.to(dtype), {n: j.to(dtype) for n, j in out.joints.items()}

    def joints_energy(joints: dict[str, torch.Tensor]) -> torch.Tensor:
        return 1e4 * sum(((joints[n] - joints_src[n]) ** 2).sum(-1).mean(1) for n in shared) / len(shared)

    def regulariser() -> torch.Tensor:
        reg = cw.w_pose * (free["body_pose"] ** 2).sum((1, 2)) + cw.w_shape * ((free[key] - neutral) ** 2).sum(1)
        if prior is not None and cw.w_prior:
            reg = reg + cw.w_prior * prior.penalty(free["body_pose"])
        return reg

    with torch.no_grad():
        source_areas = vertex_areas(source, faces_src)
        target_areas = vertex_areas(forward()[0], faces_tgt)

    # 2. pose, 3. refine
    for iters, points, w_joints in ((cw.iters_pose, cw.points_pose, cw.w_joints),
                                    (cw.iters_refine, cw.points_refine, cw.w_joints_refine)):
        if iters <= 0:
            continue
        surface = _Surface(source, mesh_src, source_areas, target_areas, points, generator)
        variables = [free["global_orient"], free["body_pose"], free[key], free["transl"]]
        optimiser = torch.optim.LBFGS(variables, lr=1.0, max_iter=cw.nn_every, history_size=cw.history,
                                      tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")
        for outer in range(max(1, iters // cw.nn_every)):
            with torch.no_grad():
                surface.update(forward()[0])

            def closure() -> torch.Tensor:
                optimiser.zero_grad(set_to_none=True)
                vertices, joints = forward()
                loss = cw.w_surface * surface.energy(vertices, cw.w_back) + regulariser()
                if w_joints:
                    loss = loss + w_joints * joints_energy(joints)
                loss = loss.sum()
                loss.backward()
                return loss

            optimiser.step(closure)
        if key == "phenotype":
            with torch.no_grad():
                free[key].clamp_(0.0, 1.0)

    # the result and its quality
    with torch.no_grad():
        vertices, joints = forward()
        params = {k: v.detach().clone() for k, v in free.items()}
        surface_mm = surface_distance_mm(source, mesh_src, source_areas, vertices, Mesh.of(faces_tgt, vertices.shape[1], device),
                                         cw.points_report, generator)
        joints_mm = 1e3 * torch.stack([(joints[n] - joints_src[n]).norm(dim=-1).mean(1) for n in shared]).mean(0)
    return Conversion(target.name, params, vertices.detach(), {n: j.detach() for n, j in joints.items()},
                      surface_mm, joints_mm, surface_mm > FLAG_SURFACE_MM)


def surface_distance_mm(source: torch.Tensor, source_mesh: Mesh, source_areas: torch.Tensor, target: torch.Tensor,
                        target_mesh: Mesh, count: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) mean symmetric surface distance in mm: every target vertex to the source surface and
    ``count`` area-weighted source vertices to the target surface, the two means averaged."""
    batch = torch.arange(source.shape[0], device=source.device)[:, None]
    forward = point_to_triangle(target, source_mesh.nearest_triangles(target, source)).sqrt().mean(1)
    points = source[batch, area_sample(source_areas, count, generator)]
    back = point_to_triangle(points, target_mesh.nearest_triangles(points, target)).sqrt().mean(1)
    return 1e3 * 0.5 * (forward + back)
