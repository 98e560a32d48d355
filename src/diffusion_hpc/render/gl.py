"""OpenGL (moderngl, headless EGL) batched renderer.

One standalone EGL context, one framebuffer and one set of buffers live for the renderer's lifetime;
per call only the vertex buffer is rewritten (re-creating a scene per image costs 30-45 ms vs ~6 ms).

Outputs are written to float colour attachments, not read from the depth buffer:

* attachment 0 (R32F): camera z, interpolated perspective-correctly (metric z, not NDC depth);
* attachment 1 (RGBA32F): camera-frame unit face normal facing the camera (from the geometry shader);
* attachment 2 (R32I): face index + 1 (``gl_PrimitiveIDIn + 1``), 0 = background. (moderngl clears
  every attachment with float values, i.e. an integer attachment receives the float's bit pattern:
  0.0 is the only clear value that means the same as an int, hence the +1.)

Without per-pixel normals (``render(..., normals=False)``, what the pipeline asks for) a second
program and framebuffer write only z and the face id, and only those two are read back; the face
normals of the visible faces are then computed on the CPU
(:func:`~diffusion_hpc.render.base.face_normals_facing_camera`).
Each attachment is read straight into its output array (no reshuffling copies).

The projection matrix maps the OpenCV pixel convention onto GL's: pixel (row i, col j) has its centre
at (u, v) = (j, i), i.e. at GL window coordinates (j + 0.5, i + 0.5). Image row i is stored as GL
row i (no vertical flip), so ``glReadPixels`` returns the image top row first. This mirrors the
image, which only swaps the triangle winding; both sides are drawn, so it does not matter.

The GL context is bound to the thread that made it current: use one renderer per process/thread.
"""

from __future__ import annotations

import numpy as np

from diffusion_hpc.render.base import RenderOutput, face_normals_facing_camera

NEAR = 0.05
FAR = 100.0

_VS = """
#version 330
uniform mat4 proj;
in vec3 in_pos;
out vec3 v_pos;
void main() {
    v_pos = in_pos;
    gl_Position = proj * vec4(in_pos, 1.0);
}
"""

_GS = """
#version 330
layout(triangles) in;
layout(triangle_strip, max_vertices = 3) out;
in vec3 v_pos[];
out vec3 g_pos;
flat out vec3 g_normal;
flat out int g_fid;
void main() {
    vec3 n = cross(v_pos[1] - v_pos[0], v_pos[2] - v_pos[0]);
    float len = length(n);
    n = len > 0.0 ? n / len : vec3(0.0);
    if (dot(n, v_pos[0]) > 0.0) n = -n;          // face the camera: n . p < 0
    int fid = gl_PrimitiveIDIn + 1;
    for (int k = 0; k < 3; ++k) {
        g_pos = v_pos[k];
        g_normal = n;
        g_fid = fid;
        gl_Position = gl_in[k].gl_Position;
        EmitVertex();
    }
    EndPrimitive();
}
"""

_FS = """
#version 330
in vec3 g_pos;
flat in vec3 g_normal;
flat in int g_fid;
layout(location = 0) out float out_z;
layout(location = 1) out vec4 out_normal;
layout(location = 2) out int out_fid;
void main() {
    out_z = g_pos.z;
    out_normal = vec4(g_normal, 0.0);
    out_fid = g_fid;
}
"""

#: the label pass: depth and face id only (2 attachments, 8 bytes a pixel to read back, not 20), and
#: no geometry shader (the fragment shader has the primitive id; llvmpipe runs geometry shaders slowly)
_VS_LABEL = """
#version 330
uniform mat4 proj;
in vec3 in_pos;
out float v_z;
void main() {
    v_z = in_pos.z;
    gl_Position = proj * vec4(in_pos, 1.0);
}
"""

_FS_LABEL = """
#version 330
in float v_z;
layout(location = 0) out float out_z;
layout(location = 1) out int out_fid;
void main() {
    out_z = v_z;
    out_fid = gl_PrimitiveID + 1;
}
"""


def projection_from_K(K: np.ndarray, size: tuple[int, int], near: float = NEAR,
                      far: float = FAR) -> np.ndarray:
    """GL projection matrix reproducing the OpenCV pixel convention.

    Args:
        K: (3, 3) intrinsics (last row [0, 0, 1]; skew K[0, 1] is honoured).
        size: (H, W) image size.

    Returns:
        (4, 4) float64 row-major matrix P with clip = P @ [x, y, z, 1]: NDC x = 2 (u + 0.5) / W - 1,
        NDC y = 2 (v + 0.5) / H - 1 (row i of the GL framebuffer = image row i), w = z, and
        z in [near, far] mapped to NDC [-1, 1].
    """
    H, W = size
    fx, s, cx = K[0, 0], K[0, 1], K[0, 2]
    fy, cy = K[1, 1], K[1, 2]
    P = np.zeros((4, 4))
    P[0] = [2 * fx / W, 2 * s / W, (2 * cx + 1) / W - 1, 0]
    P[1] = [0, 2 * fy / H, (2 * cy + 1) / H - 1, 0]
    P[2] = [0, 0, (far + near) / (far - near), -2 * far * near / (far - near)]
    P[3] = [0, 0, 1, 0]
    return P


def _to_numpy(x, dtype) -> np.ndarray:
    """torch tensor or array-like -> contiguous numpy array of ``dtype``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)


class GLRenderer:
    """Headless OpenGL renderer with a persistent context, framebuffer and buffers.

    Args:
        near, far: clip range of camera z in metres.

    Raises:
        RuntimeError: if moderngl is missing or no EGL context can be created.
    """

    name = "gl"

    def __init__(self, near: float = NEAR, far: float = FAR):
        self.near, self.far = float(near), float(far)
        try:
            import moderngl
        except ImportError as exc:  # pragma: no cover - moderngl is a dependency
            raise RuntimeError(f"GLRenderer needs moderngl: {exc}") from exc
        try:
            self._ctx = moderngl.create_context(standalone=True, backend="egl")
        except Exception as exc:
            raise RuntimeError(f"cannot create a headless EGL OpenGL context: {exc}") from exc
        self._mgl = moderngl
        ctx = self._ctx
        try:
            # with per-pixel normals (True) and without (False: the label pass)
            self._progs = {True: ctx.program(vertex_shader=_VS, geometry_shader=_GS, fragment_shader=_FS),
                           False: ctx.program(vertex_shader=_VS_LABEL, fragment_shader=_FS_LABEL)}  # fmt: skip
        except Exception as exc:
            ctx.release()
            raise RuntimeError(f"OpenGL 3.3 shaders do not compile on this context: {exc}") from exc
        self._size: tuple[int, int] | None = None
        self._fbos: dict = {}
        self._attachments: tuple = ()
        self._n_verts = -1
        self._faces: np.ndarray | None = None
        self._vbo = None
        self._ibo = None
        self._vaos: dict = {}

    # -- resources -------------------------------------------------------------------------
    def _ensure_fbo(self, size: tuple[int, int]) -> None:
        """(Re)create the framebuffer when the image size (H, W) changes."""
        if self._size == size:
            return
        for obj in (*self._fbos.values(), *self._attachments):
            obj.release()
        H, W = size
        ctx = self._ctx
        z = ctx.renderbuffer((W, H), components=1, dtype="f4")
        normal = ctx.renderbuffer((W, H), components=4, dtype="f4")
        fid = ctx.renderbuffer((W, H), components=1, dtype="i4")
        zbuf = ctx.depth_renderbuffer((W, H))
        self._attachments = (z, normal, fid, zbuf)
        self._fbos = {True: ctx.framebuffer(color_attachments=[z, normal, fid], depth_attachment=zbuf),
                      False: ctx.framebuffer(color_attachments=[z, fid], depth_attachment=zbuf)}  # fmt: skip
        self._size = size

    def _ensure_mesh(self, n_verts: int, faces: np.ndarray) -> None:
        """(Re)allocate the vertex buffer / index buffer / VAO when topology changes."""
        same_faces = self._faces is not None and np.array_equal(self._faces, faces)
        if n_verts == self._n_verts and same_faces:
            return
        ctx = self._ctx
        if self._vbo is None or n_verts != self._n_verts:
            if self._vbo is not None:
                self._vbo.release()
            self._vbo = ctx.buffer(reserve=max(n_verts, 1) * 12, dynamic=True)
        if not same_faces:
            if self._ibo is not None:
                self._ibo.release()
            self._ibo = ctx.buffer(np.ascontiguousarray(faces, dtype="u4").tobytes())
            self._faces = faces.copy()
        for vao in self._vaos.values():
            vao.release()
        self._vaos = {normals: ctx.vertex_array(prog, [(self._vbo, "3f", "in_pos")], index_buffer=self._ibo,
                                                index_element_size=4)
                      for normals, prog in self._progs.items()}  # fmt: skip
        self._n_verts = n_verts

    # -- rendering -------------------------------------------------------------------------
    def render(self, vertices, faces, K, size, normals: bool = True) -> RenderOutput:
        """Render a batch of meshes sharing one topology.

        Args:
            vertices: (B, V, 3) camera-frame vertices in metres (torch or numpy); (V, 3) means B=1.
            faces: (F, 3) integer vertex indices, shared by the batch (F < 2**31).
            K: (3, 3) or (B, 3, 3) pinhole intrinsics in pixels.
            size: (H, W) output size.
            normals: also render and read back per-pixel normals; without them (faster) the output's
                ``normals`` is None and its ``face_normals`` give each pixel's normal.

        Returns:
            RenderOutput with depth (B,H,W) f32, mask (B,H,W) bool, normals (B,H,W,3) f32 (or None),
            face_id (B,H,W) i32, face_normals (B,F,3) f32 (without a normal map; 0 for faces that
            cover no pixel) or None.
        """
        verts = _to_numpy(vertices, np.float32)
        if verts.ndim == 2:
            verts = verts[None]
        if verts.ndim != 3 or verts.shape[-1] != 3:
            raise ValueError(f"vertices must be (B, V, 3), got {verts.shape}")
        faces_np = _to_numpy(faces, np.int64)
        if faces_np.ndim != 2 or faces_np.shape[-1] != 3:
            raise ValueError(f"faces must be (F, 3), got {faces_np.shape}")
        if faces_np.size and (faces_np.min() < 0 or faces_np.max() >= verts.shape[1]):
            raise ValueError("faces index out of range of vertices")
        B = verts.shape[0]
        Ks = _to_numpy(K, np.float64)
        if Ks.shape == (3, 3):
            Ks = np.broadcast_to(Ks, (B, 3, 3))
        if Ks.shape != (B, 3, 3):
            raise ValueError(f"K must be (3, 3) or (B, 3, 3) with B={B}, got {Ks.shape}")
        H, W = int(size[0]), int(size[1])

        draw = bool(faces_np.shape[0] and B)
        alloc = np.empty if draw else np.zeros  # every drawn pixel is read back into the arrays
        depth = alloc((B, H, W), np.float32)
        normal_map = alloc((B, H, W, 3), np.float32) if normals else None
        face_id = alloc((B, H, W), np.int32)
        if draw:
            with self._ctx:  # make the context current in this thread
                self._draw_batch(verts, faces_np, Ks, (H, W), depth, normal_map, face_id)
        face_id -= 1
        # without a normal map: the visible faces' normals (the others are never read)
        return RenderOutput(depth=depth, mask=face_id >= 0, normals=normal_map, face_id=face_id,
                            face_normals=None if normals else face_normals_facing_camera(verts, faces_np, face_id))

    def _draw_batch(self, verts, faces, Ks, size, depth_out, normal_out, fid_out) -> None:
        """Draw each batch item into the persistent FBO and read it back into the out arrays
        (``normal_out`` None: the label pass, depth and face id only)."""
        ctx, mgl = self._ctx, self._mgl
        self._ensure_fbo(size)
        self._ensure_mesh(verts.shape[1], faces)
        H, W = size
        with_normals = normal_out is not None
        fbo, vao = self._fbos[with_normals], self._vaos[with_normals]
        fid_attachment = 2 if with_normals else 1
        fbo.use()
        ctx.viewport = (0, 0, W, H)
        ctx.enable(mgl.DEPTH_TEST)
        ctx.disable(mgl.CULL_FACE | mgl.BLEND)
        ctx.depth_func = "<"
        proj = self._progs[with_normals]["proj"]
        for b in range(verts.shape[0]):
            self._vbo.write(verts[b])
            P = projection_from_K(Ks[b], size, self.near, self.far)
            proj.write(P.T.astype(np.float32).tobytes())  # GL matrices are column-major
            fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
            vao.render(mgl.TRIANGLES)
            fbo.read_into(depth_out[b], components=1, attachment=0, dtype="f4")
            if with_normals:
                fbo.read_into(normal_out[b], components=3, attachment=1, dtype="f4")
            fbo.read_into(fid_out[b], components=1, attachment=fid_attachment, dtype="i4")

    def release(self) -> None:
        """Free the GL objects and the context (the renderer is unusable afterwards)."""
        with self._ctx:
            for obj in (*self._vaos.values(), self._vbo, self._ibo, *self._fbos.values(), *self._progs.values(),
                        *self._attachments):
                if obj is not None:
                    obj.release()
        self._vbo = self._ibo = None
        self._vaos, self._fbos, self._progs = {}, {}, {}
        self._attachments = ()
        self._ctx.release()
