"""The models of a run, loaded once per process, each stage behind its interface; and the clock
of a batch.

Two threads may call the models at once (a batch's head on a worker thread while the previous
batch's tail runs: :mod:`~diffusion_hpc.pipeline.ahead`), so the models with mutable state are
:class:`Serialized`: every method call holds the model's lock. The diffusion generators share one
lock (mode T's ControlNet regenerator reuses the txt2img UNet and its evaluation counter, which
each call resets; one accelerator runs one of them at a time anyway); the segmenter and the
estimator share another (MediaPipe graphs are not thread-safe, and both swap the process's stderr
descriptor around their native calls to filter MediaPipe's log lines). The body model, the
renderer and the prior are stateless once loaded (the renderer only ever runs in the tail).
"""

from __future__ import annotations

import inspect
import threading
import time
from typing import Optional

import numpy as np

from diffusion_hpc.body import get_body_model
from diffusion_hpc.config import DIFFUSION_GENERATORS, GenerateConfig
from diffusion_hpc.estimate import (
    MeshEstimator, check_estimator, describe_estimator, get_estimator, mediapipe_fitter_for_run,
)
from diffusion_hpc.generate import make_image_generator, make_start_generator
from diffusion_hpc.generate.base import GenerationResult, SamplerSettings
from diffusion_hpc.generate.diffusion import lora_file
from diffusion_hpc.estimate.keypoint_model import KeypointModel
from diffusion_hpc.generate.identity import backbone_identity, model_identity
from diffusion_hpc.generate.render_baseline import face_parts_for_body
from diffusion_hpc.prior import get_prior
from diffusion_hpc.render import get_renderer
from diffusion_hpc.runtime.device import resolve_placement
from diffusion_hpc.runtime.weights import check_models
from diffusion_hpc.segment import make_segmenter


def check_run_estimator(cfg: GenerateConfig) -> None:
    """Before any work: the run's mesh estimator has its checkpoint, and its bodies are the run's
    body model (:func:`~diffusion_hpc.estimate.check_estimator`)."""
    if needs_estimator(cfg):
        check_estimator(cfg.mesh_estimator, cfg.estimator_checkpoint, cfg.body_model)


def needs_estimator(cfg: GenerateConfig) -> bool:
    """True when the run estimates bodies (:attr:`~diffusion_hpc.config.generate.GenerateConfig.estimates_bodies`)."""
    return cfg.estimates_bodies


def load_estimator(cfg: GenerateConfig, prior, device, dtype=None) -> MeshEstimator:
    """The run's mesh estimator: the MediaPipe fit (CPU, regularised by the run's prior; Pose's person
    detector and landmark model on ``device`` in ``dtype`` where the run's
    :func:`~diffusion_hpc.estimate.pose_detector_model.landmark_runtime` is ``torch``) or a regressor
    checkpoint (on the run's ``device``, in float32), both giving ``cfg.body_model`` bodies."""
    name = cfg.mesh_estimator
    if name == "mediapipe":
        return mediapipe_fitter_for_run(body_model=cfg.body_model, prior=prior, model_path=cfg.smpl_path,
                                        lifter=cfg.lifter, views=cfg.landmark_views, compile_fit=cfg.compile_fit,
                                        landmark_runtime=cfg.landmark_runtime, device=device, dtype=dtype)
    if name in ("spin", "hmr2"):
        return get_estimator(name, checkpoint=cfg.estimator_checkpoint, smpl_path=cfg.smpl_path, device=device)
    return get_estimator(name, checkpoint=cfg.estimator_checkpoint, model_path=cfg.smpl_path, device=device)


def load_keypoint_model(spec: str, placement) -> tuple[KeypointModel, dict]:
    """Verification's top-down keypoint model (``--keypoint-model``: a local folder or a cached hub id) on the
    run's device in the run's precision (float16 only on a GPU), and what ran for run.json: the spec
    (a folder by its name), the hub commit, a content fingerprint and the model's shape."""
    path = check_models({"keypoint_model": spec})["keypoint_model"]
    model = KeypointModel(path, device=placement.device, dtype=placement.dtype)
    return model, {**model_identity(spec, path), **model.describe()}


def load_prior(cfg: GenerateConfig):
    """The pose prior of the run's body model (Anny: the shipped prior or ``prior_path``; SMPL: VPoser)."""
    if cfg.body_model == "anny":
        return get_prior("anny", cfg.prior_path)
    return get_prior("vposer", cfg.prior_path)


_WAITED = threading.local()  # per thread: seconds spent waiting for a Serialized model the other thread held


def waited_seconds() -> float:
    """Seconds this thread has waited, in all, for a :class:`Serialized` model another thread held."""
    return getattr(_WAITED, "seconds", 0.0)


class Serialized:
    """``model`` with every method call holding ``lock`` (a :class:`threading.RLock` shared by the
    models that must not run at once); other attributes are read through. The time a call waits
    for the lock is added to this thread's :func:`waited_seconds`, which :class:`StageTimer` leaves
    out of the stage's time."""

    def __init__(self, model, lock: threading.RLock) -> None:
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "lock", lock)

    def __getattr__(self, name: str):
        if name in ("model", "lock"):  # not set yet (a copy being built): no recursion through self.model
            raise AttributeError(name)
        value = getattr(self.model, name)
        if not inspect.ismethod(value):
            return value
        lock = self.lock

        def call(*args, **kwargs):
            t0 = time.perf_counter()
            with lock:
                _WAITED.seconds = waited_seconds() + time.perf_counter() - t0
                return value(*args, **kwargs)

        return call

    def __setattr__(self, name: str, value) -> None:
        setattr(self.model, name, value)

    def __repr__(self) -> str:
        return f"Serialized({self.model!r})"


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
        keypoint_model, keypoint_model_identity: verification's top-down keypoint model and what it is
            (``verify_by keypoint-model``; it runs only in the tail, so it is not Serialized), else None.
        start_sampler, sampler: the samplers as they run (None where there is no such stage).
        backbone: the identity of the diffusion weights (:mod:`~diffusion_hpc.generate.identity`).

    A model put on ``start``, ``image_generator`` (one lock) or ``segmenter``, ``estimator``
    (another) is :class:`Serialized` with its group's lock, also when a caller swaps it later.
    """

    #: the stages whose models are Serialized, and the lock group of each
    SERIALIZED = {"start": "diffusion", "image_generator": "diffusion", "segmenter": "perception",
                  "estimator": "perception"}  # fmt: skip

    def __setattr__(self, name: str, value) -> None:
        group = self.SERIALIZED.get(name)
        if group is not None and value is not None and not isinstance(value, Serialized):
            locks = self.__dict__.setdefault("_locks", {})
            value = Serialized(value, locks.setdefault(group, threading.RLock()))
        object.__setattr__(self, name, value)

    def __init__(self, config: GenerateConfig) -> None:
        cfg = config
        diffusion = cfg.generator in DIFFUSION_GENERATORS
        #: where the diffusion models run (resolved first: an unavailable device fails before any model loads)
        self.placement = resolve_placement(cfg.device, cfg.dtype)
        self.body = get_body_model(cfg.body_model, model_path=cfg.smpl_path)
        self.faces = self.body.faces.numpy()
        self.canonical_to_camera = self.body.canonical_to_camera.numpy().astype(np.float64)
        self.renderer = get_renderer(cfg.renderer)
        start = make_start_generator(cfg) if cfg.mode == "T" else None
        self.start = start
        self.image_generator = make_image_generator(cfg, start=start)  # the bare txt2img: its parts are reused
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
        if cfg.segments_images:
            # MediaPipe runs on the CPU; an instance segmenter (transformers) on the run's device, in float32
            on_device = {} if cfg.segmenter.startswith("mediapipe") else {"device": self.placement.device}
            self.segmenter = make_segmenter(cfg.segmenter, min_height=cfg.min_person_height, **on_device)
        if needs_estimator(cfg):
            self.prior = self.prior or load_prior(cfg)
            estimator = load_estimator(cfg, self.prior, self.placement.device, self.placement.dtype)
            self.estimator_identity = describe_estimator(estimator)
            self.estimator = estimator
        self.keypoint_model: Optional[KeypointModel] = None
        self.keypoint_model_identity: Optional[dict] = None
        if cfg.verifies_by_keypoint_model:
            self.keypoint_model, self.keypoint_model_identity = load_keypoint_model(cfg.keypoint_model, self.placement)


def pose_bodies(stages: Stages, params: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The body model on N persons' camera-frame ``params`` (run in float32, as the label renders them):
    vertices (N, V, 3) float32 and joint-set name -> (N, J, 3) float64 joints."""
    import torch

    with torch.no_grad():
        out = stages.body({key: torch.as_tensor(np.asarray(v, np.float32)) for key, v in params.items()})
    return out.vertices.numpy().astype(np.float32), {name: j.numpy().astype(np.float64) for name, j in out.joints.items()}


class StageTimer:
    """The clock of one batch: wall time per stage, and the UNet (+ ControlNet) time inside it.

    A stage's time leaves out the time its thread waited for a :class:`Serialized` model the other
    thread held (another batch's use of it), so a batch's timings are its own whether or not the
    next batch's head runs beside it. A batch's head and tail may run on different threads: the
    thread that goes on with the batch calls :meth:`restart` first.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.unet_seconds = 0.0
        self.restart()

    def restart(self) -> None:
        """Start the next stage's clock now, on this thread (the time since the last lap counts nowhere)."""
        self._t, self._waited = time.perf_counter(), waited_seconds()

    def lap(self, stage: str) -> None:
        now, waited = time.perf_counter(), waited_seconds()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._t - (waited - self._waited)
        self._t, self._waited = now, waited

    def count_unet(self, result: GenerationResult) -> None:
        """Add a generator call's UNet and ControlNet time."""
        self.unet_seconds += result.seconds.get("unet", 0.0) + result.seconds.get("controlnet", 0.0)

    def share(self, fraction: float) -> "StageTimer":
        """A new clock holding ``fraction`` of this one's stage and UNet times (a batch's share of a head
        made for several batches), started now."""
        part = StageTimer()
        part.seconds = {k: v * fraction for k, v in self.seconds.items()}
        part.unet_seconds = self.unet_seconds * fraction
        return part

    def per_sample(self, count: int) -> dict[str, float]:
        return {k: v / max(count, 1) for k, v in self.seconds.items()}
