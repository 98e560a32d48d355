"""CPU cost of verification's top-down keypoint reader (``--verify-by keypoint-model``,
:class:`~diffusion_hpc.estimate.keypoint_model.KeypointModel`): the work around the model (crops,
decoding) against the model's forward, per person, at batch 16 (16 images of one person each).

    .venv/bin/python scripts/bench_keypoint_model.py [--rounds 3] [--threads 1] [--sizes 128,256]

Random weights only (no real ViTPose on this machine): the figures are costs, not accuracy. Two models:
``tiny`` (the tests': input 64 x 48, width 32, one layer) and ``base`` (ViTPose-B's shape: input 256 x 192,
width 768, 12 layers, 12 heads). Everything runs on the CPU here; on a GPU the crops (``grid_sample``),
the forward and the decoding run on the device, and the host uploads the images and reads back
(N, 17, 3) floats. For comparison, transformers' own host-side path on the same boxes and heatmaps:
``VitPoseImageProcessorPil`` (scipy warp per box and channel) + ``post_process_pose_estimation``
(scipy blur per heatmap). Process CPU time (all threads), median of ``--rounds`` rounds, the variants
alternating within each round.

Measured (2-core shared machine, 1 torch thread, 3 rounds, float32 on the CPU; CPU ms per person):

=====  =====  =======================  =========  ===============================
model  image  reader around the model  forward    transformers' processor (host)
=====  =====  =======================  =========  ===============================
tiny   128    0.38                     0.20       1.14
tiny   256    0.40                     0.15       1.00
base   128    1.60                     486        7.30
base   256    1.63                     471        7.05
=====  =====  =======================  =========  ===============================

The reader's own work is the crops at the model's input size (``base``: 16 x 3 x 256 x 192 samples,
about 1.4 ms a person) plus the decoding (about 0.16 ms a person: DARK's blur is computed at the 9
points it reads, where blurring every whole heatmap cost 6.9 ms a person); the image size hardly
matters. A ViTPose-B forward is about 0.47 CPU s a person here: on the CPU the model is far dearer
than MediaPipe's landmark model (about 20 ms); it is meant for a GPU, where it runs beside the rest.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

BATCH = 16
NAMES = ["Nose", "L_Eye", "R_Eye", "L_Ear", "R_Ear", "L_Shoulder", "R_Shoulder", "L_Elbow", "R_Elbow",
         "L_Wrist", "R_Wrist", "L_Hip", "R_Hip", "L_Knee", "R_Knee", "L_Ankle", "R_Ankle"]  # fmt: skip
SHAPES = {
    "tiny": dict(image_size=[64, 48], hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2),
    "base": dict(image_size=[256, 192], hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4),
}


def save_model(folder: Path, shape: dict, names: Sequence[str] = NAMES, experts: int = 1) -> Path:
    """A random ViTPose of ``shape`` (:data:`SHAPES`) with keypoints ``names`` (ViTPose's COCO names by
    default) and ``experts`` MoE experts (ViTPose+; 1: none), and its image processor, saved to ``folder``
    (tests/test_keypoint_model.py's tiny models too)."""
    import torch
    from transformers import VitPoseConfig, VitPoseForPoseEstimation
    from transformers.models.vitpose.image_processing_pil_vitpose import VitPoseImageProcessorPil

    moe = {"num_experts": experts, "part_features": 8} if experts > 1 else {}
    backbone = dict(model_type="vitpose_backbone", patch_size=[16, 16], out_indices=[shape["num_hidden_layers"]],
                    **shape, **moe)  # fmt: skip
    config = VitPoseConfig(backbone_config=backbone, id2label=dict(enumerate(names)),
                           label2id={n: i for i, n in enumerate(names)})  # fmt: skip
    torch.manual_seed(0)
    VitPoseForPoseEstimation(config).save_pretrained(folder)
    h, w = shape["image_size"]
    VitPoseImageProcessorPil(size={"height": h, "width": w}).save_pretrained(folder)
    return folder


def cpu_bench_parser(doc: str, batch: int | None = None) -> argparse.ArgumentParser:
    """The options the CPU benchmarks of the device models share: ``--rounds`` (alternating rounds,
    medians printed) and ``--threads`` (torch's), and ``--batch`` with this default when given; the
    first line of ``doc`` as the description. Parse with :func:`parse_cpu_bench`."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    if batch is not None:
        parser.add_argument("--batch", type=int, default=batch)
    return parser


def parse_cpu_bench(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The parsed options of a :func:`cpu_bench_parser`, torch set to run on ``--threads`` threads."""
    import torch

    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


class TimedForward:
    """The model with the process CPU time of its forward calls summed (``seconds``), each call's also
    passed to ``report`` when given (everything else passes through to the model)."""

    def __init__(self, model, report=None) -> None:
        self.model, self.report, self.seconds, self.last = model, report, 0.0, None

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        t = time.process_time()
        out = self.model(*args, **kwargs)
        spent = time.process_time() - t
        self.seconds += spent
        if self.report is not None:
            self.report(spent)
        self.last = out
        return out


def inputs(size: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """BATCH (size, size, 3) images, one person box on each (xyxy, 40-80 % of the image high)."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(BATCH)]
    h = rng.uniform(0.4, 0.8, BATCH) * size
    w = h * rng.uniform(0.3, 0.6, BATCH)
    x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
    return images, np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def main() -> None:
    parser = cpu_bench_parser(__doc__)
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--models", default="tiny,base")
    args = parse_cpu_bench(parser)
    from transformers.models.vitpose.image_processing_pil_vitpose import VitPoseImageProcessorPil

    from diffusion_hpc.estimate.keypoint_model import KeypointModel

    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench_kp_"))
    readers = {}
    for name in args.models.split(","):
        folder = save_model(tmp / name, SHAPES[name])
        readers[name] = (KeypointModel(folder), VitPoseImageProcessorPil.from_pretrained(folder))
    times: dict[tuple, list[list[float]]] = {}
    for r in range(args.rounds):
        for name, (reader, processor) in readers.items():
            for size in sizes:
                images, boxes = inputs(size, r)
                timed = reader.model = TimedForward(reader.model if not isinstance(reader.model, TimedForward)
                                                    else reader.model.model)  # fmt: skip
                t = time.process_time()
                reader.read_on_boxes(images, boxes, np.arange(BATCH))
                total = time.process_time() - t
                coco = [[[b[0], b[1], b[2] - b[0], b[3] - b[1]]] for b in boxes]
                t = time.process_time()
                processor(images=images, boxes=coco, return_tensors="pt")
                processor.post_process_pose_estimation(timed.last, boxes=coco)
                theirs = time.process_time() - t
                times.setdefault((name, size), []).append([total - timed.seconds, timed.seconds, theirs])
    print(f"CPU ms per person, batch {BATCH}, {args.threads} torch thread(s), median of {args.rounds} rounds")
    print(f"{'model':6} {'image':>5} {'reader around model':>20} {'forward':>9} {'transformers host':>18}")
    for (name, size), rows in times.items():
        med = np.median(np.array(rows), axis=0) * 1000 / BATCH
        print(f"{name:6} {size:5d} {med[0]:20.2f} {med[1]:9.2f} {med[2]:18.2f}")


if __name__ == "__main__":
    main()
