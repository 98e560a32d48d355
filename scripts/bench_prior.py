"""Score distributions of the Anny prior on easy vs hard CMU poses, and a grid of perturbed variants.

Usage: python scripts/bench_prior.py OUT.png [--guides 4] [--variants 5] [--strength 1.0] [--size 192] [--seed 0]
                                           [--estimates EST.npz]

Prints score quantiles of the easy and hard activity sets (in-sample for the shipped prior; the
held-out figures are in its metadata), the timing of score / perturb / sample, and the scores of
``perturb`` variants against their inputs (quantiles, mean, share at least as hard as the input,
plausible share, hard share) for the built-in poses (in-sample), new poses (built-in rotations
jittered by 0.03 rad, which score like held-out poses) and, with ``--estimates``, the body poses of
a ``dhpc estimate`` results file (``params/body_pose`` of the fitted images). The grid has
one row per guide pose (walking, sitting, cartwheel, breakdance...): column 0 is the guide, the
next columns its ``perturb`` variants, each labelled with its score (red = hard).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

GUIDE_WORDS = ("walk", "sit on", "cartwheel", "breakdance", "yoga", "jump")


def shade(normals: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    """(H, W, 3) normals + (H, W) mask -> (H, W, 3) uint8 Lambert-shaded image on white."""
    light = np.array([0.3, -0.4, -0.85])
    light /= np.linalg.norm(light)
    lam = np.clip(normals @ light, 0, 1) * 0.75 + 0.25
    img = np.where(mask[..., None], lam[..., None] * np.asarray(colour)[None, None], 1.0)
    return (img * 255).astype(np.uint8)


def render_poses(body, body_pose: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Render Anny (neutral shape, upright, facing the camera) in each pose: [(normals, mask)]."""
    from diffusion_hpc.geometry.camera import fit_translation, intrinsics_from_fov
    from diffusion_hpc.render import get_renderer

    n = body_pose.shape[0]
    params = body.neutral_params(n)
    params["body_pose"] = torch.as_tensor(body_pose, dtype=torch.float32)
    with torch.no_grad():
        verts = body(params).vertices.numpy()
    rot = body.canonical_to_camera.numpy()
    K = intrinsics_from_fov(40.0, size, size)
    cam = []
    for v in verts:
        p = v @ rot.T
        cam.append(p + fit_translation(p, K, size, size, fill=0.85))
    out = get_renderer("auto").render(np.stack(cam).astype(np.float32), body.faces.numpy(), K, (size, size))
    return [(out.normals[i], out.mask[i]) for i in range(n)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="PNG path of the grid")
    ap.add_argument("--guides", type=int, default=4)
    ap.add_argument("--variants", type=int, default=5)
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--estimates", default=None, help="a dhpc estimate results file (.npz): their poses' variants too")
    args = ap.parse_args(argv)

    from diffusion_hpc.body import get_body_model
    from diffusion_hpc.poses.io import builtin_poses
    from diffusion_hpc.prior import get_prior
    from diffusion_hpc.prior.anny_prior import label_easy_hard

    prior = get_prior("anny")
    poses = builtin_poses()
    bp = torch.tensor(poses.body_pose)
    t0 = time.perf_counter()
    scores = prior.score(bp).numpy()
    t_score = (time.perf_counter() - t0) / len(bp) * 1e3
    labels = label_easy_hard(poses.description)
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    print(f"hard_threshold {prior.hard_threshold:.1f}  plausible_threshold {prior.plausible_threshold:.1f}")
    print(f"{'set':<22} {'n':>4} " + " ".join(f"q{int(q * 100):02d}".rjust(7) for q in qs) + "  hard%")
    for name, m in (("easy (in-sample)", labels == 0), ("hard (in-sample)", labels == 1), ("all (in-sample)", labels > -2)):
        s = scores[m]
        print(f"{name:<22} {m.sum():>4} " + " ".join(f"{np.quantile(s, q):7.1f}" for q in qs) + f"  {100 * np.mean(s >= prior.hard_threshold):5.1f}")
    cal = prior.metadata["calibration"]
    for name, key in (("easy (held-out)", "easy_quantiles"), ("hard (held-out)", "hard_quantiles")):
        print(f"{name:<22} {'':>4} " + " ".join(f"{v:7.1f}" for v in cal[key].values()))
    print(f"held-out AUC {cal['heldout_auc']:.3f}  accuracy {cal['heldout_accuracy']:.3f}  confusion {cal['heldout_confusion']}")
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    prior.perturb(bp[:64], args.strength, g)
    t_pert = (time.perf_counter() - t0) / 64 * 1e3
    t0 = time.perf_counter()
    prior.sample(64, g)
    t_samp = (time.perf_counter() - t0) / 64 * 1e3
    print(f"ms per pose: score {t_score:.3f}  perturb {t_pert:.3f}  sample {t_samp:.3f}")

    # Variants against their inputs.
    sets = [("built-in (in-sample)", bp),
            ("new (jitter 0.03 rad)", bp + 0.03 * torch.randn(bp.shape, generator=torch.Generator().manual_seed(args.seed)))]
    if args.estimates:
        with np.load(args.estimates, allow_pickle=False) as est:
            ok = est["ok"].astype(bool)
            sets.append((f"estimates ({int(ok.sum())} images)", torch.as_tensor(est["params/body_pose"][ok], dtype=torch.float32)))
    print(f"\nvariants at strength {args.strength}, {args.variants} per pose (hard = score >= {prior.hard_threshold:.1f}):")
    print(f"{'set':<26} {'':>8} {'n':>5} " + " ".join(f"q{int(q * 100):02d}".rjust(7) for q in qs) + "     mean  >=input  plaus%  hard%")
    for name, inputs in sets:
        s_in = prior.score(inputs).numpy()
        var = torch.cat([prior.perturb(inputs, args.strength, g) for _ in range(args.variants)])
        s_var = prior.score(var).numpy()
        share = np.mean(s_var >= np.tile(s_in, args.variants))
        plaus = prior.is_plausible(var).float().mean().item()
        for label, sc, extra in (("inputs", s_in, ""), ("variants", s_var, f"  {100 * share:6.1f}  {100 * plaus:6.1f}")):
            print(f"{name if label == 'inputs' else '':<26} {label:>8} {sc.size:>5} " + " ".join(f"{np.quantile(sc, q):7.1f}" for q in qs)
                  + f"  {sc.mean():7.1f}" + (extra or " " * 16) + f"  {100 * np.mean(sc >= prior.hard_threshold):5.1f}")

    # Grid: guides x (1 + variants).
    rng = np.random.default_rng(args.seed)
    guides = []
    for word in GUIDE_WORDS[: args.guides]:
        idx = [i for i, d in enumerate(poses.description) if word in str(d).lower()]
        guides.append(int(rng.choice(idx)))
    guide_pose = bp[guides]
    rows = [guide_pose[:, None]]
    for _ in range(args.variants):
        rows.append(prior.perturb(guide_pose, args.strength, g)[:, None])
    grid_pose = torch.cat(rows, 1)  # (G, 1 + V, 30, 3)
    flat = grid_pose.reshape(-1, 30, 3)
    grid_scores = prior.score(flat).numpy()
    body = get_body_model("anny")
    tiles = render_poses(body, flat.numpy(), args.size)

    from PIL import Image, ImageDraw

    cols = 1 + args.variants
    img = Image.new("RGB", (cols * args.size, len(guides) * (args.size + 14)), "white")
    draw = ImageDraw.Draw(img)
    for i, (normals, mask) in enumerate(tiles):
        r, c = divmod(i, cols)
        colour = (0.55, 0.6, 0.8) if c == 0 else (0.75, 0.7, 0.6)
        img.paste(Image.fromarray(shade(normals, mask, colour)), (c * args.size, r * (args.size + 14) + 14))
        hard = grid_scores[i] >= prior.hard_threshold
        label = (poses.description[guides[r]][:22] + " | " if c == 0 else "") + f"{grid_scores[i]:.0f}"
        draw.text((c * args.size + 3, r * (args.size + 14) + 1), label, fill=(200, 0, 0) if hard else (0, 0, 0))
    img.save(args.out)
    print(f"wrote {args.out}: {len(guides)} guides x {cols} (guide + {args.variants} variants at strength {args.strength})")


if __name__ == "__main__":
    main()
