"""Backgrounds for the render baseline: procedural scenes and user image folders.

Every function takes a :class:`numpy.random.Generator` and is a deterministic function of it (and of
the folder contents for :class:`FolderBackgrounds`). Outputs are ``(H, W, 3) uint8`` RGB.

Procedural families (:data:`BACKGROUND_FAMILIES`):

- ``sky_ground``: vertical sky gradient over a ground gradient, with a (slightly tilted) horizon line.
- ``noise``: smooth multi-octave value noise mapped through a 2-3 colour ramp.
- ``blobs``: large soft colour blobs over a base colour (out-of-focus room / bokeh look).
- ``stripes``: fronto-parallel painted stripes or planks at a random angle.
- ``tiles``: a fronto-parallel tiled wall with grout lines.
- ``room``: a wall over a floor of planks or tiles seen in perspective (gym / studio floor).
- ``vignette``: a plain colour with a soft vignette and a faint gradient.

Most smooth fields are drawn at low resolution and upsampled with OpenCV, so a 512² background
costs a few milliseconds.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from diffusion_hpc.runtime.images import check_image_file, image_files, load_image

#: image file extensions (lower case) picked up by :class:`FolderBackgrounds`

# Colour palettes (sRGB, 0-255). Muted, natural colours; jittered when used.
SKY_TOP: tuple[tuple[int, int, int], ...] = (
    (86, 130, 190), (120, 160, 210), (60, 95, 150), (150, 170, 190), (180, 185, 195),
    (110, 120, 150), (200, 170, 150), (95, 110, 135),
)
SKY_HORIZON: tuple[tuple[int, int, int], ...] = (
    (200, 215, 230), (215, 220, 225), (230, 210, 190), (190, 200, 210), (170, 180, 190),
    (235, 225, 205),
)
GROUND: tuple[tuple[int, int, int], ...] = (
    (92, 120, 60), (110, 130, 70), (70, 95, 50), (175, 160, 125), (195, 180, 145),
    (95, 95, 98), (125, 120, 115), (140, 110, 80), (105, 85, 65), (160, 150, 140),
)
WALL: tuple[tuple[int, int, int], ...] = (
    (225, 222, 215), (200, 195, 185), (180, 185, 190), (150, 160, 165), (210, 200, 180),
    (170, 150, 130), (120, 130, 140), (95, 100, 110), (200, 210, 200), (225, 215, 200),
    (70, 75, 85), (140, 120, 110),
)
FLOOR: tuple[tuple[int, int, int], ...] = (
    (185, 140, 95), (160, 115, 75), (205, 170, 125), (130, 95, 65), (120, 125, 130),
    (80, 85, 95), (170, 170, 165), (60, 110, 150), (150, 70, 60), (90, 120, 90),
)


class BackgroundSource(Protocol):
    """Anything that draws a background image: ``sample(rng, height, width) -> (H, W, 3) uint8``."""

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------
# small helpers


def _jitter_colour(rng: np.random.Generator, colour, amount: float = 12.0) -> np.ndarray:
    """(3,) float32 colour in 0-255 with a per-channel uniform jitter of +-``amount``."""
    c = np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)
    return np.clip(c, 0.0, 255.0)


def _pick(rng: np.random.Generator, palette, amount: float = 12.0) -> np.ndarray:
    """A jittered (3,) float32 colour drawn uniformly from ``palette``."""
    return _jitter_colour(rng, palette[int(rng.integers(len(palette)))], amount)


def muted_colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 colour in 0-255: any hue, low-to-moderate saturation, mid value."""
    h = rng.uniform(0.0, 1.0)
    s = rng.uniform(0.05, 0.45)
    v = rng.uniform(0.3, 0.9)
    return hsv_to_rgb(h, s, v) * 255.0


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) -> (3,) float32 RGB in [0, 1]."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.asarray(rgb, np.float32)


def smooth_noise(
    rng: np.random.Generator, height: int, width: int, cells: float = 4.0, octaves: int = 4,
    persistence: float = 0.5,
) -> np.ndarray:
    """(H, W) float32 multi-octave value noise, roughly zero-mean, scaled to max |value| = 1.

    Octave ``k`` is a random grid with about ``cells * 2**k`` cells along the longer side, upsampled
    bicubically; its amplitude is ``persistence**k``.
    """
    import cv2

    out = np.zeros((height, width), np.float32)
    longer = max(height, width)
    for k in range(octaves):
        n = cells * (2**k)
        gh = max(2, int(round(n * height / longer)) + 2)
        gw = max(2, int(round(n * width / longer)) + 2)
        grid = rng.standard_normal((gh, gw), dtype=np.float32)
        out += (persistence**k) * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    out -= out.mean()
    peak = float(np.abs(out).max())
    return out / peak if peak > 0 else out


def _vertical_ramp(height: int, width: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 linear blend from ``top`` (row 0) to ``bottom`` (last row)."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    col = top[None, None, :] * (1.0 - t) + bottom[None, None, :] * t
    return np.broadcast_to(col, (height, width, 3)).astype(np.float32)


def _shade_texture(
    rng: np.random.Generator, img: np.ndarray, strength: float, cells: float = 6.0
) -> np.ndarray:
    """Multiply ``img`` (H, W, 3) float32 by ``1 + strength * smooth_noise`` (luminance texture)."""
    h, w = img.shape[:2]
    n = smooth_noise(rng, h, w, cells=cells, octaves=4)
    return img * (1.0 + strength * n)[:, :, None]


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """float image in 0-255 -> uint8 (H, W, 3), rounded and clipped."""
    return np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# families (each: (rng, H, W) -> (H, W, 3) float32 in 0-255)


def _sky_ground(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Sky gradient above a tilted horizon, ground gradient below, with soft textures."""
    horizon = rng.uniform(0.3, 0.75) * h
    tilt = np.tan(np.deg2rad(rng.uniform(-6.0, 6.0)))
    sky = _vertical_ramp(h, w, _pick(rng, SKY_TOP), _pick(rng, SKY_HORIZON))
    g_near = _pick(rng, GROUND, 18.0)
    g_far = np.clip(g_near * rng.uniform(0.8, 1.15) + rng.uniform(-10, 10, 3), 0, 255)
    ground = _vertical_ramp(h, w, g_far.astype(np.float32), (g_near * 0.8).astype(np.float32))
    ground = _shade_texture(rng, ground, rng.uniform(0.05, 0.2), cells=8.0)
    # clouds: brighten the sky where noise is high
    clouds = np.clip(smooth_noise(rng, h, w, cells=3.0, octaves=4), 0.0, 1.0)
    sky = sky + rng.uniform(0.0, 0.5) * clouds[:, :, None] * (255.0 - sky)
    rows = np.arange(h, dtype=np.float32)[:, None]
    cols = np.arange(w, dtype=np.float32)[None, :]
    signed = rows - (horizon + tilt * (cols - w / 2))  # > 0 below the horizon
    soft = max(1.0, rng.uniform(0.5, 4.0))
    a = np.clip(0.5 + signed / (2.0 * soft), 0.0, 1.0)[:, :, None]
    return sky * (1.0 - a) + ground * a


@functools.lru_cache(maxsize=8)
def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(yy, xx): (h, w) float32 row and column of every pixel, read-only, made once per size."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Multi-octave noise through a colour ramp of 2-3 muted colours."""
    n = smooth_noise(rng, h, w, cells=rng.uniform(1.5, 5.0), octaves=5,
                     persistence=rng.uniform(0.4, 0.6))
    t = np.clip(0.5 + 0.5 * n, 0.0, 1.0)[:, :, None]
    c0, c1, c2 = muted_colour(rng), muted_colour(rng), muted_colour(rng)
    if rng.uniform() < 0.5:  # two-colour ramp
        return c0 * (1.0 - t) + c1 * t
    lo = np.clip(2.0 * t, 0.0, 1.0)
    hi = np.clip(2.0 * t - 1.0, 0.0, 1.0)
    return c0 * (1.0 - lo) + c1 * (lo - hi) + c2 * hi


def _blobs(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Soft Gaussian colour blobs over a base colour, drawn at 1/8 resolution then upsampled."""
    import cv2

    sh, sw = max(8, h // 8), max(8, w // 8)
    img = np.empty((sh, sw, 3), np.float32)
    img[:] = muted_colour(rng)
    yy, xx = pixel_grid(sh, sw)
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(0, sh), rng.uniform(0, sw)
        r = rng.uniform(0.08, 0.35) * max(sh, sw)
        a = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * r * r)) * rng.uniform(0.4, 0.9)
        img += a[:, :, None] * (muted_colour(rng) - img)
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    return _shade_texture(rng, img, rng.uniform(0.02, 0.08), cells=10.0)


def _stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Stripes or planks at a random angle, each stripe a jittered copy of 2-3 colours."""
    angle = rng.choice([0.0, 90.0, rng.uniform(0.0, 180.0)])
    th = np.deg2rad(angle)
    period = rng.uniform(0.03, 0.2) * max(h, w)
    yy, xx = pixel_grid(h, w)
    u = xx * np.float32(np.cos(th)) + yy * np.float32(np.sin(th))
    idx = np.floor(u / period).astype(np.int64)
    idx -= idx.min()
    n_stripes = int(idx.max()) + 1
    base = [muted_colour(rng) * 0.6 + _pick(rng, WALL) * 0.4 for _ in range(int(rng.integers(2, 4)))]
    table = np.stack([base[i % len(base)] for i in range(n_stripes)]).astype(np.float32)
    table *= rng.uniform(0.9, 1.1, (n_stripes, 1)).astype(np.float32)
    img = table[idx]
    return _shade_texture(rng, img, rng.uniform(0.03, 0.12), cells=8.0)


def _tile_pattern(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, planks: bool
) -> np.ndarray:
    """(H, W, 3) float32 colours of planks or tiles at pattern coordinates (x, y) in tile units."""
    if planks:
        c = _pick(rng, FLOOR, 15.0)
        row = np.floor(y).astype(np.int64)
        offset = (row * 0.37) % 1.0  # staggered plank joints
        col = np.floor(x / 4.0 + offset).astype(np.int64)
        key = (row * 7919 + col * 104729) % 97
        gain = rng.uniform(0.85, 1.12, 97).astype(np.float32)[key]
        frac = y - np.floor(y)
        seam = (frac < 0.04) | (frac > 0.96)
        img = c[None, None, :] * gain[:, :, None]
        img[seam] *= 0.7
        return img
    c0, c1 = _pick(rng, FLOOR + WALL, 12.0), _pick(rng, FLOOR + WALL, 12.0)
    if rng.uniform() < 0.5:
        c1 = c0 * rng.uniform(0.8, 0.95)
    i, j = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    checker = ((i + j) % 2).astype(np.float32)[:, :, None]
    img = c0 * (1.0 - checker) + c1 * checker
    fx, fy = x - np.floor(x), y - np.floor(y)
    g = 0.03
    grout = (fx < g) | (fx > 1 - g) | (fy < g) | (fy > 1 - g)
    img[grout] = _pick(rng, WALL, 10.0) * 0.85
    return img


def _tiles(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A fronto-parallel tiled wall."""
    size = rng.uniform(0.05, 0.2) * max(h, w)
    yy, xx = pixel_grid(h, w)
    img = _tile_pattern(rng, xx / size, yy / size, planks=False)
    return _shade_texture(rng, img, rng.uniform(0.03, 0.1), cells=6.0)


def _room(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A wall (gradient, texture) over a perspective floor of planks or tiles."""
    horizon = rng.uniform(0.35, 0.7) * h
    wall_c = _pick(rng, WALL, 12.0)
    wall = _vertical_ramp(h, w, wall_c * rng.uniform(0.85, 1.05), wall_c * rng.uniform(0.75, 1.0))
    wall = _shade_texture(rng, wall, rng.uniform(0.02, 0.08), cells=5.0)
    yy, xx = pixel_grid(h, w)
    dy = np.maximum(yy - horizon, 0.5)
    f = 0.6 * max(h, w)  # pinhole focal (pixels) of the imagined camera
    cam_h = rng.uniform(1.0, 1.8)  # metres above the floor
    z = f * cam_h / dy  # floor depth per row
    tile = rng.uniform(0.4, 1.0)  # metres
    tile_z = tile / 4.0 if rng.uniform() < 0.5 else tile
    yaw = rng.uniform(-0.6, 0.6)
    xw = (xx - w / 2 + rng.uniform(-0.2, 0.2) * w) * z / f
    fx_ = (xw * np.cos(yaw) + z * np.sin(yaw)) / tile
    fz_ = (-xw * np.sin(yaw) + z * np.cos(yaw)) / tile_z
    planks = rng.uniform() < 0.5
    floor = _tile_pattern(rng, fx_, fz_, planks=planks)
    # fade the distant floor (where a tile is < ~4 px tall: aliasing) to its mean colour
    z_fade = np.sqrt(f * cam_h * min(tile, tile_z) / 4.0)
    far = np.clip((z / z_fade - 0.6) / 0.5, 0.0, 1.0)[:, :, None]
    floor = floor * (1.0 - far) + floor.reshape(-1, 3).mean(0) * far
    floor *= (1.0 - 0.15 * np.clip(yy / h, 0, 1))[:, :, None]
    below = np.clip(yy - horizon + 0.5, 0.0, 1.0)[:, :, None]
    img = wall * (1.0 - below) + floor * below
    # skirting line
    band = (np.abs(yy - horizon) < max(1.0, 0.006 * h))[:, :, None]
    return np.where(band, img * 0.75, img)


def _vignette(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Plain colour, faint vertical gradient, elliptical vignette."""
    c = muted_colour(rng) if rng.uniform() < 0.6 else _pick(rng, WALL)
    img = _vertical_ramp(h, w, c * rng.uniform(0.95, 1.1), c * rng.uniform(0.8, 1.0))
    yy, xx = pixel_grid(h, w)
    cy, cx = h * rng.uniform(0.35, 0.6), w * rng.uniform(0.4, 0.6)
    r2 = ((yy - cy) / (0.5 * h)) ** 2 + ((xx - cx) / (0.5 * w)) ** 2
    img *= (1.0 - rng.uniform(0.2, 0.55) * np.clip(r2 / 2.0, 0.0, 1.0))[:, :, None]
    return _shade_texture(rng, img, rng.uniform(0.0, 0.04), cells=4.0)


#: family name -> function (rng, H, W) -> (H, W, 3) float32 in 0-255
_FAMILIES: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "sky_ground": _sky_ground,
    "noise": _noise,
    "blobs": _blobs,
    "stripes": _stripes,
    "tiles": _tiles,
    "room": _room,
    "vignette": _vignette,
}
BACKGROUND_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)
#: sampling probability of each family, in the order of :data:`BACKGROUND_FAMILIES`
FAMILY_WEIGHTS: tuple[float, ...] = (0.2, 0.15, 0.15, 0.1, 0.1, 0.2, 0.1)
#: procedural backgrounds are drawn at most this many pixels on the longer side, then upsampled
MAX_PROCEDURAL_SIDE = 320


def procedural_background(
    rng: np.random.Generator, height: int, width: int, family: str | None = None
) -> np.ndarray:
    """A random procedural background.

    Args:
        rng: the only source of randomness.
        height, width: output size in pixels.
        family: one of :data:`BACKGROUND_FAMILIES`, or None to draw one with :data:`FAMILY_WEIGHTS`.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    import cv2

    p = np.asarray(FAMILY_WEIGHTS, np.float64)
    drawn = BACKGROUND_FAMILIES[int(rng.choice(len(p), p=p / p.sum()))]
    name = drawn if family is None else family
    if name not in _FAMILIES:
        raise ValueError(f"unknown background family {name!r}; choose from {BACKGROUND_FAMILIES}")
    height, width = int(height), int(width)
    # draw at <= MAX_PROCEDURAL_SIDE pixels on the longer side, then upsample (speed; these are smooth)
    s = min(1.0, MAX_PROCEDURAL_SIDE / max(height, width))
    h, w = max(1, int(round(height * s))), max(1, int(round(width * s)))
    img = _to_uint8(_FAMILIES[name](rng, h, w))
    if (h, w) != (height, width):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)
    return img


class ProceduralBackgrounds:
    """:class:`BackgroundSource` of procedural backgrounds (optionally restricted to some families)."""

    def __init__(self, families: tuple[str, ...] | None = None):
        bad = [f for f in families or () if f not in _FAMILIES]
        if bad:
            raise ValueError(f"unknown background families {bad}; choose from {BACKGROUND_FAMILIES}")
        self.families = tuple(families) if families else None

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """(H, W, 3) uint8 background drawn from ``rng`` only."""
        family = None
        if self.families:
            family = self.families[int(rng.integers(len(self.families)))]
        return procedural_background(rng, height, width, family)


# --------------------------------------------------------------------------------------------
# user folders


def _verify_image(path: Path) -> None:
    """Cheap integrity check without decoding (:func:`~diffusion_hpc.runtime.images.check_image_file`:
    header, pixel limit, PIL ``verify()``, JPEG end marker); raises :class:`InputError` naming the file."""
    check_image_file(path, what="background image")


def random_crop_resize(
    rng: np.random.Generator, image: np.ndarray, height: int, width: int,
    min_area: float = 0.35, flip: bool = True,
) -> np.ndarray:
    """Random crop with the output's aspect ratio, resized to (height, width).

    Args:
        image: (h, w, 3) uint8.
        min_area: smallest crop, as a fraction of the largest crop of that aspect ratio that fits.
        flip: also mirror horizontally with probability 0.5.

    Returns:
        (height, width, 3) uint8.
    """
    import cv2

    h, w = image.shape[:2]
    aspect = height / width
    max_w = min(w, h / aspect)  # largest crop of the target aspect that fits
    scale = np.sqrt(rng.uniform(min_area, 1.0))
    cw = max(1, min(w, int(round(max_w * scale))))
    ch = max(1, min(h, int(round(cw * aspect))))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    do_flip = flip and rng.uniform() < 0.5
    crop = image[y0 : y0 + ch, x0 : x0 + cw]
    interp = cv2.INTER_AREA if cw > width else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=interp)
    return np.ascontiguousarray(out[:, ::-1]) if do_flip else out


class FolderBackgrounds:
    """:class:`BackgroundSource` of the user's images (suffixes of :data:`~diffusion_hpc.runtime.images.IMAGE_SUFFIXES`, searched recursively).

    All files are checked at construction without decoding (size limit, PIL ``verify()``, truncated
    JPEG/PNG, non-image files with an image suffix), so a bad file fails before any work starts. Each :meth:`sample` picks a file with the rng, then random-crops and resizes it.

    Args:
        path: a directory of images.
        cache_size: how many decoded images to keep in memory (does not affect results).

    Raises:
        InputError: the folder is missing, holds no images, or holds an unreadable image.
    """

    def __init__(self, path: str | os.PathLike, cache_size: int = 16):
        self.root = Path(path).expanduser()
        self.files = image_files(self.root, recursive=True, what="background folder")
        for f in self.files:
            _verify_image(f)
        self.cache_size = int(cache_size)
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of file ``index`` (EXIF orientation applied)."""
        if index in self._cache:
            return self._cache[index]
        arr = load_image(self.files[index], what="background image")
        if self.cache_size > 0:
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = arr
        return arr

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """(H, W, 3) uint8: a random file, random crop, resized; uses only ``rng``."""
        index = int(rng.integers(len(self.files)))
        return random_crop_resize(rng, self.load(index), int(height), int(width))
