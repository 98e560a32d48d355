"""Write a PNG grid of render-baseline samples (analytic shaded spheres / capsule "bodies" over
procedural backgrounds) so a human can judge the look, and print the per-image timing.

Usage: python scripts/preview_render_baseline.py [OUT.png] [--size 192] [--rows 4] [--cols 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def synthetic_render(size: int, n_parts: int = 8, radius: float = 0.4):
    """(RenderOutput of one image, face_part) for a sphere split into ``n_parts`` angular sectors.

    Face ids: 64 "faces" per sector (an angular x radial grid), so per-face noise is visible.
    """
    from diffusion_hpc.render.base import RenderOutput

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = radius * size
    x, y = (xx - size / 2 + 0.5) / r, (yy - size / 2 + 0.5) / r
    rho2 = x * x + y * y
    mask = rho2 < 1.0
    nz = -np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0))
    normals = np.where(mask[..., None], np.stack([x, y, nz], -1), 0.0).astype(np.float32)
    depth = np.where(mask, 3.0 + nz * 0.3, 0.0).astype(np.float32)
    sector = ((np.arctan2(y, x) + np.pi) / (2 * np.pi) * n_parts).astype(np.int32) % n_parts
    ring = np.clip((np.sqrt(rho2) * 8).astype(np.int32), 0, 7)
    ang = ((np.arctan2(y, x) + np.pi) / (2 * np.pi) * n_parts * 8).astype(np.int32) % 8
    face_id = np.where(mask, sector * 64 + ring * 8 + ang, -1).astype(np.int32)
    face_part = np.repeat(np.arange(n_parts), 64).astype(np.int64)
    render = RenderOutput(depth=depth[None], mask=mask[None], normals=normals[None],
                          face_id=face_id[None])
    return render, face_part


def main() -> None:
    import cv2

    from diffusion_hpc.generate.backgrounds import BACKGROUND_FAMILIES, procedural_background
    from diffusion_hpc.generate.render_baseline import RenderBaselineGenerator

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="render_baseline_preview.png")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--cols", type=int, default=6)
    args = ap.parse_args()

    gen = RenderBaselineGenerator()
    render, face_part = synthetic_render(args.size)
    tiles = []
    for i in range(args.rows * args.cols):
        img = gen.generate(render, face_part, [np.random.default_rng([7, i])])[0]
        tiles.append(img)
    for j, fam in enumerate(BACKGROUND_FAMILIES):  # one row of each background family
        tiles.append(procedural_background(np.random.default_rng([11, j]), args.size, args.size, fam))
    while len(tiles) % args.cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[k : k + args.cols], 1) for k in range(0, len(tiles), args.cols)]
    cv2.imwrite(args.out, np.concatenate(rows, 0)[:, :, ::-1])
    print(f"wrote {args.out}")

    # timing at 512^2: shade + composite + augment, and the background on its own
    from diffusion_hpc.generate.render_baseline import (
        composite, render_item, sample_appearance, shade,
    )

    bg = procedural_background(np.random.default_rng(0), 512, 512)
    n = 20
    for radius in (0.25, 0.4):
        big, fp = synthetic_render(512, radius=radius)
        item = render_item(big, 0)
        shade(item, fp, sample_appearance(np.random.default_rng(0)))  # warm up
        t0 = time.perf_counter()
        for i in range(n):
            rng = np.random.default_rng(i)
            fg = shade(item, fp, sample_appearance(rng))
            composite(fg, item.mask, bg, rng)
        t1 = time.perf_counter()
        print(f"512^2, {item.mask.mean():.0%} foreground: shade+composite+augment "
              f"{1e3 * (t1 - t0) / n:.1f} ms per image")
    t1 = time.perf_counter()
    for i in range(n):
        procedural_background(np.random.default_rng(i), 512, 512)
    t2 = time.perf_counter()
    print(f"512^2 procedural background {1e3 * (t2 - t1) / n:.1f} ms per image")


if __name__ == "__main__":
    main()
