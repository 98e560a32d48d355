"""The ``dhpc`` command line. Every command calls the same Python API a user would, with the same
config object (:mod:`diffusion_hpc.config`): a command's flags are its config's fields (flag
``--max-steps`` = field ``max_steps``), ``--config FILE`` loads the fields from YAML, flags given
win over the file, and every default and help text comes from the config's fields.

Errors in the user's input (bad file, bad value, missing model) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
import warnings
from pathlib import Path

from pydantic import BaseModel

from diffusion_hpc import __version__
from diffusion_hpc.config import (
    CameraConfig,
    CommandConfig,
    EstimateConfig,
    EvaluateConfig,
    ExportConfig,
    GenerateConfig,
    QualityConfig,
    RenderBaselineConfig,
    SamplerConfig,
    TrainConfig,
    build,
)
from diffusion_hpc.config.convert import ConvertConfig
from diffusion_hpc.config.cycle import CycleConfig
from diffusion_hpc.config.estimate import LANDMARK_VIEWS
from diffusion_hpc.errors import DhpcError
from diffusion_hpc.geometry.boxes import BOX_EXPAND
from diffusion_hpc.runtime.device import check_offload, resolve_placement

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


def _names(text: str) -> tuple[str, ...]:
    """``a,b`` -> ("a", "b") (a comma-separated list flag)."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


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


def _default_text(model: type[BaseModel], name: str) -> str:
    """`` (default: X)`` for a field with a default worth showing ("" for None, booleans, empty lists)."""
    info = model.model_fields[name]
    if info.is_required():
        return " (required)"
    value = info.default
    if value is None or isinstance(value, bool) or value == [] or value == {}:
        return ""
    shown = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    return f" (default: {shown})"


def _help(model: type[BaseModel], name: str, text: str | None = None) -> str:
    """A flag's help: ``text`` (default: the field's docstring) and the field's default, read from the model."""
    text = " ".join((text or model.model_fields[name].description or "").split())
    return (text + _default_text(model, name)).replace("%", "%%")


def _choices(model: type[BaseModel], name: str) -> list | None:
    """The values of a ``Literal`` (or ``Optional[Literal]``) field, else None."""
    annotation = model.model_fields[name].annotation
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is typing.Literal:
            return list(typing.get_args(candidate))
    return None


def _flag(parser: argparse.ArgumentParser, model: type[BaseModel], name: str, *flags: str, text: str | None = None,
          **kwargs) -> None:
    """The flag of ``model``'s field ``name`` (``--field-name`` unless ``flags`` are given): dest is the
    field, default None (= not given: the config file's value, else the field's default), help and
    choices from the field."""
    if kwargs.get("action") not in ("store_true", "store_false"):
        choices = _choices(model, name)
        if choices is not None:
            kwargs.setdefault("choices", choices)
    parser.add_argument(*(flags or ("--" + name.replace("_", "-"),)), dest=name, default=None,
                        help=_help(model, name, text), **kwargs)


def _config_flag(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"YAML file of options, named as the flags with _ for - (e.g. {example}); flags given "
                        "here override it")


def _given(args: argparse.Namespace, model: type[BaseModel]) -> dict:
    """The flags given on the command line (not None) that are fields of ``model``."""
    return {name: getattr(args, name) for name in model.model_fields if getattr(args, name, None) is not None}


def _load(model: type[CommandConfig], path: Path | None, flags: dict) -> CommandConfig:
    """``model`` from a config file (if any) with the flags given winning; one-line errors."""
    if path is not None:
        return model.from_yaml(path, **flags)
    return build(model, flags, source="options")


def _by_mode(name: str) -> str:
    """`` (default: D: x; T, R: y)`` for a GenerateConfig field its validator resolves by mode."""
    d = getattr(GenerateConfig(), name)
    guided = getattr(GenerateConfig(mode="T", prompt="p", backbone="b"), name)
    value = (lambda v: str(v).lower() if isinstance(v, bool) else str(v))
    return f" (default: D: {value(d)}; T, R: {value(guided)})"


def _by_preset(name: str) -> str:
    """`` (default: the preset's, ...)`` for a sampler field the preset fills in."""
    sampler = SamplerConfig()
    return f" (default: the preset's; preset {sampler.preset}: {getattr(sampler, name)})"


def _add_generate(sub) -> None:
    G = GenerateConfig
    g = sub.add_parser(
        "generate",
        help="generate a labelled dataset",
        description="Generate labelled samples (image, mask, depth, body parameters, 3D joints, 2D keypoints) "
        "into WebDataset shards. Every sample is reproducible from (--seed, its index).",
        epilog=EPILOG_GENERATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("--out", required=True, type=Path, help="dataset directory to create (or continue with --resume)")
    _config_flag(g, "n: 1000")
    _flag(g, G, "mode", text="T: from text prompts; R: from your real images (--guides); D: from body poses")
    _flag(g, G, "prompt", text="T (R, D: optional): an action phrase put into the prompt templates "
          "('doing a backflip'), or a full prompt (starts with a/an/the or holds a comma)")
    _flag(g, G, "prompts", type=Path, metavar="FILE", text="text file: one prompt or action phrase per line (instead of --prompt)")
    _flag(g, G, "guides", type=Path, metavar="DIR", text="R: folder of your real images of the domain (start images)")
    _flag(g, G, "poses", text="D: 'builtin' (CMU mocap poses retargeted to Anny), 'builtin-hard' (those the prior calls hard) or a pose file (.npz)")
    _flag(g, G, "people", metavar="MIN-MAX", text="people per image, N or MIN-MAX. D: 2-4: each sample draws its "
          "count; they stand on one ground plane without interpenetrating, the camera frames the group (default 1). "
          "T, R: every person found in a start image gets a label, the largest MAX; fewer than MIN rejects the "
          "image (default 1-16)")
    _flag(g, G, "min_person_height", type=float, metavar="F", text="T, R: a person must span this share of the "
          "start image's height to get a label; smaller ones are regenerated without depth")
    _flag(g, G, "n", "-n", "--num-samples", type=int, text="number of samples")
    _flag(g, G, "k", "-k", type=int, text="T, R: variants per guide, the estimate + k-1 augmented poses" + _by_mode("k"))
    _flag(g, G, "seed", type=int, text="run seed")
    g.add_argument("--resume", action="store_true", help="continue a killed run in --out (same options)")
    _flag(g, G, "generator", text="image generator: render (shaded-mesh baseline), depth2img (SD-2-depth) or "
          "controlnet (ControlNet-depth)" + _by_mode("generator"))
    _flag(g, G, "backbone", metavar="PATH_OR_ID", text="diffusion backbone: local directory, or a hub id from the local cache (offline)")
    _flag(g, G, "controlnet", metavar="PATH_OR_ID", text="ControlNet-depth model directory or cached hub id (--generator controlnet)")
    _flag(g, G, "lora", metavar="PATH", text="LoRA weights of a domain-fine-tuned backbone (.safetensors file or folder)")
    _flag(g, G, "lora_scale", type=float, metavar="S", text="LoRA strength (0 = the plain backbone)")
    _flag(g, G, "segmenter", metavar="NAME", text="mediapipe or a transformers instance-segmentation checkpoint")
    _flag(g, G, "estimator", text="mesh estimator of the start images (T, R), --verify and --cycles: mediapipe "
          "(landmarks + body fit; default), hmr (a dhpc train run), spin (SPIN's model_checkpoint.pt; SMPL) or hmr2 "
          "(a 4D-Humans HMR 2.0 checkpoint; SMPL)")
    _flag(g, G, "estimator_checkpoint", type=Path, metavar="PATH", text="--estimator hmr|spin|hmr2: the regressor's "
          "weights (a dhpc train run folder; SPIN's model_checkpoint.pt; a 4D-Humans .ckpt)")
    _flag(g, G, "lifter", metavar="on|off|FILE", text="the MediaPipe fit's 3D target: on (the shipped learned lifter "
          "of MediaPipe's landmarks; default), off (MediaPipe's world landmarks) or a scripts/train_lifter.py weights file")
    _flag(g, G, "compile_fit", action=argparse.BooleanOptionalAction)
    _flag(g, G, "landmark_views", nargs="+", choices=LANDMARK_VIEWS, metavar="VIEW")
    s = g.add_argument_group("diffusion sampler (a preset, then any value given here overrides it)")
    S = SamplerConfig
    _flag(s, S, "preset", text="original (the paper: DDIM, 50 steps, guidance 7.5), default (DPM++ 2M, 20 steps), "
          "fast (LCM / TCD / Hyper-SD backbones or LoRAs: 4 steps, guidance off), turbo (SD-/SDXL-Turbo: 1 step, guidance 0)")
    _flag(s, S, "scheduler", text="scheduler of the start image and the regeneration" + _by_preset("scheduler"))
    _flag(s, S, "txt2img_steps", type=int, metavar="N",
          text="denoising steps of the start image (mode T)" + _by_preset("txt2img_steps"))
    _flag(s, S, "steps", type=int, metavar="N", text="nominal steps of the regeneration; round(strength x steps) run "
          "on a start image" + _by_preset("steps"))
    _flag(s, S, "strength", type=float, metavar="S", text="SDEdit noise strength of the regeneration, 0..1" + _by_preset("strength"))
    _flag(s, S, "guidance", type=float, metavar="G", text="classifier-free guidance scale; <= 1: off (one UNet evaluation per step)"
          + _by_preset("guidance"))
    _flag(s, S, "controlnet_scale", type=float, metavar="S", text="ControlNet conditioning scale (--generator controlnet)")
    _flag(s, S, "blur_prob", type=float, metavar="P", text="probability of a Gaussian blur (radius 1-2.5 px) of the regenerated "
          "image (diffusion generators)")
    _flag(g, G, "hard_only", action="store_true",
          text="T, R: keep only guides whose pose-prior score is >= the hard threshold")
    _flag(g, G, "verify", action=argparse.BooleanOptionalAction, text="re-estimate the body in the final image and "
          "record pck_agreement / mask_iou" + _by_mode("verify"))
    _flag(g, G, "verify_by", text="what --verify reads each person's 2D keypoints from: label-box (MediaPipe's "
          "landmark model alone on the region the label's joints give, without its person detector; default with "
          "--estimator mediapipe), landmarks (the MediaPipe detector alone on the whole image, without the body "
          "fit; a third dearer; the default of datasets made before label-box, which a --resume keeps), estimate "
          "(the estimator's whole estimate: the MediaPipe fit, or a regressor's body; the only choice with a "
          "regressor) or keypoint-model (a top-down keypoint model, --keypoint-model, on the box of each label's "
          "silhouette; any estimator)")
    _flag(g, G, "keypoint_model", metavar="DIR|HUB_ID", text="--verify-by keypoint-model: a transformers top-down "
          "COCO-17 keypoint checkpoint (e.g. a ViTPose COCO model), a local folder or a hub id in the local Hugging "
          "Face cache; runs on --device in --dtype")
    _flag(g, G, "landmark_runtime", text="how the MediaPipe estimator runs Pose's person detector and landmark model "
          "(the start images' whole-image pass and mask readings, --verify-by label-box): mediapipe (its own graph, "
          "an image at a time on the CPU) or torch (the same weights as torch operations, a batch at once on --device "
          "in --dtype); default torch on a GPU, else mediapipe")
    _flag(g, G, "min_agreement", type=float, metavar="X", text="drop samples whose pck_agreement is below this (0..1)")
    _flag(g, G, "cycles", type=int, metavar="N", text="extra estimate -> regenerate cycles on the output image")
    _flag(g, G, "prior_path", type=Path, metavar="FILE", text="pose-prior weights (default: the shipped Anny prior)")
    _flag(g, G, "body_model", text="body model")
    _flag(g, G, "smpl_path", type=Path, metavar="PATH", text="SMPL / SMPL-X model file or folder (for --body-model smpl|smplx)")
    _flag(g, G, "label_models", type=_names, metavar="M1,M2", text="body models to label each sample with, "
          "e.g. anny,smpl: the run's own and each other one fitted to the sample's body (see dhpc convert)")
    _flag(g, G, "image_size", type=_size, metavar="SIZE", text="SIZE or HEIGHTxWIDTH in pixels")
    _flag(g, G, "batch_size", type=int, metavar="N", text="samples per batch")
    _flag(g, G, "estimate_batch", type=int, metavar="N", text="T, R: start images segmented and fitted in one call "
          "(whole batches' start images; a fit costs mostly per call, so larger calls cost less CPU per sample)")
    _flag(g, G, "shard_size", type=int, metavar="N", text="samples per shard (T, R: a multiple of -k)"
          + _by_mode("shard_size"))
    _flag(g, G, "renderer", text="rasteriser backend (auto: GL, else PyTorch)")
    _flag(g, G, "device", metavar="auto|cpu|cuda[:N]|mps")
    _flag(g, G, "dtype")
    _flag(g, G, "offload")
    _flag(g, G, "vae_slicing", action="store_true")
    _flag(g, G, "vae_tiling", action="store_true")
    _flag(g, RenderBaselineConfig, "backgrounds", type=Path, metavar="DIR",
          text="folder of background images for the render baseline (default: procedural)")
    _flag(g, RenderBaselineConfig, "augment", "--no-augment", action="store_false",
          text="no blur / noise / colour augmentation of the render baseline")
    _flag(g, CameraConfig, "fov_deg", "--fov", type=_range, metavar="LOW,HIGH", text="vertical field of view range, degrees")
    e = g.add_argument_group("scale (how the run is spread; the dataset is the same with any of these)")
    _flag(e, G, "engine", text="local: shards one after another in this process; ray: shards spread over Ray "
          "workers, each loading the models once")
    _flag(e, G, "ray_address", metavar="auto|HOST:PORT", text="--engine ray: the Ray cluster to join "
          "(default: start Ray on this machine)")
    _flag(e, G, "workers", type=int, metavar="N", text="--engine ray: worker processes (default: the cluster's "
          "CPUs, or its GPUs / --gpus-per-worker)")
    _flag(e, G, "gpus_per_worker", type=float, metavar="G", text="--engine ray: GPUs per worker (0.5: two workers share one)")
    _flag(e, G, "part", metavar="I/N", text="make only part I of N (shards s with s % N == I-1) into --out, for "
          "job arrays; join the parts with dhpc merge")
    _flag(e, G, "overlap", action=argparse.BooleanOptionalAction, text="make the next batch's start images, masks, "
          "estimates and poses on a worker thread while the current batch denoises (default: on when the diffusion "
          "models run on a GPU, off on the CPU)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_estimate(sub) -> None:
    E = EstimateConfig
    est = sub.add_parser("estimate", help="fit body meshes to the people in images (MediaPipe + body-model fit)",
                         description="Detect the most prominent person per image (MediaPipe Pose), fit the body "
                         "model to its 2D and 3D landmarks, kept on the segmenter's person mask, and write per "
                         "image: ok/reason, body parameters (camera frame), K, joints3d, keypoints2d, confidence, "
                         "plus a preview with the mesh.")
    _flag(est, E, "images", nargs="+", type=Path, metavar="PATH")
    _flag(est, E, "out", type=Path, metavar="FILE")
    _config_flag(est, "batch_size: 8")
    _flag(est, E, "estimator")
    _flag(est, E, "checkpoint", type=Path, metavar="PATH")
    _flag(est, E, "mean_params", type=Path, metavar="FILE")
    _flag(est, E, "body_model")
    _flag(est, E, "smpl_path", type=Path, metavar="PATH")
    _flag(est, E, "preview", type=Path, metavar="DIR")
    _flag(est, E, "batch_size", type=int, metavar="N")
    _flag(est, E, "prior", "--no-prior", action="store_false",
          text="mediapipe: regularise the fit with a plain L2 / joint-limit penalty instead of the pose prior")
    _flag(est, E, "masks", "--no-masks", action="store_false",
          text="mediapipe: fit to the landmarks alone, without the segmenter's person mask")
    _flag(est, E, "segmenter", metavar="mediapipe|mediapipe:pose|DIR")
    _flag(est, E, "lifter", metavar="on|off|FILE")
    _flag(est, E, "compile_fit", action="store_true")
    _flag(est, E, "landmark_runtime")
    _flag(est, E, "landmark_views", nargs="+", choices=LANDMARK_VIEWS, metavar="VIEW")
    _flag(est, E, "device", metavar="auto|cpu|cuda[:N]|mps")
    _flag(est, E, "dtype")


def _add_train(sub) -> None:
    T = TrainConfig
    t = sub.add_parser("train", help="fine-tune an HMR regressor on synthetic (+ real) data",
                       description="Fine-tune an HMR regressor (ResNet-50 / ViT backbone from transformers, iterative\n"
                       "error-feedback head) on our synthetic shards mixed per sample with real benchmarks.\n"
                       "Runs on Lightning: --devices/--num-nodes/--strategy scale it out. The run folder keeps\n"
                       "the config as OUT/train.yaml; --resume continues with it (budget, hardware, logging and\n"
                       "validation may change).",
                       epilog="real sources: spin:FILE.npz, skipose:ROOT_OR_labels.h5, smart:FILE_OR_DIR.json\n\n"
                       "validation (--val): the same forms (SkiPose: its test split) or a dataset folder; each\n"
                       "validation scores the regressor as dhpc evaluate --crop-size CROP would. It writes\n"
                       "  RUN/val.jsonl   one row per validation: step and metrics (also val/* in RUN/logs/*/metrics.csv)\n"
                       "  RUN/best/       the best regressor so far (lowest PA-MPJPE; highest PCK without 3D labels),\n"
                       "                  best/best.json says from which step\n"
                       "examples:\n"
                       "  dhpc train --synthetic runs/d1 --real skipose:SkiPose --val skipose:SkiPose --val-every 1000 \\\n"
                       "      --out runs/hmr     # trains on SkiPose's train split, validates on its test split\n"
                       "  dhpc train --config hmr.yaml --out runs/hmr2   # options from YAML (field names), flags win",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _flag(t, T, "synthetic", nargs="*", type=Path, metavar="DIR")
    _flag(t, T, "real", nargs="*", metavar="SOURCE", text="real benchmark sources (see below), mixed in per sample")
    _flag(t, T, "out", type=Path, metavar="RUN")
    _config_flag(t, "max_steps: 5000")
    _flag(t, T, "init", metavar="KIND:PATH")
    _flag(t, T, "losses")
    _flag(t, T, "checkpoint", type=Path, metavar="PATH")
    _flag(t, T, "resume", action="store_true")
    _flag(t, T, "max_steps", type=int, metavar="N")
    _flag(t, T, "max_minutes", type=float, metavar="M")
    _flag(t, T, "batch_size", type=int, metavar="N")
    _flag(t, T, "lr", type=float)
    _flag(t, T, "real_ratio", type=float, metavar="R")
    _flag(t, T, "backbone")
    _flag(t, T, "pretrained", type=Path, metavar="DIR")
    _flag(t, T, "body_model")
    _flag(t, T, "smpl_path", type=Path, metavar="PATH")
    _flag(t, T, "crop_size", type=int, metavar="PX")
    _flag(t, T, "min_visible_keypoints", type=int, metavar="N")
    _flag(t, T, "min_visible_fraction", type=float, metavar="F")
    _flag(t, T, "augment", "--no-augment", action="store_false",
          text="no rotation / scale / colour / flip augmentation of the crops")
    _flag(t, T, "seed", type=int)
    _flag(t, T, "devices", metavar="N|auto")
    _flag(t, T, "num_nodes", type=int, metavar="N")
    _flag(t, T, "strategy", metavar="NAME")
    _flag(t, T, "accelerator", metavar="NAME")
    _flag(t, T, "workers", type=int, metavar="N")
    _flag(t, T, "checkpoint_every", type=int, metavar="N")
    _flag(t, T, "log_every", type=int, metavar="N")
    _flag(t, T, "val", metavar="SOURCE")
    _flag(t, T, "val_every", type=int, metavar="N", text="validate every N steps and at the end "
          f"(default: --checkpoint-every, {T.model_fields['checkpoint_every'].default})")
    _flag(t, T, "val_limit", type=int, metavar="N")
    _flag(t, T, "h36m_regressor", type=Path, metavar="FILE.npy")


def _add_evaluate(sub) -> None:
    V = EvaluateConfig
    ev = sub.add_parser("evaluate", help="evaluate a regressor: MPJPE / PA-MPJPE / PCK under a benchmark protocol",
                        description="SkiPose: H36M-17, root-centred, joint 9 dropped, mm (test split). SMART: PCK at "
                        "0.1 x crop size over visible joints, averaged per image. Our datasets: H36M-17 "
                        "root-centred MPJPE / PA-MPJPE and PCK. The results JSON (--out) holds the config too.")
    _flag(ev, V, "checkpoint", metavar="RUN|spin:FILE|hmr2:FILE")
    _flag(ev, V, "data", metavar="SOURCE")
    _flag(ev, V, "out", type=Path, metavar="FILE")
    _config_flag(ev, "crop_size: 224")
    _flag(ev, V, "limit", type=int, metavar="N")
    _flag(ev, V, "batch_size", type=int, metavar="N")
    _flag(ev, V, "crop_size", type=int, metavar="PX")
    _flag(ev, V, "smpl_path", type=Path, metavar="PATH")
    _flag(ev, V, "h36m_regressor", type=Path, metavar="FILE.npy")
    _flag(ev, V, "device", metavar="auto|cpu|cuda[:N]|mps")
    _flag(ev, V, "dtype")


def _add_quality(sub) -> None:
    Q = QualityConfig
    q = sub.add_parser("quality", help="FID / KID, human-only H-FID / H-KID and dataset statistics vs a real set",
                       description="Standard Inception-v3 FID and KID (clean-fid conventions: PIL bicubic resize to "
                       "299; KID unbiased, over subsets, with its std and the sample counts), the same on human-only "
                       "images (non-person pixels blacked out: dataset masks for generated data, the segmenter for "
                       "real images), and the manifest figures (prior scores, label agreement, drops, UNet cost). "
                       "Several --generated sets give one comparison table. Writes quality.json and quality.html.",
                       epilog="FID weights: pass --fid-weights FILE (pytorch-fid's pt_inception-2015-12-05-6726825d.pth), "
                       "or set DHPC_FID_WEIGHTS, or put the file in DHPC_CACHE_DIR/fid/. Nothing is downloaded.")
    _flag(q, Q, "real", metavar="SOURCE")
    _flag(q, Q, "generated", nargs="+", metavar="DIR")
    _flag(q, Q, "out", type=Path, metavar="DIR")
    _config_flag(q, "kid_subsets: 50")
    _flag(q, Q, "human_only", "--no-human-only", action="store_false",
          text="skip the human-only H-FID / H-KID (on by default)")
    _flag(q, Q, "fid_weights", type=Path, metavar="FILE")
    _flag(q, Q, "kid_subsets", type=int, metavar="N")
    _flag(q, Q, "kid_subset_size", type=int, metavar="N")
    _flag(q, Q, "batch_size", type=int, metavar="N")
    _flag(q, Q, "limit", type=int, metavar="N")
    _flag(q, Q, "segmenter", metavar="NAME")
    _flag(q, Q, "hard_threshold", type=float, metavar="SCORE")
    _flag(q, Q, "device", metavar="auto|cpu|cuda[:N]|mps")
    _flag(q, Q, "dtype")


def _add_cycle(sub) -> None:
    C = CycleConfig
    c = sub.add_parser("cycle", help="the paper's loop: generate -> fine-tune -> evaluate, N rounds",
                       description="N rounds of: generate (mode T or R) with the current mesh estimator, fine-tune "
                       "the regressor on the real data and every round's synthetic data, evaluate it on a validation "
                       "source. Round 1 estimates with --estimator (MediaPipe by default); each later round with the "
                       "regressor the round before trained. Each round draws fresh noise. A killed loop continues with "
                       "--resume: finished steps are kept, a killed step resumes its own run. Writes OUT/table.md and "
                       "OUT/table.json (per round: samples, UNet evaluations, metrics before -> after).",
                       epilog="loop file (YAML):\n"
                       "  out: runs/loop\n  rounds: 2\n  val: skipose:SkiPose\n"
                       "  generate: {mode: R, guides: photos/, backbone: DIR, n: 1000}\n"
                       "  train: {real: [skipose:SkiPose], max_steps: 2000, checkpoint: runs/hmr}\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_flag(c, "rounds: 3")
    _flag(c, C, "out", type=Path, metavar="DIR")
    _flag(c, C, "rounds", type=int, metavar="N")
    _flag(c, C, "seed", type=int)
    _flag(c, C, "val", metavar="SOURCE")
    _flag(c, C, "val_limit", type=int, metavar="N")
    _flag(c, C, "estimator")
    _flag(c, C, "estimator_checkpoint", type=Path, metavar="PATH")
    _flag(c, C, "resume", action="store_true")
    c.add_argument("--no-progress", action="store_true", help="no progress bars nor step lines (the table is printed)")


def _add_export(sub) -> None:
    X = ExportConfig
    e = sub.add_parser("export", help="export a dataset for other training code (SPIN / BEDLAM npz, "
                       "4D-Humans shards, COCO json)",
                       description="Write a dataset, one row per person, as a SPIN-style npz (SPIN and loaders "
                       "built on its dataset), a BEDLAM-style npz (CameraHMR, BEDLAM-CLIFF's SMPL trainer), "
                       "4D-Humans WebDataset shards (HMR 2.0, TokenHMR) or a COCO keypoints json; images go to an "
                       "images/ folder beside the output file (into the shards for 4dhumans-wds). SMPL parameters "
                       "come from an SMPL dataset or from converted labels; crop cameras (focal 5000 at 224 px) are "
                       "computed here.")
    e.add_argument("dataset", nargs="?", type=Path, default=None, help=_help(X, "dataset"))
    _flag(e, X, "format")
    _flag(e, X, "out", type=Path, metavar="FILE")
    _flag(e, X, "label_model")
    _flag(e, X, "shard_size", type=int, metavar="N")
    _config_flag(e, "box_expand: 1.3")
    _flag(e, X, "box_expand", type=float, metavar="X", text="person box = the mask's bounding box x this "
          f"(default: {BOX_EXPAND}, the expansion of every person box in the project)")


def _add_convert(sub) -> None:
    V = ConvertConfig
    c = sub.add_parser("convert", help="label a dataset's bodies with SMPL / SMPL-X (fitted to each body)",
                       description="Fit a second body model (SMPL, SMPL-X; or Anny for an SMPL dataset) to every "
                       "sample's body: pose, shape and translation in the camera frame, by its surface and shared "
                       "joints (no vertex correspondence). The parameters, the model's joints and the fit's "
                       "quality (surface_mm, joints_mm, flagged) are stored beside the sample's own parameters, "
                       "shard by shard (atomic; rerun to resume); the reader returns them as sample['labels'].")
    c.add_argument("dataset", nargs="?", type=Path, default=None, help=_help(V, "dataset"))
    _flag(c, V, "to")
    _flag(c, V, "smpl_path", type=Path, metavar="PATH")
    _flag(c, V, "prior_path", type=Path, metavar="PATH")
    _flag(c, V, "batch_size", type=int, metavar="N")
    _flag(c, V, "device")
    _flag(c, V, "dtype")
    _config_flag(c, "batch_size: 32")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dhpc",
        description="Diffusion-HPC: labelled training data for 3D human mesh recovery "
        "(images of people in hard poses, each with its exact 3D body mesh).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_generate(sub)

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
    show.add_argument("file", help="pose file (.npz), 'builtin' or 'builtin-hard'")


    _add_estimate(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_cycle(sub)

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


    _add_quality(sub)
    _add_export(sub)
    _add_convert(sub)

    m = sub.add_parser("merge", help="join the part folders of a run (dhpc generate --part I/N) into one dataset",
                       description="Join the folders of dhpc generate --part 1/N .. N/N into the dataset the "
                       "single run makes (same shard files, manifest and config.yaml; shards hard-linked, or "
                       "copied across file systems; the folder appears complete or not at all). Refuses parts "
                       "of different configs, a shard in two parts, and any missing shard (naming them).")
    m.add_argument("parts", nargs="+", type=Path, metavar="PART_DIR", help="part folders")
    m.add_argument("--out", required=True, type=Path, help="dataset folder to create (new or empty)")

    pr = sub.add_parser("prior", help="pose priors: fit the Anny prior on your own poses",
                        description="Pose-prior tools. The default Anny prior ships in the package, fitted on "
                        "CMU mocap poses; refit it on your own corpus (e.g. AMASS or BVH imports).")
    prsub = pr.add_subparsers(dest="prior_command", metavar="ACTION")
    fit = prsub.add_parser("fit", help="fit the Anny pose prior on a pose file",
                           description="Fit the Anny pose prior (Gaussian in a PCA subspace of 6D joint rotations, "
                           "model chosen by held-out log-likelihood with folds split by subject) and write it "
                           "as a safetensors file.")
    fit.add_argument("--poses", required=True, help="'builtin', 'builtin-hard' or an Anny pose file (.npz; see dhpc poses import)")
    fit.add_argument("--out", required=True, type=Path, help="prior file to write (.safetensors)")
    fit.add_argument("--seed", type=int, default=0)
    return parser


def generate_config(args: argparse.Namespace) -> GenerateConfig:
    """The :class:`GenerateConfig` of ``dhpc generate``'s flags (and ``--config FILE``)."""
    flags = _given(args, GenerateConfig)
    for key, model in (("sampler", SamplerConfig), ("camera", CameraConfig), ("render_baseline", RenderBaselineConfig)):
        block = _given(args, model)
        if block:
            flags[key] = block
    return _load(GenerateConfig, args.config, flags)


#: the config of each command that has one (generate's holds nested blocks: :func:`generate_config`)
CONFIGS: dict[str, type[CommandConfig]] = {
    "generate": GenerateConfig, "train": TrainConfig, "evaluate": EvaluateConfig, "estimate": EstimateConfig,
    "quality": QualityConfig, "export": ExportConfig, "cycle": CycleConfig, "convert": ConvertConfig,
}  # fmt: skip


def command_config(args: argparse.Namespace) -> CommandConfig:
    """The config a command runs with: ``--config FILE`` (if given) updated with the flags given.

    ``command_config(build_parser().parse_args(argv))`` is exactly what ``dhpc ARGV`` would run.
    """
    if args.command == "generate":
        return generate_config(args)
    model = CONFIGS[args.command]
    return _load(model, args.config, _given(args, model))


def cmd_generate(args) -> int:
    config = generate_config(args)
    if config.ray_address is None:  # models on this machine: an unavailable device fails now, before any loads
        # (a Ray cluster's workers check theirs as they start)
        check_offload(config.offload, resolve_placement(config.device, config.dtype).device)
    from diffusion_hpc.engine import generate

    result = generate(config, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"{result.accepted} samples accepted, {result.failed} failed, in {result.seconds:.1f} s -> {result.out}")
    for reason, count in sorted(result.failures.items(), key=lambda kv: -kv[1]):
        print(f"  failed: {count} x {reason}")
    if result.skipped_shards:
        print(f"(resumed: {result.skipped_shards} shards were already complete)")
    if result.preview:
        print(f"preview: {result.preview}")
    return 0


def cmd_merge(args) -> int:
    from diffusion_hpc.data.merge import merge

    result = merge(args.parts, args.out)
    print(f"{len(args.parts)} parts merged: {result.shards} shards, {result.accepted} samples accepted, "
          f"{result.failed} failed -> {result.out} ({result.linked} files hard-linked, {result.copied} copied)")
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
        pose_set = poses.load_pose_set(args.file)
        print(f"{args.file}: {len(pose_set)} poses for body model {pose_set.body_model!r}, "
              f"body_pose {tuple(pose_set.body_pose.shape)}")
        return 0
    parser.parse_args(["poses", "--help"])
    return 2


def cmd_estimate(args) -> int:
    from diffusion_hpc.estimate.run import estimate

    config = command_config(args)
    arrays = estimate(config)
    print(f"{int(arrays['ok'].sum())} of {len(arrays['ok'])} images fitted -> {config.out}; "
          f"previews in {config.preview_dir}")
    return 0


def cmd_train(args) -> int:
    from diffusion_hpc.hmr.train import train
    from diffusion_hpc.hmr.validation import BEST_DIR, VAL_FILE, read_best

    config = command_config(args)
    train(config, progress=True)
    out = config.out
    print(f"run folder: {out} (regressor: {out / 'regressor.safetensors'}, config: {out / 'train.yaml'})")
    if config.val is not None:
        best = read_best(out)
        if best is not None:
            print(f"validation: {out / VAL_FILE}; best: {out / BEST_DIR} "
                  f"(step {best['step']}, {best['metric']} {best['value']:.2f})")
    return 0


def cmd_evaluate(args) -> int:
    from diffusion_hpc.hmr.evaluate import evaluate, format_table

    config = command_config(args)
    result = evaluate(config)
    print(format_table(result))
    if config.out:
        print(f"results: {config.out}")
    return 0


def cmd_cycle(args) -> int:
    from diffusion_hpc.engine.cycle import TABLE_MD, cycle

    config = command_config(args)
    result = cycle(config, progress=not args.no_progress)
    print(result.table)
    print(f"loop folder: {result.out} (table: {result.out / TABLE_MD})")
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

    result = quality(command_config(args))
    print(f"report: {result['files']['html']}  figures: {result['files']['json']}")
    return 0


def cmd_export(args) -> int:
    from diffusion_hpc.data.export import export_dataset

    result = export_dataset(command_config(args))
    skipped = f"; {result.skipped} persons without a usable SMPL label left out" if result.skipped else ""
    print(f"{result.count} person rows ({result.format}) -> {result.path} (images in {result.images}){skipped}")
    return 0


def cmd_convert(args) -> int:
    from diffusion_hpc.data.convert import convert_dataset

    config = command_config(args)
    result = convert_dataset(config, progress=True)
    print(f"{result.converted} persons labelled with {config.to} in {result.shards_done} shards "
          f"({result.flagged} flagged), {result.shards_skipped} shards already labelled, in {result.seconds:.1f} s")
    return 0


def cmd_prior(args, parser) -> int:
    if args.prior_command != "fit":
        parser.parse_args(["prior", "--help"])
        return 2
    from diffusion_hpc.poses import load_pose_set
    from diffusion_hpc.prior.fit import fit_prior, format_report

    poses = load_pose_set(args.poses)
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
        # torch.compile's code generator (--compile-fit) calls its own deprecated helpers
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\._inductor\.")
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
        if args.command == "cycle":
            return cmd_cycle(args)
        if args.command == "backbone":
            return cmd_backbone(args, parser)
        if args.command == "quality":
            return cmd_quality(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "convert":
            return cmd_convert(args)
        if args.command == "merge":
            return cmd_merge(args)
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
