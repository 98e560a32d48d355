"""LoRA weights (``lora=``) on the tiny SD and SDXL backbones: a random LoRA on the UNet's attention
projections, saved as diffusers' ``save_lora_weights`` does, loaded through the project's generators;
bad paths fail before any model loads."""

from __future__ import annotations

import diffusers  # noqa: F401  (hard dependencies: a broken install fails the suite, never skips it)
import numpy as np
import peft  # noqa: F401
import pytest
import torch

from diffusion_hpc.errors import ConfigError, MissingModelError
from diffusion_hpc.generate.base import GenerationBatch

from conftest import TINY_SIZE as SIZE
from conftest import regen_batch

pytestmark = pytest.mark.usefixtures("one_thread")

#: the UNet modules a typical attention LoRA adapts (self- and cross-attention projections)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def write_random_lora(backbone, out, seed: int = 0, rank: int = 4):
    """A LoRA for ``backbone``'s text2img UNet with random, non-zero A and B, saved to folder ``out``.

    peft initialises B to 0 (a no-op adapter), so B is drawn here: N(0, 0.1^2), seeded.

    Returns:
        the folder; it holds ``pytorch_lora_weights.safetensors``.
    """
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from diffusion_hpc.runtime.weights import backbone_set, pipeline_class

    folder = backbone_set(backbone).text2img
    unet = diffusers.UNet2DConditionModel.from_pretrained(str(folder / "unet"), local_files_only=True)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights="gaussian"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=g))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    assert layers and all(v.abs().sum() > 0 for k, v in layers.items() if "lora_B" in k)
    getattr(diffusers, pipeline_class(folder)).save_lora_weights(out, unet_lora_layers=layers)
    return out


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def kind_backbone_lora(request, tmp_path_factory):
    backbone = request.getfixturevalue("tiny_sdxl_backbone" if request.param == "sdxl" else "tiny_backbone")
    return request.param, backbone, write_random_lora(backbone, tmp_path_factory.mktemp(f"lora-{request.param}"))


def test_lora_changes_the_image_and_scale_zero_is_the_backbone(kind_backbone_lora):
    from diffusion_hpc.generate.diffusion import LORA_WEIGHT_NAME, DepthRegenerator, Text2ImageGenerator

    kind, backbone, lora = kind_backbone_lora
    assert (lora / LORA_WEIGHT_NAME).is_file()
    batch = GenerationBatch(seeds=[3, 4], prompts=["a diver", "a skier"], size=(SIZE, SIZE))

    def txt2img(**kw):
        gen = Text2ImageGenerator(backbone, steps=2, **kw)
        return gen, gen.generate(batch)

    _, plain = txt2img()
    gen, adapted = txt2img(lora=str(lora))
    assert "domain" in gen.pipe.unet.peft_config  # loaded into the UNet as the named adapter
    _, zero = txt2img(lora=str(lora), lora_scale=0.0)
    assert adapted.images.shape == plain.images.shape == (2, SIZE, SIZE, 3)
    assert np.abs(adapted.images.astype(int) - plain.images).mean() > 0.5
    assert np.array_equal(zero.images, plain.images)
    assert (adapted.unet_evals == plain.unet_evals).all()  # a LoRA adds no UNet evaluation
    # the regenerator takes it too, given as the file itself
    regen = regen_batch([5])
    plain_r = DepthRegenerator(backbone, method="controlnet", steps=2).generate(regen)
    adapted_r = DepthRegenerator(backbone, method="controlnet", steps=2,
                                 lora=str(lora / LORA_WEIGHT_NAME)).generate(regen)  # fmt: skip
    assert np.abs(adapted_r.images.astype(int) - plain_r.images).mean() > 0.5


def test_bad_lora_paths_fail_before_any_model_loads(tmp_path, monkeypatch):
    import diffusers

    from diffusion_hpc.generate.diffusion import DepthRegenerator, Text2ImageGenerator

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the LoRA path was checked")

    for cls in (diffusers.AutoPipelineForText2Image, diffusers.StableDiffusionDepth2ImgPipeline,
                diffusers.ControlNetModel):  # fmt: skip
        monkeypatch.setattr(cls, "from_pretrained", no_loading)
    missing = tmp_path / "no-such-lora"
    for make in (lambda lora: Text2ImageGenerator("nobody-dhpc/unused", lora=lora),
                 lambda lora: DepthRegenerator("nobody-dhpc/unused", method="controlnet", lora=lora)):  # fmt: skip
        with pytest.raises(MissingModelError, match="not found") as err:
            make(str(missing))
        assert str(missing) in str(err.value) and "pytorch_lora_weights.safetensors" in str(err.value)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_lora_weights.bin").write_bytes(b"never unpickled")
    with pytest.raises(MissingModelError, match="holds no .safetensors file"):
        Text2ImageGenerator("nobody-dhpc/unused", lora=str(pickled))
    with pytest.raises(MissingModelError, match="not a .safetensors file"):
        Text2ImageGenerator("nobody-dhpc/unused", lora=str(pickled / "pytorch_lora_weights.bin"))
    with pytest.raises(ConfigError, match="pass lora to the Text2ImageGenerator"):
        DepthRegenerator("nobody-dhpc/unused", method="controlnet", lora=str(pickled), share_with=object())


def test_dhpc_generate_with_lora(tiny_backbone, tmp_path, capsys):
    """``dhpc generate --lora``: the run records it, the images differ from the plain backbone's,
    --lora-scale 0 gives the plain images, and a wrong path fails before any sample is written."""
    from diffusion_hpc.cli import main
    from diffusion_hpc.data import open_dataset

    lora = write_random_lora(tiny_backbone, tmp_path / "weights")
    common = ["generate", "--mode", "D", "--generator", "depth2img", "--backbone", str(tiny_backbone),
              "--image-size", "64", "-n", "2", "--seed", "3", "--no-progress", "--no-verify"]  # fmt: skip
    runs = {}
    for name, extra in (("plain", []), ("lora", ["--lora", str(lora)]), ("zero", ["--lora", str(lora), "--lora-scale", "0"])):
        assert main(common + ["--out", str(tmp_path / name)] + extra) == 0
        runs[name] = [s["image"] for s in open_dataset(tmp_path / name)]
    from diffusion_hpc.config import GenerateConfig

    recorded = GenerateConfig.from_yaml(tmp_path / "lora" / "config.yaml")
    assert recorded.lora == str(lora) and recorded.lora_scale == 1.0  # resume and provenance see it
    assert any(np.abs(a.astype(int) - b).mean() > 0.5 for a, b in zip(runs["lora"], runs["plain"]))
    assert all(np.array_equal(a, b) for a, b in zip(runs["zero"], runs["plain"]))
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "bad"), "--lora", str(tmp_path / "missing")]) != 0
    assert "LoRA weights" in capsys.readouterr().err and not (tmp_path / "bad" / "shards").exists()
    # the render baseline has no backbone to adapt
    assert main(["generate", "--mode", "D", "--lora", str(lora), "--out", str(tmp_path / "r"), "-n", "1"]) != 0
