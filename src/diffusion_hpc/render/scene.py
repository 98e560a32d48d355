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
