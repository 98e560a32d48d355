"""Flat memory: a shard is streamed to its tar while it is made, so a run holds a bounded number of
sample records whatever the shard size (the figure at scale: scripts/bench_generate.py --memory)."""

from __future__ import annotations

import gc

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data import open_dataset
from diffusion_hpc.data.schema import SampleRecord
from diffusion_hpc.data.writer import STREAM_DEPTH
from diffusion_hpc.pipeline.generate import Generator


def live_records() -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is SampleRecord)


def run_one_shard_counting_records(config: GenerateConfig, out) -> None:
    """Run ``config``'s single shard into ``out``, counting the live records after every batch: at most
    the writer's queue and about two batches are alive, and every sample reaches the shard."""
    n, batch = config.n, config.batch_size
    generator = Generator(config, progress=False)
    held: list[int] = []
    with generator.plan(out) as plan:
        plan.writer.open()
        generator.run_shard(0, plan.writer, on_batch=lambda count: held.append(live_records()))
    assert len(held) == n // batch
    assert max(held) <= STREAM_DEPTH + 2 * batch < n, held
    assert len(list(open_dataset(out))) == n


def test_a_shard_holds_a_bounded_number_of_records(tmp_path, anny_body):
    """One shard of 40 samples in batches of 4: after every batch, at most the queue and about two
    batches of records are alive (holding the whole shard until its commit would reach 40); the
    streamed shard reads whole and equals the shards of a run with small shards."""
    n, batch = 40, 4
    config = GenerateConfig(n=n, seed=2, image_size=(48, 48), batch_size=batch, shard_size=n)
    run_one_shard_counting_records(config, tmp_path / "d")

    small = GenerateConfig(n=n, seed=2, image_size=(48, 48), batch_size=batch, shard_size=8)
    Generator(small, progress=False).run(tmp_path / "small")
    assert [s["key"] for s in open_dataset(tmp_path / "small")] == [s["key"] for s in open_dataset(tmp_path / "d")]
    assert {s["key"]: s["image"].tobytes() for s in open_dataset(tmp_path / "small")} == \
        {s["key"]: s["image"].tobytes() for s in open_dataset(tmp_path / "d")}


def test_mode_r_holds_a_bounded_number_of_records(tmp_path, tiny_backbone, one_thread):
    """Mode R with the tiny backbone (a real photo as the guide, reused): one shard of 28 samples in
    batches of 4 holds at most the queue and about two batches of records after every batch, as
    mode D does; every sample reaches the shard."""
    import skimage.data
    from PIL import Image

    guides = tmp_path / "guides"
    guides.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(guides / "astronaut.png")
    n, batch = 28, 4
    config = GenerateConfig(mode="R", guides=guides, backbone=str(tiny_backbone), image_size=(64, 64), n=n, k=4,
                            seed=2, batch_size=batch, shard_size=n, verify=False)  # fmt: skip
    run_one_shard_counting_records(config, tmp_path / "d")
