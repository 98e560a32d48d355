"""Several people in one render: the nearest surface of all of them, and whose surface each pixel shows.

The people of a scene share one topology (one body model), so their meshes are concatenated into
one mesh of P x V vertices and P x F faces (person p's faces are faces ``p F .. (p + 1) F - 1``) and
drawn by the ordinary renderers in one pass; a pixel's person is its face id // F. Absent people
(scenes of a batch with fewer people than the batch's widest) are collapsed onto one point behind
the camera: their zero-area faces are drawn by no backend.
"""

from __future__ import annotations

import numpy as np

from diffusion_hpc.render.base import RenderOutput

#: where absent people's vertices go: behind the camera (z < 0), all on one point
ABSENT_POINT = (0.0, 0.0, -1.0)


def combine_meshes(vertices, faces, present: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One mesh per scene from its people's meshes.

    Args:
        vertices: (B, P, V, 3) camera-frame vertices of each person (numpy or torch).
        faces: (F, 3) the shared topology.
        present: (B, P) bool, the people in each scene (default all); absent people are not drawn.
    Returns:
        vertices (B, P V, 3) float32 and faces (P F, 3) int64 (person p's vertex indices offset by p V).
    """
    v = vertices.detach().cpu().numpy() if hasattr(vertices, "detach") else np.asarray(vertices)
    v = np.asarray(v, np.float32)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"vertices must be (B, P, V, 3) (scenes, people, vertices), got {v.shape}")
    B, P, V = v.shape[:3]
    f = np.asarray(faces.detach().cpu().numpy() if hasattr(faces, "detach") else faces, np.int64)
    if present is not None:
        present = np.asarray(present, bool)
        if present.shape != (B, P):
            raise ValueError(f"present must be (B, P) = {(B, P)}, got {present.shape}")
        v = np.where(present[:, :, None, None], v, np.asarray(ABSENT_POINT, np.float32))
    combined = (f[None] + V * np.arange(P)[:, None, None]).reshape(P * len(f), 3)
    return v.reshape(B, P * V, 3), combined


def instance_ids(face_id: np.ndarray, faces_per_person: int) -> np.ndarray:
    """(B, H, W) int32 person index of each pixel of a combined render, -1 on background.

    Args:
        face_id: (B, H, W) face index into the combined mesh (-1: background).
        faces_per_person: F, faces of one person's mesh.
    """
    face_id = np.asarray(face_id)
    people = int(face_id.max(initial=-1)) // int(faces_per_person) + 1
    if people <= 1:  # one person: 0 where a face shows, -1 elsewhere (the sign bit, no gather)
        return np.right_shift(face_id.astype(np.int32, copy=False), 31)
    # a table of each face's person, its last entry -1 for the background's face id -1 (a gather is
    # several times faster than an integer division per pixel)
    table = np.append(np.repeat(np.arange(people, dtype=np.int32), int(faces_per_person)), np.int32(-1))
    return table[face_id]


def render_scene(renderer, vertices, faces, K, size: tuple[int, int], present: np.ndarray | None = None,
                 normals: bool = False) -> RenderOutput:  # fmt: skip
    """Render the people of B scenes together.

    Args:
        renderer: any backend of :func:`diffusion_hpc.render.get_renderer`.
        vertices: (B, P, V, 3) camera-frame vertices; faces: (F, 3) shared topology.
        K: (B, 3, 3) or (3, 3); size: (H, W).
        present: (B, P) bool, the people in each scene (default all).
        normals: also per-pixel normals (else ``face_normals`` per combined face).
    Returns:
        the combined :class:`~diffusion_hpc.render.base.RenderOutput` (depth = nearest surface,
        face ids into the (P F, 3) combined faces) with ``instance`` (B, H, W) set: person masks
        ``instance == p`` are disjoint and their union is ``depth > 0``.
    """
    verts, combined = combine_meshes(vertices, faces, present)
    out = renderer.render(verts, combined, K, size, normals=normals)
    out.instance = instance_ids(out.face_id, len(combined) // max(1, vertices.shape[1]))
    return out


def person_boxes(vertices, K, size: tuple[int, int]) -> np.ndarray:
    """(N, 4) int64 pixel box (first column, first row, last column, last row; inclusive, inside the
    image) of the pixel centres each person's mesh can cover: those inside the box of its projected
    vertices (a triangle covers only pixel centres inside its vertices' box), one pixel of margin.
    An empty box (last < first) for a mesh entirely outside the image.

    Args:
        vertices: (N, V, 3) camera-frame vertices, z > 0; K: (N, 3, 3); size: (H, W).
    """
    v = np.asarray(vertices, np.float64)
    k = np.asarray(K, np.float64)
    coords = [np.ascontiguousarray(v[..., i]) for i in range(3)]  # (N, V) each: contiguous reductions
    u = (k[:, 0, 0, None] * coords[0] + k[:, 0, 1, None] * coords[1]) / coords[2] + k[:, 0, 2, None]
    w = k[:, 1, 1, None] * coords[1] / coords[2] + k[:, 1, 2, None]
    height, width = size
    lo = np.floor(np.stack([u.min(1), w.min(1)], -1)).astype(np.int64) - 1
    hi = np.ceil(np.stack([u.max(1), w.max(1)], -1)).astype(np.int64) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.array([width - 1, height - 1]))
    return np.concatenate([lo, hi], 1)


def visible_fractions(renderer, vertices, faces, K, instance: np.ndarray, owner: np.ndarray,
                      slot: np.ndarray) -> np.ndarray:  # fmt: skip
    """(N,) share of each person's own silhouette that is visible in its scene's instance map.

    A person's own pixels outside every other person's box (:func:`person_boxes`) cannot be hidden, so
    only the window where its box meets the others' is rendered again with the person alone (one
    batched render, each window cropped from the image through its intrinsics: the same pixel
    centres); a person whose box meets nobody's is whole (1.0) without a render.

    Args:
        vertices: (N, V, 3) each person's camera-frame vertices; faces: (F, 3); K: (N, 3, 3) its
            image's intrinsics; instance: (B, H, W) the scenes' instance maps (person number in the
            scene, -1 background); owner: (N,) each person's scene; slot: (N,) its number there.
    """
    owner, slot = np.asarray(owner, np.int64), np.asarray(slot, np.int64)
    size = instance.shape[1:]
    K = np.asarray(K, np.float64)
    boxes = person_boxes(vertices, K, size)
    seen = (instance[owner] == slot[:, None, None]).sum((1, 2)).astype(np.float64)  # (N,) visible pixels
    # the window of person n: its box meeting the box of each other person of its scene (their union's box)
    lo, hi = np.full((len(owner), 2), np.iinfo(np.int64).max), np.full((len(owner), 2), -1)
    for n, m in zip(*np.nonzero((owner[:, None] == owner[None]) & ~np.eye(len(owner), dtype=bool))):
        a, b = np.maximum(boxes[n, :2], boxes[m, :2]), np.minimum(boxes[n, 2:], boxes[m, 2:])
        if (a <= b).all():
            lo[n], hi[n] = np.minimum(lo[n], a), np.maximum(hi[n], b)
    hidden = np.zeros(len(owner))
    meets = np.flatnonzero((hi >= lo).all(1))
    if len(meets):
        extent = (hi[meets] - lo[meets] + 1).max(0)  # (w, h): one window size for the batch
        origin = np.minimum(lo[meets], np.array([size[1], size[0]]) - extent)  # kept inside the image
        crop = K[meets].copy()
        crop[:, :2, 2] -= origin  # pixel (r, c) of the window is pixel (r + y0, c + x0) of the image
        alone = renderer.render(np.asarray(vertices, np.float32)[meets], faces, crop.astype(np.float32),
                                (int(extent[1]), int(extent[0])), normals=False).mask  # fmt: skip
        for i, n in enumerate(meets):
            (x0, y0), (w, h) = origin[i], extent
            window = instance[owner[n], y0:y0 + h, x0:x0 + w]
            hidden[n] = (alone[i] & (window != slot[n])).sum()
    total = seen + hidden
    return np.divide(seen, total, out=np.zeros_like(seen), where=total > 0)
