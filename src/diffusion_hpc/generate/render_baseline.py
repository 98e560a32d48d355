"""Render baseline: a shaded body mesh composited over a background (DAPA / BEDLAM-lite style).

Input is the renderer's :class:`~diffusion_hpc.render.base.RenderOutput` (depth, mask, camera-frame
normals, face ids) and a per-face body-part label. Per image this module

1. draws an :class:`Appearance` (skin tone, clothing colours, sleeve / trouser length, lighting);
   in an image of several people (a render with an ``instance`` map) each person draws its own look
   and all share the first person's light (:func:`scene_appearances`),
2. shades the visible surface (:func:`shade`: hemispheric ambient + Lambertian + Blinn-Phong specular
   + rim light, per-part albedo, slight per-part / per-face / low-frequency colour variation),
3. composites it over a background with a 1-px anti-aliased edge and applies photometric
   augmentations (:func:`composite`).

Reproducibility: each image uses only its own :class:`numpy.random.Generator`, so an image depends
on (seed, index) alone, never on the rest of the batch. Camera frame is OpenCV (x right, y down,
z forward); normals face the camera (negative z).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from diffusion_hpc.body.joint_sets import ANNY_CMU31, SMPL24
from diffusion_hpc.generate.backgrounds import BackgroundSource, ProceduralBackgrounds, hsv_to_rgb
from diffusion_hpc.render.base import RenderOutput

#: body-part vocabulary; ``face_part`` arrays index into it
BODY_PARTS: tuple[str, ...] = (
    "head", "torso", "upper_arm", "lower_arm", "hand", "upper_leg", "lower_leg", "foot",
)
PART_INDEX: dict[str, int] = {name: i for i, name in enumerate(BODY_PARTS)}

#: Anny ``cmu_mb`` rig bone names (31, in rig order)
CMU_BONES: tuple[str, ...] = ANNY_CMU31

#: ``cmu_mb`` bone name -> body part name
CMU_BONE_TO_PART: dict[str, str] = {
    "Hips": "torso", "LHipJoint": "torso", "RHipJoint": "torso", "LowerBack": "torso",
    "Spine": "torso", "Spine1": "torso", "LeftShoulder": "torso", "RightShoulder": "torso",
    "Neck": "head", "Neck1": "head", "Head": "head",
    "LeftArm": "upper_arm", "RightArm": "upper_arm",
    "LeftForeArm": "lower_arm", "RightForeArm": "lower_arm",
    "LeftHand": "hand", "LThumb": "hand", "LeftFingerBase": "hand", "LeftHandFinger1": "hand",
    "RightHand": "hand", "RThumb": "hand", "RightFingerBase": "hand", "RightHandFinger1": "hand",
    "LeftUpLeg": "upper_leg", "RightUpLeg": "upper_leg",
    "LeftLeg": "lower_leg", "RightLeg": "lower_leg",
    "LeftFoot": "foot", "LeftToeBase": "foot", "RightFoot": "foot", "RightToeBase": "foot",
}

#: Monk Skin Tone scale (10 swatches, sRGB 0-255, light to dark); skin is drawn between neighbours
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (246, 237, 228), (243, 231, 219), (247, 234, 208), (234, 218, 186), (215, 189, 150),
    (160, 126, 86), (130, 92, 67), (96, 65, 52), (58, 49, 42), (41, 36, 32),
)
#: common garment colours (sRGB 0-255): black, greys, white, navy, denim, khaki, olive, etc.
CLOTHING_COLOURS: tuple[tuple[int, int, int], ...] = (
    (25, 25, 28), (45, 45, 50), (90, 90, 95), (140, 140, 145), (200, 200, 200), (235, 235, 230),
    (30, 40, 75), (50, 70, 120), (70, 100, 150), (95, 125, 165), (175, 155, 120), (195, 180, 150),
    (85, 90, 55), (110, 70, 45), (120, 30, 40), (170, 40, 40), (200, 120, 40), (220, 190, 60),
    (40, 110, 80), (60, 140, 150), (120, 80, 140), (210, 150, 160), (90, 50, 40), (230, 220, 200),
)
SHOE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (20, 20, 22), (40, 35, 32), (230, 230, 228), (90, 60, 40), (120, 120, 125), (60, 70, 100),
    (150, 40, 40),
)
#: colour temperature (K) -> linear RGB light tint (normalised so the max channel is 1)
LIGHT_TEMPERATURES: tuple[tuple[float, tuple[float, float, float]], ...] = (
    (2700.0, (1.0, 0.66, 0.36)),
    (3500.0, (1.0, 0.77, 0.54)),
    (4500.0, (1.0, 0.87, 0.73)),
    (5500.0, (1.0, 0.95, 0.89)),
    (6500.0, (1.0, 1.0, 0.98)),
    (7500.0, (0.90, 0.93, 1.0)),
    (9000.0, (0.81, 0.87, 1.0)),
)

GAMMA = 2.2
#: spawn-key word of the look streams of an image's people after the first ("LOOK")
PERSON_LOOK_STREAM = 0x4C4F4F4B
#: the fields of an :class:`Appearance` that are the image's light, shared by all its people
LIGHT_FIELDS: tuple[str, ...] = ("light_dir", "ambient", "diffuse", "temperature", "rim")


@dataclass
class Appearance:
    """Look of one image. Colours are sRGB in [0, 1], shape (3,).

    Attributes:
        skin, top, bottom, shoes: base colours.
        bare_arms: short sleeves (lower arms show skin).
        bare_legs: shorts (lower legs show skin).
        light_dir: (3,) unit vector towards the key light, camera frame (z < 0: camera side).
        ambient, diffuse: strengths of the ambient and key light.
        temperature: key-light colour temperature in kelvin.
        specular: strength of the specular highlight (skin sheen); ``shininess`` its exponent.
        rim: strength of the rim (back) light at silhouette edges.
        part_jitter: (P, 3) multiplicative per-part colour variation around 1.
        texture_seed: seed of the per-face and low-frequency colour noise.
        texture_strength: amplitude of that noise.
    """

    skin: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    shoes: np.ndarray
    bare_arms: bool
    bare_legs: bool
    light_dir: np.ndarray
    ambient: float
    diffuse: float
    temperature: float
    specular: float
    shininess: float
    rim: float
    part_jitter: np.ndarray = field(default_factory=lambda: np.ones((len(BODY_PARTS), 3), np.float32))
    texture_seed: int = 0
    texture_strength: float = 0.04

    def part_colours(self) -> np.ndarray:
        """(P, 3) float32 sRGB albedo per body part (order of :data:`BODY_PARTS`)."""
        by_part = {
            "head": self.skin, "hand": self.skin, "torso": self.top,
            "upper_arm": self.top, "lower_arm": self.skin if self.bare_arms else self.top,
            "upper_leg": self.bottom, "lower_leg": self.skin if self.bare_legs else self.bottom,
            "foot": self.shoes,
        }
        cols = np.stack([np.asarray(by_part[p], np.float32) for p in BODY_PARTS])
        return np.clip(cols * self.part_jitter, 0.0, 1.0).astype(np.float32)

    def light_colour(self) -> np.ndarray:
        """(3,) float32 linear RGB tint of the key light at :attr:`temperature`."""
        ks = np.array([k for k, _ in LIGHT_TEMPERATURES])
        rgb = np.array([c for _, c in LIGHT_TEMPERATURES])
        return np.array([np.interp(self.temperature, ks, rgb[:, i]) for i in range(3)], np.float32)


def _palette_colour(rng: np.random.Generator, palette, jitter: float) -> np.ndarray:
    """A palette colour with uniform per-channel jitter, as (3,) float32 sRGB in [0, 1]."""
    c = np.asarray(palette[int(rng.integers(len(palette)))], np.float32)
    return np.clip((c + rng.uniform(-jitter, jitter, 3)) / 255.0, 0.0, 1.0).astype(np.float32)


def _garment_colour(rng: np.random.Generator) -> np.ndarray:
    """Mostly a common garment colour, sometimes a random muted HSV colour; (3,) sRGB [0, 1]."""

    if rng.uniform() < 0.7:
        return _palette_colour(rng, CLOTHING_COLOURS, 15.0)
    h, s, v = rng.uniform(0, 1), rng.uniform(0.15, 0.7), rng.uniform(0.2, 0.85)
    return hsv_to_rgb(h, s, v)


def sample_skin(rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 sRGB skin colour between two neighbouring Monk-scale swatches, slightly jittered."""
    tones = np.asarray(SKIN_TONES, np.float32)
    i = int(rng.integers(len(tones) - 1))
    t = rng.uniform()
    c = tones[i] * (1.0 - t) + tones[i + 1] * t
    c = c * rng.uniform(0.92, 1.0) + rng.uniform(-5.0, 5.0, 3)  # a swatch is a lit, light patch
    return np.clip(c / 255.0, 0.0, 1.0).astype(np.float32)


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draw an :class:`Appearance` from ``rng`` only (always the same number of draws)."""
    skin = sample_skin(rng)
    top = _garment_colour(rng)
    bottom = _garment_colour(rng)
    shoes = _palette_colour(rng, SHOE_COLOURS, 10.0)
    bare_arms = bool(rng.uniform() < 0.4)
    bare_legs = bool(rng.uniform() < 0.25)
    # key light: mostly from above and from the camera side, any azimuth
    az = rng.uniform(-np.pi, np.pi)
    side = rng.uniform(0.2, 1.0)
    d = np.array([side * np.cos(az), -rng.uniform(0.1, 0.9), -rng.uniform(0.3, 1.2)])
    light_dir = (d / np.linalg.norm(d)).astype(np.float32)
    ambient = float(rng.uniform(0.25, 0.5))
    diffuse = float(rng.uniform(0.55, 0.95))
    temperature = float(rng.uniform(3000.0, 8000.0))
    specular = float(rng.uniform(0.0, 0.25))
    shininess = float(rng.uniform(8.0, 40.0))
    rim = float(rng.uniform(0.0, 0.3))
    part_jitter = rng.uniform(0.95, 1.05, (len(BODY_PARTS), 3)).astype(np.float32)
    texture_seed = int(rng.integers(2**31))
    texture_strength = float(rng.uniform(0.02, 0.06))
    return Appearance(
        skin=skin, top=top, bottom=bottom, shoes=shoes, bare_arms=bare_arms, bare_legs=bare_legs,
        light_dir=light_dir, ambient=ambient, diffuse=diffuse, temperature=temperature,
        specular=specular, shininess=shininess, rim=rim, part_jitter=part_jitter,
        texture_seed=texture_seed, texture_strength=texture_strength,
    )


def scene_appearances(appearance_seed: int, people: int) -> list[Appearance]:
    """The looks of the ``people`` people of one image: person 0 draws from
    ``default_rng(appearance_seed)`` (what a one-person image draws, so it stays pixel-identical),
    person p > 0 from its own stream (``SeedSequence([appearance_seed, PERSON_LOOK_STREAM, p])``), so
    each person has its own skin, clothing, sheen and texture noise, whatever the others draw; the
    light (:data:`LIGHT_FIELDS`) is person 0's for everyone, as one scene has one light."""
    first = sample_appearance(np.random.default_rng(int(appearance_seed)))
    light = {name: getattr(first, name) for name in LIGHT_FIELDS}
    others = [replace(sample_appearance(np.random.default_rng(np.random.SeedSequence(
        [int(appearance_seed), PERSON_LOOK_STREAM, p]))), **light) for p in range(1, people)]  # fmt: skip
    return [first, *others]


def _lowfreq_field(rng: np.random.Generator, height: int, width: int, cells: int = 12) -> np.ndarray:
    """(H, W) float32 smooth noise in about [-1, 1]: a coarse random grid, bicubically upsampled."""
    import cv2

    gh = max(2, int(round(cells * height / max(height, width))) + 1)
    gw = max(2, int(round(cells * width / max(height, width))) + 1)
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _take_rows(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a[idx]`` for a 2-D array (np.take is several times faster than fancy indexing here)."""
    return np.take(a, idx, axis=0)


def _put_rows(out: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> None:
    """``out[idx] = rows`` for a C-contiguous 2-D ``out`` (via a row-as-bytes view and np.put)."""
    row = np.dtype((np.void, out.dtype.itemsize * out.shape[1]))
    src = np.ascontiguousarray(rows, dtype=out.dtype).view(row).reshape(-1)
    np.put(out.view(row).reshape(-1), idx, src)


def render_item(renders: RenderOutput, i: int) -> RenderOutput:
    """Item ``i`` of a batched :class:`RenderOutput`, unbatched: (H, W), (H, W, 3) views."""
    return renders.item(i)


def _unbatch(render: RenderOutput) -> RenderOutput:
    """Accept one image either unbatched ((H, W) mask) or as a batch of one ((1, H, W) mask)."""
    if render.mask.ndim == 2:
        return render
    if render.mask.ndim == 3 and render.mask.shape[0] == 1:
        return render_item(render, 0)
    raise ValueError(
        f"shade() takes one image, got a mask of shape {render.mask.shape}; "
        f"use render_item(renders, i) to pick item i of a batch"
    )


def shade(render: RenderOutput, face_part: np.ndarray, appearance: Appearance) -> np.ndarray:
    """Shade one rendered image.

    Model (sRGB albedo ``a``, linear light ``I``): ``a * I**(1/2.2) + highlights`` with
    ``I = tint * (ambient * hemi(n) + diffuse * max(n.L, 0))``, hemispheric ambient brighter for
    normals pointing up (-y), Blinn-Phong specular and a rim term at grazing angles. The albedo
    varies per part (:meth:`Appearance.part_colours`), per face and at low frequency in the image.

    Args:
        render: ONE image's buffers (see :func:`render_item`): mask (H, W) bool, normals
            (H, W, 3) float32 unit camera-frame normals facing the camera (or None, and the face
            normals (F, 3) instead), face_id (H, W) int32 (-1 on background); depth is not used.
            A batch of one is accepted too.
        face_part: (F,) int part index per face into :data:`BODY_PARTS`.
        appearance: the look to render.

    Returns:
        (H, W, 3) float32 sRGB in [0, 1], zero outside the mask.
    """
    import cv2

    render = _unbatch(render)
    mask, normals, face_id = render.mask, render.normals, render.face_id
    face_part = np.asarray(face_part)
    h, w = mask.shape
    out = np.zeros((h * w, 3), np.float32)
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return out.reshape(h, w, 3)
    fid = face_id.reshape(-1)[idx]
    fid = np.clip(fid, 0, face_part.shape[0] - 1)  # defensive: a masked pixel always has a face
    part = np.asarray(face_part)[fid]
    if normals is not None:
        n = _take_rows(normals.reshape(-1, 3), idx).astype(np.float32, copy=False)
    elif render.face_normals is not None:
        n = _take_rows(render.face_normals, fid).astype(np.float32, copy=False)
    else:
        raise ValueError("shade() needs normals: a render with per-pixel normals or with face normals")

    # albedo variation: per face, plus a smooth image-space field (drawn at 1/4 resolution)
    tex_rng = np.random.default_rng(appearance.texture_seed)
    face_noise = tex_rng.uniform(-1.0, 1.0, face_part.shape[0]).astype(np.float32)
    low = _lowfreq_field(tex_rng, (h + 3) // 4, (w + 3) // 4)
    low = cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR).reshape(-1)[idx]
    s = np.float32(appearance.texture_strength)
    variation = 1.0 + (0.5 * s) * face_noise[fid] + s * low  # (N,)

    L = appearance.light_dir.astype(np.float32)
    ndl = np.maximum(n @ L, 0.0)
    hemi = 0.75 - 0.25 * n[:, 1]  # y down: normals pointing up (-y) see the sky
    intensity = np.float32(appearance.ambient) * hemi + np.float32(appearance.diffuse) * ndl
    gain = np.power(intensity, np.float32(1.0 / GAMMA)) * variation  # (N,) sRGB-space gain

    # Blinn-Phong with an orthographic view vector V = (0, 0, -1); rim at grazing view angles
    half = L + np.array([0.0, 0.0, -1.0], np.float32)
    half /= np.linalg.norm(half)
    ndh = np.maximum(n @ half, 0.0)
    highlight = np.float32(appearance.specular) * np.power(ndh, np.float32(appearance.shininess))
    grazing = 1.0 - np.minimum(np.abs(n[:, 2]), 1.0)
    highlight += np.float32(appearance.rim) * grazing * grazing * grazing

    tint = (appearance.light_colour() ** (1.0 / GAMMA)).astype(np.float32)  # (3,)
    part_cols = appearance.part_colours() * tint  # (P, 3)
    col = _take_rows(part_cols, part)  # (N, 3)
    col *= gain[:, None]
    col += highlight[:, None] * tint
    _put_rows(out, idx, np.clip(col, 0.0, 1.0))
    return out.reshape(h, w, 3)


# --------------------------------------------------------------------------------------------
# compositing and augmentation


@dataclass
class AugmentParams:
    """Photometric augmentation of one image (all drawn up front, in a fixed order).

    Attributes:
        blur_sigma: Gaussian blur sigma in pixels (0 = none).
        motion_len, motion_angle: motion-blur kernel length (pixels, 0 = none) and angle (degrees).
        brightness: additive offset in [0, 255] units; contrast: gain about mid-grey;
        saturation: gain of the chroma (1 = unchanged); gamma: exponent on [0, 1] values.
        noise_sigma: std of additive Gaussian noise in [0, 255] units (0 = none);
        noise_seed: its seed.
    """

    blur_sigma: float = 0.0
    motion_len: int = 0
    motion_angle: float = 0.0
    brightness: float = 0.0
    contrast: float = 1.0
    saturation: float = 1.0
    gamma: float = 1.0
    noise_sigma: float = 0.0
    noise_seed: int = 0


#: augmentation probabilities and ranges (data, not code)
AUGMENT_CONFIG: dict[str, float] = {
    "blur_p": 0.3, "blur_sigma_min": 0.5, "blur_sigma_max": 1.5,
    "motion_p": 0.1, "motion_len_min": 3, "motion_len_max": 9,
    "brightness": 18.0, "contrast": 0.15, "saturation": 0.25, "gamma": 0.15,
    "noise_p": 0.6, "noise_sigma_max": 5.0,
}


def sample_augment(rng: np.random.Generator, config: dict[str, float] = AUGMENT_CONFIG) -> AugmentParams:
    """Draw :class:`AugmentParams` from ``rng`` (a fixed number of draws whatever is enabled)."""
    u = rng.uniform(size=3)  # blur?, motion?, noise?
    blur = rng.uniform(config["blur_sigma_min"], config["blur_sigma_max"])
    mlen = int(rng.integers(int(config["motion_len_min"]), int(config["motion_len_max"]) + 1))
    mang = rng.uniform(0.0, 180.0)
    b = rng.uniform(-config["brightness"], config["brightness"])
    c = 1.0 + rng.uniform(-config["contrast"], config["contrast"])
    s = 1.0 + rng.uniform(-config["saturation"], config["saturation"])
    g = float(np.exp(rng.uniform(-config["gamma"], config["gamma"])))
    ns = rng.uniform(0.0, config["noise_sigma_max"])
    nseed = int(rng.integers(2**31))
    return AugmentParams(
        blur_sigma=float(blur) if u[0] < config["blur_p"] else 0.0,
        motion_len=mlen if u[1] < config["motion_p"] else 0,
        motion_angle=float(mang),
        brightness=float(b), contrast=float(c), saturation=float(s), gamma=g,
        noise_sigma=float(ns) if u[2] < config["noise_p"] else 0.0,
        noise_seed=nseed,
    )


def _motion_kernel(length: int, angle_deg: float) -> np.ndarray:
    """(k, k) float32 line kernel of ``length`` pixels at ``angle_deg``, summing to 1."""
    import cv2

    k = np.zeros((length, length), np.float32)
    k[length // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D(((length - 1) / 2.0, (length - 1) / 2.0), angle_deg, 1.0)
    k = cv2.warpAffine(k, rot, (length, length))
    return k / max(float(k.sum()), 1e-6)


def apply_augment(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Apply :class:`AugmentParams` to a (H, W, 3) uint8 image; returns a new (H, W, 3) uint8.

    Order: motion blur, Gaussian blur, tone curve (brightness / contrast / gamma, one LUT),
    saturation, noise. Deterministic given ``params``.
    """
    import cv2

    img = image
    if params.motion_len > 1:
        img = cv2.filter2D(img, -1, _motion_kernel(params.motion_len, params.motion_angle),
                           borderType=cv2.BORDER_REFLECT)
    if params.blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), params.blur_sigma, borderType=cv2.BORDER_REFLECT)
    x = np.arange(256, dtype=np.float64) / 255.0
    lut = np.power(x, params.gamma) * 255.0
    lut = (lut - 127.5) * params.contrast + 127.5 + params.brightness
    img = cv2.LUT(img, np.clip(lut + 0.5, 0, 255).astype(np.uint8))
    if abs(params.saturation - 1.0) > 1e-3:
        grey = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        img = cv2.addWeighted(img, params.saturation, grey, 1.0 - params.saturation, 0.0)
    if params.noise_sigma > 0:
        h, w = img.shape[:2]
        nrng = np.random.default_rng(params.noise_seed)
        noise = nrng.standard_normal((h, w), dtype=np.float32) * np.float32(params.noise_sigma)
        # luminance noise (one field for all channels) is cheap and looks like sensor grain
        img = cv2.add(img, np.repeat(noise[:, :, None], 3, axis=2), dtype=cv2.CV_8U)
    return img


def soft_alpha(mask: np.ndarray) -> np.ndarray:
    """(H, W) float32 alpha: 1 inside, ~0.75 on the 1-px inner boundary, exactly 0 outside ``mask``.

    The mask marks pixels whose centre is covered, so a boundary pixel's true coverage is in
    [0.5, 1]; ``0.25 + 0.75 * box3x3(mask)`` approximates it (0.75 on a straight edge).
    """
    import cv2

    m = mask.astype(np.float32)
    box = cv2.blur(m, (3, 3), borderType=cv2.BORDER_REPLICATE)
    return np.where(mask, 0.25 + 0.75 * box, 0.0).astype(np.float32)


def composite(
    foreground: np.ndarray,
    mask: np.ndarray,
    background: np.ndarray,
    rng: np.random.Generator,
    augment: bool = True,
) -> np.ndarray:
    """Alpha-blend a shaded foreground over a background, then augment.

    Args:
        foreground: (H, W, 3) float32 sRGB in [0, 1] (values outside ``mask`` are ignored).
        mask: (H, W) bool hard mask (the label mask is this, unchanged; only the blend is soft).
        background: (H, W, 3) uint8.
        rng: source of the augmentation parameters; not used when ``augment`` is False.
        augment: apply :func:`apply_augment` with :func:`sample_augment` parameters.

    Returns:
        (H, W, 3) uint8. Without augmentation, pixels outside ``mask`` equal ``background`` exactly.
    """
    h, w = mask.shape
    out = np.array(background, dtype=np.uint8, copy=True).reshape(-1, 3)
    idx = np.flatnonzero(mask)
    if idx.size:
        a = soft_alpha(mask).reshape(-1)[idx][:, None]
        fg = _take_rows(foreground.reshape(-1, 3), idx) * np.float32(255.0)
        bg = _take_rows(out, idx).astype(np.float32)
        _put_rows(out, idx, np.clip(bg + a * (fg - bg) + 0.5, 0.0, 255.0).astype(np.uint8))
    out = out.reshape(h, w, 3)
    if augment:
        out = apply_augment(out, sample_augment(rng))
    return out


# --------------------------------------------------------------------------------------------
# face labels


def face_parts_from_bones(
    vertex_bone_weights: np.ndarray,
    vertex_bone_indices: np.ndarray,
    faces: np.ndarray,
    bone_to_part: dict[int, int],
) -> np.ndarray:
    """Label each face with the part of its dominant bone.

    A face's bone weights are the sum over its three vertices of their skinning weights; the face
    takes the part of the bone with the largest total (ties: lowest bone index). Bones missing from
    ``bone_to_part`` map to part 1 (``"torso"``), and only mapped bones count when any are present.

    Args:
        vertex_bone_weights: (V, K) float skinning weights.
        vertex_bone_indices: (V, K) int bone index per weight.
        faces: (F, 3) int vertex indices.
        bone_to_part: bone index -> part index (into :data:`BODY_PARTS`).

    Returns:
        (F,) int32 part index per face.
    """
    w = np.asarray(vertex_bone_weights, np.float64)
    bi = np.asarray(vertex_bone_indices, np.int64)
    faces = np.asarray(faces, np.int64)
    n_bones = int(max(bi.max(initial=0), max(bone_to_part, default=0))) + 1
    # per-part instead of per-bone: several bones of one part add up (e.g. hand + fingers)
    lut = np.full(n_bones, PART_INDEX["torso"], np.int64)
    for b, p in bone_to_part.items():
        lut[int(b)] = int(p)
    n_parts = max(len(BODY_PARTS), int(lut.max()) + 1)
    part_of = lut[bi]  # (V, K)
    v_parts = np.zeros((w.shape[0], n_parts), np.float64)
    np.add.at(v_parts, (np.repeat(np.arange(w.shape[0]), w.shape[1]), part_of.reshape(-1)),
              w.reshape(-1))
    f_parts = v_parts[faces].sum(axis=1)  # (F, P)
    return np.argmax(f_parts, axis=1).astype(np.int32)


def cmu_bone_to_part_index(bone_names: Sequence[str] = CMU_BONES) -> dict[int, int]:
    """Bone index -> part index for a rig with these bone names, via :data:`CMU_BONE_TO_PART`.

    Raises:
        KeyError: a bone name that :data:`CMU_BONE_TO_PART` does not know.
    """
    return {i: PART_INDEX[CMU_BONE_TO_PART[name]] for i, name in enumerate(bone_names)}


# --------------------------------------------------------------------------------------------
# generator


#: SMPL-24 joints -> body part (for SMPL / SMPL-X skinning weights).
SMPL_JOINT_TO_PART: dict[str, str] = {
    "pelvis": "torso", "spine1": "torso", "spine2": "torso", "spine3": "torso",
    "left_collar": "torso", "right_collar": "torso", "neck": "head", "head": "head",
    "left_hip": "upper_leg", "right_hip": "upper_leg", "left_knee": "lower_leg", "right_knee": "lower_leg",
    "left_ankle": "foot", "right_ankle": "foot", "left_foot": "foot", "right_foot": "foot",
    "left_shoulder": "upper_arm", "right_shoulder": "upper_arm", "left_elbow": "lower_arm",
    "right_elbow": "lower_arm", "left_wrist": "hand", "right_wrist": "hand", "left_hand": "hand",
    "right_hand": "hand",
}  # fmt: skip


def face_parts_for_body(body) -> np.ndarray:
    """(F,) body-part index per face of a :class:`~diffusion_hpc.body.BodyModel`.

    Anny: from its skinning weights and :data:`CMU_BONE_TO_PART`. SMPL / SMPL-X: from the
    dominant skinning joint of each face (SMPL's weights are dense: (V, 24) or (V, 55)).
    """
    faces = body.faces.numpy()
    if body.name == "anny":
        return face_parts_from_bones(body.vertex_bone_weights, body.vertex_bone_indices, faces, cmu_bone_to_part_index())

    weights = body.model.lbs_weights.detach().cpu().numpy()
    indices = np.broadcast_to(np.arange(weights.shape[1]), weights.shape)
    mapping = {i: PART_INDEX[SMPL_JOINT_TO_PART[name]] for i, name in enumerate(SMPL24) if i < weights.shape[1]}
    # SMPL-X's extra joints (jaw, eyes, fingers) are head / hand bones: head for 22-24, hand beyond.
    for i in range(len(SMPL24), weights.shape[1]):
        mapping[i] = PART_INDEX["head"] if i < 25 else PART_INDEX["hand"]
    if weights.shape[1] > 24:  # SMPL-X: joints 20-21 are wrists, 22 jaw, 23-24 eyes
        mapping[22] = mapping[23] = mapping[24] = PART_INDEX["head"]
    return face_parts_from_bones(weights, indices, faces, mapping)


class RenderBaselineGenerator:
    """Image generator of the render baseline: shaded body over a background.

    Args:
        augment: apply photometric augmentation (disable for exact tests / debugging).
    """

    name = "render"

    def __init__(self, augment: bool = True):
        self.augment = bool(augment)

    def generate_one(
        self,
        render: RenderOutput,
        face_part: np.ndarray,
        rng: np.random.Generator,
        backgrounds: BackgroundSource | None = None,
    ) -> np.ndarray:
        """One (H, W, 3) uint8 image from ONE image's buffers (:func:`render_item`), using only ``rng``.

        The rng is split into three child streams (appearance, background, augmentation), so a
        change in one stage's number of draws does not shift the others. A render of several people
        (its ``instance`` map) shades each person's pixels with its own look
        (:func:`scene_appearances`); one person is shaded as before.
        """
        seeds = rng.integers(0, 2**63 - 1, size=3)
        bg_rng, aug_rng = (np.random.default_rng(int(s)) for s in seeds[1:])
        render = _unbatch(render)
        h, w = render.mask.shape
        source = backgrounds if backgrounds is not None else ProceduralBackgrounds()
        people = 1 if render.instance is None else int(render.instance.max(initial=0)) + 1
        looks = scene_appearances(int(seeds[0]), people)
        if people == 1:
            fg = shade(render, face_part, looks[0])
        else:  # each person's pixels in its own look (the masks are disjoint)
            fg = np.zeros((h, w, 3), np.float32)
            for p, look in enumerate(looks):
                own = render.instance == p
                if own.any():
                    np.copyto(fg, shade(replace(render, mask=own), face_part, look), where=own[..., None])
        bg = source.sample(bg_rng, h, w)
        return composite(fg, render.mask, bg, aug_rng, augment=self.augment)

    def generate(
        self,
        renders: "RenderOutput",
        face_part: np.ndarray,
        rngs: list[np.random.Generator],
        backgrounds: BackgroundSource | None = None,
    ) -> np.ndarray:
        """Images for a batch of renders.

        Args:
            renders: batched :class:`RenderOutput` (B items of size H x W).
            face_part: (F,) int part index per face into :data:`BODY_PARTS`.
            rngs: B generators, one per item (e.g. from the sample's (seed, index)); item i uses
                ``rngs[i]`` only, so its image does not depend on the rest of the batch.
            backgrounds: e.g. a :class:`~diffusion_hpc.generate.backgrounds.FolderBackgrounds`;
                None = procedural backgrounds.

        Returns:
            (B, H, W, 3) uint8 RGB.
        """
        b, h, w = renders.mask.shape
        if len(rngs) != b:
            raise ValueError(f"got {len(rngs)} rngs for a batch of {b} renders; pass one per item")
        face_part = np.asarray(face_part)
        out = np.empty((b, h, w, 3), np.uint8)
        for i in range(b):
            out[i] = self.generate_one(render_item(renders, i), face_part, rngs[i], backgrounds)
        return out
