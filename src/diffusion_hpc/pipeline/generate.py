"""``dhpc generate``: the orchestration of a run, modes T, R and D (DESIGN §2).

The pipeline holds no model logic: it draws requests, calls each stage through its interface, one
batch at a time, and hands records to the writer. Data flows one way: request -> stages -> record
-> writer. Models are loaded once per process (:class:`Stages`).

    1. check inputs (config, prompts, guide images, poses, every model's weights) before any work
    2. open the dataset (new, or resume: skip committed shards)
    3. per batch, by mode:
       T: prompts -> start image (txt2img) -> masks -> estimate -> prior score (-> hard-only filter)
          -> k variants (augment) -> [tail]
       R: guide images -> masks -> estimate -> prior score (-> filter) -> k variants -> [tail]
       D: pose requests -> body forward -> camera placement -> [tail]
       tail: body forward (camera frame) -> render depth / silhouette -> image generator
             (render baseline or depth-conditioned diffusion) -> cycles -> verify -> records
    4. commit each shard atomically; consolidate the manifest; write the preview

Indexing (modes T, R): sample ``index`` is variant ``index % k`` of guide ``index // k``; a guide's
start image, prompt and augmentation come from :func:`~diffusion_hpc.data.seeds.guide_seed`,
every sample's regeneration from :func:`~diffusion_hpc.data.seeds.sample_seed`. Shards hold whole
guides (shard_size is a multiple of k), batches whole guides (``max(1, batch_size // k)``).

Labels: the label of a sample is its own mesh and camera (variant 0: the estimate of the start
image; variants 1..k-1: augmented poses), rendered in the estimate's camera; the image is made to
fit the mesh. The saved ``mask`` is the rendered silhouette of the label mesh (what the label
says) and ``depth`` its rendered depth; the segmenter's person mask of the final image is only
summarised as ``scores.mask_iou`` (the record schema has no second mask). With ``cycles`` > 0,
each cycle re-estimates the body in the output image, renders that estimate and regenerates from
the output image: the label is then the mesh estimated in the last cycle (the one the final image
was conditioned on), as when the original pipeline runs again on its own output.

Failures (no person found, estimation failed, filtered, out of frame, drifted) become manifest rows
with a reason, never a crash; their UNet evaluations count in the manifest. Cost: a sample's
``unet_evals`` is its share of its guide's start-image evaluations (guide cost / the guide's
number of samples in the run, so shares add up exactly; may be fractional) plus its own
regeneration evaluations; ControlNet evaluations are in ``scores.controlnet_evals``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffusion_hpc.body import check_body_model, get_body_model, transform_params
from diffusion_hpc.config import DEFAULT_PROMPT, DIFFUSION_GENERATORS, GenerateConfig
from diffusion_hpc.data.reader import Dataset
from diffusion_hpc.data.inspect import write_preview
from diffusion_hpc.data.schema import SampleRecord
from diffusion_hpc.data.seeds import augment_seed, guide_seed, sample_key, sample_seed, shard_ranges
from diffusion_hpc.data.writer import DatasetWriter, ManifestRow
from diffusion_hpc.errors import InputError, MissingModelError
from diffusion_hpc.estimate import get_estimator
from diffusion_hpc.generate.backgrounds import FolderBackgrounds
from diffusion_hpc.generate.base import GenerationBatch, RenderGenerator
from diffusion_hpc.generate.diffusion import DepthRegenerator, Text2ImageGenerator, lora_file
from diffusion_hpc.generate.render_baseline import face_parts_for_body
from diffusion_hpc.geometry.camera import fit_translation, project
from diffusion_hpc.pipeline.inputs import GuideImages, read_prompt_lines
from diffusion_hpc.pipeline.requests import (
    SampleRequest,
    guides_of,
    make_request,
    pick_line,
    prompt_text,
    variants_in_run,
)
from diffusion_hpc.pipeline.verify import mask_iou, pck_agreement
from diffusion_hpc.poses import builtin_poses, load_pose_file
from diffusion_hpc.prior import get_prior
from diffusion_hpc.prior.augment import augment_poses
from diffusion_hpc.render import get_renderer
from diffusion_hpc.render.base import RenderOutput
from diffusion_hpc.runtime.weights import backbone_set, check_models
from diffusion_hpc.segment import make_segmenter

log = logging.getLogger(__name__)


@dataclass
class GenerateResult:
    """What a run produced."""

    out: Path
    accepted: int
    failed: int
    skipped_shards: int
    seconds: float
    preview: Path | None = None
    failures: dict[str, int] = field(default_factory=dict)


def keypoint_visibility(uv: np.ndarray, z: np.ndarray, depth: np.ndarray, tolerance: float = 0.12) -> np.ndarray:
    """COCO visibility of projected joints: 0 outside the image, 1 hidden by the body, 2 visible.

    A joint inside the image is visible when the rendered surface at its pixel is not nearer than
    the joint by more than ``tolerance`` metres (joints lie inside the body, a few cm below its skin).

    Args:
        uv: (J, 2) pixels; z: (J,) joint depths; depth: (H, W) rendered depth (0 = background).
    """
    height, width = depth.shape
    col = np.round(uv[:, 0]).astype(int)
    row = np.round(uv[:, 1]).astype(int)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height) & (z > 0)
    vis = np.zeros(len(uv), dtype=np.float64)
    surface = depth[row.clip(0, height - 1), col.clip(0, width - 1)]
    hidden = (surface > 0) & (surface < z - tolerance)
    vis[inside] = np.where(hidden[inside], 1.0, 2.0)
    return vis


class StageTimer:
    """Wall time per stage of one batch; ``per_sample`` spreads it over the batch's samples."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._t
        self._t = now

    def per_sample(self, count: int) -> dict[str, float]:
        return {k: v / max(count, 1) for k, v in self.seconds.items()}


@dataclass
class Candidate:
    """One sample on its way through the stages (numpy, unbatched).

    ``params`` are camera-frame body parameters; ``reason`` is set when the sample failed.
    """

    index: int
    seed: int
    prompt: str = ""
    guide: int = -1
    variant: int = 0
    params: dict = field(default_factory=dict)
    K: np.ndarray | None = None
    start_image: np.ndarray | None = None
    person_mask: np.ndarray | None = None
    occluders: np.ndarray | None = None
    render_seed: int = 0
    pose_source: str = ""
    unet_evals: float = 0.0
    controlnet_evals: int = 0
    scores: dict = field(default_factory=dict)
    reason: str = ""
    # filled by the tail
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    depth: np.ndarray | None = None
    joints3d: dict = field(default_factory=dict)
    keypoints2d: np.ndarray | None = None
    render_slot: int = -1
    image_mask: np.ndarray | None = None  # segmenter's person mask of the final image (verification)


class Stages:
    """The models of a run, loaded once per process; each stage behind its interface."""

    def __init__(self, config: GenerateConfig) -> None:

        cfg = config
        diffusion = cfg.generator in DIFFUSION_GENERATORS
        self.body = get_body_model(cfg.body_model, model_path=cfg.smpl_path)
        self.faces = self.body.faces.numpy()
        self.canonical_to_camera = self.body.canonical_to_camera.numpy().astype(np.float64)
        self.renderer = get_renderer(cfg.renderer)
        self.start = None
        if cfg.mode == "T":

            self.start = Text2ImageGenerator(cfg.backbone, preset=cfg.sampler.preset, lora=cfg.lora, lora_scale=cfg.lora_scale)
        if diffusion:

            share = self.start if cfg.generator == "controlnet" else None
            lora = {} if share is not None else {"lora": cfg.lora, "lora_scale": cfg.lora_scale}  # shared UNet has it
            self.image_generator = DepthRegenerator(cfg.backbone, method=cfg.generator, controlnet=cfg.controlnet,
                                                    preset=cfg.sampler.preset, blur_prob=cfg.sampler.blur_prob, share_with=share,
                                                    **lora)
            self.face_part = None
        else:

            folder = cfg.render_baseline.backgrounds
            self.image_generator = RenderGenerator(augment=cfg.render_baseline.augment,
                                                   backgrounds=FolderBackgrounds(folder) if folder else None)
            self.face_part = face_parts_for_body(self.body)
        needs_estimator = cfg.mode in ("T", "R") or cfg.verify or cfg.cycles
        self.segmenter = None
        self.estimator = None
        self.prior = None
        if needs_estimator:

            self.segmenter = make_segmenter(cfg.segmenter)
            self.prior = load_prior(cfg)
            self.estimator = get_estimator("mediapipe", body_model=cfg.body_model, prior=self.prior,
                                           model_path=cfg.smpl_path)


def load_prior(cfg: GenerateConfig):
    """The pose prior of the run's body model (Anny: the shipped prior or ``prior_path``; SMPL: VPoser)."""

    if cfg.body_model == "anny":
        return get_prior("anny", cfg.prior_path)
    return get_prior("vposer", cfg.prior_path)


class Generator:
    """A configured generation run. ``Generator(config).run()`` is what ``dhpc generate`` does."""

    def __init__(self, config: GenerateConfig, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.stages: Stages | None = None
        self.unet_seconds = 0.0  # UNet (+ ControlNet) wall time of this session, for run.json
        cfg = config
        # 1. Inputs are checked before any model is loaded or any file written.

        check_body_model(cfg.body_model, cfg.smpl_path)
        self.poses = self._load_poses() if cfg.mode == "D" else None
        self.guides = None
        if cfg.mode == "R":

            self.guides = GuideImages(cfg.guides, cfg.image_size)

        diffusion = cfg.generator in DIFFUSION_GENERATORS
        self.prompt_lines = read_prompt_lines(cfg.prompt, cfg.prompts, None if cfg.mode == "T" else DEFAULT_PROMPT)
        if cfg.render_baseline.backgrounds is not None and not diffusion:

            FolderBackgrounds(cfg.render_baseline.backgrounds)  # unreadable files fail here
        self._check_weights()

    def _check_weights(self) -> None:
        """Every model the run needs, checked at once: one error listing all that is missing."""

        cfg = self.config
        diffusion = cfg.generator in DIFFUSION_GENERATORS
        needs_segmenter = cfg.mode in ("T", "R") or cfg.verify or cfg.cycles
        specs = {
            "backbone": cfg.backbone if diffusion else None,
            "controlnet": cfg.controlnet if diffusion else None,
            "segmenter": cfg.segmenter if needs_segmenter else None,
        }
        found = check_models(specs)
        if diffusion:

            lora_file(cfg.lora)  # a wrong LoRA path fails here, before any model loads
        if cfg.prior_path is not None and not Path(cfg.prior_path).exists():
            raise MissingModelError(f"prior_path {cfg.prior_path} does not exist; pass the pose-prior file "
                                    "(dhpc prior fit --out FILE writes one) or leave it out for the shipped prior")
        if cfg.body_model != "anny" and cfg.prior_path is None and (cfg.mode in ("T", "R") or cfg.verify):
            raise MissingModelError(f"body_model {cfg.body_model!r} scores poses with VPoser: pass --prior-path "
                                    "to the VPoser v2 weights")
        if not diffusion:
            return
        bs = backbone_set(found["backbone"], found.get("controlnet"))
        lacking = []
        if cfg.mode == "T" and bs.text2img is None:
            lacking.append("a text-to-image pipeline (mode T makes its start images from text)")
        if cfg.generator not in bs.regenerators():
            lacking.append(f"what --generator {cfg.generator} needs ("
                           + ("an SD-2-depth depth-to-image pipeline" if cfg.generator == "depth2img"
                              else "a text-to-image pipeline and a ControlNet-depth model (--controlnet)") + ")")
        if lacking:
            raise MissingModelError(f"backbone {cfg.backbone!r} lacks " + " and ".join(lacking)
                                    + f"; it provides {', '.join(bs.regenerators()) or 'no regenerator'}"
                                    + (" and txt2img" if bs.text2img else "")
                                    + ". Pass a backbone that has it (`dhpc backbone tiny --out DIR` has all)")

    # -- set-up ---------------------------------------------------------------------------------

    def _load_poses(self):

        cfg = self.config
        poses = builtin_poses() if cfg.poses == "builtin" else load_pose_file(cfg.poses)
        if poses.body_model != cfg.body_model:
            raise InputError(
                f"pose file {cfg.poses} holds {poses.body_model!r} poses but --body-model is {cfg.body_model!r}; "
                f"pass --body-model {poses.body_model} or a pose file for {cfg.body_model}"
            )
        if len(poses) == 0:
            raise InputError(f"pose file {cfg.poses} holds no poses")
        return poses

    def load_models(self) -> None:
        """Load every stage's models (once); a caller may then swap a stage for another implementation."""
        if self.stages is None:
            self.stages = Stages(self.config)

    # -- mode D: requests -> body -> camera -------------------------------------------------------

    def _shape_for(self, request_rng_shape: np.ndarray, pose_index: int) -> np.ndarray:
        if self.poses.phenotype is not None and self.config.body_model == "anny":
            return np.asarray(self.poses.phenotype[pose_index], np.float32)
        if getattr(self.poses, "betas", None) is not None and self.config.body_model != "anny":
            return np.asarray(self.poses.betas[pose_index], np.float32)
        return request_rng_shape

    def _requests(self, indices: range) -> list[SampleRequest]:
        body = self.stages.body
        sampler = lambda rng: body.sample_shape(rng, age_years=self.config.shape.age_years)  # noqa: E731
        return [make_request(self.config, i, len(self.poses), sampler, self.stages.canonical_to_camera) for i in indices]

    def _pose_candidates(self, indices: range, timer: StageTimer) -> list[Candidate]:
        """Mode D: every sample's pose, shape and camera from its request; camera-frame parameters."""
        import torch


        cfg, body = self.config, self.stages.body
        height, width = cfg.image_size
        requests = self._requests(indices)
        # 1. body forward in the canonical frame
        shape = np.stack([self._shape_for(r.shape, r.pose_index) for r in requests])
        params = {
            "global_orient": torch.as_tensor(np.stack([self.poses.global_orient[r.pose_index] for r in requests]), dtype=torch.float32),
            "body_pose": torch.as_tensor(np.stack([self.poses.body_pose[r.pose_index] for r in requests]), dtype=torch.float32),
            body.shape_key: torch.as_tensor(shape, dtype=torch.float32),
            "transl": torch.zeros(len(requests), 3),
        }
        with torch.no_grad():
            canonical = body(params)
        timer.lap("body")
        # 2. camera placement: orientation from the request, depth and offset so the body fits
        rotations = np.stack([r.rotation for r in requests])
        rotated = np.einsum("bij,bvj->bvi", rotations, canonical.vertices.numpy().astype(np.float64))
        translations = np.zeros((len(requests), 3))
        reasons = [""] * len(requests)
        for b, r in enumerate(requests):
            try:
                translations[b] = fit_translation(rotated[b], r.K, width, height, r.fill, r.offset)
            except RuntimeError as exc:
                reasons[b] = f"camera: {exc}"
        cam = transform_params(body, params, torch.as_tensor(rotations, dtype=torch.float32),
                               torch.as_tensor(translations, dtype=torch.float32))  # fmt: skip
        timer.lap("camera")
        names = self.poses.name
        cands = []
        for b, r in enumerate(requests):
            line = pick_line(self.prompt_lines, r.index)
            cands.append(Candidate(
                index=r.index, seed=r.seed, params={k: v[b].numpy() for k, v in cam.items()}, K=r.K,
                render_seed=r.generator_seed, reason=reasons[b],
                prompt=prompt_text(line, r.seed) if cfg.generator in DIFFUSION_GENERATORS else "",
                pose_source=f"{cfg.poses}:{names[r.pose_index] if names is not None else r.pose_index}",
            ))  # fmt: skip
        return cands

    # -- modes T and R: guides -> start image -> masks -> estimate -> prior -> variants ----------

    def _guide_candidates(self, guides: list[int], timer: StageTimer) -> list[Candidate]:
        """Modes T, R: the k variants of each guide, with the guide's start image and masks."""

        cfg, st = self.config, self.stages
        k, n = cfg.k, cfg.n
        gseeds = [guide_seed(cfg.seed, g) for g in guides]
        prompts = [prompt_text(pick_line(self.prompt_lines, g), s) for g, s in zip(guides, gseeds)]
        # 1. start images (T: text-to-image, one per guide; R: the user's images)
        start_evals = np.zeros(len(guides))
        if cfg.mode == "T":
            result = st.start.generate(GenerationBatch(seeds=gseeds, prompts=prompts, size=tuple(cfg.image_size)))
            images = result.images
            start_evals = result.unet_evals.astype(np.float64)
            self.unet_seconds += result.seconds.get("unet", 0.0)
            sources = [f"txt2img:{p}" for p in prompts]
        else:
            images = np.stack([self.guides.load(g) for g in guides])
            sources = [f"guide:{self.guides.path(g).name}" for g in guides]
        timer.lap("start")
        # 2. masks of the start images
        seg = st.segmenter.segment(images)
        timer.lap("segment")
        # 3. body estimate in the start image's camera
        estimates = st.estimator.estimate(list(images))
        timer.lap("estimate")
        # 4. prior score of the estimated pose; optional hard-pose filter
        reasons = []
        for i, est in enumerate(estimates):
            if not seg.person_found[i]:
                reasons.append("segment: no person found")
            elif not est.ok:
                reasons.append(f"estimate: {est.reason}")
            else:
                reasons.append("")
        ok = [i for i, r in enumerate(reasons) if not r]
        prior_scores = np.full(len(guides), np.nan)
        if ok:
            import torch

            pose = torch.as_tensor(np.stack([estimates[i].params["body_pose"] for i in ok]), dtype=torch.float32)
            with torch.no_grad():
                prior_scores[ok] = st.prior.score(pose).numpy()
        for i in ok:
            if cfg.hard_only and not prior_scores[i] >= st.prior.hard_threshold:
                reasons[i] = "filter: easy pose"
        timer.lap("prior")
        # 5. k variants per kept guide (each guide from its own augmentation stream)
        cands: list[Candidate] = []
        shape_key = st.body.shape_key
        for i, g in enumerate(guides):
            count = variants_in_run(g, k, n)
            share = start_evals[i] / max(count, 1)
            variants = None
            if not reasons[i]:
                p = estimates[i].params
                variants = augment_poses(st.prior, p["body_pose"][None], p["global_orient"][None], p[shape_key][None],
                                         k=k, generator=augment_seed(cfg.seed, g), body_model=cfg.body_model)
            for v in range(count):
                index = g * k + v
                c = Candidate(index=index, seed=sample_seed(cfg.seed, index), prompt=prompts[i], guide=g, variant=v,
                              start_image=images[i], person_mask=seg.person[i], occluders=seg.occluders[i],
                              pose_source=f"{sources[i]}#variant{v}", unet_evals=float(share),
                              reason=reasons[i])  # fmt: skip
                c.scores["prior_score"] = float(prior_scores[i])
                if not np.isnan(prior_scores[i]):
                    c.scores["hard"] = float(prior_scores[i] >= st.prior.hard_threshold)
                if variants is not None:
                    est = estimates[i]
                    c.K = np.asarray(est.K, np.float64)
                    c.params = {"global_orient": variants.global_orient[0, v], "body_pose": variants.body_pose[0, v],
                                shape_key: variants.shape[0, v], "transl": np.asarray(est.params["transl"], np.float32)}
                    c.scores["fit_error_px"] = float(est.fit_error_px)
                cands.append(c)
        timer.lap("augment")
        return cands

    # -- the tail: mesh -> render -> image generator -> cycles -> verify ---------------------------

    def _label(self, cands: list[Candidate], timer: StageTimer) -> None:
        """Body forward on the camera-frame parameters, render depth / silhouette, keypoints."""
        import torch


        if not cands:
            return
        st = self.stages
        params = {key: torch.as_tensor(np.stack([c.params[key] for c in cands]), dtype=torch.float32)
                  for key in cands[0].params}  # fmt: skip
        with torch.no_grad():
            out = st.body(params)
        timer.lap("body")
        Ks = np.stack([c.K for c in cands]).astype(np.float32)
        renders = st.renderer.render(out.vertices.numpy().astype(np.float32), st.faces, Ks, tuple(self.config.image_size))
        timer.lap("render")
        for b, c in enumerate(cands):
            c.params = {k: v[b].numpy() for k, v in params.items()}
            c.joints3d = {name: j[b].numpy().astype(np.float64) for name, j in out.joints.items()}
            coco = c.joints3d["coco17"]
            uv = project(coco, c.K)
            vis = keypoint_visibility(uv, coco[:, 2], renders.depth[b])
            c.keypoints2d = np.concatenate([uv, vis[:, None]], axis=1)
            c.mask, c.depth, c.render_slot = renders.mask[b], renders.depth[b], b
            if not c.mask.any():
                c.reason = "render: the mesh is outside the image"
        self._renders = renders

    def _generate(self, cands: list[Candidate], timer: StageTimer, stage: str) -> None:
        """The image generator on the labelled candidates (render baseline or diffusion)."""

        if not cands:
            return
        st = self.stages
        if st.face_part is not None:  # the render baseline: its image is the shaded render

            slots = [c.render_slot for c in cands]
            r = self._renders
            renders = RenderOutput(r.depth[slots], r.mask[slots], r.normals[slots], r.face_id[slots])
            batch = GenerationBatch(seeds=[c.render_seed for c in cands], render=renders, face_part=st.face_part)
        else:
            with_start = cands[0].start_image is not None
            batch = GenerationBatch(
                seeds=[c.seed for c in cands], prompts=[c.prompt for c in cands],
                start_images=np.stack([c.start_image for c in cands]) if with_start else None,
                person_masks=np.stack([c.person_mask for c in cands]) if with_start else None,
                occluder_masks=np.stack([c.occluders for c in cands]) if with_start else None,
                depth=np.stack([c.depth for c in cands]), silhouettes=np.stack([c.mask for c in cands]),
            )  # fmt: skip
        result = st.image_generator.generate(batch)
        self.unet_seconds += result.seconds.get("unet", 0.0) + result.seconds.get("controlnet", 0.0)
        for b, c in enumerate(cands):
            c.image = result.images[b]
            c.unet_evals += float(result.unet_evals[b])
            if result.controlnet_evals is not None:
                c.controlnet_evals += int(result.controlnet_evals[b])
        timer.lap(stage)

    def _cycle(self, cands: list[Candidate], cycle: int, timer: StageTimer) -> list[Candidate]:
        """One more estimate -> render -> regenerate pass on the output images; returns the survivors."""
        st = self.stages
        images = np.stack([c.image for c in cands])
        seg = st.segmenter.segment(images)
        estimates = st.estimator.estimate(list(images))
        timer.lap("cycle_estimate")
        alive = []
        for i, (c, est) in enumerate(zip(cands, estimates)):
            if not seg.person_found[i]:
                c.reason = f"cycle {cycle}: segment: no person found"
            elif not est.ok:
                c.reason = f"cycle {cycle}: estimate: {est.reason}"
            else:
                c.start_image, c.person_mask, c.occluders = c.image, seg.person[i], seg.occluders[i]
                c.params = {k: np.asarray(v, np.float32) for k, v in est.params.items()}
                c.K = np.asarray(est.K, np.float64)
                alive.append(c)
        self._label(alive, timer)
        alive = [c for c in alive if not c.reason]
        self._generate(alive, timer, "regenerate")
        return alive

    def _verify(self, cands: list[Candidate], timer: StageTimer) -> None:
        """Label verification on the final images: pck_agreement and mask_iou; --min-agreement."""

        cfg, st = self.config, self.stages
        if not cands or not cfg.verify:
            return
        images = np.stack([c.image for c in cands])
        seg = st.segmenter.segment(images)
        estimates = st.estimator.estimate(list(images))
        for i, (c, est) in enumerate(zip(cands, estimates)):
            c.scores["pck_agreement"] = pck_agreement(est.keypoints2d if est.ok else None, c.keypoints2d, c.mask)
            c.scores["mask_iou"] = mask_iou(seg.person[i], c.mask)
            c.image_mask = seg.person[i]
            c.scores["person_found"] = float(est.ok)
            if cfg.min_agreement is not None and not (c.scores["pck_agreement"] >= cfg.min_agreement):
                c.reason = "verify: drifted"
        timer.lap("verify")

    def _finish(self, cands: list[Candidate], timer: StageTimer) -> tuple[list[SampleRecord], list[ManifestRow]]:
        """The tail of every mode, then records (accepted) and manifest rows (all)."""
        cfg = self.config
        alive = [c for c in cands if not c.reason]
        # a. mesh, render and labels in the sample's camera
        self._label(alive, timer)
        alive = [c for c in alive if not c.reason]
        # b. the image generator: render baseline (mode D) or depth-conditioned diffusion
        self._generate(alive, timer, "generate" if cfg.mode == "D" else "regenerate")
        # c. optional cycles on the output image
        for cycle in range(1, cfg.cycles + 1):
            alive = self._cycle(alive, cycle, timer)
        # d. label verification
        self._verify(alive, timer)
        timings = timer.per_sample(len(cands))
        records, rows = [], []
        for c in cands:
            scores = dict(c.scores)
            if c.mask is not None and not c.reason:
                scores.update(mask_area=float(c.mask.mean()), visible_keypoints=int((c.keypoints2d[:, 2] == 2).sum()),
                              distance_m=float(c.joints3d["h36m17"][0, 2]))  # fmt: skip
            if cfg.generator in DIFFUSION_GENERATORS:
                scores["controlnet_evals"] = int(c.controlnet_evals)
            scores = {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in scores.items()}  # JSON null
            evals = int(c.unet_evals) if float(c.unet_evals).is_integer() else round(c.unet_evals, 4)
            if c.reason:
                rows.append(ManifestRow(sample_key(c.index), c.index, 0, c.seed, "failed", reason=c.reason,
                                        scores=scores, unet_evals=evals, timings=timings))  # fmt: skip
                continue
            records.append(SampleRecord(
                key=sample_key(c.index), index=c.index, seed=c.seed, image=c.image, mask=c.mask, depth=c.depth,
                K=c.K, body_model=cfg.body_model, params=c.params, joints3d=c.joints3d, keypoints2d=c.keypoints2d,
                mode=cfg.mode, prompt=c.prompt, generator=cfg.generator, pose_source=c.pose_source,
                scores=scores, unet_evals=evals, timings=timings, image_mask=c.image_mask,
            ))  # fmt: skip
            rows.append(ManifestRow(sample_key(c.index), c.index, 0, c.seed, "ok", scores=scores, unet_evals=evals,
                                    timings=timings))  # fmt: skip
        rows.sort(key=lambda row: row.index)
        return records, rows

    # -- batches ----------------------------------------------------------------------------------

    def _batches(self, indices: range) -> list[range | list[int]]:
        """Mode D: ranges of batch_size indices; T, R: lists of whole guides."""
        cfg = self.config
        if cfg.mode == "D":
            return [range(lo, min(lo + cfg.batch_size, indices.stop)) for lo in range(indices.start, indices.stop, cfg.batch_size)]
        guides = guides_of(indices, cfg.k)
        per = max(1, cfg.batch_size // cfg.k)
        return [guides[i:i + per] for i in range(0, len(guides), per)]

    def _make_batch(self, batch) -> tuple[list[SampleRecord], list[ManifestRow], int]:
        timer = StageTimer()
        if self.config.mode == "D":
            cands = self._pose_candidates(batch, timer)
        else:
            cands = self._guide_candidates(batch, timer)
        records, rows = self._finish(cands, timer)
        return records, rows, len(cands)

    # -- the run --------------------------------------------------------------------------------

    def run(self, out: str | Path, resume: bool = False) -> GenerateResult:
        """Generate ``config.n`` samples into ``out`` (resuming a killed run if ``resume``)."""
        from tqdm.auto import tqdm

        cfg = self.config
        start = time.perf_counter()
        # 2. check --out (no writes yet), load the models (missing files fail here), then open
        writer = DatasetWriter(out, cfg.to_yaml(), resume=resume)
        shards = shard_ranges(cfg.n, cfg.shard_size)
        pending = [s for s in range(len(shards)) if not writer.is_complete(s)]
        skipped = len(shards) - len(pending)
        if pending:
            self.load_models()
        writer.open()
        bar = tqdm(total=cfg.n, initial=cfg.n - sum(len(shards[s]) for s in pending), unit="sample",
                   desc="generate", disable=not self.progress)
        write_seconds, written, stage_seconds = 0.0, 0, 0.0
        # 3. per shard, per batch: the stages of the mode
        for s in pending:
            records: list[SampleRecord] = []
            rows: list[ManifestRow] = []
            for batch in self._batches(shards[s]):
                t0 = time.perf_counter()
                recs, rs, count = self._make_batch(batch)
                stage_seconds += time.perf_counter() - t0
                records.extend(recs)
                rows.extend(rs)
                bar.update(count)
            for row in rows:
                row.shard = s
            # 4. commit the shard
            t0 = time.perf_counter()
            writer.write_shard(s, records, rows)
            write_seconds += time.perf_counter() - t0
            written += len(rows)
        bar.close()

        manifest = Dataset(out).manifest()
        failures: dict[str, int] = {}
        for row in manifest:
            if row["status"] != "ok":
                failures[row["reason"]] = failures.get(row["reason"], 0) + 1
        accepted = sum(1 for row in manifest if row["status"] == "ok")
        spent = float(sum(row.get("unet_evals", 0) for row in manifest))
        seconds = time.perf_counter() - start
        writer.finalize(len(shards), {
            "accepted": accepted, "failed": len(manifest) - accepted, "failures": failures,
            "drifted": failures.get("verify: drifted", 0), "seconds_this_session": seconds, "n": cfg.n,
            "mode": cfg.mode, "unet_evals_total": spent,
            "unet_evals_per_accepted": spent / accepted if accepted else None,
            # the write stage is timed per shard: a shard's manifest is committed before its tar
            "write_seconds_per_sample": write_seconds / written if written else None,
            "unet_seconds_this_session": self.unet_seconds,
            "stage_seconds_this_session": stage_seconds,
        })  # fmt: skip
        preview = None
        try:
            preview = write_preview(out)
        except Exception as exc:  # the preview is a convenience; the dataset is complete without it
            log.warning("could not write the preview: %s", exc)
        return GenerateResult(Path(out), accepted, len(manifest) - accepted, skipped, seconds, preview, failures)


def generate(config: GenerateConfig, out: str | Path, resume: bool = False, progress: bool = True) -> GenerateResult:
    """Python API of ``dhpc generate``: validate inputs, then generate into ``out``."""
    return Generator(config, progress=progress).run(out, resume=resume)
