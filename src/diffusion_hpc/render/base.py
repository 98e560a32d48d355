"""The renderer interface: batched meshes in the camera frame -> depth, mask, normals, face ids.

Conventions (DESIGN §4): OpenCV camera (x right, y down, z forward), pinhole intrinsics K in pixels
of the output image, pixel (row i, column j) has its centre at (u, v) = (j, i), so a point projects
to ``u = fx * x / z + cx``, ``v = fy * y / z + cy``. Depth is metric camera-frame z, 0 = background.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np


@dataclass
class RenderOutput:
    """Batched render result (numpy, batch first).

    Attributes:
        depth: (B, H, W) float32, camera-frame z in metres, 0 where no surface.
        mask: (B, H, W) bool, True where a face covers the pixel centre.
        normals: (B, H, W, 3) float32 unit camera-frame normals facing the camera, 0 on background;
            None when the caller did not ask for per-pixel normals (``render(..., normals=False)``:
            :attr:`face_normals` then give them, per face).
        face_id: (B, H, W) int32 index of the visible triangle, -1 on background.
        face_normals: (B, F, 3) float32 unit camera-frame normal of every face, facing the camera
            (a pixel's normal is ``face_normals[b, face_id]``); None when the renderer did not say.
        instance: (B, H, W) int32 index of the person whose surface the pixel shows, -1 on
            background, for a render of several people (:func:`diffusion_hpc.render.scene.render_scene`);
            None for a single mesh.
    """

    depth: np.ndarray
    mask: np.ndarray
    normals: np.ndarray | None
    face_id: np.ndarray
    face_normals: np.ndarray | None = None
    instance: np.ndarray | None = None

    def item(self, i: int) -> "RenderOutput":
        """Item ``i``, unbatched: (H, W), (H, W, 3), (F, 3) views (no copy)."""
        return RenderOutput(self.depth[i], self.mask[i], None if self.normals is None else self.normals[i],
                            self.face_id[i], None if self.face_normals is None else self.face_normals[i],
                            None if self.instance is None else self.instance[i])

    def take(self, rows: Sequence[int]) -> "RenderOutput":
        """The items at ``rows``; the same arrays (no copy) when ``rows`` are all items in order."""
        rows = list(rows)
        if rows == list(range(len(self.mask))):
            return self
        normals, face_normals, instance = self.normals, self.face_normals, self.instance
        return RenderOutput(self.depth[rows], self.mask[rows], None if normals is None else normals[rows],
                            self.face_id[rows], None if face_normals is None else face_normals[rows],
                            None if instance is None else instance[rows])


def visible_faces(face_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The faces each image shows: (item (N,), face (N,)) int64, by image then face number.

    Neighbouring pixels mostly show the same face, so only the pixels where the face changes along
    a row-major scan are marked (about 5 % of a 512 px body render), not every pixel.

    Args:
        face_id: (B, H, W) visible face per pixel, -1 on background.
    """
    B = len(face_id)
    flat = np.asarray(face_id).reshape(B, -1)
    if flat.shape[1] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    seen = np.zeros(int(flat.max(initial=-1)) + 2, bool)  # index f + 1: face f (0: the background)
    items, rows = [], []
    for b in range(B):
        fid = flat[b]
        seen[:] = False
        seen[fid[1:][fid[1:] != fid[:-1]] + 1] = True
        seen[fid[0] + 1] = True
        rows.append(np.flatnonzero(seen[1:]))
        items.append(np.full(len(rows[-1]), b, np.int64))
    return np.concatenate(items), np.concatenate(rows)


def face_normals_facing_camera(vertices: np.ndarray, faces: np.ndarray, face_id: np.ndarray | None = None) -> np.ndarray:
    """Unit normal of every face, oriented towards the camera (``n . v0 < 0``; 0 for a degenerate face).

    Args:
        vertices: (B, V, 3) camera-frame vertices; faces: (F, 3) vertex indices.
        face_id: (B, H, W) visible face per pixel (-1: background), or None; when given, only the
            faces that cover a pixel get their normal (the others stay 0): what shading reads.

    Returns:
        (B, F, 3) float32 normals (what the renderers write per pixel).
    """
    v = np.asarray(vertices, np.float32)
    faces = np.asarray(faces)
    out = np.zeros((len(v), len(faces), 3), np.float32)
    if face_id is None:
        item, rows = np.repeat(np.arange(len(v)), len(faces)), np.tile(np.arange(len(faces)), len(v))
    else:
        item, rows = visible_faces(face_id)
    # every image's faces at once (the same float32 operations, face by face, as one image at a time)
    tri = faces[rows]
    v0 = v[item, tri[:, 0]]
    e1, e2 = v[item, tri[:, 1]] - v0, v[item, tri[:, 2]] - v0
    n = np.stack([e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1], e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2],
                  e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]], -1)  # fmt: skip
    length = np.sqrt((n * n).sum(-1))[:, None]
    n = np.divide(n, length, out=np.zeros_like(n), where=length > 0)
    n[(n * v0).sum(-1) > 0] *= -1.0
    out[item, rows] = n
    return out
