"""A tiny, randomly initialised diffusion backbone for smoke tests (``dhpc backbone tiny --out DIR``).

It produces noise-like images, but every code path of the real backbones runs on it: text encoder,
tokenizer, VAE, UNet, scheduler, depth channel, ControlNet residuals. Layout of ``DIR``::

    DIR/dhpc_backbone.json      describes the bundle (read by diffusion_hpc.runtime.weights)
    DIR/text2img/               StableDiffusionPipeline (UNet 4 -> 4 channels)
    DIR/depth2img/              StableDiffusionDepth2ImgPipeline (UNet 5 -> 4: latents + depth),
                                saved without a depth estimator
    DIR/controlnet_depth/       ControlNetModel for the text2img UNet

All three share the same VAE (downsampling factor 8: 64x64 images -> 8x8 latents), CLIP text
encoder and an offline byte-level CLIP tokenizer (514 tokens: 256 byte symbols, 256 word-final
byte symbols, start / end tokens; no merges). The tokenizer is far smaller than CLIP's 49,408 tokens,
so ``model_index.json`` carries ``"_dhpc_tiny": true`` and each pipeline folder a ``dhpc_tiny.json``
sidecar: :func:`diffusion_hpc.runtime.weights.check_tokenizer` accepts small tokenizers only there.

``sdxl=True`` (``dhpc backbone tiny --sdxl``) writes the SDXL layout instead, with no depth2img
part (there is no SDXL depth-to-image pipeline; regeneration uses the ControlNet)::

    DIR/text2img/               StableDiffusionXLPipeline: two text encoders (CLIPTextModel, hidden
                                32, and CLIPTextModelWithProjection, hidden 32 -> pooled 24), two
                                byte-level tokenizers (the second pads with "!" as SDXL's does), a
                                UNet with the "text_time" added embedding (cross-attention on the
                                64-dim concatenated hidden states; pooled text + 6 size/crop ids)
    DIR/controlnet_depth/       ControlNetModel with the same added embedding

``lcm=True`` makes the UNets guidance-distilled, as LCM-distilled checkpoints (LCM-Dreamshaper,
LCM-SDXL) are: they take the guidance scale as an embedding (``time_cond_proj_dim``), so a guided
step costs one UNet row, and the pipelines ship ``LCMScheduler``. The ControlNet stays a plain one
(real ControlNet-depth models have no guidance embedding).

The output is a deterministic function of ``seed`` (same weights, same files' contents).
"""

from __future__ import annotations

import json
from pathlib import Path

#: file describing a backbone bundle
BUNDLE_FILE = "dhpc_backbone.json"
#: sidecar marking a pipeline folder as a tiny test backbone (small tokenizer allowed)
TINY_MARKER = "dhpc_tiny.json"
#: image side of the tiny backbone
TINY_IMAGE_SIZE = 64

_CROSS_DIM = 32


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable unicode symbol table (256 entries)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
    printable += list(range(ord("\u00ae"), ord("\u00ff") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def byte_level_vocab() -> tuple[dict[str, int], list[str]]:
    """A CLIP-style byte-level BPE vocabulary with no merges: (vocab token -> id, merges).

    Tokens are GPT-2's byte-to-unicode symbols, then the same symbols with the word-final ``</w>``
    suffix, then ``<|startoftext|>`` and ``<|endoftext|>`` (ids 512, 513).
    """
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, []


def tiny_tokenizer(pad_token: str = "<|endoftext|>"):
    """The offline tiny :class:`transformers.CLIPTokenizer` (514 tokens, max length 77).

    Args:
        pad_token: padding token (CLIP and SDXL's first tokenizer: ``<|endoftext|>``; SDXL's second: ``!``).
    """
    from transformers import CLIPTokenizer

    vocab, merges = byte_level_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token=pad_token)


def _text_encoder(tokenizer, projection_dim: int | None = None):
    """A 2-layer CLIP text encoder (hidden 32) for ``tokenizer``.

    ``projection_dim`` set: a :class:`CLIPTextModelWithProjection` whose first output is the
    (B, projection_dim) pooled, projected text embedding (SDXL's second encoder).
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    bos, eos, pad = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>", tokenizer.pad_token])
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=_CROSS_DIM, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos,
        pad_token_id=pad, projection_dim=projection_dim or _CROSS_DIM,
    )  # fmt: skip
    cls = CLIPTextModel if projection_dim is None else CLIPTextModelWithProjection
    return cls(cfg).eval()


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 16, 32, 32), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=TINY_IMAGE_SIZE,
    ).eval()  # fmt: skip


_UNET_KW = dict(
    block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), cross_attention_dim=_CROSS_DIM,
    attention_head_dim=8,
)  # fmt: skip


#: SDXL's second text encoder: pooled, projected embedding size (real SDXL: 1280)
_SDXL_POOLED_DIM = 24
#: size of the guidance-scale embedding of a guidance-distilled (LCM) UNet (LCM-Dreamshaper: 256)
_LCM_COND_DIM = 16
#: SDXL's size / crop conditioning: 6 ids (original H, W, crop top, left, target H, W), each embedded in 8
_SDXL_TIME_DIM = 8
#: SDXL UNet / ControlNet changes (as diffusers' own SDXL test configs): both encoders' hidden states
#: concatenated for cross-attention, the "text_time" added embedding, linear projections
_SDXL_KW = dict(
    cross_attention_dim=2 * _CROSS_DIM, attention_head_dim=(2, 4), use_linear_projection=True,
    transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=_SDXL_TIME_DIM,
    projection_class_embeddings_input_dim=6 * _SDXL_TIME_DIM + _SDXL_POOLED_DIM,
)  # fmt: skip


def _unet(in_channels: int, sdxl: bool = False, lcm: bool = False):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        in_channels=in_channels, out_channels=4, up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        sample_size=TINY_IMAGE_SIZE // 8, time_cond_proj_dim=_LCM_COND_DIM if lcm else None,
        **{**_UNET_KW, **(_SDXL_KW if sdxl else {})},
    ).eval()  # fmt: skip


def _controlnet(sdxl: bool = False):
    from diffusers import ControlNetModel

    return ControlNetModel(
        in_channels=4, conditioning_embedding_out_channels=(8, 8, 16, 16),
        **{**_UNET_KW, **(_SDXL_KW if sdxl else {})},
    ).eval()  # fmt: skip


def _scheduler(lcm: bool = False):
    from diffusers import DDIMScheduler, LCMScheduler

    # Stable Diffusion's training schedule (LCM: the same, with LCM's 50 distillation steps)
    return (LCMScheduler if lcm else DDIMScheduler)(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )  # fmt: skip


def _mark_tiny(folder: Path, seed: int) -> None:
    index = folder / "model_index.json"
    data = json.loads(index.read_text())
    data["_dhpc_tiny"] = True  # leading underscore: diffusers ignores it when loading
    index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (folder / TINY_MARKER).write_text(json.dumps({"tiny": True, "seed": seed}) + "\n")


def write_tiny_backbone(out_dir: str | Path, seed: int = 0, sdxl: bool = False, lcm: bool = False) -> Path:
    """Write the tiny text2img + depth2img + ControlNet-depth bundle to ``out_dir`` (created).

    Args:
        out_dir: target directory; existing files of the bundle are overwritten.
        seed: weight initialisation seed (same seed -> same weights).
        sdxl: write the SDXL text2img + ControlNet-depth bundle instead (no depth2img part).
        lcm: guidance-distilled UNets (LCM-style guidance embedding) and ``LCMScheduler`` configs.

    Returns:
        ``out_dir`` as a Path; pass it as ``--backbone``.
    """
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = _write_sdxl(out, lcm) if sdxl else _write_sd(out, lcm)
    for sub in parts:
        if sub != "controlnet_depth":
            _mark_tiny(out / sub, seed)
    bundle = {
        "format": "dhpc-backbone",
        "version": 1,
        "tiny": True,
        "seed": int(seed),
        "image_size": [TINY_IMAGE_SIZE, TINY_IMAGE_SIZE],
        "text2img": "text2img",
        "depth2img": "depth2img" if "depth2img" in parts else None,
        "controlnet_depth": "controlnet_depth",
    }
    if sdxl:
        bundle["sdxl"] = True
    if lcm:
        bundle["lcm"] = True
    (out / BUNDLE_FILE).write_text(json.dumps(bundle, indent=2, sort_keys=True) + "\n")
    return out


def _write_sd(out: Path, lcm: bool = False) -> tuple[str, ...]:
    """The SD 1.x-style parts (weights drawn from the global torch RNG, in a fixed order)."""
    from diffusers import StableDiffusionDepth2ImgPipeline, StableDiffusionPipeline

    tokenizer = tiny_tokenizer()
    text_encoder = _text_encoder(tokenizer)
    vae = _vae()
    unet = _unet(4, lcm=lcm)
    unet_depth = _unet(5, lcm=lcm)
    controlnet = _controlnet()
    t2i = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_scheduler(lcm),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    t2i.save_pretrained(out / "text2img")
    d2i = StableDiffusionDepth2ImgPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet_depth, scheduler=_scheduler(lcm),
        depth_estimator=None, feature_extractor=None,
    )  # fmt: skip
    d2i.save_pretrained(out / "depth2img")
    controlnet.save_pretrained(out / "controlnet_depth")
    return ("text2img", "depth2img", "controlnet_depth")


def _write_sdxl(out: Path, lcm: bool = False) -> tuple[str, ...]:
    """The SDXL parts (weights drawn from the global torch RNG, in a fixed order)."""
    from diffusers import StableDiffusionXLPipeline

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer(pad_token="!")
    text_encoder = _text_encoder(tokenizer)
    text_encoder_2 = _text_encoder(tokenizer_2, projection_dim=_SDXL_POOLED_DIM)
    vae = _vae()
    unet = _unet(4, sdxl=True, lcm=lcm)
    controlnet = _controlnet(sdxl=True)
    t2i = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_scheduler(lcm), add_watermarker=False,
    )  # fmt: skip
    t2i.save_pretrained(out / "text2img")
    controlnet.save_pretrained(out / "controlnet_depth")
    return ("text2img", "controlnet_depth")
