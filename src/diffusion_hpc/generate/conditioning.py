"""Pure, batched functions that turn renders and masks into diffusion inputs (DESIGN §2 steps 5-6).

All tensors are batch first. Masks are bool; depth is metric camera-frame z with 0 = background
(DESIGN §4). Nothing here holds state or draws random numbers except through the generators passed in.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

#: original scheme: the foreground depth is rescaled to [DISPARITY_LOW, DISPARITY_LOW + DISPARITY_SPAN]
DISPARITY_LOW = 150.0
DISPARITY_SPAN = 60.0
#: ... then inverted as ``max + DISPARITY_OFFSET - d`` (so the farthest foreground pixel maps to 50)
DISPARITY_OFFSET = 50.0
#: blur augmentation radius range (PIL GaussianBlur radius, pixels)
BLUR_RADIUS = (1.0, 2.5)


def depth_to_disparity(depth, occluder_mask=None, scheme: Literal["original", "inverse"] = "original"):
    """Rendered metric depth -> disparity-like conditioning (near = large, background 0).

    Schemes (per sample; the foreground F is where ``depth > 0``):

    - ``"original"`` (Diffusion-HPC): rescale F's depth linearly to ``d in [150, 210]``
      (nearest -> 150, farthest -> 210; a constant-depth foreground maps to 150), then invert:
      ``out = max(d) + 50 - d`` on F, i.e. nearest -> 110, farthest -> 50; 0 elsewhere.
    - ``"inverse"``: ``out = min_F(z) / z`` on F (nearest -> 1, scale-free, in (0, 1]); 0 elsewhere.

    Occluders are zeroed *after* the conversion: the statistics (min / max) come from the whole
    rendered foreground, so occluding part of the body does not change the values of the rest.

    Args:
        depth: (B, H, W) float tensor, metres, 0 = background.
        occluder_mask: optional (B, H, W) bool tensor, True where a non-person object hides the scene.
        scheme: ``"original"`` or ``"inverse"``.

    Returns:
        (B, H, W) tensor of ``depth``'s dtype: 0 on background and occluders.
    """
    import torch

    if depth.ndim != 3:
        raise ValueError(f"depth must be (B, H, W), got shape {tuple(depth.shape)}")
    fg = depth > 0
    big = torch.finfo(depth.dtype).max
    zmin = torch.where(fg, depth, torch.full_like(depth, big)).amin(dim=(1, 2), keepdim=True)
    zmax = torch.where(fg, depth, torch.zeros_like(depth)).amax(dim=(1, 2), keepdim=True)
    if scheme == "original":
        span = zmax - zmin
        unit = torch.where(span > 0, (depth - zmin) / torch.where(span > 0, span, torch.ones_like(span)),
                           torch.zeros_like(depth))  # fmt: skip
        d = DISPARITY_LOW + DISPARITY_SPAN * unit
        dmax = torch.where(fg, d, torch.zeros_like(d)).amax(dim=(1, 2), keepdim=True)
        out = torch.where(fg, dmax + DISPARITY_OFFSET - d, torch.zeros_like(depth))
    elif scheme == "inverse":
        out = torch.where(fg, zmin / torch.where(fg, depth, torch.ones_like(depth)), torch.zeros_like(depth))
    else:
        raise ValueError(f"unknown disparity scheme {scheme!r}; use 'original' or 'inverse'")
    if occluder_mask is not None:
        out = torch.where(occluder_mask.to(torch.bool), torch.zeros_like(out), out)
    return out


def human_region(person_mask=None, silhouette=None, occluders=None):
    """The region to regenerate: ``(person_mask | silhouette) & ~occluders``.

    Args:
        person_mask: (B, H, W) bool (segmentation of the start image) or None.
        silhouette: (B, H, W) bool (rendered mesh mask) or None.
        occluders: (B, H, W) bool or None.

    Returns:
        (B, H, W) bool, of the type of the inputs (numpy arrays or torch tensors).
    """
    given = [m for m in (person_mask, silhouette) if m is not None]
    if not given:
        raise ValueError("human_region needs a person mask or a rendered silhouette")
    region = given[0].astype(bool) if isinstance(given[0], np.ndarray) else given[0].bool()
    for m in given[1:]:
        region = region | (m.astype(bool) if isinstance(m, np.ndarray) else m.bool())
    if occluders is not None:
        region = region & ~(occluders.astype(bool) if isinstance(occluders, np.ndarray) else occluders.bool())
    return region


def latent_mask(region_mask, latent_size: tuple[int, int], rule: Literal["any", "area"] = "any",
                threshold: float = 0.5):  # fmt: skip
    """Downsample a pixel mask to the latent grid.

    The image side must be an integer multiple f of the latent side (f = 8 for Stable Diffusion);
    latent cell (i, j) covers pixels [f*i, f*i + f) x [f*j, f*j + f).

    Rules:
        ``"any"`` (default): the cell is in the region if any of its pixels is (max-pooling). The
        noise then covers the whole person, so no part of the start image's person survives.
        ``"area"``: the cell is in the region if at least ``threshold`` of its pixels are.

    Args:
        region_mask: (B, H, W) bool tensor.
        latent_size: (h, w).

    Returns:
        (B, h, w) bool tensor.
    """
    import torch.nn.functional as F

    b, hgt, wid = region_mask.shape
    h, w = latent_size
    if hgt % h or wid % w or hgt // h != wid // w:
        raise ValueError(f"mask size {(hgt, wid)} is not an integer multiple of the latent size {(h, w)}")
    f = hgt // h
    m = region_mask.float().unsqueeze(1)
    if rule == "any":
        return F.max_pool2d(m, f).squeeze(1) > 0
    if rule == "area":
        return F.avg_pool2d(m, f).squeeze(1) >= threshold
    raise ValueError(f"unknown latent mask rule {rule!r}; use 'any' or 'area'")


def composite_start_latents(image_latents, region_mask, noise, rule: Literal["any", "area"] = "any"):
    """Start latents of the regeneration: ``noise`` inside the human region, the encoded image outside.

    Args:
        image_latents: (B, C, h, w) scaled VAE latents of the start image.
        region_mask: (B, H, W) bool pixel mask (:func:`human_region`), downsampled with
            :func:`latent_mask` (``rule``), or already (B, h, w).
        noise: (B, C, h, w) standard Gaussian noise.

    Returns:
        (B, C, h, w): exactly ``noise`` where the latent mask is True, ``image_latents`` elsewhere.
    """
    import torch

    if image_latents.shape != noise.shape:
        raise ValueError(f"image_latents {tuple(image_latents.shape)} and noise {tuple(noise.shape)} differ")
    h, w = image_latents.shape[-2:]
    m = region_mask if tuple(region_mask.shape[-2:]) == (h, w) else latent_mask(region_mask, (h, w), rule)
    return torch.where(m.to(image_latents.device).unsqueeze(1), noise, image_latents)


def depth2img_conditioning(disparity, latent_size: tuple[int, int]):
    """Disparity -> SD-2-depth's extra UNet channel, as the depth-to-image pipeline makes it.

    Bicubic resize to the latent size, then per-sample min-max normalisation to [-1, 1]
    (a constant map becomes all -1 instead of NaN).

    Args:
        disparity: (B, H, W) float tensor (:func:`depth_to_disparity`).

    Returns:
        (B, 1, h, w) float tensor.
    """
    import torch
    import torch.nn.functional as F

    d = F.interpolate(disparity.unsqueeze(1), size=tuple(latent_size), mode="bicubic", align_corners=False)
    lo = d.amin(dim=(1, 2, 3), keepdim=True)
    hi = d.amax(dim=(1, 2, 3), keepdim=True)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return 2.0 * (d - lo) / span - 1.0


def controlnet_conditioning(disparity):
    """Disparity -> a ControlNet-depth control image: per-sample scaled to [0, 1], 3 channels.

    ControlNet-depth models were trained on MiDaS-style depth images (near = bright, 0-255 -> [0, 1]).

    Args:
        disparity: (B, H, W) float tensor, >= 0.

    Returns:
        (B, 3, H, W) float tensor in [0, 1] (background 0).
    """
    import torch

    hi = disparity.amax(dim=(1, 2), keepdim=True)
    d = disparity / torch.where(hi > 0, hi, torch.ones_like(hi))
    return d.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def sample_blur_radius(rng: np.random.Generator, radius: tuple[float, float] = BLUR_RADIUS) -> float:
    """A blur radius drawn uniformly from ``radius``."""
    return float(rng.uniform(radius[0], radius[1]))


def blur_augment(image: np.ndarray, rng: np.random.Generator, radius: tuple[float, float] = BLUR_RADIUS) -> np.ndarray:
    """Gaussian blur of radius U(1, 2.5) (PIL ``GaussianBlur`` radius), the original's augmentation.

    Args:
        image: (H, W, 3) or (B, H, W, 3) uint8.
        rng: draws one radius per image.

    Returns:
        uint8 array of the same shape.
    """
    from PIL import Image, ImageFilter

    if image.ndim == 4:
        return np.stack([blur_augment(im, rng, radius) for im in image])
    r = sample_blur_radius(rng, radius)
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).filter(ImageFilter.GaussianBlur(r)))
