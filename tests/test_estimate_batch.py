"""Modes T and R estimate several batches' start images in one call (``estimate_batch``): a fit call's
cost is mostly per call, so the head of a run fits whole groups of batches at once, while the
diffusion calls (mode T's start images, the regeneration) keep the run's batch size. The samples are
those a head per batch makes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
from PIL import Image

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data import open_dataset
from diffusion_hpc.data.schema import persons_of
from diffusion_hpc.pipeline.generate import Generator

from conftest import manifest_rows
from test_pipeline_modes import PhotoStart

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64


@pytest.fixture(scope="module")
def photos():
    astronaut = skimage.data.astronaut()
    return [np.asarray(Image.fromarray(a).resize((SIZE, SIZE))) for a in (astronaut, np.ascontiguousarray(astronaut[:, ::-1]))]


def counted_run(config: GenerateConfig, out, photos) -> dict[str, list[int]]:
    """Run mode T on ``photos`` as start images; the images of each start-image call and each estimator call."""
    calls: dict[str, list[int]] = {"start": [], "estimate": []}
    gen = Generator(config, progress=False)
    gen.load_models()
    start = PhotoStart(gen.stages.start, photos)
    txt2img = start.generate

    def generate(batch):
        calls["start"].append(len(batch.seeds))
        return txt2img(batch)

    start.generate = generate
    gen.stages.start = start
    fit = gen.stages.estimator.estimate

    def estimate(images, *args, **kwargs):
        calls["estimate"].append(len(images))
        return fit(images, *args, **kwargs)

    gen.stages.estimator.estimate = estimate
    gen.run(out)
    return calls


def test_one_fit_call_serves_several_batches(tmp_path, tiny_backbone, photos):
    """Mode T, 8 samples of 4 guides in batches of one guide: with estimate_batch 4 the four start images are
    still made one batch at a time but fitted in one call; the samples are those of a head per batch, their
    labels the same up to the batched fit's float rounding, and every sample's manifest timings hold its share
    of the head's stages."""
    config = GenerateConfig(mode="T", prompt="doing a backflip", backbone=str(tiny_backbone), image_size=(SIZE, SIZE),
                            n=8, k=2, seed=3, batch_size=2, shard_size=8, verify=False, estimate_batch=4)  # fmt: skip
    grouped = counted_run(config, tmp_path / "grouped", photos)
    single = counted_run(config.model_copy(update={"estimate_batch": 1}), tmp_path / "single", photos)
    assert grouped["start"] == single["start"] == [1, 1, 1, 1]
    assert grouped["estimate"] == [4] and single["estimate"] == [1, 1, 1, 1]
    rows = [{k: r[k] for k in ("index", "status", "reason", "seed", "unet_evals", "sampler")}
            for r in manifest_rows(tmp_path / "grouped")]  # fmt: skip
    assert rows == [{k: r[k] for k in rows[0]} for r in manifest_rows(tmp_path / "single")]
    assert sum(r["status"] == "ok" for r in rows) >= 6
    samples = list(open_dataset(tmp_path / "grouped"))
    assert len(samples) == sum(r["status"] == "ok" for r in rows)
    for one, other in zip(samples, open_dataset(tmp_path / "single"), strict=True):
        for key, value in persons_of(one)[0]["params"].items():
            np.testing.assert_allclose(persons_of(other)[0]["params"][key], value, atol=1e-4, err_msg=key)
    timings = [json.loads(line)["timings"] for line in (tmp_path / "grouped" / "manifest.jsonl").read_text().splitlines()]
    assert all(t["estimate"] > 0 and t["regenerate"] > 0 for t in timings)


def test_estimate_batch_counts_whole_batches():
    """estimate_batch rounds to whole batches' guides, at least one batch."""
    base = dict(mode="R", guides=".", backbone=".", k=3, batch_size=16)  # 5 guides a batch
    assert GenerateConfig(**base).guides_per_estimate == 15  # 16 -> 3 batches
    assert GenerateConfig(**base, estimate_batch=1).guides_per_estimate == 5
    assert GenerateConfig(**base, estimate_batch=40).guides_per_estimate == 40
    assert GenerateConfig(**{**base, "k": 1}).guides_per_estimate == 16
