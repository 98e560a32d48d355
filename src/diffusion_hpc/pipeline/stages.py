"""The models of a run, loaded once per process, each stage behind its interface; and the clock
of a batch."""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from diffusion_hpc.body import get_body_model
from diffusion_hpc.config import DIFFUSION_GENERATORS, GenerateConfig
from diffusion_hpc.estimate import MeshEstimator, check_estimator, describe_estimator, get_estimator
from diffusion_hpc.generate import make_image_generator, make_start_generator
from diffusion_hpc.generate.base import GenerationResult, SamplerSettings
from diffusion_hpc.generate.diffusion import lora_file
from diffusion_hpc.generate.identity import backbone_identity
from diffusion_hpc.generate.render_baseline import face_parts_for_body
from diffusion_hpc.prior import get_prior
from diffusion_hpc.render import get_renderer
from diffusion_hpc.runtime.device import resolve_placement
from diffusion_hpc.segment import make_segmenter


def check_run_estimator(cfg: GenerateConfig) -> None:
    """Before any work: the run's mesh estimator has its checkpoint, and its bodies are the run's
    body model (:func:`~diffusion_hpc.estimate.check_estimator`)."""
    if needs_estimator(cfg):
        check_estimator(cfg.mesh_estimator, cfg.estimator_checkpoint, cfg.body_model)


def needs_estimator(cfg: GenerateConfig) -> bool:
    """True when the run estimates bodies: modes T, R (start images), verification, cycles."""
    return cfg.mode in ("T", "R") or bool(cfg.verify) or cfg.cycles > 0


def load_estimator(cfg: GenerateConfig, prior, device) -> MeshEstimator:
    """The run's mesh estimator: the MediaPipe fit (CPU, regularised by the run's prior) or a
    regressor checkpoint (on the run's ``device``, in float32), both giving ``cfg.body_model`` bodies."""
    name = cfg.mesh_estimator
    if name == "mediapipe":
        return get_estimator("mediapipe", body_model=cfg.body_model, prior=prior, model_path=cfg.smpl_path)
    if name in ("spin", "hmr2"):
        return get_estimator(name, checkpoint=cfg.estimator_checkpoint, smpl_path=cfg.smpl_path, device=device)
    return get_estimator(name, checkpoint=cfg.estimator_checkpoint, model_path=cfg.smpl_path, device=device)


def load_prior(cfg: GenerateConfig):
    """The pose prior of the run's body model (Anny: the shipped prior or ``prior_path``; SMPL: VPoser)."""
    if cfg.body_model == "anny":
        return get_prior("anny", cfg.prior_path)
    return get_prior("vposer", cfg.prior_path)


class Stages:
    """The models of a run, loaded once per process; each stage behind its interface.

    Attributes:
        body, renderer: the body model and the rasteriser (every mode).
        start: mode T's text-to-image generator (None in modes R, D).
        image_generator: the render baseline or the depth-conditioned regenerator.
        face_part: the render baseline's body part per face (None for diffusion generators).
        segmenter, estimator, prior: modes T, R, and verification / cycles (else None).
        estimator_identity: which estimator ran (:func:`~diffusion_hpc.estimate.describe_estimator`;
            a regressor's checkpoint by name and content fingerprint), None when none runs.
        start_sampler, sampler: the samplers as they run (None where there is no such stage).
        backbone: the identity of the diffusion weights (:mod:`~diffusion_hpc.generate.identity`).
    """

    def __init__(self, config: GenerateConfig) -> None:
        cfg = config
        diffusion = cfg.generator in DIFFUSION_GENERATORS
        #: where the diffusion models run (resolved first: an unavailable device fails before any model loads)
        self.placement = resolve_placement(cfg.device, cfg.dtype)
        self.body = get_body_model(cfg.body_model, model_path=cfg.smpl_path)
        self.faces = self.body.faces.numpy()
        self.canonical_to_camera = self.body.canonical_to_camera.numpy().astype(np.float64)
        self.renderer = get_renderer(cfg.renderer)
        self.start = make_start_generator(cfg) if cfg.mode == "T" else None
        self.image_generator = make_image_generator(cfg, start=self.start)
        self.face_part = None if diffusion else face_parts_for_body(self.body)
        self.start_sampler: Optional[SamplerSettings] = self.start.settings if self.start is not None else None
        self.sampler: Optional[SamplerSettings] = self.image_generator.settings if diffusion else None
        self.backbone: Optional[dict] = None
        if diffusion:
            self.backbone = backbone_identity(cfg.backbone, self.image_generator.backbones, cfg.controlnet,
                                              lora_file(cfg.lora), cfg.lora_scale)  # fmt: skip
        self.segmenter = None
        self.estimator: Optional[MeshEstimator] = None
        self.estimator_identity: Optional[dict] = None
        self.prior = None
        if cfg.mode == "D" and (cfg.body_model == "anny" or cfg.prior_path is not None):
            self.prior = load_prior(cfg)  # mode D scores every pose (prior_score, hard)
        if needs_estimator(cfg):
            # MediaPipe runs on the CPU; an instance segmenter (transformers) on the run's device, in float32
            on_device = {} if cfg.segmenter.startswith("mediapipe") else {"device": self.placement.device}
            self.segmenter = make_segmenter(cfg.segmenter, **on_device)
            self.prior = self.prior or load_prior(cfg)
            self.estimator = load_estimator(cfg, self.prior, self.placement.device)
            self.estimator_identity = describe_estimator(self.estimator)


class StageTimer:
    """The clock of one batch: wall time per stage, and the UNet (+ ControlNet) time inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.unet_seconds = 0.0
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._t
        self._t = now

    def count_unet(self, result: GenerationResult) -> None:
        """Add a generator call's UNet and ControlNet time."""
        self.unet_seconds += result.seconds.get("unet", 0.0) + result.seconds.get("controlnet", 0.0)

    def per_sample(self, count: int) -> dict[str, float]:
        return {k: v / max(count, 1) for k, v in self.seconds.items()}
