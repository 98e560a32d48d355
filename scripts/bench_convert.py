"""Body-model conversion error and time (diffusion_hpc.body.convert).

Anny -> Anny: N built-in poses with shapes drawn from Anny's shape distribution, placed 4 m in front
of the camera, their vertices shuffled and the faces renumbered (no correspondence), converted back
to Anny with the default weights; the truth is known, so the vertex and joint errors are measured
against it. Anny -> SMPL (``--smpl-path``): the same bodies fitted with SMPL (the errors are the
fit's own surface and shared-joint distances). Prints median, 95th percentile and max in mm, and
the wall and CPU seconds per person at the batch size (one torch thread by default).

    nice -n 10 .venv/bin/python scripts/bench_convert.py --n 200 --batch 64 --smpl-path SMPL_NEUTRAL.npz

Measured (Anny -> Anny, one torch thread, batch 64; surface / shared joints mm as median / 95th
percentile / max):

    batch-summed torch L-BFGS, 300 iterations (64 poses): 2.77 / 4.38 / 8.21, 3.71 / 5.28 / 7.06,
        4.24 CPU s per person; a person alone vs in its batch (--alone 3): up to 1.25 mm surface
        apart, 377 mm on a vertex
    per-person L-BFGS, 150 iterations (200 poses): 2.20 / 4.20 / 16.3, 3.01 / 5.12 / 34.2,
        1.87 CPU s per person (one flagged: pose row 638, a local minimum); alone vs in its
        batch: up to 0.37 mm surface apart, 14 mm on a vertex (float rounding of the batched
        forward pass, grown over 150 iterations)
    per-person L-BFGS, --iters 40 160: 1.81 / 3.82 / 15.1, 2.80 / 4.97 / 41.1, 2.41 CPU s
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from diffusion_hpc.body import get_body_model, transform_params
from diffusion_hpc.body.convert import FLAG_SURFACE_MM, ConvertWeights, convert_bodies
from diffusion_hpc.poses import load_pose_set


def bodies(anny, poses, rows, rng):
    params = anny.neutral_params(len(rows))
    params["global_orient"] = torch.as_tensor(poses.global_orient[rows])
    params["body_pose"] = torch.as_tensor(poses.body_pose[rows])
    params["phenotype"] = torch.as_tensor(np.stack([anny.sample_shape(rng) for _ in rows]))
    params = transform_params(anny, params, anny.canonical_to_camera, torch.tensor([0.0, 0.2, 4.0]))
    with torch.no_grad():
        return anny(params)


def batch_vs_alone(vertices, faces, joints, target, res, count: int, weights) -> dict:
    """The largest differences between the first ``count`` persons converted alone and inside the batch."""
    diff = {"surface_mm": 0.0, "joints_mm": 0.0, "params": 0.0, "vertices_mm": 0.0}
    for k in range(min(count, len(vertices))):
        one = convert_bodies(vertices[k:k + 1], faces, {n: j[k:k + 1] for n, j in joints.items()}, target, weights=weights)
        diff["surface_mm"] = max(diff["surface_mm"], abs(float(one.surface_mm[0] - res.surface_mm[k])))
        diff["joints_mm"] = max(diff["joints_mm"], abs(float(one.joints_mm[0] - res.joints_mm[k])))
        diff["params"] = max(diff["params"], max(float((one.params[n][0] - res.params[n][k]).abs().max()) for n in one.params))
        diff["vertices_mm"] = max(diff["vertices_mm"], float(1e3 * (one.vertices[0] - res.vertices[k]).norm(dim=-1).max()))
    return {k: float(f"{v:.3g}") for k, v in diff.items()}


def stats(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"median": round(float(np.median(v)), 2), "p95": round(float(np.percentile(v, 95)), 2),
            "max": round(float(v.max()), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--poses", default="builtin")
    ap.add_argument("--smpl-path", help="SMPL model file: also time and measure Anny -> SMPL")
    ap.add_argument("--targets", default="anny,smpl", help="which conversions to run (anny, smpl)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the fit's small ops scale badly)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iters", type=int, nargs=2, metavar=("POSE", "REFINE"),
                    help="iterations of the pose and refine stages (default: ConvertWeights')")
    ap.add_argument("--alone", type=int, default=0,
                    help="also convert the first N persons of the first batch one at a time and report how far "
                         "each lands from its result inside the batch (the fit is per person: rounding only)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    anny = get_body_model("anny")
    poses = load_pose_set(args.poses)
    rows = np.linspace(0, len(poses) - 1, args.n).round().astype(int)
    g = torch.Generator().manual_seed(args.seed)
    wanted = args.targets.split(",")
    targets = [("anny", anny)] if "anny" in wanted else []
    if args.smpl_path and "smpl" in wanted:
        targets.append(("smpl", get_body_model("smpl", model_path=args.smpl_path)))
    weights = ConvertWeights() if not args.iters else ConvertWeights(iters_pose=args.iters[0], iters_refine=args.iters[1])
    report = {}
    for name, target in targets:
        surface, joints, vertex, true_joints, seconds, cpu = [], [], [], [], 0.0, 0.0
        for lo in range(0, len(rows), args.batch):
            out = bodies(anny, poses, rows[lo:lo + args.batch], np.random.default_rng([args.seed, lo]))
            perm = torch.randperm(out.vertices.shape[1], generator=g)
            faces = torch.argsort(perm)[anny.faces]
            t0, c0 = time.perf_counter(), time.process_time()
            res = convert_bodies(out.vertices[:, perm], faces, out.joints, target, weights=weights)
            seconds += time.perf_counter() - t0
            cpu += time.process_time() - c0
            worst = int(res.surface_mm.argmax())
            print(f"  worst of the batch: pose row {rows[lo + worst]}, surface {float(res.surface_mm[worst]):.2f} mm", flush=True)
            surface += res.surface_mm.tolist()
            joints += res.joints_mm.tolist()
            if name == "anny":
                vertex += (1e3 * (res.vertices - out.vertices).norm(dim=-1).mean(1)).tolist()
                true_joints += (1e3 * (res.joints["h36m17"] - out.joints["h36m17"]).norm(dim=-1).mean(1)).tolist()
            print(f"{name}: {lo + len(res.surface_mm)}/{len(rows)} done, {seconds:.0f} s ({cpu:.0f} s CPU)", flush=True)
            if lo == 0 and args.alone:
                alone = batch_vs_alone(out.vertices[:, perm], faces, out.joints, target, res, args.alone, weights)
        figures = {"n": len(rows), "batch": args.batch, "seconds_per_person": round(seconds / len(rows), 3),
                   "cpu_seconds_per_person": round(cpu / len(rows), 3),
                   "surface_mm": stats(surface), "joints_mm": stats(joints),
                   "flagged": int(sum(s > FLAG_SURFACE_MM for s in surface))}
        if vertex:
            figures.update(vertex_error_mm=stats(vertex), h36m17_error_mm=stats(true_joints))
        if args.alone:
            figures["alone_vs_batch"] = alone
        report[f"anny_to_{name}"] = figures
        print(json.dumps({f"anny_to_{name}": figures}, indent=1), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
