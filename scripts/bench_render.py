"""Benchmark the render backends (ms per image) at 512x512 on a body-sized mesh.

Usage: python scripts/bench_render.py [--size 512] [--batches 1 16] [--repeats 5] [--procedural]

Uses the real Anny body mesh (13.7k vertices, 27k faces) when ``anny`` is importable, else a
procedural UV-sphere of the same size. The mesh is rotated from Anny's frame (metres, Z up,
facing -Y) into the OpenCV camera frame and placed about 3 m in front of the camera.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def uv_sphere(n_lat: int, n_lon: int, radius: float = 0.5):
    """UV sphere. Returns (vertices (V, 3) float32, faces (F, 3) int64), F = 2*n_lon*(n_lat-1)."""
    th = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    t, p = np.meshgrid(th, ph, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    v = np.concatenate([[[0, 1, 0]], ring, [[0, -1, 0]]]) * radius
    idx = 1 + np.arange((n_lat - 1) * n_lon).reshape(n_lat - 1, n_lon)
    nxt = np.roll(idx, -1, axis=1)
    faces = [np.stack([np.zeros(n_lon, int), nxt[0], idx[0]], -1)]
    a, b, c, d = idx[:-1], nxt[:-1], idx[1:], nxt[1:]
    faces += [np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)]
    last = len(v) - 1
    faces.append(np.stack([idx[-1], nxt[-1], np.full(n_lon, last)], -1))
    return v.astype(np.float32), np.concatenate(faces).astype(np.int64)


def anny_mesh():
    """The default Anny body in the camera frame at z ~ 3 m, or None if anny is unavailable."""
    os.environ.setdefault("ANNY_CACHE_DIR", os.path.expanduser("~/.cache/diffusion_hpc/anny"))
    try:
        import anny
    except ImportError:
        return None
    model = anny.Anny(rig="cmu_mb")
    verts = model()["vertices"].float().reshape(-1, 3).detach().numpy()
    faces = np.asarray(model.faces, dtype=np.int64)
    # Anny: X right, Z up, facing -Y  ->  camera: x = X, y = -Z, z = Y (camera looks along +Y).
    cam = np.stack([verts[:, 0], -verts[:, 2], verts[:, 1]], -1)
    cam -= cam.mean(0)
    cam[:, 2] += 3.0
    return cam.astype(np.float32), faces


def bench(renderer, verts, faces, K, size, batch, repeats):
    """Median ms per image of ``renderer.render`` over ``repeats`` runs (after one warm-up)."""
    vb = np.repeat(verts[None], batch, 0)
    # Small per-item jitter so items differ (and cannot be cached).
    vb = vb + np.linspace(0, 0.01, batch, dtype=np.float32)[:, None, None]
    renderer.render(vb, faces, K, size)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        renderer.render(vb, faces, K, size)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times)) / batch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--procedural", action="store_true", help="use a UV sphere, not Anny")
    ap.add_argument("--backends", nargs="+", default=["gl", "torch"])
    args = ap.parse_args(argv)

    from diffusion_hpc.render import get_renderer

    mesh = None if args.procedural else anny_mesh()
    if mesh is None:
        verts, faces = uv_sphere(118, 116, radius=0.8)
        verts[:, 2] += 3.0
        label = "uv-sphere"
    else:
        verts, faces = mesh
        label = "anny"
    S = args.size
    f = 1.2 * S
    K = np.array([[f, 0, S / 2 - 0.5], [0, f, S / 2 - 0.5], [0, 0, 1]])
    print(f"mesh: {label}, {len(verts)} vertices, {len(faces)} faces; image {S}x{S}")
    print(f"{'backend':<8}" + "".join(f"{f'B={b} ms/img':>16}" for b in args.batches))
    for name in args.backends:
        try:
            r = get_renderer(name)
        except RuntimeError as exc:
            print(f"{name:<8} unavailable: {exc}")
            continue
        row = [bench(r, verts, faces, K, (S, S), b, args.repeats) for b in args.batches]
        print(f"{name:<8}" + "".join(f"{t:>16.1f}" for t in row))


if __name__ == "__main__":
    main()
