"""Render baseline: shading, compositing, backgrounds, face labels (no real renderer needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import diffusion_hpc  # noqa: F401
except ImportError:  # not installed: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffusion_hpc.errors import InputError
from diffusion_hpc.generate.backgrounds import (
    BACKGROUND_FAMILIES,
    FolderBackgrounds,
    procedural_background,
)
from diffusion_hpc.generate.render_baseline import (
    BODY_PARTS,
    CMU_BONE_TO_PART,
    CMU_BONES,
    LIGHT_FIELDS,
    Appearance,
    RenderBaselineGenerator,
    cmu_bone_to_part_index,
    composite,
    face_parts_from_bones,
    render_item,
    sample_appearance,
    scene_appearances,
    shade,
    soft_alpha,
)
from diffusion_hpc.render.base import RenderOutput
from diffusion_hpc.render.scene import instance_ids

SIZE = 96


def sphere_render(size: int = SIZE, radius: float = 0.35, centre=(0.5, 0.5)) -> RenderOutput:
    """Analytic sphere (batch of one): orthographic-ish depth/normals, face ids by quadrant."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = radius * size
    x = (xx + 0.5 - centre[1] * size) / r
    y = (yy + 0.5 - centre[0] * size) / r
    rho2 = x * x + y * y
    mask = rho2 < 1.0
    nz = -np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0))
    normals = np.where(mask[..., None], np.stack([x, y, nz], -1), 0.0).astype(np.float32)
    depth = np.where(mask, 2.0 + 0.3 * nz, 0.0).astype(np.float32)
    quadrant = (x >= 0).astype(np.int32) + 2 * (y >= 0).astype(np.int32)
    face_id = np.where(mask, quadrant, -1).astype(np.int32)
    return RenderOutput(depth=depth[None], mask=mask[None], normals=normals[None],
                        face_id=face_id[None])


def stack(*renders: RenderOutput) -> RenderOutput:
    return RenderOutput(**{k: np.concatenate([getattr(r, k) for r in renders])
                           for k in ("depth", "mask", "normals", "face_id")})


FACE_PART = np.array([0, 1, 2, 5], np.int64)  # quadrant -> head, torso, upper_arm, upper_leg


class ConstantBackground:
    def __init__(self, image: np.ndarray):
        self.image = image

    def sample(self, rng, height, width):
        rng.uniform()  # consume like a real source
        return self.image.copy()


def test_output_shape_dtype():
    renders = stack(sphere_render(), sphere_render(centre=(0.4, 0.6)))
    rngs = [np.random.default_rng(s) for s in (1, 2)]
    out = RenderBaselineGenerator().generate(renders, FACE_PART, rngs)
    assert out.shape == (2, SIZE, SIZE, 3) and out.dtype == np.uint8
    assert RenderBaselineGenerator.name == "render"


def test_background_outside_mask_exact_without_augment():
    render = sphere_render()
    bg = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    gen = RenderBaselineGenerator(augment=False)
    img = gen.generate(render, FACE_PART, [np.random.default_rng(3)], ConstantBackground(bg))[0]
    mask = render.mask[0]
    np.testing.assert_array_equal(img[~mask], bg[~mask])
    diff = np.abs(img.astype(int) - bg.astype(int)).sum(-1)
    assert (diff[mask] > 0).mean() > 0.95


def test_composite_exact_and_soft_edge_inside_only():
    render = sphere_render()
    mask = render.mask[0]
    fg = np.ones((SIZE, SIZE, 3), np.float32)
    bg = np.zeros((SIZE, SIZE, 3), np.uint8)
    out = composite(fg, mask, bg, np.random.default_rng(0), augment=False)
    assert (out[~mask] == 0).all()
    inner = out[mask][:, 0]
    assert inner.max() == 255 and 100 < inner.min() < 255  # softened 1-px inner boundary


def test_same_seed_byte_identical_and_different_seeds_differ():
    render = sphere_render()
    gen = RenderBaselineGenerator()
    a = gen.generate(render, FACE_PART, [np.random.default_rng(42)])
    b = gen.generate(render, FACE_PART, [np.random.default_rng(42)])
    c = gen.generate(render, FACE_PART, [np.random.default_rng(43)])
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_item_independent_of_batch():
    ra, rb = sphere_render(centre=(0.45, 0.5)), sphere_render(radius=0.25, centre=(0.6, 0.4))
    gen = RenderBaselineGenerator()
    pair = gen.generate(stack(ra, rb), FACE_PART,
                        [np.random.default_rng([7, 0]), np.random.default_rng([7, 1])])
    alone = gen.generate(rb, FACE_PART, [np.random.default_rng([7, 1])])
    assert pair[1].tobytes() == alone[0].tobytes()


def test_rng_count_must_match_batch():
    with pytest.raises(ValueError):
        RenderBaselineGenerator().generate(sphere_render(), FACE_PART, [])


def _flat_appearance(light_dir) -> Appearance:
    grey = np.full(3, 0.6, np.float32)
    return Appearance(
        skin=grey, top=grey, bottom=grey, shoes=grey, bare_arms=False, bare_legs=False,
        light_dir=np.asarray(light_dir, np.float32), ambient=0.2, diffuse=0.8,
        temperature=6500.0, specular=0.0, shininess=10.0, rim=0.0, texture_strength=0.0,
    )


def test_lighting_facing_light_is_brighter():
    render = sphere_render()
    light = np.array([-1.0, 0.0, -1.0], np.float32) / np.sqrt(2.0)  # from the left, camera side
    img = shade(render, FACE_PART, _flat_appearance(light))
    assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0
    n = render.normals[0]
    facing = render.mask[0] & ((n @ light) > 0.9)
    away = render.mask[0] & ((n @ light) < -0.3)
    assert facing.any() and away.any()
    assert img[facing].mean() > img[away].mean() + 0.2
    assert (img[~render.mask[0]] == 0).all()


def test_shade_uses_part_colours():
    render = sphere_render()
    app = sample_appearance(np.random.default_rng(5))
    app.texture_strength = 0.0
    app.top = np.array([0.9, 0.1, 0.1], np.float32)  # torso red
    app.skin = np.array([0.1, 0.1, 0.9], np.float32)  # head blue
    img = shade(render, FACE_PART, app)
    fid = render.face_id[0]
    head, torso = img[fid == 0].mean(0), img[fid == 1].mean(0)
    assert head[2] > head[0] and torso[0] > torso[2]


def test_sample_appearance_deterministic_and_valid():
    a = sample_appearance(np.random.default_rng(1))
    b = sample_appearance(np.random.default_rng(1))
    assert np.array_equal(a.skin, b.skin) and np.array_equal(a.light_dir, b.light_dir)
    for s in range(50):
        app = sample_appearance(np.random.default_rng(s))
        assert abs(np.linalg.norm(app.light_dir) - 1.0) < 1e-5 and app.light_dir[2] < 0
        cols = app.part_colours()
        assert cols.shape == (len(BODY_PARTS), 3) and (cols >= 0).all() and (cols <= 1).all()


def test_face_parts_from_bones_tiny_mesh():
    # 4 vertices, 2 triangles; bones 0 (-> torso=1), 1 (-> hand=4), 2 (-> hand=4), 3 (-> head=0)
    weights = np.array([[1.0, 0.0], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    bones = np.array([[0, 1], [0, 1], [1, 2], [3, 2]])
    faces = np.array([[0, 1, 2], [1, 2, 3]])
    parts = face_parts_from_bones(weights, bones, faces, {0: 1, 1: 4, 2: 4, 3: 0})
    # face 0: torso 1.0+0.6 = 1.6, hand 0.4+1.0 = 1.4 -> torso
    # face 1: torso 0.6, hand 0.4+1.0+0.5 = 1.9, head 0.5 -> hand (bones 1+2 add up)
    assert parts.tolist() == [1, 4] and parts.dtype == np.int32


def test_cmu_bone_map_covers_rig():
    assert len(CMU_BONES) == 31 and set(CMU_BONES) == set(CMU_BONE_TO_PART)
    assert set(CMU_BONE_TO_PART.values()) == set(BODY_PARTS)
    m = cmu_bone_to_part_index()
    assert m[CMU_BONES.index("LeftForeArm")] == BODY_PARTS.index("lower_arm")
    assert m[CMU_BONES.index("RightToeBase")] == BODY_PARTS.index("foot")


def test_procedural_backgrounds_vary_and_are_deterministic():
    imgs = [procedural_background(np.random.default_rng(s), 40, 56) for s in range(6)]
    for im in imgs:
        assert im.shape == (40, 56, 3) and im.dtype == np.uint8
    assert len({im.tobytes() for im in imgs}) == 6
    again = procedural_background(np.random.default_rng(3), 40, 56)
    assert again.tobytes() == imgs[3].tobytes()
    for fam in BACKGROUND_FAMILIES:
        im = procedural_background(np.random.default_rng(0), 33, 47, fam)
        assert im.shape == (33, 47, 3) and im.std() > 0.5  # not flat


def _write_png(path: Path, size=(30, 20), seed=0):
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_folder_backgrounds_sample(tmp_path):
    _write_png(tmp_path / "a.png")
    _write_png(tmp_path / "sub" / "b.PNG", size=(64, 48), seed=1)
    (tmp_path / "notes.txt").write_text("not an image")
    src = FolderBackgrounds(tmp_path)
    assert len(src) == 2
    a = src.sample(np.random.default_rng(0), 32, 40)
    b = src.sample(np.random.default_rng(0), 32, 40)
    assert a.shape == (32, 40, 3) and a.dtype == np.uint8 and a.tobytes() == b.tobytes()
    out = RenderBaselineGenerator().generate(sphere_render(), FACE_PART,
                                             [np.random.default_rng(1)], src)
    assert out.shape == (1, SIZE, SIZE, 3)


def test_folder_backgrounds_corrupt_file_named(tmp_path):
    _write_png(tmp_path / "good.png")
    (tmp_path / "x.png").write_bytes(b"this is not a png at all \x00\x01\x02" * 10)
    with pytest.raises(InputError, match="x.png"):
        FolderBackgrounds(tmp_path)


def test_folder_backgrounds_empty_or_missing(tmp_path):
    with pytest.raises(InputError, match="no images"):
        FolderBackgrounds(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        FolderBackgrounds(tmp_path / "nope")


def test_render_item_and_batch_of_one_shade_agree():
    render = sphere_render()
    app = sample_appearance(np.random.default_rng(0))
    a = shade(render, FACE_PART, app)
    b = shade(render_item(render, 0), FACE_PART, app)
    assert np.array_equal(a, b)


#: sha256 of the two one-person images below, computed with the code before each person of an image
#: had its own look (one appearance per image): one-person images must stay pixel-identical
ONE_PERSON_DIGEST = "ced71112f782da27a4f4c70c27c178c3267c9df28f73791157e486d4e3e14b63"


def test_one_person_images_unchanged_with_or_without_instance_map():
    import hashlib

    renders = stack(sphere_render(), sphere_render(centre=(0.4, 0.6)))
    for instance in (None, instance_ids(renders.face_id, len(FACE_PART))):  # a one-person render_scene has one
        renders.instance = instance
        out = RenderBaselineGenerator().generate(renders, FACE_PART, [np.random.default_rng(s) for s in (2024, 2025)])
        assert hashlib.sha256(out.tobytes()).hexdigest() == ONE_PERSON_DIGEST


def two_people_render() -> RenderOutput:
    """Two spheres side by side as one combined render of two people (render_scene's layout: person
    1's face ids follow person 0's, FACE_PART tiled twice)."""
    left, right = sphere_render(radius=0.2, centre=(0.5, 0.27)), sphere_render(radius=0.2, centre=(0.5, 0.73))
    face_id = np.where(right.mask, right.face_id + len(FACE_PART), left.face_id)
    render = RenderOutput(np.maximum(left.depth, right.depth), left.mask | right.mask, left.normals + right.normals,
                          face_id)  # fmt: skip
    render.instance = instance_ids(face_id, len(FACE_PART))
    return render


def same_look(a: Appearance, b: Appearance) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in a.__dataclass_fields__)


def test_each_person_of_an_image_has_its_own_look():
    """Two people of one image: each person's pixels are shaded with its own look (skin, clothing),
    under the image's one light; person 0 keeps the look a one-person image draws, so its pixels are
    what they were when the whole image had one look, and person 1's colours differ from those."""
    render, parts = two_people_render(), np.tile(FACE_PART, 2)
    gen = RenderBaselineGenerator(augment=False)
    black = ConstantBackground(np.zeros((SIZE, SIZE, 3), np.uint8))
    image = gen.generate(render, parts, [np.random.default_rng(7)], black)[0]
    app_seed = int(np.random.default_rng(7).integers(0, 2**63 - 1, size=3)[0])
    looks = scene_appearances(app_seed, 2)
    assert same_look(looks[0], sample_appearance(np.random.default_rng(app_seed)))  # the one-person draw
    for name in LIGHT_FIELDS:
        assert np.array_equal(getattr(looks[0], name), getattr(looks[1], name)), name
    assert not np.allclose(looks[0].skin, looks[1].skin) and not np.allclose(looks[0].top, looks[1].top)
    one_look = render_item(render, 0)
    one_look.instance = None  # a single look for everyone: the image before people had their own
    before = gen.generate_one(one_look, parts, np.random.default_rng(7), black)
    own = [render.instance[0] == p for p in (0, 1)]
    assert np.array_equal(image[own[0]], before[own[0]])
    assert np.array_equal(image[~render.mask[0]], before[~render.mask[0]])
    # person 1: its own look, not person 0's (mean colour of its pixels, 0-255)
    assert np.abs(image[own[1]].mean(0) - before[own[1]].mean(0)).max() > 10
    alone = shade(RenderOutput(render.depth[0], own[1], render.normals[0], render.face_id[0]), parts, looks[1])
    inner = own[1] & (soft_alpha(render.mask[0]) == 1.0)  # away from the soft edge over the background
    assert np.abs(image[inner].astype(float) - np.clip(alone[inner] * 255 + 0.5, 0, 255).astype(np.uint8)).max() <= 1
    # another person stream: a third person draws a look of its own, and the first two keep theirs
    three = scene_appearances(app_seed, 3)
    assert all(same_look(a, b) for a, b in zip(three, looks)) and not np.allclose(three[2].top, looks[1].top)
