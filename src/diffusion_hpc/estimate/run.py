"""``dhpc estimate``: fit a body to each photo of a folder or file list; one npz plus previews.

The npz (written atomically; no object arrays, loads with ``np.load(path)`` without pickles) holds,
for N images in input order:

- ``path`` (N,) unicode: the image file; ``ok`` (N,) bool; ``reason`` (N,) unicode
- ``body_model`` () unicode; ``image_size`` (N, 2) int (height, width)
- ``K`` (N, 3, 3); ``confidence`` (N,); ``fit_error_px`` (N,) (NaN where not ok)
- ``fit_hypothesis`` (N,) unicode (``base`` / ``swap``; "" where not ok); ``facing`` (N,) unicode
  (``front`` / ``side`` / ``back``); ``facing_score`` (N,) label-free facing cues in [-1, 1];
  ``facing_margin`` (N,) how clearly the kept hypothesis won (NaN where not decided)
- ``params/<key>`` (N, ...) float32 camera-frame body parameters (zeros where not ok)
- ``joints3d/<set>`` (N, J, 3) camera-frame metres (zeros where not ok)
- ``keypoints2d`` (N, 17, 3) COCO-17 u, v pixels + confidence
- ``landmarks2d`` (N, 33, 3) and ``landmarks3d`` (N, 33, 3): the detector's landmarks
- ``mask_pixels`` (N,) int: the size of the segmenter's person mask the fit used (0: fitted without a
  mask: ``--no-masks``, a regressor, or no person in the segmenter's view)
- ``estimator`` () unicode: JSON of which estimator ran (:func:`~diffusion_hpc.estimate.describe_estimator`:
  the MediaPipe fit's body model and lifter, or a regressor's checkpoint name and content fingerprint), as
  a generated dataset's run.json records it
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from diffusion_hpc.body.joint_sets import COCO17
from diffusion_hpc.config.estimate import EstimateConfig
from diffusion_hpc.data.schema import encode_png
from diffusion_hpc.data.writer import atomic_write_bytes
from diffusion_hpc.errors import ConfigError, InputError
from diffusion_hpc.estimate import describe_estimator, get_estimator, mediapipe_fitter_for_run
from diffusion_hpc.estimate.base import Estimate, estimate_with_masks
from diffusion_hpc.estimate.pose_detector_model import landmark_runtime
from diffusion_hpc.render import get_renderer
from diffusion_hpc.runtime.device import resolve_placement
from diffusion_hpc.runtime.images import IMAGE_SUFFIXES, image_files, load_image
from diffusion_hpc.segment import Segmenter, make_segmenter

log = logging.getLogger(__name__)

#: skeleton edges of COCO-17 for previews (pairs of joint names)
COCO17_EDGES = (
    ("left_ankle", "left_knee"), ("left_knee", "left_hip"), ("right_ankle", "right_knee"),
    ("right_knee", "right_hip"), ("left_hip", "right_hip"), ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"), ("left_shoulder", "right_shoulder"), ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
    ("nose", "left_eye"), ("nose", "right_eye"), ("left_eye", "left_ear"), ("right_eye", "right_ear"),
)  # fmt: skip


def collect_images(paths_or_dir: str | Path | Iterable[str | Path]) -> list[Path]:
    """Image files from a folder (sorted, by suffix), a single file, or a list of files/folders.

    Raises:
        InputError: a path does not exist, or nothing to process was found.
    """
    items = [paths_or_dir] if isinstance(paths_or_dir, (str, Path)) else list(paths_or_dir)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(image_files(path, what="--images"))
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"--images {path}: no such file or folder")
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, items))}")
    return files


def estimates_to_arrays(estimates: Sequence[Estimate], paths: Sequence[str], body_model: str) -> dict[str, np.ndarray]:
    """Stack estimates into fixed-size arrays (see the module docstring for the keys)."""
    n = len(estimates)
    template = next((e for e in estimates if e.ok), None)
    out: dict[str, np.ndarray] = {
        "path": np.array([str(p) for p in paths], dtype=np.str_),
        "ok": np.array([e.ok for e in estimates], dtype=bool),
        "reason": np.array([e.reason for e in estimates], dtype=np.str_),
        "body_model": np.array(body_model, dtype=np.str_),
        "image_size": np.array([e.image_size for e in estimates], dtype=np.int64).reshape(n, 2),
        "K": np.stack([np.asarray(e.K, np.float64) for e in estimates]),
        "confidence": np.array([e.confidence for e in estimates], dtype=np.float32),
        "fit_error_px": np.array([e.fit_error_px for e in estimates], dtype=np.float32),
        "fit_hypothesis": np.array([e.fit_hypothesis for e in estimates], dtype=np.str_),
        "facing": np.array([e.facing for e in estimates], dtype=np.str_),
        "facing_score": np.array([e.facing_score for e in estimates], dtype=np.float32),
        "facing_margin": np.array([e.facing_margin for e in estimates], dtype=np.float32),
        "keypoints2d": np.stack([np.asarray(e.keypoints2d, np.float32) for e in estimates]),
        "landmarks2d": np.stack([np.asarray(e.landmarks2d, np.float32) for e in estimates]),
        "landmarks3d": np.stack([np.asarray(e.landmarks3d, np.float32) for e in estimates]),
    }
    if template is not None:
        for group, ref in (("params", template.params), ("joints3d", template.joints3d)):
            for key, value in ref.items():
                stack = np.zeros((n,) + np.shape(value), np.float32)
                for i, e in enumerate(estimates):
                    if e.ok:
                        stack[i] = getattr(e, group)[key]
                out[f"{group}/{key}"] = stack
    return out


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed-member npz via a temporary file and ``os.replace`` (no pickles)."""

    for key, value in arrays.items():
        if value.dtype == object:  # pragma: no cover - guarded by construction
            raise ValueError(f"array {key!r} has dtype object; npz outputs must load without pickles")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def person_masks(segmenter: Segmenter | None, images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
    """The segmenter's (H, W) bool person mask of each image (photos differ in size: one call each);
    None where there is no segmenter or it found no person."""
    if segmenter is None:
        return [None] * len(images)
    masks: list[np.ndarray | None] = []
    for image in images:
        seg = segmenter.segment(np.asarray(image, np.uint8)[None])
        masks.append(seg.person[0] if bool(seg.person_found[0]) else None)
    return masks


def render_preview(image: np.ndarray, estimate: Estimate, body=None, mask: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the photo with the fitted mesh's silhouette (tinted) and outline, the
    detector's landmarks (red dots), the fitted COCO-17 skeleton (green) and, given the person mask
    the fit used, its outline (yellow); a banner when not ok."""
    import cv2

    canvas = image.copy()
    height, width = image.shape[:2]
    if mask is not None:
        contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, (255, 220, 0), 1, lineType=cv2.LINE_AA)
    if estimate.ok and body is not None:
        import torch


        params = {k: torch.as_tensor(v)[None] for k, v in estimate.params.items()}
        with torch.no_grad():
            verts = body(params).vertices.numpy()
        mask = get_renderer("auto").render(verts, body.faces.numpy(), np.asarray(estimate.K, np.float32)[None],
                                           (height, width)).mask[0]
        tint = np.array([60, 140, 255], np.float32)
        canvas[mask] = (0.55 * canvas[mask] + 0.45 * tint).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, (255, 255, 255), 1, lineType=cv2.LINE_AA)
    radius = max(2, round(min(height, width) / 150))
    if estimate.ok:
        kp = estimate.keypoints2d
        for a, b in COCO17_EDGES:
            i, j = COCO17.index(a), COCO17.index(b)
            p, q = tuple(np.round(kp[i, :2]).astype(int)), tuple(np.round(kp[j, :2]).astype(int))
            cv2.line(canvas, p, q, (40, 220, 40), max(1, radius // 2), lineType=cv2.LINE_AA)
    for u, v, vis in np.asarray(estimate.landmarks2d):
        if vis >= 0.3:
            cv2.circle(canvas, (int(round(u)), int(round(v))), radius, (230, 30, 30), -1, lineType=cv2.LINE_AA)
    if not estimate.ok:
        cv2.putText(canvas, estimate.reason, (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 40, 40), 1, cv2.LINE_AA)
    return canvas


def estimate(config: EstimateConfig) -> dict[str, np.ndarray]:
    """Python API of ``dhpc estimate``: the estimator ``config`` names, run on ``config.images``.

    Writes ``config.out`` (the npz, see the module docstring) and one preview PNG per image into
    ``config.preview_dir``.

    Example::

        from diffusion_hpc.config import EstimateConfig
        from diffusion_hpc.estimate.run import estimate

        arrays = estimate(EstimateConfig(images=["photos/"], out="fits.npz"))
        arrays["ok"], arrays["params/body_pose"]

    Returns:
        the arrays written to ``config.out``.
    """
    c = config
    files = collect_images(c.images)  # before any model loads: a missing path fails at once
    placement = resolve_placement(c.device, c.dtype, diffusion=False)  # an unavailable device fails here too
    if c.estimator == "mediapipe":
        on_device = landmark_runtime(c.landmark_runtime, placement.device) == "torch"
        if not on_device and ((c.device != "auto" and placement.device.type != "cpu") or c.dtype not in ("auto", "float32")):
            raise ConfigError(f"--device {c.device} --dtype {c.dtype}: the MediaPipe fit runs on the CPU in float32 "
                              "with MediaPipe's own graph (--landmark-runtime mediapipe); leave --device / --dtype out, "
                              "pass --landmark-runtime torch to run Pose's models on that device, or use --estimator "
                              "hmr|spin|hmr2 to regress on a GPU")  # fmt: skip
        estimator = mediapipe_fitter_for_run(body_model=c.fit_body_model, prior="default" if c.prior else None,
                                             model_path=c.smpl_path, lifter=c.lifter, views=c.landmark_views,
                                             compile_fit=c.compile_fit, landmark_runtime=c.landmark_runtime,
                                             device=placement.device, dtype=placement.dtype)
        segmenter = make_segmenter(c.segmenter) if c.masks else None
    elif c.estimator == "spin":
        estimator = get_estimator("spin", checkpoint=c.checkpoint, smpl_path=c.smpl_path, mean_params=c.mean_params,
                                  device=placement.device, dtype=placement.dtype)  # fmt: skip
    elif c.estimator == "hmr2":
        estimator = get_estimator("hmr2", checkpoint=c.checkpoint, smpl_path=c.smpl_path,
                                  device=placement.device, dtype=placement.dtype)  # fmt: skip
    else:
        estimator = get_estimator(c.estimator, checkpoint=c.checkpoint, model_path=c.smpl_path,
                                  device=placement.device, dtype=placement.dtype)  # fmt: skip
    return estimate_files(files, c.out, estimator, batch_size=c.batch_size, preview_dir=c.preview_dir,
                          segmenter=segmenter if c.estimator == "mediapipe" else None)


def estimate_files(paths_or_dir, out_npz: str | Path, estimator, *, batch_size: int = 16,
                   preview_dir: str | Path | None = None, segmenter: Segmenter | None = None) -> dict[str, np.ndarray]:
    """Run an ``estimator`` instance (:func:`diffusion_hpc.estimate.get_estimator`) on image files.

    :func:`estimate` builds the estimator from a config and calls this; call it yourself to
    reuse one estimator over several calls, or to run your own :class:`~.base.MeshEstimator`.

    Every input is read first (an unreadable file fails before any estimation, naming the file),
    then images are estimated ``batch_size`` at a time, the npz written atomically, and with
    ``preview_dir`` one ``<stem>.png`` preview per image (see :func:`render_preview`).

    Args:
        paths_or_dir: image files and / or folders (see :func:`collect_images`).
        out_npz: results file (``.npz``).
        estimator: the mesh estimator; its ``body_model`` names the npz's body model.
        segmenter: hands each photo's person mask to an estimator that uses masks
            (:func:`~.base.estimate_with_masks`; the MediaPipe fit); None: fit without masks.
    Returns:
        the arrays written to ``out_npz``.
    """

    out_npz = Path(out_npz)
    if out_npz.suffix != ".npz":
        raise InputError(f"--out {out_npz} must end in .npz")
    files = collect_images(paths_or_dir)
    images = [load_image(p) for p in files]
    body_model = estimator.body_model
    if not getattr(estimator, "uses_masks", False):
        segmenter = None  # a regressor never looks at masks: do not segment for it
    estimates: list[Estimate] = []
    masks: list[np.ndarray | None] = []
    for lo in range(0, len(images), batch_size):
        batch = images[lo:lo + batch_size]
        batch_masks = person_masks(segmenter, batch)
        estimates.extend(estimate_with_masks(estimator, batch, batch_masks if segmenter is not None else None))
        masks.extend(batch_masks)
    arrays = estimates_to_arrays(estimates, [str(p) for p in files], body_model)
    arrays["mask_pixels"] = np.array([0 if m is None else int(m.sum()) for m in masks], np.int64)
    arrays["estimator"] = np.array(json.dumps(describe_estimator(estimator), sort_keys=True), dtype=np.str_)
    write_npz_atomic(out_npz, arrays)
    if preview_dir is not None:
        preview_dir = Path(preview_dir)
        preview_dir.mkdir(parents=True, exist_ok=True)
        body = getattr(estimator, "body", None)
        stems: dict[str, int] = {}
        for path, image, est, mask in zip(files, images, estimates, masks):
            stem = path.stem if path.stem not in stems else f"{path.stem}-{stems[path.stem]}"
            stems[path.stem] = stems.get(path.stem, 0) + 1
            atomic_write_bytes(preview_dir / f"{stem}.png", encode_png(render_preview(image, est, body, mask)))
    ok = int(arrays["ok"].sum())
    log.info("estimated %d of %d images (%s)", ok, len(files), out_npz)
    return arrays
