"""The top-down keypoint reader (``verify_by keypoint-model``) on tiny random ViTPose checkpoints: a
person's keypoints come back where the model sees them in its crop, in the owner image's pixels, for
boxes of any place and size; all boxes of a batch go through one forward; the decoding is
transformers' own; a checkpoint without COCO-17 keypoints is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.models.vitpose.image_processing_pil_vitpose import VitPoseImageProcessorPil
from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput

from diffusion_hpc.body.joint_sets import COCO17
from diffusion_hpc.errors import ConfigError
from diffusion_hpc.estimate.keypoint_model import FOUND_SCORE, KeypointModel, coco17_order

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_keypoint_model import NAMES, SHAPES, save_model  # the benchmark's random ViTPose writer

#: ViTPose's COCO checkpoints' names (config.id2label)
VITPOSE_NAMES = list(NAMES)
INPUT = tuple(SHAPES["tiny"]["image_size"])  # (H, W) 64 x 48: heatmaps 16 x 12 (patch 16, scale 4)
#: each joint's peak this many heatmap cells right of what the stand-in model sees
OFFSETS = (np.arange(17) % 5 - 2) / 4


def save_tiny(folder, names=VITPOSE_NAMES, experts: int = 1):
    """A tiny random ViTPose (one layer, width 32) and its image processor saved to ``folder``."""
    return save_model(folder, SHAPES["tiny"], names, experts)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("vitpose"))


def blob(h: int, w: int, x: float, y: float, sigma: float = 1.5) -> torch.Tensor:
    """(h, w) a Gaussian peak of height 1 at heatmap pixel (x, y)."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


class SeesTheDot:
    """A stand-in forward: for each crop, heatmaps peaking where the crop's brightest pixel lies (joint j
    at that place + OFFSETS[j] heatmap cells right), at heatmap scale (crop pixel i of W -> i (w - 1) / (W - 1));
    counts its calls and batch sizes."""

    def __init__(self, reader: KeypointModel) -> None:
        self.reader, self.calls = reader, []
        self.inner = reader.model

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, pixel_values, **kwargs):
        self.calls.append(len(pixel_values))
        n, _, H, W = pixel_values.shape
        h, w = H // 4, W // 4
        maps = torch.zeros(n, 17, h, w)
        for i in range(n):
            red = pixel_values[i, 0].float()
            weight = (red > red.max() - 0.5).float()  # the dot's pixels
            yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
            cx, cy = (weight * xx).sum() / weight.sum(), (weight * yy).sum() / weight.sum()
            for j in range(17):
                maps[i, j] = blob(h, w, cx * (w - 1) / (W - 1) + OFFSETS[j], cy * (h - 1) / (H - 1))
        return VitPoseEstimatorOutput(heatmaps=maps)


def test_keypoints_land_where_the_model_sees_them_in_the_image(tiny):
    """Boxes of different places and sizes (some leaving the image) on nine images of three sizes, listed
    in another order than the images, each around a bright dot: every joint comes back on its image's dot
    (+ its offset in image pixels) within a tenth of a heatmap cell, and all boxes went through one forward."""
    reader = KeypointModel(tiny)
    fake = reader.model = SeesTheDot(reader)
    rng = np.random.default_rng(0)
    sizes = [(128, 128), (96, 160), (200, 90)] * 3
    owner = rng.permutation(len(sizes))
    images = [np.zeros((ih, iw, 3), np.uint8) for ih, iw in sizes]
    boxes, dots = [], []
    for m in owner:
        ih, iw = sizes[m]
        bw, bh = rng.uniform(15, 0.8 * iw), rng.uniform(15, 0.8 * ih)
        x0, y0 = rng.uniform(-0.1 * bw, iw - 0.9 * bw), rng.uniform(-0.1 * bh, ih - 0.9 * bh)
        dot = np.array([rng.uniform(max(x0, 2), min(x0 + bw, iw - 3)),
                        rng.uniform(max(y0, 2), min(y0 + bh, ih - 3))]).round()  # fmt: skip
        images[m][int(dot[1]) - 1:int(dot[1]) + 2, int(dot[0]) - 1:int(dot[0]) + 2] = 255
        boxes.append([x0, y0, x0 + bw, y0 + bh])
        dots.append(dot)
    readings = reader.read_on_boxes(images, np.array(boxes), owner)
    assert fake.calls == [9]
    for box, dot, reading in zip(boxes, dots, readings):
        # the region read: the box widened to W / H = 3 / 4 and padded 1.25; one heatmap cell in image px
        width = max(box[2] - box[0], (box[3] - box[1]) * 0.75) * 1.25
        cell = width / (INPUT[1] // 4 - 1)
        expected = dot[None] + np.stack([OFFSETS * cell, np.zeros(17)], axis=1)
        assert reading.ok and reading.keypoints2d[:, 2].min() > 0.85  # the peak's height at its nearest cell
        assert np.abs(reading.keypoints2d[:, :2] - expected).max() <= 0.1 * cell, (box, dot)


def test_the_decoding_is_transformers_own(tiny):
    """On the same heatmaps (peaks at sub-cell places, different for each joint, next to the edges too) and
    boxes, the reader's keypoints and scores are those of transformers' ``post_process_pose_estimation``; its crops are the
    image processor's pixel values (away from the image border, where the two samplers pad differently).
    (A peak in an edge cell differs: there transformers' step leaves the heatmap, the reader's stops at its edge.)"""
    reader = KeypointModel(tiny)
    processor = VitPoseImageProcessorPil.from_pretrained(tiny)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (120, 100, 3), dtype=np.uint8)
    boxes = np.array([[20.0, 10.0, 60.0, 100.0], [35.5, 40.2, 70.1, 70.9]])
    h, w = INPUT[0] // 4, INPUT[1] // 4
    maps = torch.stack([torch.stack([0.9 * blob(h, w, *rng.uniform([0.55, 0.55], [w - 1.55, h - 1.55]), sigma=2.0)
                                     for _ in range(17)]) for _ in boxes])  # fmt: skip
    seen = []

    def forward(pixel_values, **kwargs):
        seen.append(pixel_values)
        return VitPoseEstimatorOutput(heatmaps=maps)

    reader.model = forward
    ours = np.stack([r.keypoints2d for r in reader.read_on_boxes([image], boxes, np.zeros(2, int))])
    coco = [[[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes]]
    theirs = processor.post_process_pose_estimation(VitPoseEstimatorOutput(heatmaps=maps), boxes=coco)[0]
    for o, t in zip(ours, theirs):
        assert np.abs(o[:, :2] - t["keypoints"].numpy()).max() < 0.01
        assert np.allclose(o[:, 2], t["scores"].numpy(), atol=1e-6)
    pixels = processor(images=[image], boxes=coco, return_tensors="pt")["pixel_values"]
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # box 0's padded region leaves the image
    assert torch.allclose(seen[0][1:][inner], pixels[1:][inner].float(), atol=0.02)


def test_a_random_model_runs_batched_in_chunks(tiny, monkeypatch):
    """The real forward on 5 boxes over 2 images, 2 boxes a call: 3 calls, 17 COCO joints per box, finite,
    inside each box's padded region; a person is found by the rule of its scores."""
    import diffusion_hpc.estimate.keypoint_model as km

    monkeypatch.setattr(km, "CHUNK", 2)
    reader = KeypointModel(tiny)
    calls = []
    inner = reader.model.forward
    reader.model.forward = lambda *a, **k: calls.append(1) or inner(*a, **k)
    images = [np.full((64, 64, 3), 90, np.uint8), np.full((80, 50, 3), 200, np.uint8)]
    boxes = np.array([[0, 0, 64, 64], [10, 10, 30, 50], [5, 5, 45, 70], [0, 0, 50, 80], [20, 20, 40, 40.0]])
    readings = reader.read_on_boxes(images, boxes, np.array([0, 0, 1, 1, 0]))
    assert len(calls) == 3 and len(readings) == 5
    for box, r in zip(boxes, readings):
        k = r.keypoints2d
        assert k.shape == (17, 3) and np.isfinite(k).all()
        width = max(box[2] - box[0], (box[3] - box[1]) * 0.75) * 1.25
        assert np.all(np.abs(k[:, 0] - (box[0] + box[2]) / 2) <= width / 2 + 1e-6)
        assert r.ok == (np.sort(k[:, 2])[-8:].mean() >= FOUND_SCORE)


def test_the_moe_backbone_reads_with_coco_dataset_index(tmp_path):
    reader = KeypointModel(save_tiny(tmp_path / "moe", experts=2))
    [reading] = reader.read_on_boxes([np.zeros((64, 64, 3), np.uint8)], np.array([[8, 8, 40, 60.0]]), np.array([0]))
    assert np.isfinite(reading.keypoints2d).all()


def test_keypoint_names_map_to_coco17_and_others_are_refused(tmp_path):
    shuffled = VITPOSE_NAMES[::-1]
    order = coco17_order(dict(enumerate(shuffled)))
    assert [shuffled[i] for i in order] == VITPOSE_NAMES
    assert list(coco17_order({str(i): n for i, n in enumerate(COCO17)})) == list(range(17))
    with pytest.raises(ConfigError, match="id2label names 2 keypoints .*not the 17 COCO keypoints.*--keypoint-model"):
        coco17_order({0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ConfigError, match="not the 17 COCO keypoints"):
        KeypointModel(save_tiny(tmp_path / "mpii", names=[f"joint_{i}" for i in range(17)]))


# -- in a run: --verify-by keypoint-model ----------------------------------------------------------


def test_a_mode_r_run_verifies_every_sample_with_the_keypoint_model(tiny_backbone, tiny, tmp_path, one_thread):
    """Mode R, one photo, k = 1, verified by a tiny random ViTPose: every sample gets a pck_agreement, the
    batch's people go through one call of the model and MediaPipe reads no keypoints for verification;
    config.yaml records the reading and the model, run.json the model by folder name and fingerprint."""
    import json

    import skimage.data
    from PIL import Image

    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.pipeline.generate import Generator

    from conftest import manifest_rows

    guides = tmp_path / "guides"
    guides.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(guides / "astronaut.png")
    config = GenerateConfig(mode="R", guides=guides, backbone=str(tiny_backbone), image_size=(128, 128), n=3, k=1,
                            seed=9, batch_size=3, verify_by="keypoint-model", keypoint_model=str(tiny))  # fmt: skip
    gen = Generator(config, progress=False)
    gen.load_models()
    calls = {"read_on_boxes": [], "read_keypoints": 0}
    model = gen.stages.keypoint_model
    inner = model.read_on_boxes
    fitter = gen.stages.estimator.model
    reader = fitter.read_keypoints

    def read_on_boxes(images, boxes, owner):
        calls["read_on_boxes"].append(len(boxes))
        return inner(images, boxes, owner)

    def read_keypoints(*args, **kwargs):
        calls["read_keypoints"] += 1
        return reader(*args, **kwargs)

    model.read_on_boxes, fitter.read_keypoints = read_on_boxes, read_keypoints
    out = tmp_path / "out"
    gen.run(out)
    rows = manifest_rows(out)
    assert len(rows) == 3 and all(0.0 <= r["scores"]["pck_agreement"] <= 1.0 for r in rows)
    assert calls == {"read_on_boxes": [3], "read_keypoints": 0}
    stored = (out / "config.yaml").read_text()
    assert "verify_by: keypoint-model" in stored and f"keypoint_model: {tiny}" in stored
    ran = json.loads((out / "run.json").read_text())
    assert ran["verify_by"] == "keypoint-model"
    assert ran["keypoint_model"]["spec"] == tiny.name and len(ran["keypoint_model"]["fingerprint"]) == 16
    assert str(tmp_path) not in json.dumps(ran["keypoint_model"])


def test_a_missing_keypoint_model_fails_before_any_work_with_one_message(tmp_path):
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.errors import MissingModelError
    from diffusion_hpc.pipeline.generate import Generator

    missing = tmp_path / "no-vitpose"
    config = GenerateConfig(mode="D", verify=True, verify_by="keypoint-model", keypoint_model=str(missing), n=2)
    with pytest.raises(MissingModelError, match=r"(?s)1 model is missing.*keypoint_model '.*no-vitpose'.*"
                                                r"--keypoint-model DIR"):
        Generator(config, progress=False)
    assert not (tmp_path / "out").exists()
    not_vitpose = tmp_path / "other"
    not_vitpose.mkdir()
    (not_vitpose / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(MissingModelError, match="is a 'vit' model, not a top-down keypoint model"):
        Generator(GenerateConfig(mode="D", verify=True, verify_by="keypoint-model", keypoint_model=str(not_vitpose)),
                  progress=False)


def test_keypoint_model_options_name_the_flag_and_the_fix(tmp_path):
    from diffusion_hpc.config import GenerateConfig

    with pytest.raises(ValueError, match="--verify-by keypoint-model .* pass --keypoint-model DIR"):
        GenerateConfig(mode="D", verify=True, verify_by="keypoint-model")
    with pytest.raises(ValueError, match="keypoint_model: --keypoint-model m .* pass --verify-by keypoint-model, or "
                                         "leave --keypoint-model out"):
        GenerateConfig(mode="D", verify=True, keypoint_model="m")
    with pytest.raises(ValueError, match="--keypoint-model m .*verifies by nothing"):
        GenerateConfig(mode="D", keypoint_model="m")
    # any estimator: the model reads the label's boxes, not the estimator's
    hmr = GenerateConfig(mode="T", prompt="diving", backbone="b", estimator="hmr", estimator_checkpoint=tmp_path,
                         verify_by="keypoint-model", keypoint_model="m")  # fmt: skip
    assert hmr.keypoint_model == "m" and hmr.estimates_bodies
    # mode D verified so estimates no body: an estimator would go unused
    with pytest.raises(ValueError, match="estimator: mode D .* leave --estimator hmr out"):
        GenerateConfig(mode="D", verify=True, estimator="hmr", estimator_checkpoint=tmp_path,
                       verify_by="keypoint-model", keypoint_model="m")  # fmt: skip
    assert GenerateConfig(mode="D", verify=True).verify_by == "label-box"  # the default is unchanged
    # a dataset made before the option continues when it is not used, and is refused with it
    before = GenerateConfig(mode="D", verify=True, verify_by="estimate")
    stored = before.dataset_yaml().replace("keypoint_model: null\n", "")
    assert before.resumed_dataset_yaml(stored) == stored
    with pytest.raises(Exception, match="made before --keypoint-model existed.*without --keypoint-model"):
        new = GenerateConfig(mode="D", verify=True, verify_by="keypoint-model", keypoint_model="m")
        new.resumed_dataset_yaml(stored)


def test_the_cli_shows_and_passes_the_flag():
    from diffusion_hpc.cli import build_parser

    parser = build_parser()
    help_text = " ".join(parser._subparsers._group_actions[0].choices["generate"].format_help().split())
    assert "--keypoint-model DIR|HUB_ID" in help_text and "keypoint-model" in help_text
    args = parser.parse_args(["generate", "--out", "x", "--verify", "--verify-by", "keypoint-model",
                              "--keypoint-model", "vitpose-base"])  # fmt: skip
    assert (args.verify_by, args.keypoint_model) == ("keypoint-model", "vitpose-base")


def test_verification_reads_each_person_on_its_silhouettes_box():
    """Two people on one image and one on another go to the model in one call, each with the box edges of
    its own silhouette and its image; a person whose silhouette is empty reads no person, unread."""
    from diffusion_hpc.estimate.base import KeypointReading
    from diffusion_hpc.pipeline.guided import read_label_boxes

    seen = []

    class Model:
        def read_on_boxes(self, images, boxes, owner):
            seen.append((len(images), boxes.copy(), owner.copy()))
            return [KeypointReading(True, "", np.full((17, 3), float(i))) for i in range(len(boxes))]

    a, b, c, empty = (np.zeros((40, 30), bool) for _ in range(4))
    a[5:20, 2:10] = True
    b[10:38, 15:29] = True
    c[0:40, 0:30] = True
    images = np.zeros((2, 40, 30, 3), np.uint8)
    out = read_label_boxes(Model(), images, [a, b, empty, c], np.array([0, 0, 1, 1]))
    [(n, boxes, owner)] = seen
    assert n == 2 and list(owner) == [0, 0, 1]
    assert np.allclose(boxes, [[1.5, 4.5, 9.5, 19.5], [14.5, 9.5, 28.5, 37.5], [-0.5, -0.5, 29.5, 39.5]])
    assert [r.ok for r in out] == [True, True, False, True] and out[3].keypoints2d[0, 0] == 2.0


def test_mode_d_verified_by_the_keypoint_model_loads_no_mesh_estimator(tiny, tmp_path, one_thread):
    """The render baseline verified by the keypoint model estimates no body: no mesh estimator is loaded
    and none is recorded, and every sample still gets its pck_agreement and mask_iou."""
    import json

    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.pipeline.generate import Generator

    from conftest import manifest_rows

    config = GenerateConfig(mode="D", verify=True, verify_by="keypoint-model", keypoint_model=str(tiny), n=2,
                            batch_size=2, image_size=(64, 64), seed=4)  # fmt: skip
    gen = Generator(config, progress=False)
    gen.load_models()
    assert gen.stages.estimator is None and gen.stages.keypoint_model is not None
    gen.run(tmp_path / "out")
    rows = manifest_rows(tmp_path / "out")
    assert len(rows) == 2 and all({"pck_agreement", "mask_iou"} <= set(r["scores"]) for r in rows)
    assert all("estimator" not in r for r in rows)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["estimator"] is None
