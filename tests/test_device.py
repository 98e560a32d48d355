"""Devices and precision: --device / --dtype resolution, errors before any model loads, the noise a
seed gives (drawn on the CPU whatever the device), bfloat16 on the CPU end to end. CPU only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data.seeds import STAGE_REGEN, STAGE_TXT2IMG, stage_seed
from diffusion_hpc.errors import ConfigError
from diffusion_hpc.runtime.device import Placement, resolve_device, resolve_dtype, resolve_placement

from conftest import TINY_SIZE as SIZE
from conftest import regen_batch, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")


# --- resolution ------------------------------------------------------------------------------------


@needs_no_cuda
def test_auto_is_the_cpu_here_and_auto_dtype_is_float32():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_placement() == Placement(torch.device("cpu"), torch.float32)
    assert resolve_placement("cpu", "bfloat16").names == {"device": "cpu", "dtype": "bfloat16"}


@needs_no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:1", "CUDA:0"])
def test_cuda_without_cuda_names_the_fix(spec):
    with pytest.raises(ConfigError, match=r"CUDA is not available \(torch .*\); pass --device cpu"):
        resolve_device(spec)


def test_float16_on_the_cpu_and_unknown_names():
    with pytest.raises(ConfigError, match="float16 on --device cpu.*bfloat16"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="unknown dtype 'half'"):
        resolve_dtype("half", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        GenerateConfig(device="gpu")
    with pytest.raises(ValueError, match="memory options of the diffusion generators"):
        GenerateConfig(offload="model")


@needs_no_cuda
def test_cli_device_errors_exit_2_with_one_line_before_any_model_loads(tmp_path):
    out = tmp_path / "run"
    r = run_cli("generate", "--out", str(out), "--device", "cuda", "-n", "1", timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available" in lines[0] and "pass --device cpu" in lines[0]
    assert not out.exists()
    r = run_cli("generate", "--out", str(out), "--device", "cpu", "--dtype", "float16", timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "bfloat16" in r.stderr
    assert not out.exists()
    r = run_cli("generate", "--out", str(out), "--mode", "D", "--generator", "depth2img", "--backbone", str(out),
                "--device", "cpu", "--offload", "model", timeout=120)  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "pass --offload none" in r.stderr
    assert not out.exists()


# --- the noise of a seed -------------------------------------------------------------------------------


class FirstInput:
    """Records the sample tensor of a module's first forward call (a forward pre-hook)."""

    def __init__(self, module):
        self.x = None
        self.handle = module.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if self.x is None:
            self.x = (args[0] if args else kwargs["sample"]).detach().clone()


def _cpu_draw(seed: int, stage: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(stage_seed(seed, stage)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_noise_of_a_seed_is_the_cpu_generators_draw(tiny_backbone, dtype):
    from diffusion_hpc.generate.diffusion import DepthRegenerator, Text2ImageGenerator

    seeds = [11, 2**40 + 3]
    f, h = 8, SIZE // 8
    gen = DepthRegenerator(tiny_backbone, method="depth2img", steps=2, guidance=1.0, device="cpu", dtype=dtype)
    assert gen.unet.dtype == getattr(torch, dtype) and gen.settings.dtype == dtype and gen.settings.device == "cpu"
    hook = FirstInput(gen.unet)
    gen.generate(regen_batch(seeds, start=False))  # mode D: the latents start as the region noise
    hook.handle.remove()
    want = torch.stack([_cpu_draw(s, STAGE_REGEN, (4, h, h)) for s in seeds]).to(getattr(torch, dtype))
    assert gen.pipe.vae_scale_factor == f
    torch.testing.assert_close(hook.x[:, :4], want, rtol=0, atol=0)  # DPM++: sigma 1, unscaled input

    t2i = Text2ImageGenerator(tiny_backbone, steps=2, guidance=1.0, device="cpu", dtype=dtype)
    hook = FirstInput(t2i.pipe.unet)
    from diffusion_hpc.generate.base import GenerationBatch

    t2i.generate(GenerationBatch(seeds=seeds, prompts=["a person"] * 2, size=(SIZE, SIZE)))
    hook.handle.remove()
    c = t2i.pipe.unet.config.in_channels
    want = torch.stack([_cpu_draw(s, STAGE_TXT2IMG, (c, h, h)) for s in seeds]).to(getattr(torch, dtype))
    torch.testing.assert_close(hook.x, want * t2i.pipe.scheduler.init_noise_sigma, rtol=0, atol=0)


# --- bfloat16 on the CPU, end to end -------------------------------------------------------------------


def test_mode_d_bfloat16_on_the_cpu_end_to_end_records_it(tiny_backbone, tmp_path):
    out = tmp_path / "bf16"
    r = run_cli("generate", "--mode", "D", "--generator", "depth2img", "--backbone", str(tiny_backbone),
                "--image-size", str(SIZE), "-n", "2", "--seed", "3", "--device", "cpu", "--dtype", "bfloat16",
                "--no-verify", "--no-progress", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["sampler"]["device"] == "cpu" and run["sampler"]["dtype"] == "bfloat16"
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 2 and all(row["sampler"]["dtype"] == "bfloat16" for row in rows)
    from diffusion_hpc.data import open_dataset

    images = [s["image"] for s in open_dataset(out)]
    assert len(images) == 2 and all(np.asarray(im).std() > 0 for im in images)


@needs_no_cuda
def test_every_command_refuses_cuda_here_before_loading(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    commands = {
        "estimate": ["--images", str(tmp_path / "a.png"), "--out", str(tmp_path / "e.npz"), "--estimator", "hmr",
                     "--checkpoint", str(tmp_path)],
        "evaluate": ["--checkpoint", str(tmp_path / "none"), "--data", str(tmp_path / "none")],
        "quality": ["--real", str(tmp_path), "--generated", str(tmp_path), "--out", str(tmp_path / "q")],
    }  # fmt: skip
    for command, args in commands.items():
        r = run_cli(command, *args, "--device", "cuda:0", timeout=120)
        assert r.returncode == 2, (command, r.stderr)
        assert r.stderr.strip().splitlines()[-1].endswith("pass --device cpu"), (command, r.stderr)


def test_the_mediapipe_fit_runs_on_the_cpu_only(tmp_path):
    from PIL import Image

    from diffusion_hpc.config import EstimateConfig
    from diffusion_hpc.estimate.run import estimate

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="MediaPipe fit runs on the CPU in float32"):
        estimate(EstimateConfig(images=[tmp_path / "a.png"], out=tmp_path / "e.npz", device="cpu", dtype="bfloat16"))
