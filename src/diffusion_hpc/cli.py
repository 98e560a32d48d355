"""The ``dhpc`` command line. Every command calls the same Python API a user would.

Errors in the user's input (bad file, bad value, missing model) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from diffusion_hpc import __version__
from diffusion_hpc.errors import DhpcError

EPILOG_GENERATE = """examples:
  dhpc generate --mode D --poses builtin -n 16 --out runs/demo
  dhpc backbone tiny --out tiny   # a tiny random backbone: checks an install (images are noise)
  dhpc generate --mode T --prompt "doing a backflip" --backbone DIR -k 3 -n 300 --hard-only --out runs/t
  dhpc generate --mode T --prompts actions.txt --backbone DIR --generator controlnet --controlnet DIR --out runs/t2
  dhpc generate --mode R --guides photos/ --backbone stabilityai/stable-diffusion-2-depth --min-agreement 0.5 --out runs/r
  dhpc generate --mode D --poses builtin --generator depth2img --backbone DIR --prompt "a photo of a gymnast" --out runs/d
  dhpc generate --mode D --poses my_poses.npz -n 1000 --out runs/gym --seed 3 --backgrounds photos/
  dhpc generate --config run.yaml --out runs/big --resume
"""


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 35,65), got {text!r}") from None
    return lo, hi


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(x) for x in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH (e.g. 512 or 384x512), got {text!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dhpc",
        description="Diffusion-HPC: labelled training data for 3D human mesh recovery "
        "(images of people in hard poses, each with its exact 3D body mesh).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser(
        "generate",
        help="generate a labelled dataset",
        description="Generate labelled samples (image, mask, depth, body parameters, 3D joints, 2D keypoints) "
        "into WebDataset shards. Every sample is reproducible from (--seed, its index).",
        epilog=EPILOG_GENERATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("--out", required=True, type=Path, help="dataset directory to create (or continue with --resume)")
    g.add_argument("--config", type=Path, help="YAML config file; flags given here override it")
    g.add_argument("--mode", choices=["T", "R", "D"],
                   help="T: from text prompts; R: from your real images (--guides); D: from body poses (default D)")
    g.add_argument("--prompt", help="T (R, D: optional): an action phrase put into the prompt templates "
                   "('doing a backflip'), or a full prompt (starts with a/an/the or holds a comma)")
    g.add_argument("--prompts", type=Path, help="text file: one prompt or action phrase per line (instead of --prompt)")
    g.add_argument("--guides", type=Path, help="R: folder of your real images of the domain (start images)")
    g.add_argument("--poses", help="D: 'builtin' (CMU mocap poses retargeted to Anny) or a pose file (.npz)")
    g.add_argument("-n", "--num-samples", dest="n", type=int, help="number of samples (default 16)")
    g.add_argument("-k", type=int, help="T, R: variants per guide, the estimate + k-1 augmented poses (default 3)")
    g.add_argument("--seed", type=int, help="run seed (default 0)")
    g.add_argument("--resume", action="store_true", help="continue a killed run in --out (same options)")
    g.add_argument("--generator", choices=["render", "depth2img", "controlnet"],
                   help="image generator: render (shaded-mesh baseline, default in mode D), depth2img "
                   "(SD-2-depth, default in T and R) or controlnet (ControlNet-depth)")
    g.add_argument("--backbone", help="diffusion backbone: local directory, or a hub id from the local cache (offline)")
    g.add_argument("--controlnet", help="ControlNet-depth model directory or cached hub id (--generator controlnet)")
    g.add_argument("--lora", help="LoRA weights of a domain-fine-tuned backbone (.safetensors file or folder)")
    g.add_argument("--lora-scale", type=float, help="LoRA strength (default 1; 0 = the plain backbone)")
    g.add_argument("--segmenter", help="mediapipe (default) or a transformers instance-segmentation checkpoint")
    g.add_argument("--preset", choices=["original", "default", "fast"],
                   help="sampler preset: original (paper: 50 steps), default (DPM++ 20 steps), fast (LCM backbones)")
    g.add_argument("--hard-only", action="store_true", default=None,
                   help="T, R: keep only guides whose pose-prior score is >= the hard threshold")
    g.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                   help="re-estimate the body in the final image and record pck_agreement / mask_iou "
                   "(default: on for diffusion generators)")
    g.add_argument("--min-agreement", type=float, help="drop samples whose pck_agreement is below this (0..1)")
    g.add_argument("--cycles", type=int, help="extra estimate -> regenerate cycles on the output image (default 0)")
    g.add_argument("--prior-path", type=Path, help="pose-prior weights (default: the shipped Anny prior)")
    g.add_argument("--body-model", choices=["anny", "smpl", "smplx"], help="body model (default anny)")
    g.add_argument("--smpl-path", type=Path, help="SMPL / SMPL-X model file or folder (for --body-model smpl|smplx)")
    g.add_argument("--image-size", type=_size, help="SIZE or HEIGHTxWIDTH in pixels (default 512)")
    g.add_argument("--batch-size", type=int, help="samples per batch (default 16)")
    g.add_argument("--shard-size", type=int, help="samples per shard (default 256)")
    g.add_argument("--renderer", choices=["auto", "gl", "torch"], help="rasteriser backend (default auto: GL, else PyTorch)")
    g.add_argument("--backgrounds", type=Path, help="folder of background images for the render baseline (default: procedural)")
    g.add_argument("--no-augment", action="store_true", help="no blur / noise / colour augmentation")
    g.add_argument("--fov", type=_range, metavar="LOW,HIGH", help="vertical field of view range, degrees")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    i = sub.add_parser("inspect", help="summarise a dataset and write its preview grid",
                       description="Print counts, failures by reason, timings and score histograms; write preview.png.")
    i.add_argument("dataset", type=Path, help="dataset directory")
    i.add_argument("--preview", type=Path, help="where to write the preview PNG (default DATASET/preview.png)")
    i.add_argument("--count", type=int, default=8, help="samples in the preview (default 8)")

    p = sub.add_parser("poses", help="pose files: import BVH mocap, show a pose file",
                       description="Tools for pose files (the input of --mode D).")
    psub = p.add_subparsers(dest="poses_command", metavar="ACTION")
    imp = psub.add_parser("import", help="retarget BVH files (CMU 31-joint skeleton) to an Anny pose file",
                          description="Parse BVH files, retarget every k-th frame to Anny, and write a pose file.")
    imp.add_argument("bvh", nargs="+", type=Path, help="BVH files")
    imp.add_argument("--out", required=True, type=Path, help="pose file to write (.npz)")
    imp.add_argument("--every", type=int, default=1, help="keep every k-th frame (default 1)")
    imp.add_argument("--max-frames", type=int, help="at most this many frames per file")
    show = psub.add_parser("show", help="print what a pose file holds")
    show.add_argument("file", help="pose file (.npz) or 'builtin'")

    est = sub.add_parser("estimate", help="fit body meshes to the people in images (MediaPipe + body-model fit)",
                         description="Detect the most prominent person per image (MediaPipe Pose), fit the body "
                         "model to its 2D and 3D landmarks, and write per image: ok/reason, body parameters "
                         "(camera frame), K, joints3d, keypoints2d, confidence, plus a preview with the mesh.")
    est.add_argument("--images", required=True, nargs="+", type=Path, help="image files or a folder")
    est.add_argument("--out", required=True, type=Path, help="results file (.npz)")
    est.add_argument("--body-model", choices=["anny", "smpl", "smplx"],
                     help="body model of the MediaPipe fit (default anny); a regressor's is its checkpoint's")
    est.add_argument("--smpl-path", type=Path, help="SMPL / SMPL-X model file or folder")
    est.add_argument("--preview", type=Path, help="folder for preview PNGs (default: next to --out)")
    est.add_argument("--batch-size", type=int, default=16, help="images fitted together (default 16)")
    est.add_argument("--no-prior", dest="prior", action="store_false",
                     help="regularise the fit with a plain L2 / joint-limit penalty instead of the default pose prior")
    est.add_argument("--estimator", choices=["mediapipe", "hmr", "spin"], default="mediapipe",
                     help="mediapipe: landmarks + body-model fit (default); hmr: a regressor from dhpc train "
                     "(--checkpoint RUN_DIR); spin: SPIN's SMPL model_checkpoint.pt (--checkpoint, --smpl-path)")
    est.add_argument("--checkpoint", type=Path, help="hmr / spin: the regressor checkpoint")
    est.add_argument("--mean-params", type=Path,
                     help="spin: smpl_mean_params.npz, when the checkpoint lacks the mean-parameter buffers")

    t = sub.add_parser("train", help="fine-tune an HMR regressor on synthetic (+ real) data",
                       description="Fine-tune an HMR regressor (ResNet-50 / ViT backbone from transformers, iterative\n"
                       "error-feedback head) on our synthetic shards mixed per sample with real benchmarks.\n"
                       "Runs on Lightning: --devices/--num-nodes/--strategy scale it out.",
                       epilog="real sources: spin:FILE.npz, skipose:ROOT_OR_labels.h5, smart:FILE_OR_DIR.json\n\n"
                       "validation (--val): the same forms (SkiPose: its test split) or a dataset folder; each\n"
                       "validation scores the regressor as dhpc evaluate --crop-size CROP would. It writes\n"
                       "  RUN/val.jsonl   one row per validation: step and metrics (also val/* in RUN/logs/*/metrics.csv)\n"
                       "  RUN/best/       the best regressor so far (lowest PA-MPJPE; highest PCK without 3D labels),\n"
                       "                  best/best.json says from which step\n"
                       "example:\n"
                       "  dhpc train --synthetic runs/d1 --real skipose:SkiPose --val skipose:SkiPose --val-every 1000 \\\n"
                       "      --out runs/hmr     # trains on SkiPose's train split, validates on its test split",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--synthetic", nargs="*", default=[], metavar="DIR", help="dataset folders from dhpc generate")
    t.add_argument("--real", nargs="*", default=[], metavar="SOURCE", help="real benchmark sources (see below)")
    t.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, logs, exported regressor)")
    t.add_argument("--checkpoint", help="initial weights (run folder, .safetensors or .ckpt); weights only")
    t.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoints/last.ckpt")
    t.add_argument("--max-steps", type=int, default=10000)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--real-ratio", type=float, default=0.5, help="share of real samples per batch (default 0.5)")
    t.add_argument("--backbone", default="resnet50", choices=["resnet50", "vit", "tiny"])
    t.add_argument("--pretrained", help="local transformers checkpoint folder for the backbone")
    t.add_argument("--body-model", default="anny", choices=["anny", "smpl", "smplx"])
    t.add_argument("--smpl-path", help="SMPL / SMPL-X model file or folder")
    t.add_argument("--crop-size", type=int, default=224)
    t.add_argument("--devices", default="1", help="devices per node (number or 'auto')")
    t.add_argument("--num-nodes", type=int, default=1)
    t.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    t.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    t.add_argument("--workers", type=int, default=2, help="data-loading workers per device")
    t.add_argument("--max-minutes", type=float, help="stop after this much training time (total over resumes)")
    t.add_argument("--val", metavar="SOURCE", help="held-out data scored during training: skipose:PATH, smart:PATH, "
                   "spin:PATH or a dataset folder (as dhpc evaluate --data)")
    t.add_argument("--val-every", type=int, metavar="N", help="validate every N steps and at the end (default 500, the checkpoint interval)")
    t.add_argument("--val-limit", type=int, metavar="N", help="validate on the first N samples of --val only")

    ev = sub.add_parser("evaluate", help="evaluate a regressor: MPJPE / PA-MPJPE / PCK under a benchmark protocol",
                        description="SkiPose: H36M-17, root-centred, joint 9 dropped, mm (test split). SMART: PCK at "
                        "0.1 x crop size over visible joints, averaged per image. Our datasets: H36M-17 "
                        "root-centred MPJPE / PA-MPJPE and PCK.")
    ev.add_argument("--checkpoint", required=True, help="exported regressor (a dhpc train run folder)")
    ev.add_argument("--data", required=True, help="skipose:PATH, smart:PATH, spin:PATH or a dataset folder")
    ev.add_argument("--out", type=Path, help="results JSON (default: print only)")
    ev.add_argument("--limit", type=int, help="evaluate the first N samples only")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--crop-size", type=int, default=224)
    ev.add_argument("--smpl-path", help="SMPL model file or folder, for SMPL regressors")

    bb = sub.add_parser("backbone", help="diffusion backbones: write a tiny random one for smoke tests",
                        description="Backbone tools. 'tiny' writes a tiny randomly initialised text-to-image + "
                        "depth-to-image + ControlNet-depth set (64x64, offline CLIP tokenizer) that --backbone accepts, "
                        "to check an install without a GPU. Its images are noise by design.")
    bbsub = bb.add_subparsers(dest="backbone_command", metavar="ACTION")
    tiny = bbsub.add_parser("tiny", help="write the tiny random backbone set")
    tiny.add_argument("--out", required=True, type=Path, help="folder to write")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--sdxl", action="store_true",
                      help="write a tiny SDXL text-to-image + SDXL ControlNet-depth set instead (two text encoders, "
                      "size/crop conditioning; no depth2img part: use --generator controlnet)")

    q = sub.add_parser("quality", help="FID / KID, human-only H-FID / H-KID and dataset statistics vs a real set",
                       description="Standard Inception-v3 FID and KID (clean-fid conventions: PIL bicubic resize to "
                       "299; KID unbiased, over subsets, with its std and the sample counts), the same on human-only "
                       "images (non-person pixels blacked out: dataset masks for generated data, the segmenter for "
                       "real images), and the manifest figures (prior scores, label agreement, drops, UNet cost). "
                       "Several --generated sets give one comparison table. Writes quality.json and quality.html.",
                       epilog="FID weights: pass --fid-weights FILE (pytorch-fid's pt_inception-2015-12-05-6726825d.pth), "
                       "or set DHPC_FID_WEIGHTS, or put the file in DHPC_CACHE_DIR/fid/. Nothing is downloaded.")
    q.add_argument("--real", required=True, help="a folder of real images or one of our datasets")
    q.add_argument("--generated", required=True, nargs="+", help="dataset folders to compare")
    q.add_argument("--out", required=True, type=Path, help="report folder")
    q.add_argument("--no-human-only", dest="human_only", action="store_false",
                   help="skip the human-only H-FID / H-KID (on by default)")
    q.add_argument("--fid-weights", help="Inception-v3 FID weights file")
    q.add_argument("--kid-subsets", type=int, default=100)
    q.add_argument("--kid-subset-size", type=int, default=1000)
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--limit", type=int, help="at most this many images per set")
    q.add_argument("--segmenter", default="mediapipe", help="person segmenter for real image folders")

    e = sub.add_parser("export", help="export a dataset for other training code (SPIN npz, COCO json)",
                       description="Write a dataset as a SPIN-style npz or a COCO keypoints json, with the images "
                       "in an images/ folder beside the output file. Crop cameras (focal 5000 at 224 px) are "
                       "computed here; the dataset keeps the full-image camera.")
    e.add_argument("dataset", type=Path, help="dataset directory")
    e.add_argument("--format", required=True, choices=["spin-npz", "coco-json"], dest="fmt")
    e.add_argument("--out", required=True, type=Path, help="output file (.npz or .json)")
    e.add_argument("--box-expand", type=float, default=1.2, help="person box = mask box x this (default 1.2)")

    pr = sub.add_parser("prior", help="pose priors: fit the Anny prior on your own poses",
                        description="Pose-prior tools. The default Anny prior ships in the package, fitted on "
                        "CMU mocap poses; refit it on your own corpus (e.g. AMASS or BVH imports).")
    prsub = pr.add_subparsers(dest="prior_command", metavar="ACTION")
    fit = prsub.add_parser("fit", help="fit the Anny pose prior on a pose file",
                           description="Fit the Anny pose prior (Gaussian in a PCA subspace of 6D joint rotations, "
                           "model chosen by held-out log-likelihood with folds split by subject) and write it "
                           "as a safetensors file.")
    fit.add_argument("--poses", required=True, help="'builtin' or an Anny pose file (.npz; see dhpc poses import)")
    fit.add_argument("--out", required=True, type=Path, help="prior file to write (.safetensors)")
    fit.add_argument("--seed", type=int, default=0)
    return parser


def _generate_config(args):
    from diffusion_hpc.config import GenerateConfig, build

    flat = {
        "mode": args.mode, "poses": args.poses, "n": args.n, "seed": args.seed, "generator": args.generator,
        "body_model": args.body_model, "smpl_path": args.smpl_path, "image_size": args.image_size,
        "batch_size": args.batch_size, "shard_size": args.shard_size, "renderer": args.renderer,
        "prompt": args.prompt, "prompts": args.prompts, "guides": args.guides, "k": args.k,
        "backbone": args.backbone, "controlnet": args.controlnet, "segmenter": args.segmenter,
        "lora": args.lora, "lora_scale": args.lora_scale, "preset": args.preset, "hard_only": args.hard_only,
        "verify": args.verify, "min_agreement": args.min_agreement, "cycles": args.cycles, "prior_path": args.prior_path,
    }  # fmt: skip
    flat = {k: v for k, v in flat.items() if v is not None}
    # a config file's values as written (not its mode-resolved defaults, which flags may change)
    base = GenerateConfig.from_yaml(args.config).model_dump(exclude_unset=True) if args.config else {}
    base.update(flat)
    if args.backgrounds is not None or args.no_augment:
        rb = dict(base.get("render_baseline") or {})
        if args.backgrounds is not None:
            rb["backgrounds"] = args.backgrounds
        if args.no_augment:
            rb["augment"] = False
        base["render_baseline"] = rb
    if args.fov is not None:
        base["camera"] = dict(base.get("camera") or {}, fov_deg=args.fov)
    return build(GenerateConfig, base, source="options")


def cmd_generate(args) -> int:
    from diffusion_hpc.pipeline.generate import generate

    config = _generate_config(args)
    result = generate(config, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"{result.accepted} samples accepted, {result.failed} failed, in {result.seconds:.1f} s -> {result.out}")
    for reason, count in sorted(result.failures.items(), key=lambda kv: -kv[1]):
        print(f"  failed: {count} x {reason}")
    if result.skipped_shards:
        print(f"(resumed: {result.skipped_shards} shards were already complete)")
    if result.preview:
        print(f"preview: {result.preview}")
    return 0


def cmd_inspect(args) -> int:
    from diffusion_hpc.data.inspect import summarize, write_preview

    print(summarize(args.dataset))
    print(f"preview: {write_preview(args.dataset, count=args.count, out=args.preview)}")
    return 0


def cmd_poses(args, parser) -> int:
    from diffusion_hpc import poses

    if args.poses_command == "import":
        result = poses.import_bvh([str(p) for p in args.bvh], str(args.out), every=args.every, max_frames=args.max_frames)
        print(f"{len(result)} poses from {len(args.bvh)} files -> {args.out}")
        return 0
    if args.poses_command == "show":
        pose_set = poses.builtin_poses() if args.file == "builtin" else poses.load_pose_file(args.file)
        print(f"{args.file}: {len(pose_set)} poses for body model {pose_set.body_model!r}, "
              f"body_pose {tuple(pose_set.body_pose.shape)}")
        return 0
    parser.parse_args(["poses", "--help"])
    return 2


def cmd_estimate(args) -> int:
    from diffusion_hpc.estimate.run import estimate_files

    prior = "default" if args.prior else None  # "default": the shipped Anny prior (fallback for SMPL)
    images = [str(p) for p in args.images]
    preview = args.preview if args.preview else args.out.with_suffix("").with_name(args.out.stem + "_preview")
    options: dict = {}
    if args.estimator != "mediapipe":
        if args.body_model is not None:
            raise DhpcError(f"--body-model {args.body_model}: --estimator {args.estimator} uses its checkpoint's body "
                            "model; leave --body-model out (pass --smpl-path for SMPL checkpoints)")
        if args.checkpoint is None:
            raise DhpcError(f"--estimator {args.estimator} needs --checkpoint PATH (the regressor's weights)")
        options = {"checkpoint": args.checkpoint}
        if args.estimator == "spin":
            options.update(smpl_path=args.smpl_path, mean_params=args.mean_params)
        else:
            options.update(model_path=args.smpl_path)
    arrays = estimate_files(images if len(images) > 1 else images[0], args.out, body_model=args.body_model or "anny",
                            preview_dir=preview, batch_size=args.batch_size, model_path=args.smpl_path, prior=prior,
                            estimator_name=args.estimator, estimator_options=options)
    print(f"{int(arrays['ok'].sum())} of {len(arrays['ok'])} images fitted -> {args.out}; previews in {preview}")
    return 0


def cmd_train(args) -> int:
    from diffusion_hpc.hmr.train import train

    if not args.synthetic and not args.real:
        raise DhpcError("dhpc train needs data: pass --synthetic DIR... and/or --real SOURCE...")
    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    train(args.synthetic, args.real, args.out, args.max_steps, args.batch_size, lr=args.lr, real_ratio=args.real_ratio,
          checkpoint=args.checkpoint, resume=args.resume, devices=devices, num_nodes=args.num_nodes,
          strategy=args.strategy, accelerator=args.accelerator, backbone=args.backbone, pretrained_path=args.pretrained,
          body_model=args.body_model, smpl_path=args.smpl_path, crop_size=args.crop_size, num_workers=args.workers,
          max_minutes=args.max_minutes, progress=True, val=args.val, val_every=args.val_every, val_limit=args.val_limit)
    print(f"run folder: {args.out} (regressor: {args.out / 'regressor.safetensors'})")
    if args.val is not None:
        from diffusion_hpc.hmr.validation import BEST_DIR, VAL_FILE, read_best

        best = read_best(args.out)
        if best is not None:
            print(f"validation: {args.out / VAL_FILE}; best: {args.out / BEST_DIR} "
                  f"(step {best['step']}, {best['metric']} {best['value']:.2f})")
    return 0


def cmd_evaluate(args) -> int:
    from diffusion_hpc.hmr.evaluate import evaluate, format_table

    result = evaluate(args.checkpoint, args.data, out=args.out, batch_size=args.batch_size, limit=args.limit,
                      crop_size=args.crop_size, smpl_path=args.smpl_path)
    print(format_table(result))
    if args.out:
        print(f"results: {args.out}")
    return 0


def cmd_backbone(args, parser) -> int:
    if args.backbone_command != "tiny":
        parser.parse_args(["backbone", "--help"])
        return 2
    from diffusion_hpc.generate.tiny import write_tiny_backbone

    path = write_tiny_backbone(args.out, seed=args.seed, sdxl=args.sdxl)
    kind = "tiny SDXL backbone" if args.sdxl else "tiny backbone"
    print(f"{kind} -> {path or args.out} (use --backbone {args.out})")
    return 0


def cmd_quality(args) -> int:
    from diffusion_hpc.eval.quality import quality

    result = quality(args.real, args.generated, args.out, human_only=args.human_only, weights=args.fid_weights,
                     kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, batch_size=args.batch_size,
                     limit=args.limit, segmenter=args.segmenter)
    print(f"report: {result['files']['html']}  figures: {result['files']['json']}")
    return 0


def cmd_export(args) -> int:
    from diffusion_hpc.data.export import export_dataset

    result = export_dataset(args.dataset, args.fmt, args.out, box_expand=args.box_expand)
    print(f"{result.count} samples -> {result.path} (images in {result.images})")
    return 0


def cmd_prior(args, parser) -> int:
    if args.prior_command != "fit":
        parser.parse_args(["prior", "--help"])
        return 2
    from diffusion_hpc.poses import builtin_poses, load_pose_file
    from diffusion_hpc.prior.fit import fit_prior, format_report

    poses = builtin_poses() if args.poses == "builtin" else load_pose_file(args.poses)
    if poses.body_model != "anny":
        raise DhpcError(f"{args.poses} holds {poses.body_model!r} poses; the prior fit takes Anny poses (for SMPL use VPoser)")
    result = fit_prior(poses, args.out, seed=args.seed, training_data=f"{args.poses}: {len(poses)} poses")
    print(format_report(result))
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # the ML libraries' own chatter (read when they are first imported)
        import os

        for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
            os.environ.setdefault(name, "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "poses":
            return cmd_poses(args, parser)
        if args.command == "estimate":
            return cmd_estimate(args)
        if args.command == "train":
            return cmd_train(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "backbone":
            return cmd_backbone(args, parser)
        if args.command == "quality":
            return cmd_quality(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "prior":
            return cmd_prior(args, parser)
    except DhpcError as exc:
        print(f"dhpc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dhpc: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
