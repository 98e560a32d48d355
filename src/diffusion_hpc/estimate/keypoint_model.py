"""A top-down 2D keypoint model (ViTPose through transformers) reading COCO-17 keypoints of people whose
boxes are known: label verification's ``--verify-by keypoint-model``.

Top-down: verification knows where each person should be (the box of the label's rendered silhouette),
so no person detector runs; the people of a batch go through one batched forward (chunks of
:data:`CHUNK` boxes) on the run's device, in the run's precision (float16 only on a GPU). The work
around the forward runs on the same device too, as torch ops, not on the host:

- crops: each box is widened to the model input's aspect ratio and padded x :data:`BOX_PADDING`
  (transformers' ``box_to_center_and_scale``), and its pixels are sampled bilinearly
  (``grid_sample``) into the model's input size (``backbone_config.image_size``, (H, W)), then
  rescaled and normalised with the checkpoint's image processor's mean and std. The output pixel
  ``i`` of ``W`` looks at ``x0 + i * box_w / (W - 1)``: the "unbiased" warp of transformers'
  ``get_warp_matrix`` (``VitPoseImageProcessorPil.preprocess``), pixel centres at integer coordinates.
- decoding: each heatmap's arg-max, refined as transformers' ``post_process_pose_estimation``
  does (DARK: Gaussian blur sigma 0.8 over 11 taps, log, one Newton step from the 3x3 neighbourhood,
  the blur computed at those 9 points only;
  here the step is clipped to one heatmap cell and the point to the heatmap, where transformers lets
  a flat heatmap throw the point anywhere), mapped back with ``x0 + x * box_w / (w - 1)``. A joint's score is its heatmap's
  maximum, clipped to [0, 1].

Keypoint order: the checkpoint's ``config.id2label`` names its keypoints (ViTPose's COCO checkpoints:
``Nose``, ``L_Eye``, ... ``R_Ankle``); they are mapped to :data:`~diffusion_hpc.body.joint_sets.COCO17`
by name, and a checkpoint whose names are not the 17 COCO keypoints is refused. The MoE backbones
(ViTPose+, ``num_experts`` > 1) get ``dataset_index`` 0, COCO's head in those checkpoints.

Person found: the mean of the :data:`FOUND_TOP` best joint scores >= :data:`FOUND_SCORE`. Both are
uncalibrated guesses: no real ViTPose weights were on the machine this was written on (nothing may be
downloaded), so the reader was tested with tiny random models only and its accuracy is unmeasured.

CPU cost (``scripts/bench_keypoint_model.py``: process CPU time per person, batch 16, one person on
each of 16 images, float32, everything on the CPU of a 2-core machine, 1 torch thread): the work
around the model (crops + decoding) 0.38-0.40 ms with the tiny test model and 1.6 ms with a
ViTPose-B-shaped one (random weights) at 128 and at 256 px images; the ViTPose-B forward itself
0.47-0.49 s a person on this CPU (on a GPU it runs on the device; the crops and the decoding follow it
there and the host uploads the images and reads back (N, 17, 3) floats). transformers' own host-side
path (``VitPoseImageProcessorPil`` + ``post_process_pose_estimation``) costs 7.0-7.3 ms a person on
the same boxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from diffusion_hpc.body.joint_sets import COCO17
from diffusion_hpc.errors import ConfigError, InputError
from diffusion_hpc.estimate.base import KeypointReading
from diffusion_hpc.runtime.device import resolve_device
from diffusion_hpc.runtime.images import check_image

#: boxes a forward call reads at most (memory: CHUNK x 3 x 256 x 192 inputs)
CHUNK = 64
#: a box is padded by this factor around its centre (transformers' ``box_to_center_and_scale``)
BOX_PADDING = 1.25
#: DARK refinement: Gaussian blur of the heatmaps (transformers' ``post_process_pose_estimation``:
#: kernel 11, sigma 0.8) before the log and the Newton step
DARK_KERNEL = 11
DARK_SIGMA = 0.8
#: a person counts as found when the mean of its FOUND_TOP best joint scores is >= FOUND_SCORE
#: (uncalibrated: chosen without real weights; a real ViTPose scores seen joints about 0.6-0.95)
FOUND_TOP = 8
FOUND_SCORE = 0.3


def coco17_order(id2label: dict) -> np.ndarray:
    """(17,) int: for each COCO-17 joint (:data:`COCO17` order) the index of the model's output channel.

    Names are compared lower case with ``L_`` / ``R_`` / ``left `` prefixes spelled ``left_`` / ``right_``
    (ViTPose's ``L_Shoulder`` -> ``left_shoulder``).

    Raises:
        ConfigError: the labels are not the 17 COCO keypoints.
    """
    def canonical(name: str) -> str:
        n = str(name).strip().lower().replace(" ", "_").replace("-", "_")
        for short, long in (("l_", "left_"), ("r_", "right_")):
            if n.startswith(short):
                n = long + n[len(short):]
        return n

    names = {canonical(v): int(k) for k, v in id2label.items()}
    if len(id2label) != len(COCO17) or set(names) != set(COCO17):
        shown = ", ".join(str(id2label[k]) for k in sorted(id2label, key=int)[:20])
        raise ConfigError(f"keypoint model: its config's id2label names {len(id2label)} keypoints ({shown}), not "
                          f"the 17 COCO keypoints ({', '.join(COCO17)}); pass a COCO-trained top-down keypoint "
                          "checkpoint (e.g. a ViTPose COCO checkpoint) to --keypoint-model")
    return np.array([names[j] for j in COCO17], np.int64)


def padded_boxes(boxes: np.ndarray, aspect: float, padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """Each box widened to ``aspect`` (width / height of the model input) and padded, as transformers'
    ``box_to_center_and_scale`` (without its /200 unit).

    Args:
        boxes: (N, 4) x0, y0, x1, y1 in pixels (box edges; pixel centres at integers).
    Returns:
        centres (N, 2) px and sizes (N, 2) width, height px of the region the model reads.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    w, h = np.where(w > aspect * h, w, h * aspect), np.where(w > aspect * h, w / aspect, h)
    return centre, np.stack([w, h], axis=1) * padding


def check_boxes(boxes: np.ndarray, owner: np.ndarray, sizes: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """``boxes`` as (N, 4) float64 and ``owner`` as (N,) int64, checked.

    Raises:
        InputError: a box that is not finite or has no area, an owner that names no image.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    owner = np.asarray(owner, np.int64).reshape(-1)
    if len(owner) != len(boxes):
        raise InputError(f"read_on_boxes: {len(boxes)} boxes but {len(owner)} owners; pass one image index per box")
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        raise InputError(f"read_on_boxes: box {int(np.argmax(bad))} {boxes[bad][0].tolist()} is not x0 < x1, y0 < y1 "
                         "in pixels; pass finite xyxy boxes with an area")
    if len(owner) and (owner.min() < 0 or owner.max() >= len(sizes)):
        raise InputError(f"read_on_boxes: owner indices must lie in [0, {len(sizes)}), got {owner.min()}..{owner.max()}")
    return boxes, owner


class KeypointModel:
    """A transformers top-down keypoint checkpoint (``VitPoseForPoseEstimation``) loaded from disk
    (``local_files_only=True``), moved to ``device`` once.

    Args:
        path: a local checkpoint folder (config.json, weights, preprocessor_config.json).
        device: ``--device`` name or a ``torch.device``; dtype: the forward's ``torch.dtype`` (the
            crops and the decoding run in float32).
    Raises:
        ConfigError: the checkpoint's keypoints are not COCO-17 (:func:`coco17_order`).
    """

    def __init__(self, path: str | Path, device="cpu", dtype=None) -> None:
        import torch
        from transformers import VitPoseForPoseEstimation
        from transformers.models.vitpose.image_processing_pil_vitpose import VitPoseImageProcessorPil

        self.path = Path(path)
        self.name = f"keypoint-model:{self.path.name}"
        self.device = resolve_device(str(device))
        self.dtype = dtype or torch.float32
        processor = VitPoseImageProcessorPil.from_pretrained(str(self.path), local_files_only=True)
        self.model = VitPoseForPoseEstimation.from_pretrained(str(self.path), local_files_only=True)
        self.model.eval().to(device=self.device, dtype=self.dtype)
        self.order = coco17_order(self.model.config.id2label)
        backbone = self.model.config.backbone_config
        self.input_size = tuple(int(s) for s in backbone.image_size)  # (H, W)
        size = (processor.size["height"], processor.size["width"])
        if size != self.input_size:
            raise ConfigError(f"keypoint model {self.path.name}: its image processor crops {size} but the backbone "
                              f"reads {self.input_size}; pass a checkpoint whose preprocessor_config.json matches")
        self.experts = int(getattr(backbone, "num_experts", 1))
        scale = float(processor.rescale_factor) if processor.do_rescale else 1.0
        mean = np.asarray(processor.image_mean if processor.do_normalize else [0.0] * 3, np.float32)
        std = np.asarray(processor.image_std if processor.do_normalize else [1.0] * 3, np.float32)
        # pixel p (0..255) -> (p * scale - mean) / std = p * a + b
        self._a = torch.as_tensor(scale / std, device=self.device).view(1, 3, 1, 1)
        self._b = torch.as_tensor(-mean / std, device=self.device).view(1, 3, 1, 1)
        g = np.exp(-0.5 * (np.arange(DARK_KERNEL) - DARK_KERNEL // 2) ** 2 / DARK_SIGMA**2)
        self._blur = torch.as_tensor(g / g.sum(), dtype=torch.float32, device=self.device)

    # -- the API --------------------------------------------------------------------------------

    def read_on_boxes(self, images: Sequence[np.ndarray], boxes: np.ndarray, owner: np.ndarray) -> list[KeypointReading]:
        """COCO-17 keypoints of the person in each box, one batched forward per :data:`CHUNK` boxes.

        Args:
            images: M (H, W, 3) uint8 RGB arrays (sizes may differ).
            boxes: (N, 4) x0, y0, x1, y1 px of each person (edges; pixel centres at integers).
            owner: (N,) int, the image each box lies on.
        Returns:
            N readings: (17, 3) u, v px in the owner image and the joint's score in [0, 1]; ``ok`` when
            the person counts as found (module docstring).
        """
        images = [check_image(im, f"read_on_boxes: images[{i}]") for i, im in enumerate(images)]
        boxes, owner = check_boxes(boxes, owner, [im.shape[:2] for im in images])
        keypoints = np.zeros((len(boxes), len(COCO17), 3))
        for lo in range(0, len(boxes), CHUNK):
            keypoints[lo:lo + CHUNK] = self._read_chunk(images, boxes[lo:lo + CHUNK], owner[lo:lo + CHUNK])
        readings = []
        for k in keypoints:
            found = np.sort(k[:, 2])[-FOUND_TOP:].mean() >= FOUND_SCORE
            readings.append(KeypointReading(bool(found), "" if found else "no person found (keypoint scores below "
                                            f"{FOUND_SCORE})", k))  # fmt: skip
        return readings

    def describe(self) -> dict:
        """What ran, without a machine path: the checkpoint folder's name, input size, backbone width and depth."""
        backbone = self.model.config.backbone_config
        return {"name": self.name, "input_size": list(self.input_size), "hidden_size": int(backbone.hidden_size),
                "layers": int(backbone.num_hidden_layers), "experts": self.experts}  # fmt: skip

    # -- pieces ---------------------------------------------------------------------------------

    def _read_chunk(self, images, boxes: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """(n, 17, 3) keypoints of n boxes: crops, one forward, decoding."""
        import torch

        H, W = self.input_size
        centre, size = padded_boxes(boxes, W / H)
        origin = centre - size / 2
        crops = self._crops(images, origin, size, owner)
        with torch.inference_mode():
            extra = {}
            if self.experts > 1:
                extra["dataset_index"] = torch.zeros(len(boxes), dtype=torch.long, device=self.device)
            heatmaps = self.model(pixel_values=crops.to(self.dtype), **extra).heatmaps.float()
            heatmaps = heatmaps[:, torch.as_tensor(self.order, device=self.device)]
            xy, score = self._decode(heatmaps)
            h, w = heatmaps.shape[-2:]
            cell = torch.as_tensor(size / np.array([w - 1, h - 1]), dtype=torch.float32, device=self.device)
            uv = torch.as_tensor(origin, dtype=torch.float32, device=self.device)[:, None] + xy * cell[:, None]
            out = torch.cat([uv, score.clamp(0, 1)[..., None]], dim=-1)
        return out.cpu().numpy().astype(np.float64)

    def _crops(self, images, origin: np.ndarray, size: np.ndarray, owner: np.ndarray):
        """(n, 3, H, W) float32 normalised model inputs: each box's region of its image, bilinear, zeros outside."""
        import torch
        import torch.nn.functional as F

        H, W = self.input_size
        out = torch.empty((len(owner), 3, H, W), dtype=torch.float32, device=self.device)
        steps = [torch.linspace(0, 1, n, device=self.device, dtype=torch.float64) for n in (H, W)]
        with torch.inference_mode():
            for m in np.unique(owner):
                rows = np.nonzero(owner == m)[0]
                ih, iw = images[m].shape[:2]
                image = torch.from_numpy(np.ascontiguousarray(images[m])).to(self.device).permute(2, 0, 1)[None].float()
                o = torch.as_tensor(origin[rows], device=self.device)
                s = torch.as_tensor(size[rows], device=self.device)
                # source pixel of output pixel (i, j) -> grid_sample's [-1, 1] (align_corners: -1 = pixel 0)
                x = (o[:, 0:1] + steps[1][None] * s[:, 0:1]) * (2 / max(iw - 1, 1)) - 1  # (n, W)
                y = (o[:, 1:2] + steps[0][None] * s[:, 1:2]) * (2 / max(ih - 1, 1)) - 1  # (n, H)
                grid = torch.stack(torch.broadcast_tensors(x[:, None, :], y[:, :, None]), dim=-1).float()
                out[torch.as_tensor(rows, device=self.device)] = F.grid_sample(
                    image.expand(len(rows), -1, -1, -1), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            return out * self._a + self._b

    def _decode(self, heatmaps):
        """Heatmaps (n, K, h, w) -> (xy (n, K, 2) heatmap px, score (n, K)): arg-max + DARK, as transformers.

        transformers blurs every heatmap whole (scipy, mode "reflect") and then reads the blurred log
        heatmap (edges replicated) at the arg-max's 3 x 3 neighbourhood; the blur is computed here at
        those 9 points only, from the (3 + 10) x (3 + 10) patch around the arg-max (same values)."""
        import torch

        n, k, h, w = heatmaps.shape
        dev = heatmaps.device
        score, idx = heatmaps.flatten(2).max(dim=-1)
        x, y = (idx % w), torch.div(idx, w, rounding_mode="floor")
        r = DARK_KERNEL // 2
        near = torch.arange(-1, 2, device=dev)
        taps = torch.arange(-r, r + 1, device=dev)

        def reflect(i, size: int):  # scipy's "reflect" = half-sample symmetric (d c b a | a b c d), r <= size
            i = torch.where(i < 0, -i - 1, i)
            return torch.where(i >= size, 2 * size - i - 1, i)

        # neighbour a of the arg-max (edges replicated), then the blur's taps about it: (n, K, 3, 11)
        rows = reflect((y[..., None] + near).clamp(0, h - 1)[..., None] + taps, h)
        cols = reflect((x[..., None] + near).clamp(0, w - 1)[..., None] + taps, w)
        flat = rows[:, :, :, :, None, None] * w + cols[:, :, None, None, :, :]  # (n, K, 3, 11, 3, 11)
        patch = heatmaps.flatten(2).gather(2, flat.reshape(n, k, -1)).reshape(flat.shape)
        logs = torch.einsum("nkaibj,i,j->nkab", patch, self._blur, self._blur).clamp(0.001, 50).log()  # (n, K, 3, 3)

        def value(dy: int, dx: int):
            return logs[:, :, 1 + dy, 1 + dx]

        c = value(0, 0)
        dx = 0.5 * (value(0, 1) - value(0, -1))
        dy = 0.5 * (value(1, 0) - value(-1, 0))
        dxx = value(0, 1) - 2 * c + value(0, -1)
        dyy = value(1, 0) - 2 * c + value(-1, 0)
        dxy = 0.5 * (value(1, 1) - value(0, 1) - value(1, 0) + 2 * c - value(0, -1) - value(-1, 0) + value(-1, -1))
        eps = float(np.finfo(np.float32).eps)
        a, d = dxx + eps, dyy + eps
        det = a * d - dxy * dxy
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        step_x = (d * dx - dxy * dy) / det
        step_y = (a * dy - dxy * dx) / det
        xy = torch.stack([(x.float() - step_x.clamp(-1, 1)).clamp(0, w - 1),
                          (y.float() - step_y.clamp(-1, 1)).clamp(0, h - 1)], dim=-1)  # fmt: skip
        return xy, score
