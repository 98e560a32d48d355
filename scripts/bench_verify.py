"""Does label verification catch wrong labels as well when it reads MediaPipe's landmarks as when it
reads the fitted body? (``GenerateConfig.verify_by``: ``landmarks`` against ``estimate``)

    .venv/bin/python scripts/bench_verify.py [--n 64] [--seed 2024] [--out DIR]

Renders ``--n`` images with known labels over procedural backgrounds and ``--n`` over real photos
(the render baseline at 256 px, as scripts/bench_estimate.py makes them; its folders are reused
under ``--out``), reads each render's person twice, as verification does
(:func:`~diffusion_hpc.pipeline.guided.read_regions`): the MediaPipe detector's COCO-17 landmarks
(``landmarks``) and the MediaPipe fit's projected keypoints (``estimate``), each on the whole image
(a one-person sample) and on the label's silhouette as the person's region (a person of a
several-people sample). Then :func:`~diffusion_hpc.pipeline.verify.pck_agreement` of each reading
against

- ``right``: the render's own label;
- ``other``: another render's label as it is (render i + 1's);
- ``other here``: another render's pose moved onto this person (its visible keypoints' box scaled
  and moved onto the box of the right label's): a regeneration that kept the person's place and
  size but drew another pose;
- ``mirrored``: the right label with its left and right joints exchanged (a person turned round,
  or read with left and right swapped).

and prints per reading the mean PCK, the share of renders at or above 0.5 (a ``--min-agreement``
of 0.5) and the share at which the right label scores above the wrong one (ties count half), and
how far the two readings' keypoints lie apart (median px over the visible joints) and how often
they decide a 0.5 threshold differently. The fit reads each person once per call of 16 images,
as the pipeline's verification does at batch 16.

A third reading, ``label-box`` (``GenerateConfig.verify_by``), reads each label's person with the
landmark model alone on the region that label's joints give (no person detector), so it is read
once per label kind; its "found" column is the right label's.

With ``--keypoint-model CHECKPOINT`` a fourth reading, ``keypoint-model``, reads each render with that
top-down model on the box of the label's silhouette (the other render's for its label, the render's
own for the rest, as verification reads a label). No real weights were at hand when it was written:
run it where a ViTPose COCO checkpoint is, to compare it with label-box and to choose its
``--min-agreement``.

Then, per reading, the share of renders each ``--min-agreement`` of ``--thresholds`` lets through, for
the right label and each wrong one (a label read as no person fails): a reading whose scores run
higher compares with another at a higher threshold, not at the same one.

Measured (seeds 2024 and 2025, ``--n 64``): the tables in :mod:`diffusion_hpc.pipeline.verify`'s
docstring; the landmarks catch wrong labels as the fit does, at one MediaPipe pass a person, and
label-box at a threshold 0.1 higher keeps 9-16 points more right labels than landmarks and lets
about as many or fewer wrong ones through, at a third less CPU a person (hence the default).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

THRESHOLD = 0.5


def moved_onto(label: np.ndarray, onto: np.ndarray) -> np.ndarray:
    """(17, 3) ``label`` with its visible keypoints' box (longer side) scaled and moved onto ``onto``'s
    visible keypoints' box (its centre and longer side); visibility kept."""
    out = label.astype(np.float64, copy=True)
    a, b = label[label[:, 2] == 2, :2], onto[onto[:, 2] == 2, :2]
    if len(a) < 2 or len(b) < 2:
        return out
    ca, cb = (a.min(0) + a.max(0)) / 2, (b.min(0) + b.max(0)) / 2
    scale = np.ptp(b, axis=0).max() / max(np.ptp(a, axis=0).max(), 1.0)
    out[:, :2] = (label[:, :2] - ca) * scale + cb
    return out


def separation(right: np.ndarray, wrong: np.ndarray) -> float:
    """Share of renders whose right label scores above the wrong one (ties half), over finite pairs."""
    ok = np.isfinite(right) & np.isfinite(wrong)
    r, w = right[ok], wrong[ok]
    return float(((r > w) + 0.5 * (r == w)).mean()) if ok.any() else float("nan")


def pass_share(pck: np.ndarray, threshold: float) -> float:
    """Share of renders a ``--min-agreement`` of ``threshold`` lets through (PCK >= it), over renders
    whose label has a visible keypoint (a label read as no person scores 0 and fails)."""
    ok = np.isfinite(pck)
    return float((pck[ok] >= threshold).mean()) if ok.any() else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64, help="renders over procedural backgrounds, and as many over photos")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--out", type=Path, default=None, help="folder of the renders (default: a temp dir)")
    ap.add_argument("--keypoint-model", help="also read with this top-down keypoint checkpoint (--verify-by "
                    "keypoint-model: a ViTPose COCO folder or cached hub id) on each label silhouette's box")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9],
                    help="--min-agreement values at which each reading's pass shares are printed")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_verify_"))
    out.mkdir(parents=True, exist_ok=True)

    from bench_estimate import bench_renders

    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.schema import persons_of
    from diffusion_hpc.estimate import get_estimator
    from diffusion_hpc.estimate.fit import COCO17_FLIP
    from diffusion_hpc.pipeline.guided import read_label_boxes, read_regions
    from diffusion_hpc.pipeline.verify import pck_agreement

    # the renders of scripts/bench_estimate.py (same folders, same renders)
    ds, ds_photo = (bench_renders(out, args.n, args.seed, photos) for photos in (False, True))
    samples = [p for d in (ds, ds_photo) for s in open_dataset(d) for p in persons_of(s)]
    images = [s["image"] for s in samples]
    labels = [np.asarray(s["keypoints2d"], np.float64) for s in samples]
    silhouettes = [np.asarray(s["mask"], bool) for s in samples]
    n = len(samples)
    wrong = {"other": [labels[(i + 1) % n] for i in range(n)],
             "other here": [moved_onto(labels[(i + 1) % n], labels[i]) for i in range(n)],
             "mirrored": [label[COCO17_FLIP] for label in labels]}  # fmt: skip

    keypoint_model = None
    if args.keypoint_model is not None:
        from diffusion_hpc.estimate.keypoint_model import KeypointModel
        from diffusion_hpc.runtime.weights import check_models

        keypoint_model = KeypointModel(check_models({"keypoint_model": args.keypoint_model})["keypoint_model"])
    est = get_estimator("mediapipe")
    est.estimate(images[:2])  # warm-up: MediaPipe graphs, Anny
    print(f"renders: {n} ({args.n} procedural, {args.n} over photos), seed {args.seed}; PCK at 0.1 x the person box")
    # the readings that look where the label says, whatever the region: one reading per label kind
    per_label = {"label-box": {name: read_regions(est, images, [None] * n, "label-box", truths)
                               for name, truths in {"right": labels, **wrong}.items()}}  # fmt: skip
    if keypoint_model is not None:  # on the label silhouette's box: the other render's for its label
        same = read_label_boxes(keypoint_model, images, silhouettes, np.arange(n))
        others = read_label_boxes(keypoint_model, images, [silhouettes[(i + 1) % n] for i in range(n)], np.arange(n))
        per_label["keypoint-model"] = {name: others if name == "other" else same for name in ("right", *wrong)}
    for region in ("whole image", "label's silhouette"):
        regions = [None] * n if region == "whole image" else silhouettes
        readings = {}
        for by in ("landmarks", "estimate"):
            readings[by] = [r for lo in range(0, n, 16)
                            for r in read_regions(est, images[lo:lo + 16], regions[lo:lo + 16], by)]  # fmt: skip
        print(f"\nread on the {region}:")
        print(f"  {'reading':14s} {'found':>6s} | " + " | ".join(f"{name:>24s}" for name in ["right", *wrong])
              + " |  separation (right > wrong): " + ", ".join(wrong))
        print(f"  {'':14s} {'':>6s} | " + " | ".join(f"{'mean PCK, >= 0.5':>24s}" for _ in range(len(wrong) + 1)))
        scores = {}
        for by, reads in (*readings.items(), *((name, kinds["right"]) for name, kinds in per_label.items())):
            pck = {name: np.array([pck_agreement(r.keypoints2d if r.ok else None, truth, sil)
                                   for r, truth, sil in zip(per_label[by][name] if by in per_label else reads,
                                                            truths, silhouettes)])
                   for name, truths in {"right": labels, **wrong}.items()}  # fmt: skip
            scores[by] = pck
            found = np.mean([r.ok for r in reads])
            cells = [f"{np.nanmean(v):6.3f}, {np.nanmean(v[np.isfinite(v)] >= THRESHOLD):6.1%}" for v in pck.values()]
            seps = [f"{separation(pck['right'], pck[name]):.3f}" for name in wrong]
            print(f"  {by:14s} {found:6.1%} | " + " | ".join(f"{c:>24s}" for c in cells) + " |  " + ", ".join(seps))
        print(f"  share passing --min-agreement t (a label not found fails), right / {' / '.join(wrong)}:")
        for by, pck in scores.items():
            cells = [" / ".join(f"{pass_share(v, t):5.1%}" for v in pck.values()) for t in args.thresholds]
            print(f"  {by:14s} " + " | ".join(f"t={t:.2f}: {c}" for t, c in zip(args.thresholds, cells)))
        both = [i for i in range(n) if readings["landmarks"][i].ok and readings["estimate"][i].ok]
        gaps = [np.median(np.linalg.norm(readings["landmarks"][i].keypoints2d[v, :2]
                                         - readings["estimate"][i].keypoints2d[v, :2], axis=1))
                for i in both if (v := labels[i][:, 2] == 2).any()]  # fmt: skip
        for name in ("right", *wrong):
            a, b = scores["landmarks"][name], scores["estimate"][name]
            ok = np.isfinite(a) & np.isfinite(b)
            differ = ((a >= THRESHOLD) != (b >= THRESHOLD))[ok]
            print(f"  {name:10s}: the readings decide >= {THRESHOLD} differently on {differ.sum()} of {ok.sum()} "
                  f"renders; |PCK difference| mean {np.abs(a - b)[ok].mean():.3f}")
        print(f"  keypoints, landmarks vs the fit's: median {np.median(gaps):.1f} px (90th percentile "
              f"{np.percentile(gaps, 90):.1f} px) over {len(gaps)} renders both read")


if __name__ == "__main__":
    main()
