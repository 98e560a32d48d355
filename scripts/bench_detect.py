"""Benchmark person detection against person size: the single-pass and the multi-scale MediaPipe detector.

    .venv/bin/python scripts/bench_detect.py [--n 16] [--frames 2048,1024,512] [--sizes 5,10,15,25,50,80|none]
                                             [--empty 8] [--grids 2x0.5,3x0.5] [--out DIR]

1. People: render-baseline samples (``dhpc generate`` mode D, 512², sampled shapes, cameras from the
   front, back and side) of the built-in poses and of the ``--n-hard`` built-in poses the prior
   scores highest (hard poses); only people wholly inside their render are used.
2. Small people in large frames are made by pasting, not by rendering far away: each person is cut
   out with its render mask, scaled (area interpolation when shrinking) so that the longer side of
   its box is the bin's fraction of the frame height, and alpha-blended at a random place of a
   frame-sized background, alternately procedural (``generate.backgrounds``) and a real photo
   without people from scikit-image (coffee, chelsea, rocket, brick, grass, gravel, hubble), scaled
   to cover the frame. The true COCO-17 keypoints follow the same map. Pasting keeps the rendered
   person's look at every size and costs one render per person; a far camera would give the same
   pixels up to resampling.
3. Each frame goes through ``MediaPipeDetector(grids=())`` (MediaPipe once on the whole image, the
   detector as it was) and ``MediaPipeDetector()`` (whole image, then tiles and a refinement crop);
   with ``--masks`` also through ``MediaPipeDetector()`` given the pasted person's true mask (its
   alpha >= 0.5; an upper bound for a segmenter's mask).
   A person counts as found when the box of its seen landmarks is centred inside the true person
   box and its side is within a factor 2 of the true box's (the right place and scale; a
   left/right flip still counts as found). Reported per frame size and size bin: recall, time per
   image, MediaPipe passes per image, and the median 2D COCO-17 error of found people against the
   true projections (px and % of the person's size; true-visible joints only).
4. False detections: ``--empty`` frames per frame size without a person (the same backgrounds).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

#: scikit-image photos without people used as real backgrounds
PHOTO_BACKGROUNDS = ("coffee", "chelsea", "rocket", "brick", "grass", "gravel", "hubble_deep_field")


def person_cutout(sample: dict) -> dict | None:
    """The person of a rendered sample as ``image``, ``alpha`` (float32) and ``keypoints2d`` (17, 3) cut
    to its mask box (pixel-centre coordinates of the cutout); None when the mask touches the border."""
    mask = sample["mask"]
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    if len(ys) == 0 or ys.min() < 2 or xs.min() < 2 or ys.max() > h - 3 or xs.max() > w - 3:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    kp = sample["keypoints2d"].astype(np.float64).copy()
    kp[:, :2] -= (x0, y0)
    return {"image": sample["image"][y0:y1, x0:x1], "alpha": mask[y0:y1, x0:x1].astype(np.float32), "keypoints2d": kp}


def photo_background(name: str, frame: int) -> np.ndarray:
    """(frame, frame, 3) uint8 scikit-image photo ``name`` scaled to cover the frame, centre crop."""
    import cv2
    import skimage.data

    photo = getattr(skimage.data, name)()
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    scale = frame / min(photo.shape[:2])
    h, w = max(frame, round(photo.shape[0] * scale)), max(frame, round(photo.shape[1] * scale))
    photo = cv2.resize(photo[..., :3], (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (h - frame) // 2, (w - frame) // 2
    return np.ascontiguousarray(photo[top:top + frame, left:left + frame])


def paste_person(cutout: dict, background: np.ndarray, fraction: float, rng: np.random.Generator):
    """(image (F, F, 3) uint8, keypoints2d (17, 3), box (x0, y0, x1, y1), mask (F, F) bool) with
    ``cutout`` scaled so the longer side of its box is ``fraction`` x the frame height, pasted at a
    random place (``mask``: where its alpha is at least 0.5); None when it does not fit."""
    import cv2

    frame = background.shape[0]
    h, w = cutout["alpha"].shape
    scale = fraction * frame / max(h, w)
    W, H = max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)
    if W > frame or H > frame:
        return None
    ox, oy = int(rng.integers(0, frame - W + 1)), int(rng.integers(0, frame - H + 1))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    person = cv2.resize(cutout["image"], (W, H), interpolation=interp).astype(np.float32)
    alpha = cv2.resize(cutout["alpha"], (W, H), interpolation=interp)[..., None]
    out = background.copy()
    region = out[oy:oy + H, ox:ox + W].astype(np.float32)
    out[oy:oy + H, ox:ox + W] = np.clip(person * alpha + region * (1 - alpha) + 0.5, 0, 255).astype(np.uint8)
    kp = cutout["keypoints2d"].copy()
    sx, sy = W / w, H / h  # cv2.resize: dst = (src + 0.5) * s - 0.5
    kp[:, 0] = (kp[:, 0] + 0.5) * sx - 0.5 + ox
    kp[:, 1] = (kp[:, 1] + 0.5) * sy - 0.5 + oy
    mask = np.zeros((frame, frame), bool)
    mask[oy:oy + H, ox:ox + W] = alpha[..., 0] >= 0.5
    return out, kp, (ox - 0.5, oy - 0.5, ox + W - 0.5, oy + H - 0.5), mask


def found_person(detection, box) -> bool:
    """Whether a detection is the true person in ``box`` (x0, y0, x1, y1): its seen-landmark box is
    centred inside the true box, with a side within a factor 2 of the true box's longer side."""
    if detection is None or (det_box := detection.box(expand=1.0)) is None:
        return False
    (cx, cy), side = det_box
    x0, y0, x1, y1 = box
    true_side = max(x1 - x0, y1 - y0)
    return x0 <= cx <= x1 and y0 <= cy <= y1 and 0.5 <= side / true_side <= 2.0


def render_people(out: Path, n: int, n_hard: int, seed: int) -> list[dict]:
    """Cutouts of rendered people: ``n`` built-in poses and ``n_hard`` of the hardest (flag ``hard``)."""
    import torch

    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.schema import persons_of
    from diffusion_hpc.pipeline.generate import generate
    from diffusion_hpc.poses import builtin_poses
    from diffusion_hpc.poses.io import save_pose_file
    from diffusion_hpc.prior import get_prior

    sets = [("easy", GenerateConfig(n=n, image_size=(512, 512), seed=seed))]
    if n_hard:
        poses, prior = builtin_poses(), get_prior()
        with torch.no_grad():
            score = prior.score(torch.as_tensor(poses.body_pose)).numpy()
        save_pose_file(out / "hard_poses.npz", poses.subset(np.argsort(-score)[:n_hard]))
        sets.append(("hard", GenerateConfig(n=n_hard, image_size=(512, 512), seed=seed + 1,
                                            poses=str(out / "hard_poses.npz"))))
    people = []
    for name, config in sets:
        if not (out / name / "config.yaml").exists():
            generate(config, out=out / name, progress=False)
        for sample in (p for s in open_dataset(out / name) for p in persons_of(s)):  # one person per render
            if (cut := person_cutout(sample)) is not None:
                people.append(cut | {"hard": name == "hard"})
    return people


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="people per frame size and size bin")
    ap.add_argument("--n-hard", type=int, default=16, help="hard-pose people among the rendered ones")
    ap.add_argument("--frames", default="2048,1024,512", help="frame sides (px), comma-separated")
    ap.add_argument("--sizes", default="5,10,15,25,50,80", help="person sizes, %% of the frame height")
    ap.add_argument("--grids", default=None, help="tile grids of the multi-scale detector, e.g. 2x0.5,3x0.5 "
                    "(tiles x overlap; default: DETECT_GRIDS)")
    ap.add_argument("--masks", action="store_true", help="also run the multi-scale detector given each pasted "
                    "person's true mask (the landmark model on the mask's box when the person detector misses)")
    ap.add_argument("--empty", type=int, default=8, help="frames without a person per frame size (false detections)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="folder for the renders (default: a temp dir)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_detect_"))
    out.mkdir(parents=True, exist_ok=True)

    from diffusion_hpc.estimate.landmarks import DETECT_GRIDS, MediaPipeDetector, coco17_from_mediapipe
    from diffusion_hpc.generate.backgrounds import procedural_background

    people = render_people(out, 2 * args.n, args.n_hard, args.seed)
    print(f"{len(people)} rendered people ({sum(p['hard'] for p in people)} hard poses) in {out}")
    grids = DETECT_GRIDS if args.grids is None else tuple(
        (int(t), float(o)) for t, o in (g.split("x") for g in args.grids.split(",")))
    print(f"multi-scale grids (tiles, overlap): {grids}")
    detectors = {"single-pass": MediaPipeDetector(grids=()), "multi-scale": MediaPipeDetector(grids=grids)}
    if args.masks:  # the multi-scale detector given the pasted person's true mask
        detectors["with mask"] = MediaPipeDetector(grids=grids)
    for det in detectors.values():  # warm-up: MediaPipe graphs
        det.detect(np.zeros((256, 256, 3), np.uint8))
    frames = [int(f) for f in args.frames.split(",")]
    sizes = [] if args.sizes == "none" else [float(s) / 100 for s in args.sizes.split(",")]
    print("recall: all (procedural backgrounds, photos); s/img; MediaPipe passes per image; median 2D error px (% of size)")
    print(f"{'frame':>5} {'size':>4}  " + "  ".join(
        f"{name:>11}: recall (proc photo) s/img passes err px (%)" for name in detectors))
    summary: dict[str, list] = {name: [] for name in detectors}
    for frame in frames:
        for fraction in sizes:
            rng = np.random.default_rng([args.seed, frame, int(fraction * 1000)])
            rows = {name: {"found": [], "photo": [], "time": [], "passes": [], "err": [], "rel": []} for name in detectors}
            for i in range(args.n):
                person = people[int(rng.integers(len(people)))]
                if i % 2:
                    background = photo_background(PHOTO_BACKGROUNDS[(i // 2) % len(PHOTO_BACKGROUNDS)], frame)
                else:
                    background = procedural_background(rng, frame, frame)
                pasted = paste_person(person, background, fraction, rng)
                if pasted is None:
                    continue
                image, kp, box, mask = pasted
                for name, det in detectors.items():
                    t0 = time.perf_counter()
                    start = det.passes
                    found = det.detect(image, mask if name == "with mask" else None)
                    row = rows[name]
                    row["time"].append(time.perf_counter() - t0)
                    row["passes"].append(det.passes - start)
                    row["found"].append(found_person(found, box))
                    row["photo"].append(bool(i % 2))
                    if row["found"][-1]:
                        seen = kp[:, 2] >= 2
                        err = np.linalg.norm(coco17_from_mediapipe(found.landmarks2d)[:, :2] - kp[:, :2], axis=1)[seen]
                        row["err"].append(np.median(err))
                        row["rel"].append(np.median(err) / (fraction * frame) * 100)
            cells = []
            for name, row in rows.items():
                summary[name].append((frame, fraction, row))
                err = f"{np.median(row['err']):6.1f} ({np.median(row['rel']):4.1f})" if row["err"] else f"{'-':>6} ({'-':>4})"
                found, photo = np.array(row["found"]), np.array(row["photo"])
                cells.append(f"{name:>11}: {found.mean():4.0%} ({found[~photo].mean():4.0%} {found[photo].mean():4.0%}) "
                             f"{np.mean(row['time']):5.2f} "
                             f"{np.mean(row['passes']):6.1f} {err}")
            print(f"{frame:5d} {fraction:4.0%}  " + "  ".join(cells), flush=True)
    if args.empty:
        print(f"false detections on {args.empty} frames without a person per frame size (half photos), and s/img:")
        for frame in frames:
            rng = np.random.default_rng([args.seed, frame])
            backgrounds = [photo_background(PHOTO_BACKGROUNDS[(i // 2) % len(PHOTO_BACKGROUNDS)], frame) if i % 2
                           else procedural_background(rng, frame, frame) for i in range(args.empty)]
            cells = []
            for name, det in detectors.items():
                t0 = time.perf_counter()
                false = sum(det.detect(b) is not None for b in backgrounds)
                cells.append(f"{name:>11}: {false} of {len(backgrounds)}, {(time.perf_counter() - t0) / len(backgrounds):.2f} s")
            print(f"  {frame:5d}  " + "  ".join(cells), flush=True)
    if not sizes:
        return
    print("over all frames:")
    for name, entries in summary.items():
        big = [f for _, fraction, row in entries if fraction >= 0.1 for f in row["found"]]
        every = [f for _, _, row in entries for f in row["found"]]
        times = [t for _, _, row in entries for t in row["time"]]
        photo = [p for _, fraction, row in entries if fraction >= 0.1 for p in row["photo"]]
        big_photo = [f for f, p in zip(big, photo) if p]
        big_procedural = [f for f, p in zip(big, photo) if not p]
        print(f"  {name:>11}: recall {np.mean(big):.1%} for people >= 10% of the frame height (n={len(big)}; "
              f"procedural backgrounds {np.mean(big_procedural):.1%}, photos {np.mean(big_photo):.1%}), "
              f"{np.mean(every):.1%} overall; mean {np.mean(times):.2f} s per image")


if __name__ == "__main__":
    main()
