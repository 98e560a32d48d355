"""Make the MediaPipe landmark lifter's weights (``src/diffusion_hpc/estimate/lifter.safetensors``).

    .venv/bin/python scripts/train_lifter.py [--renders 6144] [--aug-renders 6144] [--aug-strength 1 0.5]
        [--masks true|segmenter [...]] [--cache /tmp/lifter_data] [--out PATH] [--data-only]

Several processes may fill one cache side by side (``--data-only`` in each): a process claims a
dataset with a ``.claim`` file (:func:`claim`) and leaves the claimed ones to the others.

1. **Held-out poses.** Renders the bench's evaluation sets (``scripts/bench_estimate.py``: seeds
   2024 and 2025, procedural backgrounds, and seeds 2031 / 2032 over photos, ``--holdout-n`` each)
   and reads the built-in poses they use (``pose_source``), plus the ``--n-hard`` poses the prior
   scores highest (the bench's ``hardest`` set). None of them is rendered for training.
2. **Training renders.** The render baseline (:func:`diffusion_hpc.pipeline.generate.generate`, 256
   px) over the remaining built-in poses (the CMU-derived set, ``poses/data/cmu_builtin.npz``), in
   datasets of ``--chunk`` renders from seeds 10000, 10001, ... (disjoint from the evaluation's),
   random shapes, cameras and views as the generator draws them; every other dataset over the real
   photos that ship in scikit-image (the bench's :data:`bench_estimate.BACKGROUND_PHOTOS`), the
   rest over procedural backgrounds.
2b. **Augmented poses** (``--aug-renders`` per ``--aug-strength``; 0: none). The pose prior's
   augmentation as modes T and R draw their variants (:func:`diffusion_hpc.prior.augment_poses`:
   pushed away from the prior's mean, kept plausible, orientation jittered) makes ``--variants``
   new poses of each training pose (:func:`augmented_pose_set`; strength 1: prior score mean 61 ->
   441, 94 % of the variants above the hard threshold; strength 0.5: -> 155, 31 %). They are
   rendered as in step 2 from seeds 20000 + 1000 (strength - 1), ... with wider cameras
   (:data:`AUG_FOV_DEG`, :data:`AUG_FILL`: nearer cameras, people up to the whole frame; the
   generator keeps the whole body in frame, so no cropped people). The held-out poses stay out:
   variants are made of the training poses only.
3. **Detections.** MediaPipe (:class:`~diffusion_hpc.estimate.mediapipe_fit.MediaPipeFitter`'s
   detector) on each render with its true person mask (``--masks true``, the default: the path the
   pipeline takes with the segmenter's mask, given a perfect mask), or as the pipeline reads the
   person (``--masks segmenter``, :func:`segmenter_detections`: the selfie segmenter's instance that
   matches the true mask as the mask, the other instances painted grey, as
   :func:`bench_estimate.segmenter_instances`; a render without a matching instance has no
   detection, as the pipeline gives it no label). Per render the cache (``--cache``, one npz per
   dataset and way of reading it, ``..._n128.npz`` and ``..._n128_seg.npz``, reused; the renders are
   shared) keeps the 33 image landmarks with visibility, the 33 world landmarks, the true COCO-17
   joints (camera frame) and 2D keypoints, and whether the detector swapped left and right
   (:func:`detector_swapped`). ``--masks segmenter true`` makes both in one pass over the renders
   and trains on the first.
4. **Training** (:func:`diffusion_hpc.estimate.lifter.train_lifter`, seeded, CPU, a few minutes):
   the MLP of :class:`~diffusion_hpc.estimate.lifter.LandmarkLifter` maps the detection's features
   (:func:`~diffusion_hpc.estimate.lifter.lifter_features`) to the true hip-centred COCO-17 joints,
   relabelled left/right as the detector labelled them (the lifter corrects geometry, never the
   labels the 2D keypoints carry), and a logit for "the detector swapped left and right". Mirrored
   copies of every render (image x flipped, labels exchanged) double the data; dropout, feature
   noise, weight decay and a rotation-aligned joint error (the fit aligns its 3D target the same
   way) keep the MLP from learning the 575 training poses by heart. A sixth of the renders of step
   2 (whole datasets, :func:`validation_chunks`) is kept for validation and reported; every
   augmented render trains.

The shipped weights are this script's defaults: 6144 renders of the 575 training poses (6091
detected, 5074 of them train), 12,288 of their 1725 variants at strength 1 (11,987 detected),
34,122 examples with the mirrored copies, 3 x 384 MLP, 80 epochs (3 min on an idle CPU thread, 8
on the loaded machine), 1.5 MiB. Validation (limb PA-MPJPE of the lifted joints, mean / median):
77.2 / 59.7 mm, the world landmarks 96.4 / 78.1 (the first lifter, 3 x 256 without the variants:
78.2 / 60.8). Also tried: 3 x 256 with 6144 variant renders (78.5 / 60.6; in the fit no better on
seed 2024's median and more swaps on 2025), 3 x 384 with 6144 (77.5 / 60.2; one more swap on 2025
than the first lifter), 3 x 384 with 95 of the 96 variant datasets (77.0 / 60.3). The fit's
figures are in :mod:`diffusion_hpc.estimate.mediapipe_fit`.

``--masks segmenter`` (the pipeline's reading in training too) did not help. The default amounts
read both ways in one pass (two ``--data-only`` processes, 15 s CPU per dataset of 128 renders for
the renders and both readings, 30 min wall on the loaded machine): the segmenter reading detects
17,572 of the 18,405 renders (the true masks 18,007), and swaps left and right more over photos
(11.4 vs 9.8 % of the built-in poses' renders, 16.6 vs 15.8 % of the variants'). Fit with each
lifter on bench_estimate's renders read the pipeline's way (seeds 2024 / 2025, 32 procedural + 32
photo each; limb PA-MPJPE mean / median mm, swaps):

================  =====================  =====================
lifter            seed 2024              seed 2025
================  =====================  =====================
shipped           63.2 / 51.1, 3 of 59   83.4 / 61.5, 2 of 62
true, seed 0      63.5 / 50.9, 3         85.1 / 62.1, 4
true, seed 1      64.4 / 51.4, 3         83.6 / 62.8, 4
segmenter, 0      63.9 / 52.6, 3         86.5 / 61.4, 5
segmenter, 1      64.2 / 49.7, 3         85.6 / 61.7, 6
both readings     62.5 / 51.0, 3         84.3 / 60.5, 3
================  =====================  =====================

(the true-mask retrains are this script's defaults again: their spread, 1-2 mm and two swaps, is
the training's noise). On the validation datasets every lifter is within 0.4 mm of the others read
either way (true masks 76.7-77.1 mean, segmenter 77.7-77.9): the segmenter's masks cost the lifted
joints under 1 mm, so the photo renders' larger errors do not come from the lifter's training masks.

Data and licence: the poses are the package's built-in CMU motion-capture poses ("The data used in
this project was obtained from mocap.cs.cmu.edu. The database was created with funding from NSF
EIA-0196217."; free for research and commercial use) and their variants drawn with the package's
own Anny pose prior (``prior/data/anny_prior.safetensors``, made by ``diffusion_hpc.prior.fit``),
the bodies Anny's, the backgrounds procedural or scikit-image's sample photos (BSD-licensed
package data); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: seeds of bench_estimate's evaluation renders (procedural; the photo sets use seed + 7)
EVAL_SEEDS = (2024, 2025)
#: first seed of the training datasets
TRAIN_SEED = 10000
#: first seed of the datasets of augmented poses (step 2b)
AUG_SEED = 20000
#: the augmented datasets' cameras: wider fields of view up to a near camera, people up to the whole frame
AUG_FOV_DEG = (35.0, 80.0)
AUG_FILL = (0.5, 0.98)


def pose_names(folder: Path) -> list[str]:
    """Built-in pose names (``builtin:NAME`` sources) of every person in a dataset."""
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.schema import persons_of

    return [p["pose_source"].split(":", 1)[1] for s in open_dataset(folder) for p in persons_of(s)
            if str(p.get("pose_source", "")).startswith("builtin:")]


def held_out_poses(cache: Path, n: int, n_hard: int) -> set[str]:
    """Names of the built-in poses bench_estimate evaluates on (module docstring, step 1)."""
    import torch

    from bench_estimate import background_folder
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.pipeline.generate import generate
    from diffusion_hpc.poses import builtin_poses
    from diffusion_hpc.prior import get_prior

    names: set[str] = set()
    for seed in EVAL_SEEDS:
        for photo, s in ((False, seed), (True, seed + 7)):
            folder = cache / f"eval_n{n}_s{s}"
            if not (folder / "config.yaml").exists():
                cfg = GenerateConfig(n=n, image_size=(256, 256), seed=s)
                if photo:
                    cfg.render_baseline.backgrounds = background_folder(cache)
                generate(cfg, out=folder, progress=False)
            names.update(pose_names(folder))
    poses = builtin_poses()
    with torch.no_grad():
        score = get_prior().score(torch.as_tensor(poses.body_pose)).numpy()
    names.update(str(poses.name[i]) for i in np.argsort(-score)[:n_hard])
    return names


def detector_swapped(detected_uv: np.ndarray, true_uv: np.ndarray) -> bool:
    """True when the detector's 2D labels are left/right swapped: fewer than half of the limb pairs
    (:data:`~diffusion_hpc.estimate.facing.LIMB_PAIRS`) have their detected left joint nearer the
    true left joint than the true right one (pixels, (17, 2) COCO-17 each)."""
    from diffusion_hpc.estimate.facing import LIMB_PAIRS

    near = [np.linalg.norm(detected_uv[lt] - true_uv[lt]) < np.linalg.norm(detected_uv[lt] - true_uv[rt])
            for lt, rt in LIMB_PAIRS]
    return float(np.mean(near)) < 0.5


def augmented_pose_set(poses, variants: int, seed: int, strength: float = 1.0):
    """``variants`` new poses per pose of ``poses`` (a built-in :class:`~diffusion_hpc.poses.io.PoseSet`)
    from the pose prior's augmentation as modes T and R draw it (:func:`diffusion_hpc.prior.augment_poses`
    at ``strength``: pushed away from the prior's mean, plausible, orientation jittered), named
    ``NAME#vK``, pose-major;
    and the (N,) and (N * variants,) prior scores of the inputs and the variants."""
    from diffusion_hpc.poses.io import PoseSet
    from diffusion_hpc.prior import augment_poses, get_prior

    n = len(poses)
    aug = augment_poses(get_prior(), poses.body_pose, poses.global_orient, np.zeros((n, 6), np.float32),
                        k=variants + 1, generator=seed, strength=strength)
    rep = lambda a: None if a is None else np.repeat(a, variants, axis=0)  # noqa: E731
    names = np.array([f"{name}#v{v}" for name in poses.name for v in range(1, variants + 1)])
    out = PoseSet(body_model=poses.body_model, global_orient=aug.global_orient[:, 1:].reshape(-1, 3),
                  body_pose=aug.body_pose[:, 1:].reshape(-1, *poses.body_pose.shape[1:]), name=names,
                  source=rep(poses.source), description=rep(poses.description), subject=rep(poses.subject))
    return out, aug.scores[:, 0], aug.scores[:, 1:].reshape(-1)


def claim(npz: Path) -> bool:
    """Claim a chunk for this process (a ``.claim`` file with its pid, made exclusively beside its
    npz), so that several processes can fill one cache side by side; False when a live process holds
    it (the claim of a process that died is taken over)."""
    path = npz.with_suffix(".claim")
    for _ in range(2):
        try:
            with open(path, "x") as fh:
                fh.write(str(os.getpid()))
            return True
        except FileExistsError:
            try:
                os.kill(int(path.read_text() or 0), 0)
                return False
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)
            except PermissionError:
                return False
    return False


#: how ``--masks`` reads each render (module docstring, step 3) and the suffix of its cached npz names
MASKS = {"true": "", "segmenter": "_seg"}


def chunk_name(stem: str, masks: str) -> str:
    """The npz name of dataset ``stem`` (``chunk_s10000_n128``) read with ``masks`` (a :data:`MASKS` key)."""
    if masks not in MASKS:
        raise ValueError(f"masks={masks!r} is not one of {sorted(MASKS)}: pass --masks true or --masks segmenter")
    return f"{stem}{MASKS[masks]}.npz"


def make_chunk(est, folder: Path, npzs: dict[str, Path], seed: int, n: int, pose_file: Path, photos: Path | None,
               fov_deg: tuple[float, float] | None = None, fill: tuple[float, float] | None = None) -> None:
    """Render one training dataset, detect on it and cache the arrays (module docstring, steps 2-3),
    one npz per way of reading the renders (``npzs``: :data:`MASKS` key -> npz path; the renders are
    made once); ``fov_deg`` / ``fill`` override the generator's camera draws."""
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.schema import persons_of
    from diffusion_hpc.pipeline.generate import generate

    cfg = GenerateConfig(n=n, image_size=(256, 256), seed=seed, poses=str(pose_file))
    if fov_deg is not None:
        cfg.camera.fov_deg = fov_deg
    if fill is not None:
        cfg.camera.fill = fill
    if photos is not None:
        cfg.render_baseline.backgrounds = photos
    # a dataset a killed process began is finished (its committed shards kept, the rest made); a finished
    # one loads no model
    generate(cfg, out=folder, resume=(folder / "config.yaml").exists(), progress=False)
    samples = [p for s in open_dataset(folder) for p in persons_of(s)]
    for masks, npz in npzs.items():
        if masks == "true":
            dets = [est.detector.detect(s["image"], np.asarray(s["mask"], np.float32)) for s in samples]
        else:
            dets = segmenter_detections(est, samples)
        save_chunk(npz, samples, dets, seed, photos is not None)


def segmenter_detections(est, samples: list[dict]) -> list:
    """The detections of ``samples`` (renders' persons) read the pipeline's way: the selfie segmenter's
    instance that matches the true mask as the mask, the other instances grey
    (:func:`bench_estimate.segmenter_instances`); None where no instance touches the person (the
    pipeline gives it no label) or the detector finds nobody."""
    from bench_estimate import segmenter_instances

    images, masks = segmenter_instances([s["image"] for s in samples], [s["mask"] for s in samples])
    found = [k for k, m in enumerate(masks) if m is not None]
    dets: list = [None] * len(samples)
    for k, det in zip(found, est.detect([images[k] for k in found], [masks[k] for k in found])):
        dets[k] = det
    return dets


def save_chunk(npz: Path, samples: list[dict], dets: list, seed: int, photo: bool) -> None:
    """Cache the detections ``dets`` (one per sample, None: none) of a dataset's ``samples`` with their
    true joints (module docstring, step 3)."""
    from diffusion_hpc.estimate.landmarks import coco17_from_mediapipe
    from diffusion_hpc.runtime.atomic import atomic_path

    rows: dict[str, list] = {k: [] for k in ("landmarks2d", "world", "true3d", "true2d", "size", "swapped", "pose")}
    for s, det in zip(samples, dets):
        if det is None:
            continue
        true2d = s["keypoints2d"][:, :2]
        rows["landmarks2d"].append(det.landmarks2d)
        rows["world"].append(det.world)
        rows["true3d"].append(s["joints3d"]["coco17"])
        rows["true2d"].append(true2d)
        rows["size"].append(s["image"].shape[:2])
        rows["swapped"].append(detector_swapped(coco17_from_mediapipe(det.landmarks2d)[:, :2], true2d))
        rows["pose"].append(s["pose_source"])
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, seed=seed, photo=photo, renders=len(samples),
                     **{k: np.asarray(v) for k, v in rows.items()})


def aug_tag(variants: int, strength: float) -> str:
    """Name part of the augmented poses' files: ``aug3`` (strength 1, modes T and R's), ``aug3x0.5``."""
    return f"aug{variants}" if strength == 1.0 else f"aug{variants}x{strength:g}"


def aug_seed(strength: float) -> int:
    """First seed of the augmented datasets of ``strength``: :data:`AUG_SEED` + 1000 (strength - 1)."""
    return AUG_SEED + round(1000 * (strength - 1.0))


def make_data(cache: Path, renders: int, aug_renders: int, variants: int, strengths: list[float], chunk: int,
              holdout_n: int, n_hard: int, masks: list[str]) -> tuple[list[Path], list[Path], list[Path]]:
    """The cached chunks of the built-in training poses and of their augmented variants (module
    docstring, steps 1-3) read with ``masks[0]`` (a :data:`MASKS` key), made where missing, and the
    chunks another process claimed (:func:`claim`) and has not finished: left to it. The chunks of the
    other ``masks`` are made in the same pass (on the same renders) but not returned."""
    from bench_estimate import background_folder
    from diffusion_hpc.estimate import get_estimator
    from diffusion_hpc.poses import builtin_poses
    from diffusion_hpc.poses.io import save_pose_file
    from diffusion_hpc.prior import get_prior

    cache.mkdir(parents=True, exist_ok=True)
    held = held_out_poses(cache, holdout_n, n_hard)
    poses = builtin_poses()
    keep = [i for i, name in enumerate(poses.name) if str(name) not in held]
    pose_file = cache / "train_poses.npz"
    save_pose_file(pose_file, poses.subset(keep))
    print(f"poses: {len(poses.name)} built-in, {len(held)} held out (evaluation sets, hardest), {len(keep)} for training")
    aug_files = {}
    for strength in strengths if aug_renders else ():
        tag = aug_tag(variants, strength)
        aug_files[strength] = cache / f"train_poses_{tag}.npz"
        aug, score_in, score_out = augmented_pose_set(poses.subset(keep), variants, TRAIN_SEED, strength)
        save_pose_file(aug_files[strength], aug)
        print(f"augmented poses {tag}: {len(aug)} ({variants} per training pose, strength {strength:g}); prior score "
              f"mean / median {score_in.mean():.2f} / {np.median(score_in):.2f} -> {score_out.mean():.2f} / "
              f"{np.median(score_out):.2f}, {np.mean(score_out >= get_prior().hard_threshold):.0%} hard")
    photos = background_folder(cache)
    est = get_estimator("mediapipe")
    plan = [(f"chunk_s{TRAIN_SEED + k}_n{chunk}", TRAIN_SEED + k, pose_file, photos if k % 2 else None, None, None)
            for k in range(int(np.ceil(renders / chunk)))]
    for strength, aug_file in aug_files.items():
        first = aug_seed(strength)
        plan += [(f"chunk_{aug_tag(variants, strength)}_s{first + k}_n{chunk}", first + k, aug_file,
                  photos if k % 2 else None, AUG_FOV_DEG, AUG_FILL) for k in range(int(np.ceil(aug_renders / chunk)))]
    out: list[Path] = []
    pending: list[Path] = []
    for stem, seed, poses_at, backgrounds, fov, fill in plan:
        npzs = {m: cache / chunk_name(stem, m) for m in masks}
        missing = {m: npz for m, npz in npzs.items() if not npz.exists()}
        mine = {m: npz for m, npz in missing.items() if claim(npz)}
        if mine:
            t0, c0 = time.perf_counter(), time.process_time()
            make_chunk(est, cache / stem.split("_n")[0].replace("chunk", "train"), mine, seed, chunk, poses_at,
                       backgrounds, fov, fill)
            for m, npz in mine.items():
                with np.load(npz) as z:
                    print(f"  {npz.name}: {'photo' if backgrounds else 'procedural'} backgrounds, {m} masks, "
                          f"{len(z['world'])} of {int(z['renders'])} detected, {z['swapped'].mean():.1%} swapped", flush=True)
            print(f"  {stem}: {time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU", flush=True)
        if masks[0] in missing and masks[0] not in mine:
            pending.append(npzs[masks[0]])
        else:
            out.append(npzs[masks[0]])
    return [c for c in out if c.name.startswith("chunk_s")], [c for c in out if c.name.startswith("chunk_aug")], pending


def load_chunks(chunks: list[Path]) -> dict[str, np.ndarray]:
    """The cached arrays of several chunks, concatenated, with ``chunk`` (N,) the chunk index."""
    parts: dict[str, list] = {}
    for k, npz in enumerate(chunks):
        with np.load(npz) as z:
            for key in ("landmarks2d", "world", "true3d", "size", "swapped"):
                parts.setdefault(key, []).append(z[key])
            parts.setdefault("chunk", []).append(np.full(len(z["world"]), k))
    return {k: np.concatenate(v) for k, v in parts.items()}


def training_arrays(data: dict[str, np.ndarray], mirror: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (N, 198), targets (N, 17, 3), swapped (N,)) of cached detections (module docstring,
    step 4), with their mirrored copies appended when ``mirror``."""
    from diffusion_hpc.estimate.fit import COCO17_FLIP
    from diffusion_hpc.estimate.lifter import hip_centred, lifter_features, mirror_joints, mirror_landmarks

    swapped = data["swapped"].astype(bool)
    # the detector's labels: a swapped detection's target is the true body with left and right exchanged
    targets = hip_centred(np.where(swapped[:, None, None], data["true3d"][:, COCO17_FLIP], data["true3d"]))
    features = lifter_features(data["landmarks2d"], data["world"])
    if not mirror:
        return features, targets, swapped
    lm, world = mirror_landmarks(data["landmarks2d"], data["world"], data["size"][:, 1])
    return (np.concatenate([features, lifter_features(lm, world)]), np.concatenate([targets, mirror_joints(targets)]),
            np.concatenate([swapped, swapped]))


def limb_pa_mpjpe_mm(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N,) limb PA-MPJPE (bench_estimate's figure) in mm of (N, 17, 3) joints."""
    from bench_estimate import LIMBS, pa_mpjpe

    return np.array([pa_mpjpe(p[LIMBS], t[LIMBS]) * 1000 for p, t in zip(pred, true)])


def evaluate(lifter, features: np.ndarray, targets: np.ndarray, swapped: np.ndarray) -> dict[str, float]:
    """Validation figures: limb PA-MPJPE (mean / median mm) of the lifted joints and of the world
    landmarks' COCO-17 joints, and the swap logit's accuracy and recall of the detector's swaps."""
    import torch

    from diffusion_hpc.estimate.landmarks import COCO17_FROM_MEDIAPIPE
    from diffusion_hpc.estimate.lifter import WORLD_SLICE, hip_centred

    with torch.no_grad():
        joints, logit = lifter(torch.as_tensor(features))
    lifted = limb_pa_mpjpe_mm(joints.double().numpy(), targets)
    world = hip_centred(features[:, WORLD_SLICE].reshape(-1, 33, 3)[:, COCO17_FROM_MEDIAPIPE])
    raw = limb_pa_mpjpe_mm(world, targets)
    said = logit.numpy() > 0
    return {"lifted_mean_mm": float(lifted.mean()), "lifted_median_mm": float(np.median(lifted)),
            "world_mean_mm": float(raw.mean()), "world_median_mm": float(np.median(raw)),
            "swap_accuracy": float(np.mean(said == swapped)),
            "swap_recall": float(said[swapped].mean()) if swapped.any() else float("nan"),
            "swap_false_alarms": float(said[~swapped].mean()), "n": int(len(features))}


def validation_chunks(n: int) -> np.ndarray:
    """Indices of the chunks kept for validation: k % 12 in (6, 11), procedural and photo alike."""
    return np.array([k for k in range(n) if k % 12 in (6, 11)], np.int64)


def train(chunks: list[Path], aug_chunks: list[Path], args) -> None:
    """Train on all chunks but :func:`validation_chunks` of the built-in poses' chunks, plus every
    chunk of augmented poses; report on the validation chunks; then write the weights (module
    docstring)."""
    import torch

    from diffusion_hpc.estimate.lifter import default_lifter_path, save_lifter, train_lifter

    torch.set_num_threads(1)  # deterministic, and the machine is shared
    data = load_chunks(chunks + aug_chunks)
    val_chunks = validation_chunks(len(chunks))
    is_val = np.isin(data["chunk"], val_chunks)
    split = lambda sel: {k: v[sel] for k, v in data.items()}  # noqa: E731
    x, y, s = training_arrays(split(~is_val), mirror=True)
    is_aug = data["chunk"] >= len(chunks)
    print(f"training: {len(x)} examples ({(~is_val).sum()} renders, {is_aug.sum()} of augmented poses, + mirrored), "
          f"{s.mean():.1%} swapped; validation: {is_val.sum()} renders (chunks {val_chunks.tolist()})", flush=True)
    t0 = time.perf_counter()
    hyper = {"hidden": args.hidden, "depth": args.depth, "epochs": args.epochs, "seed": args.seed, "dropout": args.dropout,
             "noise": args.noise, "weight_decay": args.weight_decay, "w_aligned": args.w_aligned}
    lifter = train_lifter(x, y, s, **hyper, log_every=max(args.epochs // 10, 1))
    figures = evaluate(lifter, *training_arrays(split(is_val), mirror=False))
    print(f"trained in {time.perf_counter() - t0:.0f} s; validation: {figures}")
    record = {"data": {"renders": int(len(data["world"])), "chunks": [c.name for c in chunks + aug_chunks],
                       "train_seeds": [TRAIN_SEED, TRAIN_SEED + len(chunks) - 1],
                       "augmented": {"renders": int(is_aug.sum()), "variants_per_pose": args.variants,
                                     "strengths": args.aug_strength,
                                     "fov_deg": list(AUG_FOV_DEG), "fill": list(AUG_FILL)},
                       "held_out": f"poses of bench_estimate seeds {EVAL_SEEDS} (+7 over photos), n={args.holdout_n} each, "
                                   f"and the {args.n_hard} hardest built-in poses",
                       "poses": "built-in CMU motion-capture poses (mocap.cs.cmu.edu; NSF EIA-0196217) and the "
                                "pose prior's augmented variants of them"},
              "training": hyper | {"examples": int(len(x)), "mirrored": True, "masks": args.masks[0]},
              "validation": figures}
    out = save_lifter(args.out or default_lifter_path(), lifter, record)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--renders", type=int, default=6144, help="renders (rounded up to whole chunks; a sixth validates)")
    ap.add_argument("--aug-renders", type=int, default=12288,
                    help="renders of the pose prior's augmented variants of the training poses (0: none)")
    ap.add_argument("--variants", type=int, default=3, help="augmented variants per training pose")
    ap.add_argument("--aug-strength", type=float, nargs="+", default=[1.0],
                    help="augmentation strengths (prior.perturb's; 1: modes T and R's), --aug-renders each")
    ap.add_argument("--chunk", type=int, default=128, help="renders per dataset (one seed each)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/lifter_data"), help="folder for renders and npz caches")
    ap.add_argument("--holdout-n", type=int, default=32, help="renders per bench evaluation set whose poses are held out")
    ap.add_argument("--n-hard", type=int, default=48, help="the prior's hardest built-in poses held out")
    ap.add_argument("--masks", nargs="+", choices=sorted(MASKS), default=["true"],
                    help="how each render's person is read (step 3): true: its true mask; segmenter: the pipeline's "
                         "way (the segmenter's matching instance, the others grey). Trains on the first; the others' "
                         "npz are made in the same pass on the same renders (with --data-only, say)")
    ap.add_argument("--data-only", action="store_true", help="make the cached data, do not train")
    ap.add_argument("--out", type=Path, default=None, help="weights file (default: the package's lifter.safetensors)")
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--noise", type=float, default=0.1, help="feature noise while training, in standard deviations")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--w-aligned", type=float, default=1.0, help="weight of the rotation-aligned joint error")
    args = ap.parse_args()
    chunks, aug_chunks, pending = make_data(args.cache, args.renders, args.aug_renders, args.variants,
                                            args.aug_strength, args.chunk, args.holdout_n, args.n_hard, args.masks)
    if args.data_only:
        return
    if pending:  # training on part of the data would make other weights than these options make
        raise SystemExit(f"{len(pending)} training datasets are still being made by other processes "
                         f"({', '.join(p.name for p in pending[:3])}{', ...' if len(pending) > 3 else ''}): "
                         "run this again when they have finished, or end those processes")
    train(chunks, aug_chunks, args)


if __name__ == "__main__":
    main()
