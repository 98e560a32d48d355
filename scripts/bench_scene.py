"""Benchmark multi-person scenes: ms per scene and per person for placement (ground, overlap test and
redraws, group camera) and the combined render with instance ids, and the share of draws rejected for
interpenetration.

Usage: python scripts/bench_scene.py [--people 1 2 4] [--batch 16] [--size 512] [--batches 4]
                                     [--renderer auto] [--lateral -1.5 1.5] [--depth 0 3]

Real Anny bodies with the packaged CMU poses, drawn shapes and yaws; each batch draws new people
(the body forward is timed apart: mode D runs it for one person today too). The render is the
label pass mode D runs (depth + face ids, no normal map).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def people(body, poses, rng, B: int, P: int):
    """(vertices (B, P, V, 3), joints) posed, shaped and turned in the group frame, and the forward's seconds."""
    from diffusion_hpc.body.scene import posed_people

    rows = rng.integers(len(poses.body_pose), size=(B, P))
    shapes = np.stack([[body.sample_shape(rng) for _ in range(P)] for _ in range(B)])
    params = {"global_orient": torch.as_tensor(poses.global_orient[rows], dtype=torch.float32),
              "body_pose": torch.as_tensor(poses.body_pose[rows], dtype=torch.float32),
              body.shape_key: torch.as_tensor(shapes, dtype=torch.float32)}  # fmt: skip
    t0 = time.perf_counter()
    v, j = posed_people(body, params, rng.uniform(-np.pi, np.pi, (B, P)))
    return v, j, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", type=int, default=4, help="batches per people count (timings: median)")
    ap.add_argument("--renderer", default="auto", choices=["auto", "gl", "torch"])
    ap.add_argument("--lateral", type=float, nargs=2, default=None, help="x range of the layout, metres")
    ap.add_argument("--depth", type=float, nargs=2, default=None, help="z range of the layout, metres")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from diffusion_hpc.body import get_body_model
    from diffusion_hpc.geometry import scene as gs
    from diffusion_hpc.geometry.camera import intrinsics_from_fov, rotation_x
    from diffusion_hpc.poses import builtin_poses
    from diffusion_hpc.render import get_renderer
    from diffusion_hpc.render.scene import render_scene

    body, poses, renderer = get_body_model("anny"), builtin_poses(), get_renderer(args.renderer)
    faces = body.faces.numpy()
    size, B = args.size, args.batch
    layout = {"lateral": tuple(args.lateral or gs.LATERAL_M), "depth": tuple(args.depth or gs.DEPTH_M)}
    print(f"renderer {renderer.name}, {size}x{size}, batch {B}, layout x {layout['lateral']} m, z {layout['depth']} m, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print("people | forward ms/scene | place+camera ms/scene | render ms/scene | keypoints ms/scene | "
          "total ms/scene | ms/person | rejected draws | placed / asked")  # fmt: skip
    for P in args.people:
        rng = np.random.default_rng([args.seed, P])
        times = {k: [] for k in ("forward", "place", "render", "keypoints")}
        draws = rejected = placed = 0
        for n in range(args.batches + 1):  # batch 0 warms up (scipy import, GL buffers)
            v, j, forward = people(body, poses, rng, B, P)
            K = intrinsics_from_fov(rng.uniform(40, 60, B), size, size)
            rotation = np.stack([rotation_x(a) for a in np.deg2rad(rng.uniform(0, 20, B))])
            seeds = rng.integers(2**63 - 1, size=B)
            t0 = time.perf_counter()
            scene = gs.compose_scene(v, j, faces, [np.random.default_rng(s) for s in seeds], rotation, K, size, size,
                                     rng.uniform(0.6, 0.9, B), **layout)  # fmt: skip
            t1 = time.perf_counter()
            out = render_scene(renderer, scene.vertices, faces, K, (size, size), scene.people)
            t2 = time.perf_counter()
            gs.scene_keypoints(scene.joints["coco17"], K, out.depth, out.instance)
            t3 = time.perf_counter()
            if n == 0:
                continue
            for key, dt in zip(times, (forward, t1 - t0, t2 - t1, t3 - t2)):
                times[key].append(1000 * dt / B)
            draws += int(scene.placement.draws.sum())
            rejected += int(scene.placement.rejected.sum())
            placed += int(scene.people.sum())
        med = {k: float(np.median(x)) for k, x in times.items()}
        total = med["place"] + med["render"] + med["keypoints"]
        print(f"{P} | {med['forward']:.1f} | {med['place']:.1f} | {med['render']:.1f} | {med['keypoints']:.2f} | "
              f"{total:.1f} | {total / P:.1f} | {rejected}/{draws} = {rejected / max(draws, 1):.1%} | "
              f"{placed}/{P * B * args.batches}")  # fmt: skip


if __name__ == "__main__":
    main()
