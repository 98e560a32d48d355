"""Benchmark multi-person scenes: ms per scene and per person for placement (ground, overlap test and
redraws, group camera) and the combined render with instance ids, and the share of draws rejected for
interpenetration.

Usage: python scripts/bench_scene.py [--people 1 2 4] [--batch 16] [--size 512] [--batches 4]
                                     [--renderer auto] [--lateral -1.5 1.5] [--depth 0 3] [--pipeline --n 64]

Real Anny bodies with the packaged CMU poses, drawn shapes and yaws; each batch draws new people
(the body forward is timed apart: mode D runs it for one person today too). The render is the
label pass mode D runs (depth + face ids, no normal map).

``--pipeline``: instead, whole ``dhpc generate`` runs (mode D, render baseline, ``--people P``) of
``--n`` samples at ``--batch``, after a warm-up run: samples/s, ms per sample and per person, the
stages' ms per sample from the manifest, and the share of placement draws rejected for
interpenetration (the manifest's ``rejected_draws`` / ``placement_draws``), the samples whose group the
camera framed (status ok) and the median person's height (its mask's rows) over the image height.

    .venv/bin/python scripts/bench_scene.py --pipeline --people 1 2 4 --n 64 --batch 16 --size 512

Measured (2-core CPU shared with other jobs, GL renderer, 64 samples per run, seed 0). The ground
area of a scene grows with its people (``geometry.scene.group_layout``: the two-person area per
person); before that, every scene stood on the two-person area:

    people | rejected draws, fixed area | grown area     | framed | person height, fixed / grown
    1      | 0 % (0/64)                 | 0 % (0/64)     | 64/64  | 67 % / 67 %
    2      | 4.5 % (6/134)              | 4.5 % (6/134)  | 64/64  | 46 % / 46 %
    4      | 19.0 % (60/316)            | 9.9 % (28/284) | 64/64  | 35 % / 27 %

(1 and 2 people: the same draws and placements.) Times depend on the machine's load (it varied 2-6
between runs here): 4 people at load about 5, 682 ms a sample with the fixed area, 548 with the
grown one (fewer redraws and overlap tests); at load about 3 (earlier): 137, 225 and 412 ms a
sample for 1, 2 and 4 people (the GL render costs about 25 ms per mesh whatever the image size).
Nobody was left out (256 of 256 people placed at 4 per image). The render stage of a crowded image
includes each partly hidden person's window rendered alone (its visible share).
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


def pipeline(args) -> None:
    """Whole mode-D runs with ``--people P`` for each P of ``args.people``."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.schema import persons_of
    from diffusion_hpc.pipeline.generate import Generator

    size = (args.size, args.size)
    tmp = Path(tempfile.mkdtemp(prefix="dhpc-bench-scene-"))
    try:
        Generator(GenerateConfig(n=4, batch_size=4, image_size=size, renderer=args.renderer, people="2"),
                  progress=False).run(tmp / "warm")  # fmt: skip
        print(f"mode D, render baseline, {args.size}x{args.size}, batch {args.batch}, {args.n} samples per run, "
              f"renderer {args.renderer}, torch threads {torch.get_num_threads()}")  # fmt: skip
        print("people | samples/s | ms/sample | ms/person | rejected draws | framed | person height | stages (ms/sample)")
        rows = []
        for P in args.people:
            config = GenerateConfig(n=args.n, batch_size=args.batch, shard_size=args.n, image_size=size,
                                    renderer=args.renderer, people=str(P), seed=args.seed)  # fmt: skip
            start = time.perf_counter()
            Generator(config, progress=False).run(tmp / f"p{P}")
            seconds = time.perf_counter() - start
            manifest = open_dataset(tmp / f"p{P}").manifest()
            persons = sum(r["scores"].get("people", 1) for r in manifest if r["status"] == "ok")
            draws = sum(r["scores"].get("placement_draws", 1) for r in manifest)
            rejected = sum(r["scores"].get("rejected_draws", 0) for r in manifest)
            stages = {k: 1000 * sum(r["timings"][k] for r in manifest) / len(manifest) for k in manifest[0]["timings"]}
            framed = sum(r["status"] == "ok" for r in manifest)
            heights = [np.ptp(np.flatnonzero(p["mask"].any(1))) / args.size
                       for s in open_dataset(tmp / f"p{P}") for p in persons_of(s) if p["mask"].any()]  # fmt: skip
            row = {"people": P, "samples_per_s": args.n / seconds, "ms_per_sample": 1000 * seconds / args.n,
                   "ms_per_person": 1000 * seconds / max(persons, 1), "persons": persons, "draws": draws,
                   "rejected": rejected, "framed": framed, "median_person_height": float(np.median(heights)),
                   "stage_ms": stages}  # fmt: skip
            rows.append(row)
            print(f"{P} | {row['samples_per_s']:.2f} | {row['ms_per_sample']:.1f} | {row['ms_per_person']:.1f} | "
                  f"{rejected}/{draws} = {rejected / max(draws, 1):.1%} | {framed}/{args.n} | "
                  f"{row['median_person_height']:.0%} | " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))  # fmt: skip
        print(json.dumps({"pipeline": rows}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    ap.add_argument("--pipeline", action="store_true", help="time whole mode-D runs with --people P instead")
    ap.add_argument("--n", type=int, default=64, help="--pipeline: samples per run")
    args = ap.parse_args(argv)
    if args.pipeline:
        pipeline(args)
        return

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
