#!/usr/bin/env python
"""Build the packaged pose set ``src/diffusion_hpc/poses/data/cmu_builtin.npz`` from the CMU sample.

Usage::

    .venv/bin/python scripts/build_builtin_poses.py [DATA_DIR] [--preview PNG] [--no-validate]

``DATA_DIR`` (default ``../shared/data/cmu-mocap`` relative to the repository root) holds
``poses.npz`` and ``skeletons.npz`` (see its README). For every pose: forward kinematics with its
own file's skeleton offsets, retargeting to Anny (:mod:`diffusion_hpc.poses.retarget`), and a
check against Anny's forward pass.

Rows dropped (broken capture, see the data README's "Known quirks"):

- untracked legs: any of LeftUpLeg/LeftLeg/LeftFoot/LeftToeBase or the right ones has all three
  channels exactly zero (the whole right leg of 79_23, the left foot of 74_07, the zeroed knees);
- flipped joints: a Head, LeftFoot or RightFoot local rotation above 120 degrees (the flipped heads
  of 127_32 / 143_21, the feet of 90_34 and 74_07's right foot).

Stored per pose: ``source`` (the BVH file name, e.g. ``13_31.bvh``), ``description`` (activity),
``subject`` and ``name`` = ``cmu_<trial>_f<frame>`` (``frame_approx`` of the data: the frame index
is approximate, within a few percent).

After a rebuild, run ``scripts/fit_default_prior.py``: the shipped prior is fitted on these poses
and the packaged set ``builtin-hard`` (``cmu_builtin_sets.npz``) names some of them.

Hands: the wrist channels are clamped (flips above 90 deg -> identity), fingers and thumbs keep
Anny's rest pose (see :mod:`diffusion_hpc.poses.retarget`).

The data used in this project was obtained from mocap.cs.cmu.edu. The database was created with
funding from NSF EIA-0196217.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from diffusion_hpc.poses.bvh import BvhMotion, end_site_positions, forward_kinematics, local_transforms  # noqa: E402
from diffusion_hpc.poses.io import FORMAT, PoseSet, save_pose_file  # noqa: E402
from diffusion_hpc.poses.retarget import ANNY_BONES, direction_errors, retarget_bvh, rotation_angle_deg  # noqa: E402

LEG_JOINTS = ("LeftUpLeg", "LeftLeg", "LeftFoot", "LeftToeBase", "RightUpLeg", "RightLeg", "RightFoot", "RightToeBase")
FLIP_JOINTS = ("Head", "LeftFoot", "RightFoot")
FLIP_DEGREES = 120.0
OUT = REPO / "src" / "diffusion_hpc" / "poses" / "data" / "cmu_builtin.npz"


def motion_for_file(skel, k: int, names, parents, channels_rows: np.ndarray, file: str) -> BvhMotion:
    channels = [("Xposition", "Yposition", "Zposition", "Zrotation", "Yrotation", "Xrotation")] + [
        ("Zrotation", "Yrotation", "Xrotation")
    ] * (len(names) - 1)
    starts = np.cumsum([0] + [len(c) for c in channels[:-1]]).astype(np.int64)
    return BvhMotion(
        path=file,
        joint_names=list(names),
        parents=np.asarray(parents, dtype=np.int64),
        offsets=skel["joint_offsets"][k].astype(np.float64),
        channels=channels,
        channel_start=starts,
        end_site_parents=skel["end_site_parent_index"].astype(np.int64),
        end_site_offsets=skel["end_site_offsets"][k].astype(np.float64),
        frames=channels_rows.astype(np.float64),
        frame_time=float(skel["frame_time"][k]),
    )


def keep_mask(motion: BvhMotion) -> tuple[np.ndarray, dict[str, int]]:
    frames = motion.frames
    keep = np.ones(len(frames), dtype=bool)
    reasons: dict[str, int] = {}
    for j in LEG_JOINTS:
        c = motion.column(j, "Zrotation")
        zero = np.all(frames[:, c : c + 3] == 0.0, axis=1)
        if zero.any():
            reasons[f"{j} untracked (zero)"] = int((zero & keep).sum())
        keep &= ~zero
    local, _ = local_transforms(motion.channels, motion.channel_start, motion.offsets, frames)
    for j in FLIP_JOINTS:
        flipped = rotation_angle_deg(local[:, motion.joint_index(j)]) > FLIP_DEGREES
        if (flipped & keep).any():
            reasons[f"{j} flipped (>{FLIP_DEGREES:.0f} deg)"] = int((flipped & keep).sum())
        keep &= ~flipped
    return keep, {k: v for k, v in reasons.items() if v}


def draw_preview(path: Path, vertices: np.ndarray, joints: np.ndarray, labels: list[str], cols: int = 6) -> None:
    """Per pose: Anny's vertices seen from the front (camera at -Y, the subject's left on the image
    right) and from its left side (+X, facing left), shaded by depth, with the skeleton on top
    (left bones red, right bones blue)."""
    from PIL import Image, ImageDraw

    from diffusion_hpc.poses.retarget import ANNY_PARENTS

    cell_w, cell_h, scale = 300, 270, 95.0
    rows = (len(vertices) + cols - 1) // cols
    canvas = np.full((rows * cell_h, cols * cell_w, 3), 255, dtype=np.uint8)
    views = (("front", 0, 1, 80), ("side", 1, 0, 220))  # (name, horizontal axis, depth axis, centre x)
    for n, verts in enumerate(vertices):
        ox, oy = (n % cols) * cell_w, (n // cols) * cell_h
        for _, h_axis, d_axis, cx in views:
            sign = -1.0 if h_axis == 1 else 1.0  # side view: forward (-Y) to the left
            u = (ox + cx + sign * scale * verts[:, h_axis]).astype(int)
            v = (oy + 125 - scale * verts[:, 2]).astype(int)
            depth = verts[:, d_axis] * (1.0 if h_axis == 0 else -1.0)  # larger = farther
            shade = np.clip(120 + 250 * depth, 60, 220).astype(np.uint8)
            ok = (u >= ox) & (u < ox + cell_w) & (v >= oy) & (v < oy + cell_h - 30)
            order = np.argsort(-depth[ok])  # far first, near overwrite
            canvas[v[ok][order], u[ok][order]] = shade[order, None]
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for n, (pts, label) in enumerate(zip(joints, labels)):
        ox, oy = (n % cols) * cell_w, (n // cols) * cell_h
        draw.rectangle([ox, oy, ox + cell_w - 1, oy + cell_h - 1], outline=(180, 180, 180))
        for _, h_axis, _, cx in views:
            sign = -1.0 if h_axis == 1 else 1.0
            for c, p in enumerate(ANNY_PARENTS):
                if p < 0:
                    continue
                name = ANNY_BONES[c]
                left = name.startswith(("Left", "LHip", "LThumb"))
                right = name.startswith(("Right", "RHip", "RThumb"))
                colour = (220, 20, 20) if left else ((20, 20, 220) if right else (0, 150, 0))
                a, b = pts[p], pts[c]
                draw.line(
                    [ox + cx + sign * scale * a[h_axis], oy + 125 - scale * a[2],
                     ox + cx + sign * scale * b[h_axis], oy + 125 - scale * b[2]],
                    fill=colour, width=2,
                )  # fmt: skip
        draw.text((ox + 3, oy + cell_h - 28), label[:46], fill=(0, 0, 0))
        draw.text((ox + 3, oy + cell_h - 15), label[46:92], fill=(80, 80, 80))
    img.save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", nargs="?", default=str(REPO / ".." / "shared" / "data" / "cmu-mocap"))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--preview", default="/tmp/builtin_poses_preview.png")
    ap.add_argument("--no-validate", action="store_true", help="skip the check against Anny's forward pass")
    args = ap.parse_args(argv)
    data_dir = Path(args.data_dir)
    poses = np.load(data_dir / "poses.npz", allow_pickle=False)
    skel = np.load(data_dir / "skeletons.npz", allow_pickle=False)
    names = [str(n) for n in poses["joint_names"]]
    parents = poses["parents"].astype(np.int64)
    skel_files = [str(f) for f in skel["files"]]
    if [str(n) for n in skel["joint_names"]] != names:
        raise SystemExit("poses.npz and skeletons.npz disagree on the joint names")

    files = np.array([str(f) for f in poses["file"]])
    rows_all = poses["channels"]
    go_list, bp_list, keep_rows, bvh_pos_list, head_up_list = [], [], [], [], []
    dropped: dict[str, int] = {}
    full: list = []
    dropped_files: dict[str, int] = {}
    for k, file in enumerate(skel_files):
        idx = np.nonzero(files == file)[0]
        if idx.size == 0:
            continue
        motion = motion_for_file(skel, k, names, parents, rows_all[idx], file)
        keep, reasons = keep_mask(motion)
        for r, v in reasons.items():
            dropped[r] = dropped.get(r, 0) + v
        if (~keep).any():
            dropped_files[file] = int((~keep).sum())
        go, bp = retarget_bvh(motion)
        rot, pos = forward_kinematics(motion)
        ends = end_site_positions(motion, rot, pos)
        head_top = ends[:, list(motion.end_site_parents).index(motion.joint_index("Head"))]
        head_up = head_top[:, 1] - pos[:, 0, 1]  # BVH Y up
        full.append((idx, go, bp, pos))
        go_list.append(go[keep])
        bp_list.append(bp[keep])
        bvh_pos_list.append(pos[keep])
        head_up_list.append(head_up[keep])
        keep_rows.append(idx[keep])
    rows = np.concatenate(keep_rows)
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    go = np.concatenate(go_list)[order]
    bp = np.concatenate(bp_list)[order]
    bvh_pos = np.concatenate(bvh_pos_list)[order]
    head_up = np.concatenate(head_up_list)[order]
    print(f"{len(rows_all)} poses, kept {len(rows)}, dropped {len(rows_all) - len(rows)}:")
    for r, v in dropped.items():
        print(f"  {v:3d}  {r}")
    print("  by file:", ", ".join(f"{f} ({n})" for f, n in sorted(dropped_files.items())))

    frame_approx = poses["frame_approx"][rows]
    subject = poses["subject"][rows].astype(np.int64)
    source = np.array([f.split("/")[-1] for f in files[rows]])
    name = np.array([f"cmu_{s[:-4]}_f{int(fr):05d}" for s, fr in zip(source, frame_approx)])
    # make names unique
    seen: dict[str, int] = {}
    unique = []
    for n in name:
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    name = np.array(unique)
    pose_set = PoseSet(
        body_model="anny",
        global_orient=go.astype(np.float32),
        body_pose=bp.astype(np.float32),
        name=name,
        source=source,
        description=np.array([str(d) for d in poses["description"][rows]]),
        subject=subject,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_pose_file(out, pose_set, rotation_dtype=np.float16)
    print(f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB, {len(pose_set)} poses, format {FORMAT})")

    if args.no_validate:
        return 0
    import torch

    from diffusion_hpc.body import get_body_model
    from diffusion_hpc.poses.io import load_pose_file

    stored = load_pose_file(out)
    model = get_body_model("anny")
    joints, head_z, hips_z = [], [], []
    with torch.no_grad():
        for s in range(0, len(stored), 100):
            sub = stored.subset(np.arange(s, min(s + 100, len(stored))))
            n = len(sub)
            params = model.neutral_params(n)
            params["global_orient"] = torch.from_numpy(sub.global_orient.astype(np.float32))
            params["body_pose"] = torch.from_numpy(sub.body_pose.astype(np.float32))
            outp = model(params)
            j = outp.joints["anny_cmu31"].numpy()
            joints.append(j)
            h36 = outp.joints["h36m17"].numpy()
            head_z.append(h36[:, 10, 2])  # head_top
            hips_z.append(h36[:, 0, 2])
    joints = np.concatenate(joints)

    # The same check on all rows (dropped ones included), float32 parameters straight from retargeting.
    all_go = np.concatenate([f[1] for f in full]).astype(np.float32)
    all_bp = np.concatenate([f[2] for f in full]).astype(np.float32)
    all_pos = np.concatenate([f[3] for f in full])
    all_joints = []
    with torch.no_grad():
        for s in range(0, len(all_go), 100):
            params = model.neutral_params(len(all_go[s : s + 100]))
            params["global_orient"] = torch.from_numpy(all_go[s : s + 100])
            params["body_pose"] = torch.from_numpy(all_bp[s : s + 100])
            all_joints.append(model(params).joints["anny_cmu31"].numpy())
    all_err = np.concatenate(list(direction_errors(np.concatenate(all_joints), all_pos, names).values()))
    print(
        f"all {len(all_go)} rows, 11 major bones: median {np.median(all_err):.3f} deg, "
        f"p95 {np.percentile(all_err, 95):.3f} deg, max {all_err.max():.3f} deg"
    )
    head_rel = np.concatenate(head_z) - np.concatenate(hips_z)
    errs = direction_errors(joints, bvh_pos, names)
    allerr = np.concatenate(list(errs.values()))
    print(f"bone direction error over the {len(stored)} kept poses, Anny forward (float16 file) vs BVH FK, degrees:")
    for label, e in errs.items():
        print(f"  {label:16s} median {np.median(e):5.2f}  p95 {np.percentile(e, 95):5.2f}  max {e.max():6.2f}")
    print(f"  {'all':16s} median {np.median(allerr):5.2f}  p95 {np.percentile(allerr, 95):5.2f}  max {allerr.max():6.2f}")
    upright = head_up > 5.0
    inverted = head_up < 0.0
    print(
        f"upright in BVH (head top > 5 units above hips): {upright.sum()} poses, head above hips in Anny: "
        f"{(head_rel[upright] > 0).sum()} ({100 * (head_rel[upright] > 0).mean():.1f} %)"
    )
    print(
        f"inverted in BVH (head top below hips): {inverted.sum()} poses, head below hips in Anny: "
        f"{(head_rel[inverted] < 0).sum()}" + (f" ({100 * (head_rel[inverted] < 0).mean():.1f} %)" if inverted.any() else "")
    )
    if args.preview:
        pick = np.linspace(0, len(stored) - 1, 20).round().astype(int)
        inv = np.nonzero(inverted)[0]
        pick = np.unique(np.concatenate([pick, inv[:: max(1, len(inv) // 4)][:4]]))
        sub = stored.subset(pick)
        params = model.neutral_params(len(sub))
        params["global_orient"] = torch.from_numpy(sub.global_orient.astype(np.float32))
        params["body_pose"] = torch.from_numpy(sub.body_pose.astype(np.float32))
        with torch.no_grad():
            verts = model(params).vertices.numpy()
        labels = [f"#{i} {stored.source[i]} {stored.description[i]}" for i in pick]
        draw_preview(Path(args.preview), verts, joints[pick], labels)
        print(f"preview: {args.preview} (rows {pick.tolist()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
