"""Multi-person scenes on the real Anny body: people stand on one ground plane without interpenetrating,
one camera frames the group, one render gives the nearest surface and whose it is, and a joint hidden
behind another person is not visible."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffusion_hpc.body.scene import posed_people
from diffusion_hpc.geometry.camera import (
    fit_group_translations,
    intrinsics_from_fov,
    rotation_x,
)
from diffusion_hpc.geometry.scene import (
    DEPTH_M,
    LATERAL_M,
    LAYOUT_PEOPLE,
    compose_scene,
    ground_offsets,
    group_layout,
    place_group,
    scene_keypoint_visibility,
    scene_keypoints,
    solid_occupancy,
)
from diffusion_hpc.poses import builtin_poses
from diffusion_hpc.render import get_renderer
from diffusion_hpc.render.scene import render_scene

SIZE = 96
K = intrinsics_from_fov(55.0, SIZE, SIZE)


@pytest.fixture(params=["torch", "gl"])
def renderer(request):
    try:
        return get_renderer(request.param)
    except RuntimeError as exc:
        pytest.skip(f"no GL context: {exc}")


def people(body, B: int, P: int, seed: int = 0, yaw: float | None = None):
    """(vertices (B, P, V, 3), joints, faces) of B x P people with CMU poses, drawn shapes and yaws
    (or all turned by ``yaw``)."""
    poses, rng = builtin_poses(), np.random.default_rng(seed)
    rows = rng.integers(len(poses.body_pose), size=(B, P))
    params = {"global_orient": torch.as_tensor(poses.global_orient[rows], dtype=torch.float32),
              "body_pose": torch.as_tensor(poses.body_pose[rows], dtype=torch.float32),
              body.shape_key: torch.as_tensor(np.stack([[body.sample_shape(rng) for _ in range(P)] for _ in range(B)]),
                                              dtype=torch.float32)}  # fmt: skip
    yaws = rng.uniform(-np.pi, np.pi, (B, P)) if yaw is None else np.full((B, P), yaw)
    v, j = posed_people(body, params, yaws)
    return v, j, body.faces.numpy()


def parity_inside(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, cell: float = 0.02) -> np.ndarray:
    """(N,) bool, exact for a closed mesh (Anny's is: every edge has two faces): a ray from each point
    along +z crosses the surface an odd number of times. Every face whose xy box holds the point's
    xy cell is tested (a grid hash of the faces, so no face is skipped that the ray could cross)."""
    tri = vertices[faces]  # (F, 3, 3)
    lo = np.floor(tri[..., :2].min(1) / cell).astype(np.int64)  # (F, 2)
    hi = np.floor(tri[..., :2].max(1) / cell).astype(np.int64)
    span = (hi - lo).max() + 1
    pair_face, pair_key = [], []
    for di in range(span):
        for dj in range(span):
            ok = (lo[:, 0] + di <= hi[:, 0]) & (lo[:, 1] + dj <= hi[:, 1])
            pair_face.append(np.flatnonzero(ok))
            pair_key.append((lo[ok, 0] + di) * 1_000_003 + lo[ok, 1] + dj)
    face, key = np.concatenate(pair_face), np.concatenate(pair_key)
    order = np.argsort(key, kind="stable")
    face, key = face[order], key[order]
    cellpt = np.floor(points[:, :2] / cell).astype(np.int64)
    qkey = cellpt[:, 0] * 1_000_003 + cellpt[:, 1]
    start, stop = np.searchsorted(key, qkey, "left"), np.searchsorted(key, qkey, "right")
    n = stop - start
    point = np.repeat(np.arange(len(points)), n)
    cand = face[np.repeat(start, n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)]
    a, b, c = (tri[cand, k] for k in range(3))
    q = points[point]
    cross = lambda u, v, w: (v[:, 0] - u[:, 0]) * (w[:, 1] - u[:, 1]) - (v[:, 1] - u[:, 1]) * (w[:, 0] - u[:, 0])
    area = cross(a, b, c)
    wa, wb, wc = cross(q, b, c) / area, cross(a, q, c) / area, cross(a, b, q) / area
    hit = (area != 0) & (wa >= 0) & (wb >= 0) & (wc >= 0)
    z = wa * a[:, 2] + wb * b[:, 2] + wc * c[:, 2]
    crossings = np.bincount(point[hit & (z > q[:, 2])], minlength=len(points))
    return crossings % 2 == 1


def interpenetrate(va: np.ndarray, vb: np.ndarray, faces: np.ndarray) -> bool:
    """Exact (on the vertices): a vertex of either mesh inside the other (only vertices in the other's box)."""
    for p, q in ((va, vb), (vb, va)):
        near = ((p >= q.min(0)) & (p <= q.max(0))).all(1)
        if near.any() and parity_inside(p[near], q, faces).any():
            return True
    return False


def test_overlap_test_misses_no_interpenetration(anny_body):
    """Two real bodies slid towards each other: the voxel test says 'collides' wherever the exact
    ray-parity test finds a vertex inside the other body (the planted collisions), and says
    'free' once they are apart by a few voxels."""
    v, _, faces = people(anny_body, 1, 2, seed=3)
    local = v[0] + ground_offsets(v[0])[:, None]
    solid = solid_occupancy(local[0], faces, voxel=0.04)
    width = np.ptp(local[0][:, 0]) / 2 + np.ptp(local[1][:, 0]) / 2
    found = []
    for gap in (-0.6, -0.35, -0.2, -0.1, -0.04, 0.2):  # box overlap along x, in metres (negative: overlap)
        moved = local[1] + [width + gap, 0.0, 0.0]
        exact = interpenetrate(local[0], moved, faces)
        voxel = bool(solid.contains(moved).any())
        found.append(exact)
        assert voxel or not exact, f"missed an interpenetration at gap {gap}"
        if gap > 0.1:
            assert not voxel and not exact
    assert found[0] and found[1], "the planted collisions are real interpenetrations"


def test_placed_people_stand_apart_on_the_ground_in_view(anny_body):
    """A crowded layout (4 people in 1.6 x 1.2 m) forces redraws; every pair of placed people is free
    of interpenetration (exact test), each lowest point is on the ground plane, and every framed person
    projects inside the image."""
    B, P = 2, 4
    v, j, faces = people(anny_body, B, P, seed=1)
    scene = compose_scene(v, j, faces, [np.random.default_rng(10 + b) for b in range(B)], rotation_x(0.25), K,
                          SIZE, SIZE, 0.9, lateral=(-0.8, 0.8), depth=(0.0, 1.2))  # fmt: skip
    assert scene.ok.all()
    assert scene.placement.rejected.sum() > 0, "the crowded layout should reject some draws"
    assert (scene.placement.draws >= scene.people.sum(1)).all()
    for b in range(B):
        placed = np.flatnonzero(scene.people[b])
        assert len(placed) >= 3
        for i, p in enumerate(placed):
            for q in placed[i + 1:]:
                assert not interpenetrate(scene.vertices[b, p], scene.vertices[b, q], faces), (b, p, q)
            height = scene.vertices[b, p] @ scene.ground[b, :3] + scene.ground[b, 3]
            assert abs(height.min()) < 1e-6 and height.max() > 0.5  # on the ground, standing up from it
            uv = scene.vertices[b, p, :, :2] / scene.vertices[b, p, :, 2:] * K[0, 0] + K[:2, 2]
            assert uv.min() >= 0 and uv.max() <= SIZE - 1


def test_partial_framing_keeps_the_framed_person_whole():
    """Only the framed person must fit; the other may be cut by the border but stays in front."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1, 1, 500, 3)) * [0.2, 0.8, 0.2]
    group = np.concatenate([a, a + [2.5, 0.0, 0.0]], 1)  # (1, 2, 500, 3)
    t, ok = fit_group_translations(group, K, SIZE, SIZE, 0.9, framed=np.array([[True, False]]))
    assert ok.all()
    uv = (group[0] + t[0])[..., :2] / (group[0] + t[0])[..., 2:] * K[0, 0] + K[0, 2]
    assert uv[0].min() >= 0 and uv[0].max() <= SIZE - 1
    assert uv[1].max() > SIZE - 1  # the unframed one is cut
    with pytest.raises(ValueError, match="frame nobody"):
        fit_group_translations(group, K, SIZE, SIZE, 0.9, framed=np.array([[False, False]]))


def test_instance_ids_are_the_nearest_person(anny_body, renderer):
    """The combined render is each person's own render, nearest first: depth = min of the solo
    depths, instance = the person it came from; so masks are disjoint and their union is depth > 0.
    Absent people draw nothing."""
    B, P = 2, 3
    v, j, faces = people(anny_body, B, P, seed=2)
    present = np.array([[True, True, True], [True, False, True]])
    scene = compose_scene(v, j, faces, [np.random.default_rng(b) for b in range(B)], rotation_x(0.1), K, SIZE, SIZE,
                          0.9, present=present, lateral=(-0.7, 0.7), depth=(0.0, 1.5))  # fmt: skip
    out = render_scene(renderer, scene.vertices, faces, K, (SIZE, SIZE), scene.people)
    assert np.array_equal(out.instance >= 0, out.depth > 0)
    assert np.array_equal(out.mask, out.depth > 0)
    assert not (out.instance[1] == 1).any()  # absent
    solo = np.stack([renderer.render(scene.vertices[:, p], faces, K, (SIZE, SIZE), normals=False).depth
                     for p in range(P)], 1)  # (B, P, H, W)
    solo[~scene.people] = 0.0
    far = np.where(solo > 0, solo, np.inf)
    nearest = far.min(1)
    covered = np.isfinite(nearest)
    assert np.array_equal(covered, out.depth > 0)
    assert np.abs(out.depth[covered] - nearest[covered]).max() < 1e-4
    # the owner is the nearest solo render (up to exact depth ties, which do not occur here)
    assert (out.instance[covered] == far.argmin(1)[covered]).mean() > 0.999
    for b in range(B):
        for p in np.flatnonzero(scene.people[b]):
            assert (out.instance[b] == p).any(), "each framed person is seen"


def test_keypoints_are_the_projection_and_hidden_behind_another(anny_body, renderer):
    """Two people, the second planted 0.6 m in front of the first: 2D is the pinhole projection of the
    3D joints (<= 0.5 px), and the first person's joints covered by the second are hidden (1), though
    some of them are visible (2) when the first person is rendered alone."""
    v, j, faces = people(anny_body, 1, 2, seed=4, yaw=0.0)
    v, coco = v + ground_offsets(v)[:, :, None], j["coco17"] + ground_offsets(v)[:, :, None]
    # upright pose, facing the camera: the torso joints of person 0 sit right behind person 1's torso
    shift = np.array([[[0.0, 0.8, 4.0], [0.0, 0.8, 3.4]]])
    verts, joints = v + shift[:, :, None], coco + shift[:, :, None]
    kp = scene_keypoints(joints, K[None], *_depth_instance(renderer, verts, faces))
    uv = joints[..., :2] / joints[..., 2:] * K[0, 0] + K[:2, 2]
    assert np.abs(kp[..., :2] - uv).max() <= 0.5
    _, instance = _depth_instance(renderer, verts, faces)
    col, row = np.round(uv[0, 0]).astype(int).T
    inside = (col >= 0) & (col < SIZE) & (row >= 0) & (row < SIZE)
    behind = inside & (instance[0, row.clip(0, SIZE - 1), col.clip(0, SIZE - 1)] == 1)
    assert behind.sum() >= 2, "the planted occluder covers some joints"
    assert (kp[0, 0, behind, 2] == 1).all()
    alone = scene_keypoints(joints[:, :1], K[None], *_depth_instance(renderer, verts[:, :1], faces))
    assert (alone[0, 0, behind, 2] == 2).any()  # the other person hides them, not their own body


def _depth_instance(renderer, verts, faces):
    out = render_scene(renderer, verts, faces, K, (SIZE, SIZE))
    return out.depth, out.instance


def test_visibility_rule_other_person_vs_own_skin():
    """A surface 5 cm in front of a joint hides it when it is another person's, not when it is its own."""
    depth = np.full((1, 4, 4), 2.95, np.float32)
    instance = np.zeros((1, 4, 4), np.int32)
    instance[0, :, 2:] = 1
    uv = np.array([[[[0.0, 0.0], [3.0, 0.0], [9.0, 0.0]], [[3.0, 3.0], [0.0, 3.0], [3.0, 1.0]]]])  # (1, 2, 3, 2)
    z = np.array([[[3.0, 3.0, 3.0], [3.0, 3.0, 2.9]]])
    vis = scene_keypoint_visibility(uv, z, depth, instance)
    # person 0: own skin (visible), person 1's surface in front (hidden), outside the image (0)
    # person 1: own skin, person 0's surface in front, in front of person 0's surface (visible)
    assert vis.tolist() == [[[2.0, 1.0, 0.0], [2.0, 1.0, 2.0]]]


def test_same_seed_same_scene_in_any_batch(anny_body):
    """A scene is fixed by its own generator: the same seed gives the same layout and camera, alone or in a batch."""
    v, j, faces = people(anny_body, 3, 3, seed=5)
    kwargs = {"lateral": (-0.8, 0.8), "depth": (0.0, 1.5)}
    a = compose_scene(v, j, faces, [np.random.default_rng(s) for s in (7, 8, 9)], rotation_x(0.2), K, SIZE, SIZE, 0.8,
                      **kwargs)  # fmt: skip
    b = compose_scene(v, j, faces, [np.random.default_rng(s) for s in (7, 8, 9)], rotation_x(0.2), K, SIZE, SIZE, 0.8,
                      **kwargs)  # fmt: skip
    one = compose_scene(v[1:2], {k: x[1:2] for k, x in j.items()}, faces, [np.random.default_rng(8)], rotation_x(0.2),
                        K, SIZE, SIZE, 0.8, **kwargs)  # fmt: skip
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.placement.rejected, b.placement.rejected)
    assert np.array_equal(one.placement.translations[0], a.placement.translations[1])
    assert np.allclose(one.vertices[0], a.vertices[1], atol=1e-9)
    other = place_group(v, faces, [np.random.default_rng(s) for s in (1, 2, 3)], **kwargs)
    assert not np.allclose(other.translations, a.placement.translations)


def test_a_person_with_no_free_spot_is_left_out(anny_body):
    """Everyone drawn onto the same spot: the first stands, each other is rejected ``max_draws`` times and left out."""
    v, _, faces = people(anny_body, 1, 3, seed=6)
    placement = place_group(v, faces, [np.random.default_rng(0)], lateral=(0.0, 0.0), depth=(0.0, 0.0), max_draws=3)
    assert placement.placed.tolist() == [[True, False, False]]
    assert placement.draws.tolist() == [7] and placement.rejected.tolist() == [6]
    assert not placement.translations[0, 1:].any()
    with pytest.raises(ValueError, match=r"\(B, P, V, 3\)"):
        place_group(v[0], faces, [np.random.default_rng(0)])


def test_visible_fractions_equal_each_persons_alone_render(anny_body, renderer):
    """The visible share of each person (its pixels in the instance map over its silhouette rendered alone),
    computed from cropped windows where its box meets another's, equals the brute-force share from a full
    render of every person alone; a crowded layout hides some people in part, a person far from the
    others is whole without a render."""
    from diffusion_hpc.render.scene import person_boxes, visible_fractions

    B, P = 2, 3
    v, j, faces = people(anny_body, B, P, seed=6)
    scene = compose_scene(v, j, faces, [np.random.default_rng(20 + b) for b in range(B)], rotation_x(0.15), K, SIZE,
                          SIZE, 0.9, lateral=(-0.9, 0.9), depth=(0.0, 2.0))  # fmt: skip
    out = render_scene(renderer, scene.vertices, faces, K, (SIZE, SIZE), scene.people)
    owner, slot = np.nonzero(scene.people)
    verts = scene.vertices[owner, slot].astype(np.float32)
    Ks = np.broadcast_to(K, (len(owner), 3, 3))
    alone = renderer.render(verts, faces, Ks.astype(np.float32), (SIZE, SIZE), normals=False).mask
    truth = (out.instance[owner] == slot[:, None, None]).sum((1, 2)) / alone.sum((1, 2))
    fast = visible_fractions(renderer, verts, faces, Ks, out.instance, owner, slot)
    np.testing.assert_allclose(fast, truth, atol=1e-9)
    assert (truth < 0.999).any(), "the crowded layout should hide someone in part"
    # every pixel a person covers lies in its box
    boxes = person_boxes(verts, Ks, (SIZE, SIZE))
    for n, (c0, r0, c1, r1) in enumerate(boxes):
        rows, cols = np.nonzero(alone[n])
        assert rows.min() >= r0 and rows.max() <= r1 and cols.min() >= c0 and cols.max() <= c1
    # two people far apart: nothing to render again, both whole
    calls = []
    counting = SimpleNamespace(render=lambda *a, **k: calls.append(1) or renderer.render(*a, **k))
    pair, _, _ = people(anny_body, 1, 2, seed=7, yaw=0.0)
    pair = pair + ground_offsets(pair)[:, :, None] + np.array([[[-1.3, 0.8, 6.0]], [[1.3, 0.8, 6.0]]])[None]
    instance = render_scene(renderer, pair, faces, K, (SIZE, SIZE)).instance
    whole = visible_fractions(counting, pair[0].astype(np.float32), faces, np.broadcast_to(K, (2, 3, 3)), instance,
                              np.zeros(2, int), np.arange(2))  # fmt: skip
    assert whole.tolist() == [1.0, 1.0] and not calls


def test_the_ground_area_grows_with_the_people(anny_body):
    """group_layout gives each person of a scene the ground a two-person scene gives (its ranges as
    they are at 2 people, twice the area at 4, about the same centre); the same four people stood on
    the grown area collide less often than on the two-person area, and each scene draws from its own
    row of per-scene ranges (alone or in a batch, the same spots)."""
    layout = group_layout(np.array([LAYOUT_PEOPLE, 4, 3]))
    assert np.array_equal(layout["lateral"][0], LATERAL_M) and np.array_equal(layout["depth"][0], DEPTH_M)
    area = np.ptp(layout["lateral"], 1) * np.ptp(layout["depth"], 1)
    np.testing.assert_allclose(area / area[0], [1.0, 2.0, 1.5])
    np.testing.assert_allclose(layout["depth"].mean(1), np.mean(DEPTH_M))
    B, P = 12, 4
    v, _, faces = people(anny_body, B, P, seed=11)
    rngs = lambda: [np.random.default_rng(30 + b) for b in range(B)]
    fixed = place_group(v, faces, rngs(), lateral=LATERAL_M, depth=DEPTH_M)
    grown = place_group(v, faces, rngs(), **group_layout(np.full(B, P)))
    assert 2 * grown.rejected.sum() < fixed.rejected.sum(), (fixed.rejected, grown.rejected)  # 1 against 5
    assert grown.placed.all()
    # per-scene ranges: scene 2 alone with its own row draws what it drew in the batch
    mixed = group_layout(np.tile([2, 3, 4], B // 3))
    batch = place_group(v, faces, rngs(), **mixed)
    alone = place_group(v[2:3], faces, [np.random.default_rng(32)], **{k: r[2:3] for k, r in mixed.items()})
    np.testing.assert_array_equal(alone.translations[0], batch.translations[2])
    with pytest.raises(ValueError, match=r"lateral has shape \(3, 2\)"):
        place_group(v, faces, rngs(), lateral=np.zeros((3, 2)))
