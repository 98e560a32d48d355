"""``dhpc generate``: the orchestration of a run (mode D on the free stack).

The pipeline holds no model logic: it draws requests, then calls each stage through its interface,
one batch at a time, and hands records to the writer.

    1. check inputs (poses, body model, backgrounds) before any work
    2. open the dataset (new, or resume: skip committed shards)
    3. per batch: requests -> body forward -> camera placement -> render -> image generator
       -> labels -> records
    4. commit each shard atomically; consolidate the manifest; write the preview
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data.schema import SampleRecord
from diffusion_hpc.data.seeds import shard_ranges
from diffusion_hpc.data.writer import DatasetWriter, ManifestRow
from diffusion_hpc.errors import InputError
from diffusion_hpc.pipeline.requests import SampleRequest, make_request

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


class Generator:
    """A configured generation run. ``Generator(config).run()`` is what ``dhpc generate`` does."""

    def __init__(self, config: GenerateConfig, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        # 1. Inputs are checked before any model is loaded or any file written.
        from diffusion_hpc.body import check_body_model

        check_body_model(config.body_model, config.smpl_path)
        self.poses = self._load_poses()
        self.backgrounds = self._load_backgrounds()

    # -- set-up ---------------------------------------------------------------------------------

    def _load_poses(self):
        from diffusion_hpc.poses import builtin_poses, load_pose_file

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

    def _load_backgrounds(self):
        folder = self.config.render_baseline.backgrounds
        if folder is None:
            return None
        from diffusion_hpc.generate.backgrounds import FolderBackgrounds

        return FolderBackgrounds(folder)

    def _load_models(self) -> None:
        from diffusion_hpc.body import get_body_model
        from diffusion_hpc.generate.render_baseline import RenderBaselineGenerator, face_parts_for_body
        from diffusion_hpc.render import get_renderer

        cfg = self.config
        self.body = get_body_model(cfg.body_model, model_path=cfg.smpl_path)
        self.renderer = get_renderer(cfg.renderer)
        self.image_generator = RenderBaselineGenerator(augment=cfg.render_baseline.augment)
        self.faces = self.body.faces.numpy()
        self.face_part = face_parts_for_body(self.body)
        self.canonical_to_camera = self.body.canonical_to_camera.numpy().astype(np.float64)

    # -- one batch ------------------------------------------------------------------------------

    def _shape_for(self, request_rng_shape: np.ndarray, pose_index: int) -> np.ndarray:
        if self.poses.phenotype is not None and self.config.body_model == "anny":
            return np.asarray(self.poses.phenotype[pose_index], np.float32)
        if getattr(self.poses, "betas", None) is not None and self.config.body_model != "anny":
            return np.asarray(self.poses.betas[pose_index], np.float32)
        return request_rng_shape

    def _requests(self, indices: range) -> list[SampleRequest]:
        sampler = lambda rng: self.body.sample_shape(rng, age_years=self.config.shape.age_years)  # noqa: E731
        return [make_request(self.config, i, len(self.poses), sampler, self.canonical_to_camera) for i in indices]

    def _make_batch(self, requests: list[SampleRequest]) -> tuple[list[SampleRecord], list[ManifestRow]]:
        import torch

        from diffusion_hpc.body import transform_params
        from diffusion_hpc.geometry.camera import fit_translation, project

        cfg = self.config
        height, width = cfg.image_size
        t0 = time.perf_counter()
        # 3a. body forward in the canonical frame
        shape = np.stack([self._shape_for(r.shape, r.pose_index) for r in requests])
        params = {
            "global_orient": torch.as_tensor(np.stack([self.poses.global_orient[r.pose_index] for r in requests]), dtype=torch.float32),
            "body_pose": torch.as_tensor(np.stack([self.poses.body_pose[r.pose_index] for r in requests]), dtype=torch.float32),
            self.body.shape_key: torch.as_tensor(shape, dtype=torch.float32),
            "transl": torch.zeros(len(requests), 3),
        }
        with torch.no_grad():
            canonical = self.body(params)
        t1 = time.perf_counter()
        # 3b. camera placement: orientation from the request, depth and offset so the body fits
        rotations = np.stack([r.rotation for r in requests])
        verts = canonical.vertices.numpy().astype(np.float64)
        rotated = np.einsum("bij,bvj->bvi", rotations, verts)
        rows: list[ManifestRow] = []
        keep: list[int] = []
        translations = np.zeros((len(requests), 3))
        for b, r in enumerate(requests):
            try:
                translations[b] = fit_translation(rotated[b], r.K, width, height, r.fill, r.offset)
                keep.append(b)
            except RuntimeError as exc:
                rows.append(ManifestRow(r.key, r.index, 0, r.seed, "failed", reason=f"camera: {exc}"))
        cam_params = transform_params(
            self.body, params, torch.as_tensor(rotations, dtype=torch.float32), torch.as_tensor(translations, dtype=torch.float32)
        )
        vertices = rotated + translations[:, None]
        joints = {
            name: np.einsum("bij,bkj->bki", rotations, j.numpy().astype(np.float64)) + translations[:, None]
            for name, j in canonical.joints.items()
        }
        Ks = np.stack([r.K for r in requests])
        t2 = time.perf_counter()
        # 3c. render depth / silhouette / normals
        renders = self.renderer.render(vertices[keep].astype(np.float32), self.faces, Ks[keep], (height, width))
        t3 = time.perf_counter()
        # 3d. image generator (render baseline): each image from its own seed
        rngs = [np.random.default_rng(requests[b].generator_seed) for b in keep]
        images = self.image_generator.generate(renders, self.face_part, rngs, backgrounds=self.backgrounds)
        t4 = time.perf_counter()
        # 3e. labels and records
        records = []
        per = len(requests)
        timings = {"body": (t1 - t0) / per, "camera": (t2 - t1) / per, "render": (t3 - t2) / per, "generate": (t4 - t3) / len(keep) if keep else 0.0}
        for slot, b in enumerate(keep):
            r = requests[b]
            coco = joints["coco17"][b]
            uv = project(coco, r.K)
            vis = keypoint_visibility(uv, coco[:, 2], renders.depth[slot])
            record = SampleRecord(
                key=r.key,
                index=r.index,
                seed=r.seed,
                image=images[slot],
                mask=renders.mask[slot],
                depth=renders.depth[slot],
                K=r.K,
                body_model=cfg.body_model,
                params={k: v[b].numpy() for k, v in cam_params.items()},
                joints3d={name: j[b] for name, j in joints.items()},
                keypoints2d=np.concatenate([uv, vis[:, None]], axis=1),
                mode=cfg.mode,
                generator=cfg.generator,
                pose_source=f"{cfg.poses}:{self.poses.name[r.pose_index] if self.poses.name is not None else r.pose_index}",
                timings=timings,
            )
            records.append(record)
            scores = {
                "mask_area": float(renders.mask[slot].mean()),
                "visible_keypoints": int((vis == 2).sum()),
                "distance_m": float(joints["h36m17"][b][0, 2]),
            }
            record.scores = scores
            rows.append(ManifestRow(r.key, r.index, 0, r.seed, "ok", scores=scores, unet_evals=0, timings=timings))
        rows.sort(key=lambda row: row.index)
        return records, rows

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
            self._load_models()
        writer.open()
        bar = tqdm(total=cfg.n, initial=cfg.n - sum(len(shards[s]) for s in pending), unit="sample",
                   desc="generate", disable=not self.progress)
        for s in pending:
            records: list[SampleRecord] = []
            rows: list[ManifestRow] = []
            indices = shards[s]
            for lo in range(indices.start, indices.stop, cfg.batch_size):
                batch = range(lo, min(lo + cfg.batch_size, indices.stop))
                recs, rs = self._make_batch(self._requests(batch))
                records.extend(recs)
                rows.extend(rs)
                bar.update(len(batch))
            for row in rows:
                row.shard = s
            writer.write_shard(s, records, rows)
        bar.close()
        from diffusion_hpc.data.reader import Dataset

        manifest = Dataset(out).manifest()
        failures: dict[str, int] = {}
        for row in manifest:
            if row["status"] != "ok":
                reason = row["reason"].split(":")[0]
                failures[reason] = failures.get(reason, 0) + 1
        accepted = sum(1 for row in manifest if row["status"] == "ok")
        seconds = time.perf_counter() - start
        writer.finalize(len(shards), {"accepted": accepted, "failed": len(manifest) - accepted, "failures": failures,
                                      "seconds_this_session": seconds, "n": cfg.n})
        preview = None
        try:
            from diffusion_hpc.inspect import write_preview

            preview = write_preview(out)
        except Exception as exc:  # the preview is a convenience; the dataset is complete without it
            log.warning("could not write the preview: %s", exc)
        return GenerateResult(Path(out), accepted, len(manifest) - accepted, skipped, seconds, preview, failures)


def generate(config: GenerateConfig, out: str | Path, resume: bool = False, progress: bool = True) -> GenerateResult:
    """Python API of ``dhpc generate``: validate inputs, then generate into ``out``."""
    return Generator(config, progress=progress).run(out, resume=resume)
