"""The renderer interface: batched meshes in the camera frame -> depth, mask, normals, face ids.

Conventions (DESIGN §4): OpenCV camera (x right, y down, z forward), pinhole intrinsics K in pixels
of the output image, pixel (row i, column j) has its centre at (u, v) = (j, i), so a point projects
to ``u = fx * x / z + cx``, ``v = fy * y / z + cy``. Depth is metric camera-frame z, 0 = background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RenderOutput:
    """Batched render result (numpy, batch first).

    Attributes:
        depth: (B, H, W) float32, camera-frame z in metres, 0 where no surface.
        mask: (B, H, W) bool, True where a face covers the pixel centre.
        normals: (B, H, W, 3) float32 unit camera-frame normals facing the camera, 0 on background.
        face_id: (B, H, W) int32 index of the visible triangle, -1 on background.
    """

    depth: np.ndarray
    mask: np.ndarray
    normals: np.ndarray
    face_id: np.ndarray
