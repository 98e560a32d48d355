"""The next batch's head made on a worker thread while the current batch's tail runs (``overlap``):
the same dataset byte for byte as without it (modes R, T and D), the heads really made beside the
tails, errors in either thread stopping the run as before, off by default on the CPU, and stage
timings that leave out the waits for a model the other thread holds."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import skimage.data
from PIL import Image

import diffusion_hpc.pipeline.generate as generate_module
from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.errors import InputError
from diffusion_hpc.pipeline.ahead import made_ahead
from diffusion_hpc.pipeline.generate import Generator
from diffusion_hpc.pipeline.stages import Serialized, StageTimer

from conftest import dataset_digest, manifest_rows, run_cli
from test_pipeline_modes import PhotoStart

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64


@pytest.fixture(scope="module")
def guides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guides")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(np.ascontiguousarray(skimage.data.astronaut()[:, ::-1])).save(folder / "mirrored.png")
    return folder


class Events:
    """When each batch's head and tail started and ended, and on which thread."""

    def __init__(self):
        self.log: list[tuple[str, str, int, float, str]] = []  # (part, start|end, first index, time, thread)

    def wrap(self, part: str, fn, first_index):
        def wrapped(*args, **kwargs):
            key = first_index(args)
            self.log.append((part, "start", key, time.perf_counter(), threading.current_thread().name))
            try:
                return fn(*args, **kwargs)
            finally:
                self.log.append((part, "end", key, time.perf_counter(), threading.current_thread().name))

        return wrapped

    def time(self, part: str, edge: str, key: int) -> float:
        return next(t for p, e, k, t, _ in self.log if (p, e, k) == (part, edge, key))


def run(config: GenerateConfig, out, monkeypatch=None, swap=None) -> Events:
    """Generate ``config`` into ``out`` (``swap(stages)`` after loading), recording heads and tails."""
    events = Events()
    if monkeypatch is not None:
        first_guide = lambda args: args[4][0]  # place_guided(cfg, stages, guides, prompt_lines, guides, timer)
        monkeypatch.setattr(generate_module, "place_guided",
                            events.wrap("head", generate_module.place_guided, first_guide))
        monkeypatch.setattr(generate_module, "finish",
                            events.wrap("tail", generate_module.finish, lambda args: args[2][0].index // config.k))
    gen = Generator(config, progress=False)
    gen.load_models()
    if swap is not None:
        swap(gen.stages)
    gen.run(out)
    return events


def assert_heads_made_beside_tails(events: Events, guides_per_batch: int, guides_per_head: int, heads: int) -> None:
    """Every head ran on the worker thread, and each head (of ``guides_per_head`` guides: whole batches) started
    before the tail of the previous head's last batch ended."""
    made = [e for e in events.log if e[0] == "head"]
    assert made and all(thread == "dhpc-head" for *_, thread in made)
    assert len(made) == 2 * heads  # a start and an end each: one head call served its batches
    assert all(thread == threading.main_thread().name for p, *_, thread in events.log if p == "tail")
    for h in range(1, heads):
        this = h * guides_per_head
        assert events.time("head", "start", this) < events.time("tail", "end", this - guides_per_batch)


def test_mode_r_same_bytes_with_and_without_overlap(tmp_path, tiny_backbone, guides, monkeypatch):
    """Mode R, one shard of four batches (one guide each) in two heads of two batches (verification on: the
    estimator serves the next head and the current batch's verification): the shards and manifest rows are
    byte-identical without timings, and the heads were made beside the tails."""
    config = GenerateConfig(mode="R", guides=guides, backbone=str(tiny_backbone), image_size=(SIZE, SIZE), n=8, k=2,
                            seed=5, batch_size=2, estimate_batch=2, shard_size=8, overlap=True)  # fmt: skip
    events = run(config, tmp_path / "on", monkeypatch)
    monkeypatch.undo()
    run(config.model_copy(update={"overlap": False}), tmp_path / "off")
    assert_heads_made_beside_tails(events, guides_per_batch=1, guides_per_head=2, heads=2)
    assert manifest_rows(tmp_path / "on") == manifest_rows(tmp_path / "off")
    assert sum(r["status"] == "ok" for r in manifest_rows(tmp_path / "on")) >= 4  # people found, samples made
    assert dataset_digest(tmp_path / "on") == dataset_digest(tmp_path / "off")
    run_json = json.loads((tmp_path / "on" / "run.json").read_text())
    assert run_json["execution"] == {"engine": "local", "overlap": True}
    assert json.loads((tmp_path / "off" / "run.json").read_text())["execution"]["overlap"] is False


def test_mode_t_controlnet_same_bytes_and_unet_counts(tmp_path, tiny_backbone, guides, monkeypatch):
    """Mode T with ControlNet: the txt2img start images of the next batch (worker thread) and the
    regeneration of the current one (main thread) run the same UNet, whose evaluation counter
    each call resets; the rows' UNet counts and the shards are those of the run without overlap."""
    from diffusion_hpc.pipeline.inputs import GuideImages

    photos = [GuideImages(guides, (SIZE, SIZE)).load(i) for i in range(2)]
    config = GenerateConfig(mode="T", prompt="doing a backflip", backbone=str(tiny_backbone), generator="controlnet",
                            image_size=(SIZE, SIZE), n=6, k=2, seed=1, batch_size=2, estimate_batch=1, shard_size=6,
                            verify=False, overlap=True)  # fmt: skip

    def swap(stages):
        stages.start = PhotoStart(stages.start, photos)

    events = run(config, tmp_path / "on", monkeypatch, swap)
    monkeypatch.undo()
    run(config.model_copy(update={"overlap": False}), tmp_path / "off", swap=swap)
    assert_heads_made_beside_tails(events, guides_per_batch=1, guides_per_head=1, heads=3)
    on, off = manifest_rows(tmp_path / "on"), manifest_rows(tmp_path / "off")
    assert on == off and sum(r["status"] == "ok" for r in on) >= 4
    assert {r["unet_evals"] for r in on if r["status"] == "ok"} == {20 + 28}  # half of a guide's 40 + its regeneration
    assert dataset_digest(tmp_path / "on") == dataset_digest(tmp_path / "off")


def test_mode_d_same_bytes_and_the_cli_switch(tmp_path, anny_body):
    """Mode D falls out of the same loop: same bytes. On the CPU the overlap is off unless asked for
    (``--overlap``); run.json records which, and a run resumed with the other setting is accepted
    (the switch is not part of the dataset's config)."""
    args = ["generate", "--mode", "D", "-n", "12", "--batch-size", "4", "--shard-size", "6", "--image-size", "48",
            "--seed", "2", "--no-progress", "--out", str(tmp_path / "on")]  # fmt: skip
    done = run_cli(*args, "--overlap", env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "on" / "run.json").read_text())["execution"]["overlap"] is True
    assert "overlap" not in (tmp_path / "on" / "config.yaml").read_text()  # how it ran, not what it made
    config = GenerateConfig(mode="D", n=12, batch_size=4, shard_size=6, image_size=(48, 48), seed=2)
    assert config.overlap is None
    Generator(config, progress=False).run(tmp_path / "off")
    assert json.loads((tmp_path / "off" / "run.json").read_text())["execution"]["overlap"] is False  # the CPU
    assert dataset_digest(tmp_path / "on") == dataset_digest(tmp_path / "off")
    done = run_cli(*args, "--resume", "--no-overlap", env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "2 shards were already complete" in done.stdout, done.stderr
    assert json.loads((tmp_path / "on" / "run.json").read_text())["execution"]["overlap"] is False


@pytest.mark.parametrize("where", ["head", "tail"])
def test_an_error_in_either_thread_stops_the_run_uncommitted(tmp_path, anny_body, monkeypatch, where):
    """A head failing on the worker thread (or a tail on the main thread) raises its own error from
    the run; the shard it belongs to is not committed and no worker thread is left behind."""
    config = GenerateConfig(mode="D", n=16, batch_size=4, shard_size=16, image_size=(48, 48), seed=2, overlap=True)
    real = getattr(generate_module, {"head": "place_bodies", "tail": "finish"}[where])
    calls = []

    def failing(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            raise InputError("planted: the third batch fails")
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_module, {"head": "place_bodies", "tail": "finish"}[where], failing)
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(InputError, match="planted"):
        Generator(config, progress=False).run(tmp_path / "d")
    assert calls[0] == ("dhpc-head" if where == "head" else threading.main_thread().name)
    assert not list((tmp_path / "d" / "shards").glob("*.tar"))
    left = [t for t in threading.enumerate() if t.ident not in before and t.name == "dhpc-head"]
    assert not left, left


def test_made_ahead_keeps_order_and_makes_one_ahead():
    """Items come out in order; the worker never runs more than one item ahead of the caller."""
    made, taken = [], []

    def make(i):
        made.append(i)
        assert len(made) - len(taken) <= 2  # the item the caller holds, and the next
        return i * i

    for value in made_ahead(make, range(6)):
        taken.append(value)
        time.sleep(0.01)
    assert taken == [i * i for i in range(6)]
    # stopping early: the worker makes at most the one item ahead, then ends
    stream = made_ahead(make, range(100))
    made.clear()
    assert next(stream) == 0
    stream.close()
    assert len(made) <= 2
    # the caller fails while the last item waits, made ahead and never taken: the worker still ends
    with pytest.raises(ValueError, match="caller"):
        for value in made_ahead(make, range(3)):
            if value == 1:
                raise ValueError("the caller fails")


def test_stage_time_leaves_out_waiting_for_a_model_the_other_thread_holds():
    """A stage that waits 0.3 s for a Serialized model another thread is using counts its own work only."""

    class Model:
        def slow(self):
            inside.set()
            time.sleep(0.3)

        def fast(self):
            return 1

    inside = threading.Event()
    model = Serialized(Model(), threading.RLock())
    other = threading.Thread(target=model.slow)
    other.start()
    inside.wait()
    timer = StageTimer()
    start = time.perf_counter()
    assert model.fast() == 1
    timer.lap("estimate")
    other.join()
    assert time.perf_counter() - start >= 0.2
    assert timer.seconds["estimate"] < 0.05


def test_overlap_by_default_only_where_the_diffusion_models_run_on_a_gpu(anny_body):
    """Not set, the overlap follows the diffusion models' device: off on the CPU (the UNet would compete
    with the head for the cores), on for CUDA / MPS; a value given wins."""
    import torch

    from diffusion_hpc.runtime.device import Placement

    gen = Generator(GenerateConfig(mode="D", n=4, image_size=(48, 48)), progress=False)
    gen.load_models()
    assert not gen.overlaps()
    gen.stages.placement = Placement(torch.device("cuda"), torch.float16)
    assert gen.overlaps()
    gen.config = gen.config.model_copy(update={"overlap": False})
    assert not gen.overlaps()
