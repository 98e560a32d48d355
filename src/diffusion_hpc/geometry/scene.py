"""Scenes of several people: standing them on one ground plane without interpenetration, and the
COCO visibility of each person's joints when the others can hide them.

Frames: a scene is laid out in its *group frame*, the upright camera orientation (OpenCV axes: x right,
y down, z forward) with the ground plane at y = 0, so "up" is -y and a person's lowest point is its
largest y. Each person arrives posed and turned in that orientation (vertices (V, 3) with any
translation); :func:`place_group` finds where each one stands, then the camera orientation (elevation,
roll) and :func:`~diffusion_hpc.geometry.camera.fit_group_translations` take the group into the camera.

Interpenetration is tested on voxels (:class:`Occupancy`): each person's solid (surface samples ->
voxels, enclosed voxels filled, dilated by ``margin`` voxels) in its own frame; a placement collides
when any vertex of the new person falls in an occupied voxel of someone already standing. The dilation
makes the test conservative (people closer than about ``margin`` voxels count as colliding), so it
misses no interpenetration deeper than the mesh's edge length (tests/test_scene.py checks it against
an exact winding-number test). A box prefilter on the ground plane skips pairs that are far apart.

All functions are pure; arrays are numpy, batched over scenes (B) and people (P).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diffusion_hpc.geometry.camera import fit_group_translations, project, rotate_points

#: "up" in the group frame (y down)
UP = np.array([0.0, -1.0, 0.0])
#: default layout: lateral position (x) and distance (z) of each person in the group frame, metres,
#: for a scene of :data:`LAYOUT_PEOPLE` people (:func:`group_layout` scales it to a scene's count)
LATERAL_M = (-1.5, 1.5)
DEPTH_M = (0.0, 3.0)
#: the people count the default layout's ranges are sized for (4.5 m² of ground each)
LAYOUT_PEOPLE = 2
#: default voxel side of the overlap test, metres (Anny's longest edges are about 5 cm)
VOXEL_M = 0.04
#: default number of draws for one person before it is left out of the scene
MAX_DRAWS = 20
#: joints lie inside the body, a few cm below its own skin (the single-person rule of the tail)
SELF_TOLERANCE_M = 0.12


@dataclass
class Occupancy:
    """A person's solid on a voxel grid, in the frame its vertices were given in.

    Attributes:
        origin: (3,) corner of voxel (0, 0, 0), metres.
        voxel: voxel side, metres.
        grid: (X, Y, Z) bool, True where the (dilated) solid is.
    """

    origin: np.ndarray
    voxel: float
    grid: np.ndarray

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: which of the (N, 3) points fall in an occupied voxel."""
        idx = np.floor((np.asarray(points, np.float64) - self.origin) / self.voxel).astype(np.int64)
        inside = ((idx >= 0) & (idx < np.array(self.grid.shape))).all(-1)
        hit = np.zeros(len(idx), bool)
        i = idx[inside]
        hit[inside] = self.grid[i[:, 0], i[:, 1], i[:, 2]]
        return hit


def bounds(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi), each (..., 3): the box of (..., N, 3) points (reduced per coordinate on a contiguous
    copy: reducing a (..., N, 3) array over N is several times slower)."""
    coords = np.ascontiguousarray(np.swapaxes(np.asarray(points), -1, -2))  # (..., 3, N)
    return coords.min(-1), coords.max(-1)


def surface_samples(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V + 4F, 3) points on a mesh: its vertices, face centroids and edge midpoints (spacing about
    half the longest edge).

    Args:
        vertices: (V, 3); faces: (F, 3) vertex indices.
    """
    a, b, c = (vertices[faces[:, k]] for k in range(3))  # (F, 3) each
    return np.concatenate([vertices, (a + b + c) / 3.0, (a + b) / 2.0, (b + c) / 2.0, (c + a) / 2.0])


def solid_occupancy(vertices: np.ndarray, faces: np.ndarray, voxel: float = VOXEL_M, margin: int = 1) -> Occupancy:
    """The voxelised solid of one closed-ish mesh (holes smaller than a voxel do not matter).

    Args:
        vertices: (V, 3) metres; faces: (F, 3).
        voxel: voxel side, metres.
        margin: dilation in voxels (1 covers points between a surface sample and the true surface).
    """
    from scipy import ndimage

    points = surface_samples(np.asarray(vertices, np.float32), np.asarray(faces))  # float32: 1 mm is plenty
    pad = margin + 1
    lo, hi = bounds(points)
    origin = lo - pad * voxel
    idx = ((points - origin) / np.float32(voxel)).astype(np.int32)  # >= 0: truncation is floor
    origin = origin.astype(np.float64)
    grid = np.zeros(tuple(((hi - origin) / voxel).astype(np.int64) + pad + 1), bool)
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    grid = ndimage.binary_fill_holes(grid)
    if margin:
        grid = ndimage.binary_dilation(grid, iterations=margin)
    return Occupancy(origin, float(voxel), grid)


def ground_offsets(vertices: np.ndarray) -> np.ndarray:
    """(..., 3) translations that stand each body on the ground plane y = 0 with its horizontal box
    centred on x = z = 0 (its lowest point, the largest y, lands on the plane).

    Args:
        vertices: (..., V, 3) in the group frame's orientation.
    """
    return _ground_offsets(*bounds(np.asarray(vertices, np.float64)))


def _ground_offsets(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """:func:`ground_offsets` from the bodies' boxes (lo, hi), each (..., 3)."""
    return -np.stack([(lo[..., 0] + hi[..., 0]) / 2.0, hi[..., 1], (lo[..., 2] + hi[..., 2]) / 2.0], -1)


def group_layout(people, lateral=LATERAL_M, depth=DEPTH_M, reference: int = LAYOUT_PEOPLE) -> dict[str, np.ndarray]:
    """Per-scene layout ranges whose ground area grows with the scene's people count: both ranges
    scaled about their centres by sqrt(people / reference), so every scene gives each person the
    ground a ``reference``-person scene gives (a scene of ``reference`` people keeps the ranges as
    they are; 4 people get twice the area, not a crowd).

    Args:
        people: (B,) people in each scene.
        lateral, depth: (low, high) ranges of x and z for ``reference`` people, metres.
    Returns:
        ``lateral`` and ``depth``, each (B, 2), for :func:`place_group` / :func:`compose_scene`.
    """
    scale = np.sqrt(np.asarray(people, np.float64) / float(reference))[:, None]  # (B, 1)
    scaled = lambda r: np.mean(r) + scale * (np.asarray(r, np.float64) - np.mean(r))
    return {"lateral": scaled(lateral), "depth": scaled(depth)}


@dataclass
class GroupPlacement:
    """Where the people of B scenes stand.

    Attributes:
        translations: (B, P, 3) added to each person's vertices: everyone's lowest point on y = 0;
            0 for people not placed.
        placed: (B, P) bool, present and standing without touching anyone (a person whose
            ``max_draws`` draws all collided is left out).
        draws: (B,) int, placements drawn per scene (every present person's first draw included).
        rejected: (B,) int, draws rejected because the person would interpenetrate someone.
    """

    translations: np.ndarray
    placed: np.ndarray
    draws: np.ndarray
    rejected: np.ndarray


def place_group(vertices: np.ndarray, faces: np.ndarray, rngs: Sequence[np.random.Generator],
                present: np.ndarray | None = None, lateral=LATERAL_M, depth=DEPTH_M, voxel: float = VOXEL_M,
                max_draws: int = MAX_DRAWS) -> GroupPlacement:  # fmt: skip
    """Stand the people of each scene on the ground at random spots, without interpenetration.

    Person p of scene b (in order) stands at (x, z) drawn uniformly from ``lateral`` x ``depth`` by
    ``rngs[b]`` (its box centred there, its lowest point on y = 0); a draw whose body overlaps
    (:class:`Occupancy`) anyone already standing is rejected and redrawn, up to ``max_draws``. A scene
    draws from its own generator only, so it is the same whatever batch it is in.

    Args:
        vertices: (B, P, V, 3) each person posed and turned in the group frame's orientation.
        faces: (F, 3) the shared topology.
        rngs: B generators, one per scene.
        present: (B, P) bool, the people in each scene (default all).
        lateral, depth: (low, high) ranges of x and z, metres, for every scene, or (B, 2) one per
            scene (e.g. :func:`group_layout`: an area that grows with the scene's people).
        voxel: voxel side of the overlap test, metres.
        max_draws: draws per person before leaving it out.
    """
    v = np.asarray(vertices, np.float64)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"place_group: vertices have shape {v.shape}; pass (B, P, V, 3) (scenes, people, vertices)")
    B, P = v.shape[:2]
    if len(rngs) != B:
        raise ValueError(f"place_group: {len(rngs)} generators for {B} scenes; pass one generator per scene")
    present = np.ones((B, P), bool) if present is None else np.asarray(present, bool)
    ranges = {}
    for name, r in (("lateral", lateral), ("depth", depth)):
        r = np.asarray(r, np.float64)
        if r.shape not in ((2,), (B, 2)):
            raise ValueError(f"place_group: {name} has shape {r.shape}; pass (low, high) or one (low, high) per scene ({B}, 2)")
        ranges[name] = np.broadcast_to(r, (B, 2))
    lateral, depth = ranges["lateral"], ranges["depth"]
    faces = np.asarray(faces)
    lo, hi = bounds(v)  # (B, P, 3)
    offsets = _ground_offsets(lo, hi)  # (B, P, 3)
    local = v + offsets[:, :, None]  # (B, P, V, 3): on the ground, centred on x = z = 0
    lo, hi = lo + offsets, hi + offsets  # (B, P, 3) boxes
    out = GroupPlacement(np.zeros((B, P, 3)), np.zeros((B, P), bool), np.zeros(B, np.int64), np.zeros(B, np.int64))
    for b in range(B):
        solids: dict[int, Occupancy] = {}
        for p in np.flatnonzero(present[b]):
            for _ in range(max_draws):
                shift = np.array([rngs[b].uniform(*lateral[b]), 0.0, rngs[b].uniform(*depth[b])])
                out.draws[b] += 1
                if not _collides(b, p, shift, local, lo, hi, faces, out, solids, voxel):
                    out.translations[b, p] = shift
                    out.placed[b, p] = True
                    break
                out.rejected[b] += 1
    out.translations = np.where(out.placed[..., None], out.translations + offsets, 0.0)
    return out


def _collides(b, p, shift, local, lo, hi, faces, out: GroupPlacement, solids, voxel) -> bool:
    """Whether person p of scene b at ``shift`` overlaps anyone standing (box prefilter on x and z,
    then p's vertices against the other's solid)."""
    margin = 2 * voxel  # a solid reaches at most 2 voxels past its box (quantisation + 1 dilation)
    for q in np.flatnonzero(out.placed[b]):
        rel = shift - out.translations[b, q]  # p's local frame -> q's local frame
        if np.any(lo[b, p, [0, 2]] + rel[[0, 2]] > hi[b, q, [0, 2]] + margin) or \
                np.any(hi[b, p, [0, 2]] + rel[[0, 2]] < lo[b, q, [0, 2]] - margin):  # fmt: skip
            continue
        if q not in solids:
            solids[q] = solid_occupancy(local[b, q], faces, voxel)
        if solids[q].contains(local[b, p] + rel).any():
            return True
    return False


def ground_plane(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(..., 4) the ground plane y = 0 of the group frame, in the camera frame: (n, d) with n the unit
    up direction, so ``n . x + d`` is a camera-frame point's height above the ground.

    Args:
        rotation: (..., 3, 3) group frame -> camera orientation; translation: (..., 3) the camera
            translation (a group-frame point x goes to ``rotation @ x + translation``).
    """
    n = np.einsum("...ij,j->...i", np.asarray(rotation, np.float64), UP)
    return np.concatenate([n, -(n * np.asarray(translation, np.float64)).sum(-1, keepdims=True)], -1)


def scene_keypoint_visibility(uv: np.ndarray, z: np.ndarray, depth: np.ndarray, instance: np.ndarray,
                              tolerance: float = SELF_TOLERANCE_M) -> np.ndarray:  # fmt: skip
    """COCO visibility of every person's joints in a combined render: 0 outside the image (or behind
    the camera), 1 in the image but hidden, 2 visible.

    At a joint's pixel (rounded), the joint is hidden when the nearest surface there is another
    person's and nearer than the joint, or its own and nearer by more than ``tolerance`` (joints lie
    a few cm under their own skin; the single-person rule of the pipeline's tail). With one person
    this is exactly that rule.

    Args:
        uv: (B, P, J, 2) pixels; z: (B, P, J) camera-frame depths of the joints.
        depth: (B, H, W) nearest surface, 0 = background; instance: (B, H, W) whose surface it is
            (person index, -1 = background).
    Returns:
        (B, P, J) float64 in {0, 1, 2}.
    """
    B, P, _J = z.shape
    H, W = depth.shape[1:]
    # a joint at z = 0 projects to no pixel (inf / NaN): outside, as every joint behind the camera
    col = np.round(np.nan_to_num(uv[..., 0], nan=-1.0, posinf=-1.0, neginf=-1.0)).astype(np.int64)
    row = np.round(np.nan_to_num(uv[..., 1], nan=-1.0, posinf=-1.0, neginf=-1.0)).astype(np.int64)
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H) & (z > 0)
    b = np.arange(B)[:, None, None]
    r, c = row.clip(0, H - 1), col.clip(0, W - 1)
    surface, owner = depth[b, r, c], instance[b, r, c]  # (B, P, J)
    own = owner == np.arange(P)[None, :, None]
    hidden = (surface > 0) & np.where(own, surface < z - tolerance, (owner >= 0) & (surface < z))
    return np.where(inside, np.where(hidden, 1.0, 2.0), 0.0)


def scene_keypoints(joints: np.ndarray, K: np.ndarray, depth: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """(B, P, J, 3) every person's keypoints: u, v pixels (the projection of ``joints``) and COCO
    visibility (:func:`scene_keypoint_visibility`).

    Args:
        joints: (B, P, J, 3) camera-frame joints; K: (B, 3, 3); depth, instance: (B, H, W) the
            combined render (:func:`diffusion_hpc.render.scene.render_scene`).
    """
    joints = np.asarray(joints, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # z = 0 (e.g. an absent person's zeros): no pixel
        uv = project(joints, np.asarray(K, np.float64)[:, None])
    return np.concatenate([uv, scene_keypoint_visibility(uv, joints[..., 2], depth, instance)[..., None]], -1)


@dataclass
class Scene:
    """B scenes of P people in their camera.

    Attributes:
        vertices: (B, P, V, 3) float64 camera-frame vertices of each person.
        joints: joint-set name -> (B, P, J, 3) float64 camera-frame joints.
        placement: where each person stands in the group frame (:class:`GroupPlacement`).
        rotation: (B, 3, 3) group frame -> camera orientation; translation: (B, 3) the camera
            translation (a group-frame point x is at ``rotation @ x + translation``).
        ground: (B, 4) the ground plane in the camera frame (:func:`ground_plane`).
        people: (B, P) bool, the people in the image (present and placed).
        ok: (B,) bool, the scene has someone and its framed people fit the image.
    """

    vertices: np.ndarray
    joints: dict[str, np.ndarray]
    placement: GroupPlacement
    rotation: np.ndarray
    translation: np.ndarray
    ground: np.ndarray
    people: np.ndarray
    ok: np.ndarray


def compose_scene(vertices: np.ndarray, joints: dict[str, np.ndarray], faces: np.ndarray,
                  rngs: Sequence[np.random.Generator], rotation: np.ndarray, K: np.ndarray, width: int, height: int,
                  fill, offset=(0.0, 0.0), present: np.ndarray | None = None, framed: np.ndarray | None = None,
                  **layout) -> Scene:  # fmt: skip
    """People posed in the group frame's orientation -> the scene in its camera: :func:`place_group`,
    then the camera orientation ``rotation`` and
    :func:`~diffusion_hpc.geometry.camera.fit_group_translations` for the framed people.

    Args:
        vertices: (B, P, V, 3) each person posed and turned (yaw) in the upright orientation, any
            translation; joints: name -> (B, P, J, 3) in the same frame; faces: (F, 3).
        rngs: one generator per scene (the layout's draws).
        rotation: (B, 3, 3) or (3, 3) group frame -> camera orientation (elevation, roll).
        K, width, height, fill, offset: the camera and framing (:func:`fit_group_translations`).
        present: (B, P) the people of each scene (default all); framed: (B, P) who must be fully in
            frame (default everyone placed; others may be cut by the border).
        layout: ``lateral``, ``depth``, ``voxel``, ``max_draws`` of :func:`place_group`.
    """
    v = np.asarray(vertices, np.float64)
    B, _P = v.shape[:2]
    placement = place_group(v, faces, rngs, present, **layout)
    people = placement.placed
    framed = people if framed is None else np.asarray(framed, bool) & people
    usable = framed.any(1)  # (B,) scenes with someone to frame (the others fit as a dummy, not ok)
    rotation = np.broadcast_to(np.asarray(rotation, np.float64), (B, 3, 3))
    t = placement.translations[:, :, None]
    turned = rotate_points(rotation[:, None], v + t)
    translation, ok = fit_group_translations(turned, K, width, height, fill, offset, framed | ~usable[:, None],
                                             people | ~usable[:, None])  # fmt: skip
    ok &= usable
    translation = np.where(ok[:, None], translation, 0.0)
    move = lambda x: rotate_points(rotation[:, None], np.asarray(x, np.float64) + t) + translation[:, None, None]
    return Scene(turned + translation[:, None, None], {name: move(j) for name, j in joints.items()}, placement,
                 rotation, translation, ground_plane(rotation, translation), people, ok)  # fmt: skip
