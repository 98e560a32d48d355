"""Mesh estimation with an HMR-style regressor checkpoint (the project's own :mod:`diffusion_hpc.hmr`).

Pipeline per call: a person box per image (from MediaPipe Pose landmarks, or given by the caller),
a square crop, one batched regressor forward, then the crop camera turned into a camera for the
full image.

Box (:meth:`~.landmarks.Detection.box`): the visible MediaPipe landmarks (visibility >=
:data:`~.landmarks.MIN_VISIBILITY`), their bounding box's longer side times
:data:`~diffusion_hpc.geometry.boxes.BOX_EXPAND` (1.2), square, same centre. An image without a
person gives ``Estimate(ok=False, reason="no person found")``.

Crop: :func:`diffusion_hpc.geometry.boxes.crop_matrix` (image px -> crop px,
``u -> (S / b)(u - c) + (S - 1) / 2`` for box centre ``c``, side ``b``, crop side ``S``), bilinear,
zero border, RGB in [0, 1], exactly as the training crops.

Camera conversion. The regressor predicts SPIN's weak-perspective camera ``(s, tx, ty)`` in
normalised crop coordinates and its translation ``t_c = (tx, ty, f_n / s)``, with the fixed
normalised focal ``f_n = 2 * 5000 / 224`` (:data:`~diffusion_hpc.hmr.model.NORMALISED_FOCAL`):
a crop point is ``u_n = f_n (X + t_c)_xy / (X + t_c)_z``. Mapped back to image pixels through the
crop transform this is a pinhole camera with principal point at the box centre ``c`` and focal

    f = f_n * b / 2 = 5000 * b / 224    (= 5000 * b / S at SPIN's S = 224; pixels of the full image)

so the full-image ``K`` uses that focal (one per image: it depends on the box side) and the
principal point ``p`` at the image centre ``((W - 1) / 2, (H - 1) / 2)``. Moving the principal
point from ``c`` to ``p`` is compensated by shifting the body sideways at its root depth
``z = t_c[2]``:

    t = t_c + ((c_x - p_x) z / f, (c_y - p_y) z / f, 0)

This is exact for points at depth ``z``; a point at depth ``z'`` lands ``(c - p)(z - z') / z'``
pixels away from the crop-space projection (a fraction of a pixel: ``z`` is tens of metres with
SPIN's focal, the body's depth extent tenths). ``principal_point="box"`` instead puts the principal
point of ``K`` at the box centre and keeps ``t = t_c`` (exact, but an off-centre ``K``).

``params`` are the regressor's camera-frame rotations and shape plus ``transl = t``; ``joints3d``
is the body model's forward pass with them; ``keypoints2d`` is COCO-17 of ``joints3d`` projected
through ``K``, with the detector's COCO-17 visibilities as the third column (ones when the box came
from the caller). ``confidence``: the detector's mean COCO-17 visibility times
``exp(-fit_px / (0.05 * person_px))`` (``fit_px``: median distance between the projected and the
detected COCO-17 keypoints), the MediaPipe fitter's
:func:`~diffusion_hpc.estimate.landmarks.keypoint_agreement`; 1.0 for caller boxes (no evidence).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from diffusion_hpc.body import check_body_model, get_body_model
from diffusion_hpc.errors import MissingModelError
from diffusion_hpc.estimate.base import Estimate, MeshEstimator
from diffusion_hpc.estimate.landmarks import (
    MIN_VISIBILITY,
    MediaPipeDetector,
    coco17_from_mediapipe,
    keypoint_agreement,
)
from diffusion_hpc.geometry.boxes import crop_matrix
from diffusion_hpc.geometry.camera import project
from diffusion_hpc.hmr.init import load_regressor_spec
from diffusion_hpc.hmr.model import EXPORT_CONFIG, EXPORT_WEIGHTS, NORMALISED_FOCAL
from diffusion_hpc.runtime.device import dtype_name, resolve_placement
from diffusion_hpc.runtime.images import check_image

#: regressor forward batch size
BATCH = 16
#: the outputs of a regressor the estimate is made of (every layout gives them, see diffusion_hpc.hmr.init)
REGRESSOR_OUTPUTS = ("global_orient", "body_pose", "shape", "cam_t")

Box = tuple  # (centre (2,), side px)

#: bytes read at a time when fingerprinting a checkpoint
CHUNK = 1 << 20


def checkpoint_fingerprint(files: Sequence[str | Path]) -> str:
    """16 hex digits of a SHA-256 over the names and full contents of a checkpoint's ``files``.

    Every byte counts (unlike a diffusion backbone's size-based fingerprint): regressors retrained
    on other data have the same architecture and file sizes, so only the content tells them apart.
    Same files, same fingerprint, on any machine; no path enters it.
    """
    h = hashlib.sha256()
    for f in files:
        f = Path(f)
        h.update(f"{f.name}\0{f.stat().st_size}\n".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()[:16]


def exported_regressor_files(checkpoint: str | Path) -> tuple[Path, Path]:
    """``(regressor.json, regressor.safetensors)`` of an exported regressor given as its folder or a
    file in it (a ``dhpc train`` run folder, ``RUN/best``).

    Raises:
        MissingModelError: the folder does not exist or lacks either file.
    """
    root = Path(checkpoint).expanduser()
    if root.is_file():
        root = root.parent
    files = (root / EXPORT_CONFIG, root / EXPORT_WEIGHTS)
    if not all(f.is_file() for f in files):
        raise MissingModelError(f"HMR checkpoint {checkpoint} does not exist or holds no exported regressor (pass "
                                f"a dhpc train run folder, or any folder with {EXPORT_CONFIG} + {EXPORT_WEIGHTS})")
    return files


#: the body model of the pretrained layouts a run may fine-tune (``regressor.json``'s ``architecture``)
ARCHITECTURE_BODY_MODELS = {"spin": "smpl", "hmr2": "smpl"}


def exported_body_model(checkpoint: str | Path) -> str:
    """The body model an exported regressor predicts (read from its ``regressor.json``; no weights load)."""
    import json

    config, _ = exported_regressor_files(checkpoint)
    try:
        described = json.loads(config.read_text())
        architecture = described.get("architecture", "dhpc")
        return ARCHITECTURE_BODY_MODELS.get(architecture) or str(described["body_spec"]["name"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MissingModelError(f"{config} is not a regressor description (no body_spec.name: {exc})") from None


def check_regressor_options(detector: str | None, principal_point: str) -> None:
    if detector not in ("mediapipe", None):
        raise ValueError(f"detector must be 'mediapipe' or None, got {detector!r}")
    if principal_point not in ("image", "box"):
        raise ValueError(f"principal_point must be 'image' or 'box', got {principal_point!r}")


def crop_image(image: np.ndarray, center: np.ndarray, side: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """((3, S, S) float32 RGB in [0, 1], (3, 3) image px -> crop px) for a square box."""
    import cv2

    A = crop_matrix(np.asarray(center, np.float64), float(side), size)
    crop = cv2.warpAffine(np.ascontiguousarray(image), A[:2], (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    return (crop.astype(np.float32) / 255.0).transpose(2, 0, 1), A


def image_camera(cam_t: np.ndarray, center: np.ndarray, side: float, image_size: tuple[int, int],
                 normalised_focal: float | None = None, principal_point: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Full-image ``(K (3, 3), transl (3,))`` from the crop-camera translation (module docstring).

    Args:
        cam_t: (3,) crop-camera translation ``(tx, ty, f_n / s)``.
        center, side: the crop's box in image pixels.
        image_size: (height, width) of the image.
        normalised_focal: ``f_n`` (default the regressor's, ``2 * 5000 / 224``).
        principal_point: ``"image"`` (image centre, body shifted) or ``"box"`` (box centre, exact).
    """

    fn = NORMALISED_FOCAL if normalised_focal is None else normalised_focal
    f = fn * float(side) / 2.0
    c = np.asarray(center, np.float64)
    t = np.asarray(cam_t, np.float64).copy()
    if principal_point == "box":
        p = c
    elif principal_point == "image":
        height, width = image_size
        p = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
        t[:2] += (c - p) * t[2] / f
    else:
        raise ValueError(f"principal_point must be 'image' or 'box', got {principal_point!r}")
    K = np.array([[f, 0.0, p[0]], [0.0, f, p[1]], [0.0, 0.0, 1.0]])
    return K, t


class HMREstimator(MeshEstimator):
    """Mesh estimator from a regressor exported by ``dhpc train`` (our network, or SPIN's / HMR 2.0's
    layout fine-tuned), loaded through :func:`diffusion_hpc.hmr.init.load_regressor_spec`.

    Args:
        checkpoint: run folder, ``RUN/best`` (or a file in it) with ``regressor.json`` +
            ``regressor.safetensors``; loaded now, a missing one raises
            :class:`~diffusion_hpc.errors.MissingModelError` before any image is processed.
        detector: ``"mediapipe"`` (person boxes from MediaPipe Pose) or None (boxes must be passed
            to :meth:`estimate`).
        crop_size: crop side S in pixels (default: the network's: the ``crop_size`` of the run's
            ``train.yaml`` for ours, else 224; SPIN 224; HMR 2.0 256).
        model_path: SMPL/SMPL-X model file for SMPL regressors (ignored for Anny).
        principal_point: see :func:`image_camera`.
        device, dtype: where the regressor runs (``--device`` / ``--dtype`` names or torch objects;
            ``auto``: the first CUDA device, float32); moved there once. The body model and
            MediaPipe run on the CPU; outputs come back as float32 numpy.
    """

    name = "hmr"
    #: the spec prefix of this estimator's checkpoints (:func:`diffusion_hpc.hmr.init.parse_spec`)
    spec_kind = "dhpc"

    #: estimate(images, boxes=): each person of an image with several is estimated on its own box
    uses_boxes = True

    def __init__(self, checkpoint: str | Path, detector: str | None = "mediapipe", crop_size: int | None = None,
                 model_path: str | Path | None = None, principal_point: str = "image", device="cpu",
                 dtype="float32") -> None:  # fmt: skip
        if checkpoint is None:
            raise MissingModelError("HMR checkpoint not given (pass a dhpc train run folder: regressor.json + "
                                    "regressor.safetensors)")
        files = exported_regressor_files(checkpoint)
        self._load(files[1], files, exported_body_model(checkpoint), model_path, detector, principal_point, crop_size,
                   device, dtype)  # fmt: skip

    def _load(self, checkpoint: Path, files: Sequence[Path], body_model: str, model_path, detector,
              principal_point: str, crop_size: int | None, device="cpu", dtype="float32", mean_params=None) -> None:  # fmt: skip
        """Check the options and the body model's files (cheap), then load the network on its device
        and precision once. ``files``: the checkpoint files :meth:`describe` fingerprints."""
        check_regressor_options(detector, principal_point)
        check_body_model(body_model, model_path)
        self.placement = resolve_placement(str(device), dtype if isinstance(dtype, str) else dtype_name(dtype),
                                           diffusion=False)  # fmt: skip
        loaded = load_regressor_spec(f"{self.spec_kind}:{checkpoint}", device=self.placement.device,
                                     dtype=self.placement.dtype, mean_params=mean_params)  # fmt: skip
        self.regressor = loaded.network
        self.body_model, self.shape_key, self.model_path = loaded.body_model, loaded.network.spec.shape_key, model_path
        self.normalised_focal = float(loaded.normalised_focal)
        self.principal_point, self.crop_size = principal_point, int(crop_size or loaded.crop_size)
        self.architecture = loaded.architecture
        self.checkpoint_files = [Path(f) for f in files]
        self._fingerprint: str | None = None
        self.detector_name = detector
        self._detector = None
        self._body = None

    def describe(self) -> dict:
        """What ran, without a machine path: ``name``, ``body_model``, ``architecture`` (the
        network's layout), ``checkpoint`` (the run folder's or weights file's name) and
        ``fingerprint`` (:func:`checkpoint_fingerprint` of the checkpoint files, computed once)."""
        if self._fingerprint is None:
            self._fingerprint = checkpoint_fingerprint(self.checkpoint_files)
        first = self.checkpoint_files[0]
        return {"name": self.name, "body_model": self.body_model, "architecture": self.architecture,
                "checkpoint": first.parent.name if self.spec_kind == "dhpc" else first.name,
                "fingerprint": self._fingerprint}  # fmt: skip

    # -- pieces ------------------------------------------------------------------------------
    @property
    def body(self):
        if self._body is None:
            self._body = get_body_model(self.body_model, model_path=self.model_path)
        return self._body

    @property
    def detector(self):
        if self._detector is None and self.detector_name == "mediapipe":
            self._detector = MediaPipeDetector()
        return self._detector

    def regress_crops(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """Regressor outputs (numpy) for (N, 3, S, S) crops, in batches of :data:`BATCH`."""
        import torch

        outs: list[dict] = []
        dev, dtype = self.placement.device, self.placement.dtype
        with torch.no_grad():
            for i in range(0, len(crops), BATCH):
                pred = self.regressor(torch.as_tensor(crops[i : i + BATCH]).to(device=dev, dtype=dtype))
                outs.append({k: pred[k].float().cpu().numpy() for k in REGRESSOR_OUTPUTS})
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    # -- interface ---------------------------------------------------------------------------
    def estimate(self, images: Sequence[np.ndarray], boxes: Sequence[Box | None] | None = None) -> list[Estimate]:
        """One :class:`Estimate` per image.

        Args:
            images: (H, W, 3) uint8 RGB arrays.
            boxes: optional ``(centre (2,), side px)`` square person box per image (None entries
                use the detector); required when the estimator has no detector.
        """
        images = [check_image(im, f"images[{i}]") for i, im in enumerate(images)]
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"{len(boxes)} boxes for {len(images)} images")
        results: list[Estimate | None] = [None] * len(images)
        todo = []  # (index, centre, side, detection or None)
        for i, image in enumerate(images):
            box = None if boxes is None else boxes[i]
            det = None
            if box is None:
                if self.detector is None:
                    raise ValueError("this HMR estimator has no detector (detector=None): pass boxes=")
                det = self.detector.detect(image)
                box = None if det is None else det.box()
            if box is None:
                results[i] = Estimate(ok=False, reason="no person found", body_model=self.body_model,
                                      image_size=image.shape[:2])
                continue
            todo.append((i, np.asarray(box[0], np.float64), float(box[1]), det))
        if todo:
            for i, est in zip([t[0] for t in todo], self._estimate_boxes(images, todo)):
                results[i] = est
        return results  # type: ignore[return-value]

    def _estimate_boxes(self, images, todo) -> list[Estimate]:
        import torch


        S = self.crop_size
        crops = np.stack([crop_image(images[i], c, b, S)[0] for i, c, b, _ in todo])
        pred = self.regress_crops(crops)
        cams = [image_camera(pred["cam_t"][n], c, b, images[i].shape[:2], normalised_focal=self.normalised_focal,
                             principal_point=self.principal_point)
                for n, (i, c, b, _) in enumerate(todo)]  # fmt: skip
        params = {
            "global_orient": torch.as_tensor(pred["global_orient"]),
            "body_pose": torch.as_tensor(pred["body_pose"]),
            self.shape_key: torch.as_tensor(pred["shape"]),
            "transl": torch.as_tensor(np.stack([t for _, t in cams]), dtype=torch.float32),
        }
        with torch.no_grad():
            out = self.body(params)
        results = []
        for n, (i, c, b, det) in enumerate(todo):
            K = cams[n][0]
            joints = {name: j[n].numpy().astype(np.float32) for name, j in out.joints.items()}
            uv = project(joints["coco17"].astype(np.float64), K)
            if det is not None:
                detected = coco17_from_mediapipe(det.landmarks2d)
                fit_px, confidence = keypoint_agreement(uv, detected, detected[:, 2] >= MIN_VISIBILITY)
                vis, lm2d, lm3d, mask = detected[:, 2:3], det.landmarks2d, det.world, det.mask
            else:
                fit_px, confidence = float("nan"), 1.0
                vis, lm2d, lm3d, mask = np.ones((17, 1)), np.zeros((33, 3)), np.zeros((33, 3)), None
            results.append(Estimate(
                ok=True, reason="", body_model=self.body_model,
                params={k: v[n].numpy().astype(np.float32) for k, v in params.items()},
                K=K, joints3d=joints, keypoints2d=np.concatenate([uv, vis], axis=1), confidence=confidence,
                landmarks2d=lm2d, landmarks3d=lm3d, person_mask=mask, fit_error_px=fit_px,
                image_size=tuple(images[i].shape[:2]), fit_hypothesis="",
            ))
        return results
