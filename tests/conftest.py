"""Shared fixtures. The Anny model is built once per machine into the project cache (first run
about 80 s), then loads in about a second."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from diffusion_hpc.data.reader import dataset_digest  # noqa: F401  (imported by the tests from here)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def anny_body():
    from diffusion_hpc.body import get_body_model

    return get_body_model("anny")


def run_cli(*args: str, timeout: float = 600, env: dict | None = None):
    """Run ``dhpc`` in a subprocess; returns the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "diffusion_hpc.cli", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: the tiny UNet is ~70x slower with 2 threads on a shared 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """The tiny random diffusion backbone set (``dhpc backbone tiny``), written once per session."""
    from diffusion_hpc.generate.tiny import write_tiny_backbone

    return write_tiny_backbone(tmp_path_factory.mktemp("tiny") / "bb", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_backbone(tmp_path_factory):
    """The tiny random SDXL backbone set (``dhpc backbone tiny --sdxl``: text2img + ControlNet-depth)."""
    from diffusion_hpc.generate.tiny import write_tiny_backbone

    return write_tiny_backbone(tmp_path_factory.mktemp("tiny-sdxl") / "bb", seed=0, sdxl=True)


#: image side of the tiny backbones (generate/tiny.py)
TINY_SIZE = 64


def regen_scene(b: int, first: int = 0):
    """A regeneration scene at TINY_SIZE: start images (item i from its own rng), a box-shaped person
    with a depth ramp, an occluder bar.

    Returns:
        images (b, S, S, 3) uint8, depth (b, S, S) float32 metres (0 = background), silhouettes
        (b, S, S) bool, occluders (b, S, S) bool.
    """
    import numpy as np

    s = TINY_SIZE
    images = np.stack([np.random.default_rng(7 + first + i).integers(0, 256, (s, s, 3), dtype=np.uint8)
                       for i in range(b)])  # fmt: skip
    depth = np.zeros((b, s, s), np.float32)
    depth[:, 12:52, 22:42] = 3.0 + np.linspace(0.0, 0.5, 20, dtype=np.float32)[None, None, :]
    occ = np.zeros((b, s, s), bool)
    occ[:, 40:46, :] = True
    return images, depth, depth > 0, occ


def regen_batch(seeds, start: bool = True, first: int = 0):
    """A regeneration GenerationBatch of :func:`regen_scene` (prompt i: template first + i);
    ``start=False``: no start image nor person mask (mode D)."""
    from diffusion_hpc.generate.base import GenerationBatch, format_prompt

    b = len(seeds)
    images, depth, sil, occ = regen_scene(b, first)
    return GenerationBatch(seeds=list(seeds), prompts=[format_prompt("doing a backflip", first + i) for i in range(b)],
                           start_images=images if start else None, person_masks=sil if start else None,
                           silhouettes=sil, occluder_masks=occ, depth=depth)  # fmt: skip


def manifest_rows(root: Path) -> list[dict]:
    """The consolidated manifest's rows without their timings (the part of a row that varies run to run)."""
    import json

    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("timings")
    return rows


def lose_shard(dataset: Path, s: int) -> None:
    """Make ``dataset`` one killed before shard ``s`` was committed: its tar and manifest part removed."""
    for path in (dataset / "shards" / f"shard-{s:06d}.tar", dataset / "manifest" / f"shard-{s:06d}.jsonl"):
        path.unlink()


def strip_options(dataset: Path, options) -> None:
    """Make ``dataset``'s config.yaml one written before ``options`` existed."""
    import yaml

    path = dataset / "config.yaml"
    stored = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({k: v for k, v in stored.items() if k not in options}, sort_keys=True))


def generate_smpl_dataset(out, smpl_path, poses: int, seed: int, **config):
    """A native SMPL mode-D dataset at ``out`` (render baseline, 64 px, one batch of ``config["n"]``
    unless overridden) posed from a pose file of ``poses`` random SMPL poses (0.2 rad per joint,
    seeded), written beside ``out``; ``config``: further GenerateConfig fields. Returns ``out``."""
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.pipeline.generate import generate
    from diffusion_hpc.poses.io import PoseSet, save_pose_file

    out = Path(out)
    rng = np.random.default_rng(seed)
    pose_file = save_pose_file(out.parent / "poses.npz", PoseSet(
        body_model="smpl", global_orient=np.zeros((poses, 3), np.float32),
        body_pose=(0.2 * rng.normal(size=(poses, 23, 3))).astype(np.float32)))  # fmt: skip
    settings = {"image_size": (64, 64), "batch_size": config.get("n", 1), **config}
    generate(GenerateConfig(body_model="smpl", smpl_path=smpl_path, poses=str(pose_file), **settings), out=out,
             progress=False)  # fmt: skip
    return out


def write_fake_smpl(path, seed=0):
    """An SMPL-shaped model file with random arrays (not a real SMPL file)."""
    rng = np.random.default_rng(seed)
    V, J = 6890, 24
    parents = np.array([-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21])
    v_template = rng.normal(scale=0.3, size=(V, 3)) * [0.3, 1.0, 0.15]
    weights = rng.random((V, J)) ** 8
    weights /= weights.sum(1, keepdims=True)
    regressor = rng.random((J, V)) ** 20
    regressor /= regressor.sum(1, keepdims=True)
    kintree = np.stack([np.where(parents < 0, 4294967295, parents), np.arange(J)]).astype(np.int64)
    np.savez(
        path,
        v_template=v_template,
        f=rng.integers(0, V, size=(13776, 3)).astype(np.uint32),
        shapedirs=rng.normal(scale=0.01, size=(V, 3, 10)),
        posedirs=rng.normal(scale=0.001, size=(V, 3, 207)),
        J_regressor=regressor,
        weights=weights,
        kintree_table=kintree,
    )
    return path


@pytest.fixture(scope="session")
def fake_smpl(tmp_path_factory):
    """A synthetic SMPL_NEUTRAL.npz (SMPL's array shapes, random values), shared by the session."""
    return write_fake_smpl(tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.npz")
