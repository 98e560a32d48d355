"""Body-model conversion: fit a target body model to a posed source mesh, without vertex correspondence.

For each person, the target's pose, shape and translation (in the source's frame, the camera frame
for a dataset) minimise

    E = w_surface * ( mean_t (n_S(t) . (t - nn_S(t)))^2  +  w_back * mean_s || s - nn_T(s) ||^2 )   surface
      + w_joints  * mean_j || J_j - J*_j ||^2                                    shared joints
      + w_prior   * prior.penalty(body_pose)     (the target's pose prior, when one is given)
      + w_pose    * || body_pose ||^2  +  w_shape * || shape - neutral ||^2

with t the target's vertices (a fixed area-weighted subset of them), nn_S(t) the nearest source
vertex and n_S its unit normal (so the first term is the distance to the source's tangent plane
there: point-to-plane ICP, which lets the surfaces slide along each other), s a fixed
area-weighted subset of the source's vertices and nn_T(s) its nearest target vertex, J the
target's joints of the joint sets both models define (``coco17``, ``h36m17``:
:func:`shared_joint_sets`) and J* the source's. Distances are in centimetres inside the energy
(metres everywhere else). When source and target are the same model in the same pose, every term
is zero: the truth is a global minimum.

Every person is minimised on its own: :func:`lbfgs_step` is L-BFGS written as batched tensor math
with a history (:class:`LBFGSHistory`) and a backtracking line search per person, and a line
search's further tries evaluate only the persons still searching. (One ``torch.optim.LBFGS`` over
the batch's summed energy shares one step length and one curvature history between all the
persons: at batch 64 it ended about 1 mm worse than at batch 1, and a person's result depended
on its batch-mates.) The nearest neighbours are searched again every
:attr:`ConvertWeights.nn_every` iterations (ICP style): a k-d tree per person on the CPU (the
source's built once), else brute force in chunks of at most :data:`NN_CHUNK_ELEMENTS` distances,
so a batch of 64 stays within a few hundred MB whatever the mesh sizes.

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
(exact point-to-triangle: target vertices to the source surface and source points to the target
surface, averaged), ``joints_mm``, the mean distance of the shared joints, and ``flagged`` when
``surface_mm`` exceeds :data:`FLAG_SURFACE_MM`.
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
#: a conversion whose mean symmetric surface distance exceeds this (mm) is flagged. Anny -> Anny in
#: scripts/bench_convert.py (200 built-in poses, batch 64, default weights): median 2.2, 95th
#: percentile 4.2 mm; one pose (row 638 of the built-in set) ends in a local minimum at 16 mm
#: (34 mm on the joints) and is the one flag (the other 199 are under 15 mm, 95% under 4.2). So a
#: flag means the target could not take the body's shape or pose, or the fit is stuck: exports
#: leave it out
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
    iters_pose: int = 30
    iters_refine: int = 120
    #: points a side of the surface term in the pose stage and in the refine stage
    points_pose: int = 1500
    points_refine: int = 4000
    #: L-BFGS curvature pairs kept
    history: int = 30
    #: nearest neighbours searched again every this many iterations
    nn_every: int = 5
    #: evaluations of each L-BFGS step's line search at most
    line_search_tries: int = 5
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


def kd_trees(points: torch.Tensor) -> list | None:
    """One k-d tree (``scipy.spatial.cKDTree``) per row of (B, P, 3) CPU ``points`` for
    :func:`nearest_indices` to reuse when the points do not move; None on other devices."""
    if points.device.type != "cpu":
        return None
    from scipy.spatial import cKDTree

    return [cKDTree(p, balanced_tree=False, compact_nodes=False) for p in points.detach().double().numpy()]


def nearest_indices(queries: torch.Tensor, points: torch.Tensor, chunk_elements: int = NN_CHUNK_ELEMENTS,
                    trees: list | None = None) -> torch.Tensor:
    """(B, Q) index of the nearest of (B, P, 3) ``points`` to each of (B, Q, 3) ``queries``, no gradient.

    On the CPU a k-d tree per person (``scipy.spatial.cKDTree``: about a hundred times faster than
    brute force there; ``trees``: the :func:`kd_trees` of ``points`` built earlier); on other
    devices brute force, in chunks of at most ``chunk_elements`` squared distances. Both are exact
    (ties aside).
    """
    with torch.no_grad():
        if queries.device.type == "cpu":
            trees = kd_trees(points) if trees is None else trees
            q = queries.double().numpy()
            found = [tree.query(q[i], k=1)[1] for i, tree in enumerate(trees)]
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
    def of(cls, faces: torch.Tensor, num_vertices: int, device=None) -> Mesh:
        extended, ring = mesh_rings(faces, num_vertices)
        return cls(extended.to(device), ring.to(device))

    def nearest_triangles(self, points: torch.Tensor, vertices: torch.Tensor, trees: list | None = None) -> torch.Tensor:
        """(B, Q, 3, 3) for each of (B, Q, 3) ``points``, the triangle of this mesh (posed as (B, V, 3)
        ``vertices``) nearest to it among those around its nearest vertex: the mesh's nearest
        triangle unless the nearest surface point lies on a triangle not touching the nearest
        vertex (``trees``: :func:`kd_trees` of ``vertices``, if built). No gradient; one person at a
        time (bounded memory)."""
        with torch.no_grad():
            nearest = nearest_indices(points, vertices, trees=trees)
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


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, V, 3) unit area-weighted normals of (B, V, 3) ``vertices`` (zero for a vertex in no face)."""
    a, b, c = (vertices[:, faces[:, i]] for i in range(3))
    normal = torch.linalg.cross(b - a, c - a)  # (B, F, 3), twice the area long
    out = torch.zeros_like(vertices)
    for i in range(3):
        out.index_add_(1, faces[:, i], normal)
    return out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def area_sample(areas: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """(B, N) indices of N = min(count, V) distinct vertices per row, drawn with probability
    proportional to (B, V) ``areas`` (an even cover of the surface, whatever the mesh's density).
    Each row is drawn with its own generator seeded with ``seed``: a row's draw depends on its
    own areas only, not on the other rows."""
    weights = areas.double().cpu().clamp_min(0) + 1e-12
    n = min(count, weights.shape[1])
    rows = [torch.multinomial(w, n, replacement=False, generator=torch.Generator().manual_seed(seed)) for w in weights]
    return torch.stack(rows).to(areas.device)


# ---------------------------------------------------------------------------------------------
# the optimiser: L-BFGS per person, batched


@dataclass
class LBFGSHistory:
    """The curvature pairs of B independent L-BFGS runs over n variables each (:func:`lbfgs_step`).

    The m slots are a ring shared by the batch (every step writes the slot ``next``), but each
    person's pair counts only where ``rho`` is non-zero: a person whose step failed or whose pair
    broke the curvature condition stores a zero pair, which the two-loop recursion skips exactly.

    Attributes:
        s, y: (B, m, n) steps and gradient changes; rho: (B, m) 1 / (s . y), 0 for no pair;
        gamma: (B,) the initial inverse-Hessian scale s . y / y . y of each person's newest pair;
        next: the slot the next pair goes to.
    """

    s: torch.Tensor
    y: torch.Tensor
    rho: torch.Tensor
    gamma: torch.Tensor
    next: int = 0

    @classmethod
    def empty(cls, batch: int, size: int, n: int, like: torch.Tensor) -> LBFGSHistory:
        zeros = like.new_zeros
        return cls(zeros(batch, size, n), zeros(batch, size, n), zeros(batch, size), like.new_ones(batch))

    def push(self, s: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> None:
        """Store (B, n) pairs ``s``, ``y``; persons where (B,) ``keep`` is False store none."""
        ys = (s * y).sum(-1)
        keep = keep & (ys > 1e-10 * s.norm(dim=-1) * y.norm(dim=-1))  # the curvature condition, scale-free
        zero = torch.zeros_like(s)
        self.s[:, self.next] = torch.where(keep[:, None], s, zero)
        self.y[:, self.next] = torch.where(keep[:, None], y, zero)
        self.rho[:, self.next] = torch.where(keep, 1.0 / torch.where(keep, ys, torch.ones_like(ys)), torch.zeros_like(ys))
        self.gamma = torch.where(keep, ys / torch.where(keep, (y * y).sum(-1), torch.ones_like(ys)), self.gamma)
        self.next = (self.next + 1) % self.s.shape[1]

    def forget(self, persons: torch.Tensor) -> None:
        """Drop every pair of the (B,) ``persons`` (their next step is a steepest descent)."""
        self.rho[persons] = 0.0
        self.gamma[persons] = 1.0

    def has_pairs(self) -> torch.Tensor:
        """(B,) whether each person holds a pair."""
        return (self.rho != 0).any(1)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """(B, n) the L-BFGS descent direction -H grad of each person (the two-loop recursion,
        Nocedal & Wright, Numerical Optimization, algorithm 7.4), for (B, n) ``grad``."""
        size = self.s.shape[1]
        order = [(self.next - 1 - k) % size for k in range(size)]  # newest first
        q, alpha = -grad, {}
        for k in order:
            alpha[k] = self.rho[:, k] * (self.s[:, k] * q).sum(-1)
            q = q - alpha[k][:, None] * self.y[:, k]
        r = self.gamma[:, None] * q
        for k in reversed(order):
            beta = self.rho[:, k] * (self.y[:, k] * r).sum(-1)
            r = r + (alpha[k] - beta)[:, None] * self.s[:, k]
        return r


def lbfgs_step(evaluate, x: torch.Tensor, f: torch.Tensor, g: torch.Tensor, history: LBFGSHistory,
               max_tries: int = 5, c1: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One L-BFGS iteration of B independent minimisations, each with its own history and its own
    backtracking (Armijo) line search: a person's step depends on its own energy only, never on
    who shares its batch.

    Args:
        evaluate: ((R, n) variables, (R,) the persons they belong to) -> ((R,) energies, (R, n)
            gradients), each row a function of its own person and variables only.
        x, f, g: (B, n) the current variables, (B,) their energies and (B, n) gradients.
        history: the persons' :class:`LBFGSHistory` (updated in place).
        max_tries: evaluations of the line search at most; a person none of whose tries decreases
            the energy enough stays where it is and forgets its history.
        c1: the sufficient-decrease constant.
    Returns:
        The new (x, f, g).
    """
    has_pairs = history.has_pairs()
    d = history.direction(g)
    slope = (g * d).sum(-1)
    uphill = slope >= 0  # (rounding in a stale history): fall back to the steepest descent
    d = torch.where(uphill[:, None], -g, d)
    slope = torch.where(uphill, -(g * g).sum(-1), slope)
    # the first step of a person without pairs: at most a unit move (torch.optim.LBFGS's choice)
    t = torch.where(has_pairs & ~uphill, torch.ones_like(f), (1.0 / g.abs().sum(-1).clamp_min(1e-12)).clamp(max=1.0))
    pending = slope != 0  # at a stationary point: stay
    x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
    for _ in range(max_tries):
        rows = pending.nonzero()[:, 0]
        if not len(rows):
            break
        trial = x[rows] + t[rows, None] * d[rows]
        f_t, g_t = evaluate(trial, rows)
        ok = torch.isfinite(f_t) & (f_t <= f[rows] + c1 * t[rows] * slope[rows])
        done = rows[ok]
        x_new[done], f_new[done], g_new[done] = trial[ok], f_t[ok], g_t[ok]
        pending[done] = False
        # backtrack: the minimum of the quadratic through f, the slope and f_t, within [0.1 t, 0.5 t]
        r, tr, sl = rows[~ok], t[rows[~ok]], slope[rows[~ok]]
        excess = torch.where(torch.isfinite(f_t[~ok]), f_t[~ok] - f[r] - sl * tr, torch.full_like(tr, float("inf")))
        t_quad = -sl * tr * tr / (2.0 * excess.clamp_min(1e-30))
        t[r] = torch.minimum(torch.maximum(t_quad, 0.1 * tr), 0.5 * tr)
    stepped = (x_new != x).any(-1)
    history.push(x_new - x, g_new - g, stepped)
    history.forget(~stepped & (slope != 0))
    return x_new, f_new, g_new


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
    and the nearest neighbours both ways (refreshed by :meth:`update`)."""

    def __init__(self, source: torch.Tensor, source_normals: torch.Tensor, source_trees: list | None,
                 source_areas: torch.Tensor, target_areas: torch.Tensor, count: int, seed: int) -> None:
        self.source, self.source_normals, self.trees = source, source_normals, source_trees
        self.batch = torch.arange(source.shape[0], device=source.device)[:, None]
        self.source_points = source[self.batch, area_sample(source_areas, count, seed)]  # (B, N, 3)
        self.target_index = area_sample(target_areas, count, seed + 1)  # (B, N)

    def update(self, vertices: torch.Tensor) -> None:
        """For (B, V, 3) target ``vertices``: the nearest source vertex of each target point (its
        position and normal: the tangent plane :meth:`energy` measures to) and the nearest target
        vertex of each source point."""
        with torch.no_grad():
            nearest = nearest_indices(vertices[self.batch, self.target_index], self.source, trees=self.trees)
            self.anchor, self.normal = self.source[self.batch, nearest], self.source_normals[self.batch, nearest]
            self.back = nearest_indices(self.source_points, vertices)

    def energy(self, vertices: torch.Tensor, w_back: float, rows: torch.Tensor) -> torch.Tensor:
        """(R,) the surface term in cm^2 of the persons ``rows``, posed as (R, V, 3) ``vertices``."""
        at = torch.arange(len(rows), device=vertices.device)[:, None]
        forward = (((vertices[at, self.target_index[rows]] - self.anchor[rows]) * self.normal[rows]).sum(-1) ** 2).mean(1)
        back = ((self.source_points[rows] - vertices[at, self.back[rows]]) ** 2).sum(-1).mean(1)
        return 1e4 * (forward + w_back * back)


def convert_bodies(source_vertices: torch.Tensor, source_faces: torch.Tensor,
                   source_joints: Mapping[str, torch.Tensor], target: BodyModel, prior=None,
                   weights: ConvertWeights = ConvertWeights(), device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32, seed: int = 0, start: Params | None = None) -> Conversion:
    """Fit ``target`` to B posed source meshes (no vertex correspondence; see the module docstring).

    Every person is fitted on its own (its own surface subsets, L-BFGS history and line search):
    its result does not depend on which other persons share its batch, up to float rounding.

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
    trees_src = kd_trees(source)  # the source does not move: its trees serve every search
    faces_tgt = target.faces.to(device).long()
    cw = weights

    # 1. initialisation
    if start is None:
        start = initial_params(target, joints_src, shared, device, dtype)
    start = {k: torch.as_tensor(v).detach().to(device, dtype) for k, v in start.items()}
    key = target.shape_key
    names = ("global_orient", "body_pose", key, "transl")
    shapes = [start[k].shape[1:] for k in names]
    sizes = [int(np.prod(s)) for s in shapes]
    neutral = torch.full_like(start[key], target.neutral_shape_value)
    batch = start[key].shape[0]

    def unflatten(x: torch.Tensor) -> Params:
        p = {k: v.reshape(len(x), *s) for k, v, s in zip(names, x.split(sizes, dim=1), shapes)}
        if key == "phenotype":
            p[key] = p[key].clamp(0.0, 1.0)
        return p

    def forward(p: Params) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = target(p)
        return out.vertices.to(dtype), {n: j.to(dtype) for n, j in out.joints.items()}

    def energy(p: Params, vertices: torch.Tensor, joints: dict[str, torch.Tensor], surface: _Surface,
               w_joints: float, rows: torch.Tensor) -> torch.Tensor:
        """(R,) the energy (cm^2) of the persons ``rows``, with their parameters ``p``, vertices and joints."""
        e = cw.w_surface * surface.energy(vertices, cw.w_back, rows)
        e = e + cw.w_pose * (p["body_pose"] ** 2).sum((1, 2)) + cw.w_shape * ((p[key] - neutral[rows]) ** 2).sum(1)
        if prior is not None and cw.w_prior:
            e = e + cw.w_prior * prior.penalty(p["body_pose"])
        if w_joints:
            e = e + w_joints * 1e4 * sum(((joints[n] - joints_src[n][rows]) ** 2).sum(-1).mean(1) for n in shared) / len(shared)
        return e

    x = torch.cat([start[k].reshape(batch, -1) for k in names], dim=1)

    with torch.no_grad():
        source_areas = vertex_areas(source, faces_src)
        vertices = forward(unflatten(x))[0]
        target_areas = vertex_areas(vertices, faces_tgt)
        source_normals = vertex_normals(source, faces_src)
    everyone = torch.arange(batch, device=device)

    # 2. pose, 3. refine: each person's own L-BFGS, the nearest neighbours searched again every nn_every steps
    for stage, (iters, points, w_joints) in enumerate(((cw.iters_pose, cw.points_pose, cw.w_joints),
                                                       (cw.iters_refine, cw.points_refine, cw.w_joints_refine))):
        if iters <= 0:
            continue
        surface = _Surface(source, source_normals, trees_src, source_areas, target_areas, points, seed=_stage_seed(seed, stage))

        def evaluate(x: torch.Tensor, rows: torch.Tensor, surface: _Surface = surface,
                     w_joints: float = w_joints) -> tuple[torch.Tensor, torch.Tensor]:
            x = x.detach().requires_grad_(True)
            p = unflatten(x)
            v, j = forward(p)
            e = energy(p, v, j, surface, w_joints, rows)
            (g,) = torch.autograd.grad(e.sum(), x)  # row r of the gradient is person rows[r]'s own
            return e.detach(), g

        history = LBFGSHistory.empty(batch, cw.history, x.shape[1], x)
        for outer in range(max(1, iters // cw.nn_every)):
            surface.update(vertices)
            f, g = evaluate(x, everyone)
            for _ in range(cw.nn_every):
                x, f, g = lbfgs_step(evaluate, x, f, g, history, max_tries=cw.line_search_tries)
            # the vertices of the accepted x (the last evaluation may have been a rejected trial)
            with torch.no_grad():
                vertices = forward(unflatten(x))[0]

    # the result and its quality
    with torch.no_grad():
        params = {k: v.detach().clone() for k, v in unflatten(x).items()}
        vertices, joints = forward(params)
        surface_mm = surface_distance_mm(source, mesh_src, source_areas, vertices, Mesh.of(faces_tgt, vertices.shape[1], device),
                                         cw.points_report, _stage_seed(seed, 2), trees_src)
        joints_mm = 1e3 * torch.stack([(joints[n] - joints_src[n]).norm(dim=-1).mean(1) for n in shared]).mean(0)
    return Conversion(target.name, params, vertices.detach(), {n: j.detach() for n, j in joints.items()},
                      surface_mm, joints_mm, surface_mm > FLAG_SURFACE_MM)


def _stage_seed(seed: int, stage: int) -> int:
    """The seed of a stage's surface subsets (distinct per stage, 2 for the reported distance)."""
    return int(np.random.SeedSequence([seed, stage]).generate_state(1)[0])


def surface_distance_mm(source: torch.Tensor, source_mesh: Mesh, source_areas: torch.Tensor, target: torch.Tensor,
                        target_mesh: Mesh, count: int, seed: int, source_trees: list | None = None) -> torch.Tensor:
    """(B,) mean symmetric surface distance in mm: every target vertex to the source surface and
    ``count`` area-weighted source vertices (drawn with ``seed``) to the target surface, the two
    means averaged (``source_trees``: :func:`kd_trees` of ``source``, if built)."""
    batch = torch.arange(source.shape[0], device=source.device)[:, None]
    forward = point_to_triangle(target, source_mesh.nearest_triangles(target, source, source_trees)).sqrt().mean(1)
    points = source[batch, area_sample(source_areas, count, seed)]
    back = point_to_triangle(points, target_mesh.nearest_triangles(points, target)).sqrt().mean(1)
    return 1e3 * 0.5 * (forward + back)
