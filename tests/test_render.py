"""Tests of the render backends (torch rasteriser and moderngl/EGL) against analytic geometry.

Conventions under test: OpenCV camera frame, pixel (row i, col j) centred at (u, v) = (j, i),
depth = camera z, normals face the camera (n . ray < 0), face_id -1 / depth 0 on background.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_hpc.render import RenderOutput, get_renderer

# ----------------------------------------------------------------------------------------------
# helpers: meshes, cameras, analytic references
# ----------------------------------------------------------------------------------------------


def make_K(f=90.0, cx=40.3, cy=29.6, fy=None):
    """Pinhole intrinsics (3, 3) float64 with non-integer principal point."""
    return np.array([[f, 0.0, cx], [0.0, f if fy is None else fy, cy], [0.0, 0.0, 1.0]])


def uv_sphere(n_lat=12, n_lon=16, radius=1.0, center=(0, 0, 0), scale=(1, 1, 1)):
    """UV (ellipsoid) sphere: (vertices (V, 3) float64, faces (F, 3) int64), outward winding."""
    th = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    t, p = np.meshgrid(th, ph, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    v = np.concatenate([[[0, 1, 0]], ring, [[0, -1, 0]]])
    v = v * radius * np.asarray(scale, float) + np.asarray(center, float)
    idx = 1 + np.arange((n_lat - 1) * n_lon).reshape(n_lat - 1, n_lon)
    nxt = np.roll(idx, -1, axis=1)
    a, b, c, d = idx[:-1], nxt[:-1], idx[1:], nxt[1:]
    faces = [
        np.stack([np.zeros(n_lon, int), nxt[0], idx[0]], -1),
        np.stack([a, b, c], -1).reshape(-1, 3),
        np.stack([b, d, c], -1).reshape(-1, 3),
        np.stack([idx[-1], nxt[-1], np.full(n_lon, len(v) - 1)], -1),
    ]
    return v, np.concatenate(faces).astype(np.int64)


def box_mesh(R, center, half):
    """Box with rotation R (3, 3), centre (3,), half extents (3,): (vertices (8, 3), faces (12, 3))."""
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    v = (corners * half) @ R.T + center
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = [[a, b, c] for a, b, c, d in quads] + [[a, c, d] for a, b, c, d in quads]
    return v, np.array(faces, np.int64)


def merge(*meshes):
    """Concatenate (vertices, faces) meshes into one."""
    verts, faces, off = [], [], 0
    for v, f in meshes:
        verts.append(v)
        faces.append(f + off)
        off += len(v)
    return np.concatenate(verts), np.concatenate(faces)


def body_like_mesh(z=3.0):
    """Procedural 'body' of ellipsoids (torso, head, arms, legs; one arm crosses in front of the
    torso, so there is occlusion), about 1.8 m tall, centred at depth ``z``. ~3.3k faces."""
    parts = [
        uv_sphere(24, 32, 1.0, (0, -0.15, z), (0.22, 0.35, 0.14)),  # torso
        uv_sphere(16, 24, 0.12, (0.0, -0.65, z - 0.02)),  # head
        uv_sphere(16, 20, 1.0, (-0.12, -0.1, z - 0.2), (0.3, 0.05, 0.05)),  # arm across the torso
        uv_sphere(16, 20, 1.0, (0.35, -0.35, z), (0.05, 0.25, 0.05)),  # raised arm
        uv_sphere(16, 20, 1.0, (-0.1, 0.55, z), (0.07, 0.38, 0.08)),  # legs
        uv_sphere(16, 20, 1.0, (0.1, 0.55, z + 0.05), (0.07, 0.38, 0.08)),
    ]
    return merge(*parts)


def rotation(axis, angle):
    """Rodrigues rotation matrix (3, 3)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def pixel_rays(K, size):
    """Ray directions (H, W, 3) with d_z = 1 through every pixel centre (u, v) = (j, i)."""
    H, W = size
    i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    uv1 = np.stack([j, i, np.ones_like(i)], -1).astype(float)
    return uv1 @ np.linalg.inv(K).T


def project(K, pts):
    """(N, 3) camera points -> (N, 2) pixel coordinates (u, v)."""
    p = pts @ K.T
    return p[:, :2] / p[:, 2:]


def points_in_triangle(uv_tri, size):
    """(H, W) bool: pixel centres strictly inside the 2D triangle uv_tri (3, 2)."""
    H, W = size
    i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    p = np.stack([j, i], -1).astype(float)

    def edge(a, b):
        return (b[0] - a[0]) * (p[..., 1] - a[1]) - (b[1] - a[1]) * (p[..., 0] - a[0])

    e = np.stack([edge(uv_tri[0], uv_tri[1]), edge(uv_tri[1], uv_tri[2]),
                  edge(uv_tri[2], uv_tri[0])])
    return (e > 0).all(0) | (e < 0).all(0)


def ray_plane_depth(rays, tri):
    """Camera z where rays (H, W, 3) with d_z = 1 meet the plane of tri (3, 3)."""
    n = np.cross(tri[1] - tri[0], tri[2] - tri[0])
    return (n @ tri[0]) / (rays @ n)


def ray_box(rays, R, center, half):
    """Nearest hit of rays (H, W, 3) (d_z = 1) with an oriented box.

    Returns (depth (H, W), hit (H, W) bool, normal (H, W, 3) of the hit face, camera frame)."""
    d = rays @ R  # ray directions in the box frame
    o = (-center) @ R  # camera origin in the box frame
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - o) / d
        t2 = (half - o) / d
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near, t_far = tmin.max(-1), tmax.min(-1)
    hit = (t_near <= t_far) & (t_near > 0)
    axis = tmin.argmax(-1)
    normal_box = np.zeros(rays.shape)
    np.put_along_axis(normal_box, axis[..., None], 1.0, -1)
    normal_box *= -np.sign(np.take_along_axis(d, axis[..., None], -1))
    return np.where(hit, t_near, 0.0), hit, normal_box @ R.T


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gl_renderer():
    try:
        return get_renderer("gl")
    except RuntimeError as exc:
        pytest.skip(f"no GL context: {exc}")


@pytest.fixture(scope="module")
def torch_renderer():
    return get_renderer("torch")


@pytest.fixture(params=["torch", "gl"])
def renderer(request):
    return request.getfixturevalue(f"{request.param}_renderer")


def check_output(out: RenderOutput, B, H, W):
    """Shapes, dtypes and background conventions of a RenderOutput."""
    assert out.depth.shape == (B, H, W) and out.depth.dtype == np.float32
    assert out.mask.shape == (B, H, W) and out.mask.dtype == np.bool_
    assert out.normals.shape == (B, H, W, 3) and out.normals.dtype == np.float32
    assert out.face_id.shape == (B, H, W) and out.face_id.dtype == np.int32
    np.testing.assert_array_equal(out.mask, out.face_id >= 0)
    assert (out.depth[~out.mask] == 0).all() and (out.depth[out.mask] > 0).all()
    assert (out.normals[~out.mask] == 0).all()


# ----------------------------------------------------------------------------------------------
# (a) analytic geometry: triangle and cube
# ----------------------------------------------------------------------------------------------


def test_single_triangle_depth_and_silhouette(renderer):
    H, W = 64, 80
    K = make_K()
    tri = np.array([[-0.5, -0.4, 2.0], [0.6, -0.3, 2.5], [0.1, 0.55, 3.1]])
    out = renderer.render(tri[None], np.array([[0, 1, 2]]), K, (H, W))
    check_output(out, 1, H, W)

    expected = points_in_triangle(project(K, tri), (H, W))
    assert expected.sum() > 500
    assert (out.mask[0] != expected).sum() <= 3
    assert (out.face_id[0][out.mask[0]] == 0).all()

    z_ref = ray_plane_depth(pixel_rays(K, (H, W)), tri)
    both = out.mask[0] & expected
    np.testing.assert_allclose(out.depth[0][both], z_ref[both], rtol=2e-6, atol=0)


def test_cube_depth_normals_silhouette(renderer):
    H, W = 96, 112
    K = make_K(f=190.0, cx=55.2, cy=47.7)
    R = rotation([0.3, 1.0, 0.2], 0.7)
    center, half = np.array([0.05, -0.03, 2.5]), np.array([0.4, 0.3, 0.35])
    v, f = box_mesh(R, center, half)
    out = renderer.render(v[None], f, K, (H, W))
    check_output(out, 1, H, W)

    z_ref, hit, n_ref = ray_box(pixel_rays(K, (H, W)), R, center, half)
    assert hit.sum() > 3000
    assert (out.mask[0] != hit).sum() <= 6  # only pixel centres (almost) on the silhouette
    both = out.mask[0] & hit
    np.testing.assert_allclose(out.depth[0][both], z_ref[both], rtol=1e-5)
    # the normal of the visible face; skip pixels whose centre is on a cube edge (ambiguous face)
    agree = (out.normals[0][both] * n_ref[both]).sum(-1)
    assert (agree > 1 - 1e-5).mean() > 0.99


# ----------------------------------------------------------------------------------------------
# (b) pixel convention
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("i0,j0", [(0, 0), (47, 79), (10, 61), (33, 5)])
def test_projected_point_lands_on_its_pixel(renderer, i0, j0):
    """A tiny triangle around pixel centre (i0, j0) covers exactly that one pixel."""
    H, W = 48, 80  # non-square, non-centred principal point: catches H/W swaps and half pixels
    K = make_K(f=70.0, cx=31.7, cy=20.2, fy=75.0)
    uv = np.array([[j0 - 0.4, i0 - 0.4], [j0 + 0.45, i0 - 0.35], [j0 + 0.05, i0 + 0.45]])
    z = np.array([1.5, 1.6, 1.7])
    tri = (np.c_[uv, np.ones(3)] @ np.linalg.inv(K).T) * z[:, None]
    out = renderer.render(tri[None], np.array([[0, 1, 2]]), K, (H, W))
    assert out.mask[0].sum() == 1
    assert out.mask[0, i0, j0]
    # and the vertex projects with u = fx x / z + cx, v = fy y / z + cy
    np.testing.assert_allclose(project(K, tri), uv, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# (c) GL and torch agree on a body-like mesh
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(160, 120), (96, 128)])  # also exercises FBO resizing
def test_gl_matches_torch_on_body_like_mesh(gl_renderer, torch_renderer, size):
    H, W = size
    v, f = body_like_mesh()
    R = rotation([0.2, 1.0, 0.0], 0.4)
    v = (v - [0, 0, 3.0]) @ R.T + [0, 0, 3.0]
    K = make_K(f=1.05 * H / 2, cx=W / 2 - 0.5, cy=H / 2 - 0.5)
    a = gl_renderer.render(v[None], f, K, (H, W))
    b = torch_renderer.render(v[None], f, K, (H, W))
    check_output(a, 1, H, W)
    check_output(b, 1, H, W)
    common = a.mask & b.mask
    iou = common.sum() / (a.mask | b.mask).sum()
    assert iou >= 0.99
    assert np.abs(a.depth - b.depth)[common].max() < 1e-3
    assert (a.face_id == b.face_id)[common].mean() >= 0.99
    same = common & (a.face_id == b.face_id)
    np.testing.assert_allclose(a.normals[same], b.normals[same], atol=1e-5)


def test_gl_matches_torch_near_plane_clipping(gl_renderer, torch_renderer):
    """A triangle crossing z = near (0.05 m) is cut at the near plane identically."""
    H, W = 64, 64
    K = make_K(f=60.0, cx=31.5, cy=31.5)
    tri = np.array([[-0.3, -0.2, -0.5], [0.4, -0.25, 1.0], [0.05, 0.4, 0.9]])
    a = gl_renderer.render(tri[None], np.array([[0, 1, 2]]), K, (H, W))
    b = torch_renderer.render(tri[None], np.array([[0, 1, 2]]), K, (H, W))
    assert b.mask.sum() > 100
    assert (a.mask != b.mask).sum() <= 3
    assert b.depth[b.mask].min() >= 0.05
    common = a.mask & b.mask
    np.testing.assert_allclose(a.depth[common], b.depth[common], rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# (d) batching
# ----------------------------------------------------------------------------------------------


def test_batch_equals_single_renders(renderer):
    H, W = 72, 88
    v0, f = body_like_mesh()
    verts, Ks = [], []
    for k in range(3):
        R = rotation([0.1 * k, 1.0, 0.3], 0.5 * k)
        verts.append((v0 - [0, 0, 3.0]) @ R.T + [0.1 * k, 0.0, 3.0 + 0.4 * k])
        Ks.append(make_K(f=40.0 + 8 * k, cx=43.5 + k, cy=35.5 - 2 * k))
    verts = torch.as_tensor(np.stack(verts), dtype=torch.float32)  # torch input accepted too
    Ks = np.stack(Ks)
    batch = renderer.render(verts, f, Ks, (H, W))
    check_output(batch, 3, H, W)
    for k in range(3):
        single = renderer.render(verts[k : k + 1], f, Ks[k], (H, W))
        np.testing.assert_array_equal(batch.face_id[k], single.face_id[0])
        np.testing.assert_array_equal(batch.mask[k], single.mask[0])
        np.testing.assert_allclose(batch.depth[k], single.depth[0], atol=1e-6)
        np.testing.assert_allclose(batch.normals[k], single.normals[0], atol=1e-6)
    assert not np.array_equal(batch.mask[0], batch.mask[1])  # items really differ


# ----------------------------------------------------------------------------------------------
# (e) normals
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flip_winding", [False, True])
def test_normals_face_camera_and_are_unit(renderer, flip_winding):
    """n . ray < 0 on the foreground whatever the winding (both sides drawn), |n| = 1, 0 elsewhere."""
    H, W = 64, 64
    K = make_K(f=70.0, cx=31.5, cy=32.5)
    v, f = uv_sphere(16, 24, 0.5, (0.05, 0.0, 2.0))
    if flip_winding:
        f = f[:, ::-1].copy()
    # cut the sphere open (drop faces with z < 1.8) so that inner (back) faces are visible too
    f = f[v[f][:, :, 2].mean(1) > 1.8]
    out = renderer.render(v[None], f, K, (H, W))
    check_output(out, 1, H, W)
    n = out.normals[0][out.mask[0]]
    rays = pixel_rays(K, (H, W))[out.mask[0]]
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    assert ((n * rays).sum(-1) < 0).all()
    assert out.mask.sum() > 400


def test_normals_match_between_windings(renderer):
    H, W = 48, 48
    K = make_K(f=60.0, cx=23.5, cy=23.5)
    v, f = uv_sphere(10, 14, 0.4, (0.0, 0.0, 1.5))
    a = renderer.render(v[None], f, K, (H, W))
    b = renderer.render(v[None], f[:, ::-1].copy(), K, (H, W))
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.normals, b.normals, atol=1e-6)


def test_label_pass_reads_depth_and_face_ids_only(renderer):
    """``normals=False`` (the pipeline's label pass): the same depth, mask and face ids, no per-pixel
    normals, and each pixel's face normal equals the normal the full pass writes there."""
    H, W = 64, 64
    K = make_K(f=70.0, cx=31.5, cy=32.5)
    v, f = body_like_mesh(z=2.5)
    verts = np.stack([v, v + [0.05, 0.0, 0.3]])
    full = renderer.render(verts, f, K, (H, W))
    label = renderer.render(verts, f, K, (H, W), normals=False)
    assert label.normals is None and label.face_normals.shape == (2, len(f), 3)
    np.testing.assert_array_equal(label.depth, full.depth)
    np.testing.assert_array_equal(label.face_id, full.face_id)
    np.testing.assert_array_equal(label.mask, full.mask)
    for b in range(2):
        m = label.mask[b]
        np.testing.assert_allclose(label.face_normals[b][label.face_id[b][m]], full.normals[b][m], atol=1e-5)
    assert label.take([0, 1]) is label and label.take([1]).depth.shape == (1, H, W)


def test_visible_faces_are_the_faces_of_the_pixels():
    """visible_faces (face changes along each row-major scan) finds exactly the distinct faces of
    each image's pixels, including one seen in a single pixel at the start of the scan."""
    from diffusion_hpc.render.base import visible_faces

    rng = np.random.default_rng(0)
    face_id = np.repeat(rng.integers(-1, 40, (3, 16, 4)), 4, axis=2)  # runs of 4 equal ids
    face_id[1, 0, 0] = 57  # alone, first pixel
    face_id[2] = -1  # background only
    item, rows = visible_faces(face_id)
    for b in range(3):
        truth = np.unique(face_id[b][face_id[b] >= 0])
        np.testing.assert_array_equal(rows[item == b], truth)


def test_one_person_instance_map_is_the_mask():
    """instance_ids of a one-person render: 0 where a face shows, -1 elsewhere (what the per-face
    table gives for several people)."""
    from diffusion_hpc.render.scene import instance_ids

    face_id = np.random.default_rng(1).integers(-1, 50, (2, 8, 8)).astype(np.int32)
    one = instance_ids(face_id, 50)
    assert one.dtype == np.int32
    np.testing.assert_array_equal(one, np.where(face_id >= 0, 0, -1))
    np.testing.assert_array_equal(instance_ids(face_id, 20), np.where(face_id >= 0, face_id // 20, -1))


# ----------------------------------------------------------------------------------------------
# (f) factory
# ----------------------------------------------------------------------------------------------


def test_get_renderer_rejects_unknown_name():
    with pytest.raises(ValueError, match="gl.*torch.*auto"):
        get_renderer("nope")


def test_get_renderer_is_cached_per_process():
    assert get_renderer("torch") is get_renderer("torch")
    auto = get_renderer("auto")
    assert auto is get_renderer("auto")
    assert auto.name in ("gl", "torch")
    v, f = box_mesh(np.eye(3), np.array([0, 0, 2.0]), np.full(3, 0.3))
    out = auto.render(v, f, make_K(), (60, 80))  # (V, 3) vertices mean a batch of one
    check_output(out, 1, 60, 80)
    assert out.mask.any()


def test_auto_falls_back_to_torch_with_one_warning(monkeypatch, caplog):
    import os

    import diffusion_hpc.render as render_pkg

    class NoGL:
        def __init__(self, *a, **k):
            raise RuntimeError("EGL display not available (simulated)")

    monkeypatch.setattr(render_pkg, "_cache", {})
    monkeypatch.setattr(render_pkg, "_gl_error", None)
    monkeypatch.setattr(render_pkg, "_cache_pid", os.getpid())
    monkeypatch.setattr(render_pkg, "GLRenderer", NoGL)
    with caplog.at_level("WARNING", logger="diffusion_hpc.render"):
        r = get_renderer("auto")
        assert get_renderer("auto") is r
    assert r.name == "torch"
    warnings = [rec for rec in caplog.records if rec.levelname == "WARNING"]
    assert len(warnings) == 1 and "torch" in warnings[0].getMessage()
    assert "simulated" in warnings[0].getMessage()
    with pytest.raises(RuntimeError, match="simulated"):
        get_renderer("gl")
