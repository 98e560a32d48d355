"""HMR 2.0's network (4D-Humans, Goel et al. 2023) in plain torch, with its parameter names.

Re-created from ``shubham-goel/4D-Humans`` (``hmr2/models/backbones/vit.py``,
``hmr2/models/heads/smpl_head.py``, ``hmr2/models/components/pose_transformer.py``,
``hmr2/models/hmr2.py``, ``hmr2/configs_hydra/experiment/hmr_vit_transformer.yaml``) without
timm / einops / yacs, so that the ``backbone.*`` and ``smpl_head.*`` entries of their Lightning
checkpoint load strictly into :class:`HMR2`:

- ``backbone`` (ViTPose's ViT, ``vit()``): ``patch_embed.proj`` (Conv2d 16x16, stride 16,
  padding 2), ``pos_embed`` (1, N + 1, C) added as ``pos_embed[:, 1:] + pos_embed[:, :1]`` (no
  class token), ``blocks.i`` (``norm1``, ``attn.qkv`` with bias, ``attn.proj``, ``norm2``,
  ``mlp.fc1``, ``mlp.fc2``; LayerNorm eps 1e-6, GELU, stochastic depth rising linearly to
  ``drop_path_rate``), ``last_norm``. ViT-H: 32 blocks, 1280 channels, 16 heads, input 256 x 192.
- ``smpl_head`` (``SMPLTransformerDecoderHead``): one zero token (``token_dim`` 1) through
  ``transformer`` (``TransformerDecoder``: ``to_token_embedding``, ``pos_embedding``,
  ``transformer.layers.i.{0,1,2}`` = pre-norm self-attention ``fn.to_qkv`` / ``fn.to_out.0``,
  cross-attention to the image tokens ``fn.to_q`` / ``fn.to_kv`` / ``fn.to_out.0``, feed-forward
  ``fn.net.0`` / ``fn.net.3``; each with its ``norm``), then ``decpose`` (-> 144), ``decshape``
  (-> 10), ``deccam`` (-> 3) added to the mean buffers ``init_body_pose`` (1, 144),
  ``init_betas`` (1, 10), ``init_cam`` (1, 3) (SPIN's ``smpl_mean_params.npz``), ``ief_iters``
  times (1 in the released model).
- 6D -> rotation matrix as 4D-Humans' ``utils/geometry.rot6d_to_rotmat``: the 6-vector is
  ``(a1, a2)``, the first two columns one after the other (SPIN interleaves them: see
  :func:`hmr2_rot6d_to_rotmat`).

Conventions kept from HMR 2.0: the input is a square ``crop_size`` crop (256 px) in [0, 1],
ImageNet-normalised inside, of which the backbone sees the central 3/4 of the columns
(``x[:, :, :, 32:-32]`` at 256 px); SMPL (neutral, 10 betas); rotations in the OpenCV camera frame;
the weak-perspective camera ``(s, tx, ty)`` with ``t = (tx, ty, 2 f / (S s))``, ``f = 5000`` px at
``S = 256`` (``EXTRA.FOCAL_LENGTH``, ``MODEL.IMAGE_SIZE``): :attr:`HMR2.normalised_focal` is
``2 * 5000 / 256`` (SPIN's is ``2 * 5000 / 224``).

Checkpoints (:func:`load_hmr2`): a 4D-Humans Lightning checkpoint (``state_dict`` with
``backbone.`` / ``smpl_head.`` keys, plus the ``discriminator.`` and the ``smpl.`` body-model
buffers and the ``initialized`` flag, which are dropped: the body model is ours, the adversarial
prior is not used for fine-tuning), or a bare state dict with the same keys. Read with
``torch.load(..., weights_only=True)``; their ``hyper_parameters`` hold a yacs ``CfgNode`` (a dict
subclass), read as a plain ``OrderedDict`` (:data:`CHECKPOINT_DICT_CLASSES`); no other class is allowed.
The architecture is read off the weights' shapes (:func:`infer_config`), so ViT-H and smaller test
networks load through the same call.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from diffusion_hpc.errors import InputError, MissingModelError
from diffusion_hpc.hmr.model import (
    BODY_SPECS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_state_strict,
    weak_perspective_to_translation,
)

#: 4D-Humans' camera: EXTRA.FOCAL_LENGTH at MODEL.IMAGE_SIZE
HMR2_FOCAL = 5000.0
HMR2_CROP = 256
NPOSE = 24 * 6
#: Lightning-checkpoint entries that are not the regression network (dropped on load, by prefix)
DROPPED_PREFIXES = ("discriminator.", "smpl.")
DROPPED_KEYS = ("initialized",)
#: ViT-H's head width (1280 channels / 16 heads) and the decoder's (``dim_head``), used to read the
#: head counts off a state dict (shapes alone do not tell them)
VIT_HEAD_DIM = 80
DECODER_HEAD_DIM = 64


@dataclass(frozen=True)
class HMR2Config:
    """Sizes of an HMR 2.0 network (defaults: the released ViT-H model)."""

    crop_size: int = HMR2_CROP
    patch_size: int = 16
    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.55
    decoder_dim: int = 1024
    decoder_depth: int = 6
    decoder_heads: int = 8
    decoder_dim_head: int = 64
    decoder_mlp_dim: int = 1024
    ief_iters: int = 1
    focal: float = HMR2_FOCAL

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) the backbone sees: the crop's central 3/4 columns (256 x 192 for ViT-H)."""
        return self.crop_size, self.crop_size - 2 * (self.crop_size // 8)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid of :attr:`image_size` (conv 16/16 with padding 2, as vit.py's PatchEmbed)."""
        p = self.patch_size
        return tuple((s + 2 * 2 - p) // p + 1 for s in self.image_size)  # type: ignore[return-value]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the released HMR 2.0 model (vit.py ``vit()`` + hmr_vit_transformer.yaml)
HMR2_VIT_H = HMR2Config()


def hmr2_rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) HMR 2.0 6D rotations ``(a1, a2)`` -> (..., 3, 3) (4D-Humans ``rot6d_to_rotmat``)."""
    import roma

    return roma.special_gramschmidt(x.reshape(*x.shape[:-1], 2, 3).transpose(-1, -2))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (timm's ``drop_path``): zero whole samples with probability ``p``, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


# ----------------------------------------------------------------------------------------------
# Backbone (hmr2/models/backbones/vit.py).


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size, padding=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, as vit.py
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class ViT(nn.Module):
    """ViTPose's ViT as used by HMR 2.0: (B, 3, H, W) normalised -> (B, H/16 * W/16, C) tokens."""

    def __init__(self, config: HMR2Config) -> None:
        super().__init__()
        c = config
        self.patch_embed = PatchEmbed(c.patch_size, c.embed_dim)
        gh, gw = c.grid
        self.pos_embed = nn.Parameter(torch.zeros(1, gh * gw + 1, c.embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        rates = [c.drop_path_rate * i / max(c.depth - 1, 1) for i in range(c.depth)]  # torch.linspace(0, rate, depth)
        self.blocks = nn.ModuleList([Block(c.embed_dim, c.num_heads, c.mlp_ratio, r) for r in rates])
        self.last_norm = nn.LayerNorm(c.embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.patch_embed(x)
        if x.shape[1] != self.pos_embed.shape[1] - 1:
            raise InputError(f"HMR 2.0 backbone: {x.shape[1]} patches for {self.pos_embed.shape[1] - 1} position "
                             "embeddings; feed crops of the network's crop_size")
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            x = block(x)
        return self.last_norm(x)


# ----------------------------------------------------------------------------------------------
# Head (hmr2/models/heads/smpl_head.py, components/pose_transformer.py).


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fn(self.norm(x), **kwargs)


def _heads_split(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H*D) -> (B, H, N, D)."""
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def _heads_merge(t: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) -> (B, N, H*D)."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


def _out_projection(inner: int, dim: int, heads: int, dim_head: int) -> nn.Module:
    """``to_out``: Linear + Dropout, or Identity for one head of the model width (pose_transformer.py)."""
    return nn.Identity() if heads == 1 and dim_head == dim else nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = _out_projection(heads * dim_head, dim, heads, dim_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads_split(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        return self.to_out(_heads_merge(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_kv = nn.Linear(context_dim, heads * dim_head * 2, bias=False)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = _out_projection(heads * dim_head, dim, heads, dim_head)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = (_heads_split(t, self.heads) for t in self.to_kv(context).chunk(2, dim=-1))
        q = _heads_split(self.to_q(x), self.heads)
        return self.to_out(_heads_merge(F.scaled_dot_product_attention(q, k, v)))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerCrossAttn(nn.Module):
    def __init__(self, c: HMR2Config) -> None:
        super().__init__()
        d = c.decoder_dim
        self.layers = nn.ModuleList([
            nn.ModuleList([
                PreNorm(d, SelfAttention(d, c.decoder_heads, c.decoder_dim_head)),
                PreNorm(d, CrossAttention(d, c.embed_dim, c.decoder_heads, c.decoder_dim_head)),
                PreNorm(d, FeedForward(d, c.decoder_mlp_dim)),
            ])
            for _ in range(c.decoder_depth)
        ])  # fmt: skip

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for self_attn, cross_attn, ff in self.layers:
            x = self_attn(x) + x
            x = cross_attn(x, context=context) + x
            x = ff(x) + x
        return x


class TransformerDecoder(nn.Module):
    def __init__(self, c: HMR2Config) -> None:
        super().__init__()
        self.to_token_embedding = nn.Linear(1, c.decoder_dim)  # the zero token (TRANSFORMER_INPUT: zero)
        self.pos_embedding = nn.Parameter(torch.randn(1, 1, c.decoder_dim))
        self.transformer = TransformerCrossAttn(c)

    def forward(self, token: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.to_token_embedding(token) + self.pos_embedding[:, : token.shape[1]]
        return self.transformer(x, context=context)


class SMPLTransformerDecoderHead(nn.Module):
    """Image tokens (B, N, C) -> 6D pose (B, 144), betas (B, 10), camera (B, 3)."""

    def __init__(self, c: HMR2Config) -> None:
        super().__init__()
        self.ief_iters = c.ief_iters
        self.transformer = TransformerDecoder(c)
        self.decpose = nn.Linear(c.decoder_dim, NPOSE)
        self.decshape = nn.Linear(c.decoder_dim, 10)
        self.deccam = nn.Linear(c.decoder_dim, 3)
        self.register_buffer("init_body_pose", torch.zeros(1, NPOSE))
        self.register_buffer("init_betas", torch.zeros(1, 10))
        self.register_buffer("init_cam", torch.zeros(1, 3))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = tokens.shape[0]
        pose, betas, cam = (b.expand(batch, -1) for b in (self.init_body_pose, self.init_betas, self.init_cam))
        token = tokens.new_zeros(batch, 1, 1)
        for _ in range(self.ief_iters):
            out = self.transformer(token, context=tokens)[:, 0]
            pose, betas, cam = self.decpose(out) + pose, self.decshape(out) + betas, self.deccam(out) + cam
        return pose, betas, cam


# ----------------------------------------------------------------------------------------------
# The network.


class HMR2(nn.Module):
    """HMR 2.0: ``backbone`` (ViT) + ``smpl_head`` (transformer decoder); SMPL outputs.

    ``forward`` takes (B, 3, S, S) crops in [0, 1] with ``S = config.crop_size`` and returns the
    keys of :class:`diffusion_hpc.hmr.spin.SPINHMR`: ``rotmat`` (B, 24, 3, 3), ``betas`` / ``shape``
    (B, 10), ``cam`` (B, 3), axis-angle ``global_orient`` (B, 3) and ``body_pose`` (B, 23, 3),
    ``cam_t`` (B, 3) (module docstring).
    """

    architecture = "hmr2"
    spec = BODY_SPECS["smpl"]

    def __init__(self, config: HMR2Config = HMR2_VIT_H) -> None:
        super().__init__()
        self.hmr2_config = config
        self.crop_size = config.crop_size
        self.normalised_focal = 2.0 * config.focal / config.crop_size
        self.backbone = ViT(config)
        self.smpl_head = SMPLTransformerDecoderHead(config)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def config(self) -> dict[str, Any]:
        """JSON-able description that rebuilds this architecture (:func:`diffusion_hpc.hmr.init.load_exported`)."""
        return {"architecture": self.architecture, "hmr2": self.hmr2_config.as_dict()}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        import roma

        if images.shape[-2:] != (self.crop_size, self.crop_size):
            raise InputError(f"HMR 2.0 takes {self.crop_size} x {self.crop_size} crops, got {tuple(images.shape[-2:])}: "
                             f"crop at --crop-size {self.crop_size}")
        x = (images - self.pixel_mean) / self.pixel_std
        margin = self.crop_size // 8
        tokens = self.backbone(x[..., margin : self.crop_size - margin])
        pose, betas, cam = self.smpl_head(tokens)
        rotmat = hmr2_rot6d_to_rotmat(pose.reshape(-1, 24, 6))
        rotvec = roma.rotmat_to_rotvec(rotmat)
        return {"rotmat": rotmat, "betas": betas, "shape": betas, "cam": cam, "global_orient": rotvec[:, 0],
                "body_pose": rotvec[:, 1:], "cam_t": weak_perspective_to_translation(cam, self.normalised_focal)}


# ----------------------------------------------------------------------------------------------
# Checkpoints.


#: dict subclasses a 4D-Humans Lightning checkpoint may pickle (its config, Lightning's hyper-parameters),
#: read as plain ``OrderedDict`` data (item and attribute state only), never as their own classes
CHECKPOINT_DICT_CLASSES = (
    "yacs.config.CfgNode",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
)


def read_hmr2_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The network entries (``backbone.*``, ``smpl_head.*``) of an HMR 2.0 checkpoint file.

    ``torch.load(..., weights_only=True)`` with the dict classes of :data:`CHECKPOINT_DICT_CLASSES`
    read as plain dicts; ``discriminator.*``, ``smpl.*`` and ``initialized`` are dropped; any other
    key stays (and fails the strict load, named).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingModelError(f"HMR 2.0 checkpoint {path} does not exist (4D-Humans' "
                                "logs/train/multiruns/hmr2/0/checkpoints/epoch=35-step=1000000.ckpt)")
    try:
        with torch.serialization.safe_globals([(OrderedDict, name) for name in CHECKPOINT_DICT_CLASSES]):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise InputError(
            f"cannot read HMR 2.0 checkpoint {path} with weights_only=True: {exc}. If it holds other objects, save its "
            "weights once in the 4D-Humans environment: torch.save(torch.load(CKPT)['state_dict'], 'hmr2_state_dict.pt')"
        ) from None
    if isinstance(ckpt, Mapping) and "model" in ckpt and "state_dict" not in ckpt:
        raise InputError(f"{path} is not an HMR 2.0 network: it has a 'model' entry like SPIN's model_checkpoint.pt "
                         "(pass it as spin:PATH)")
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} holds no state dict (expected a Lightning checkpoint with 'state_dict', or a state dict)")
    return {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES) and k not in DROPPED_KEYS}


def _count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of numbered children ``prefix.N.`` in the keys."""
    found = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()}
    return max(found) + 1 if found else 0


def infer_config(state: Mapping[str, torch.Tensor], base: HMR2Config = HMR2_VIT_H) -> HMR2Config:
    """The :class:`HMR2Config` whose shapes the state dict has (crop, widths, depths, head counts).

    Head counts: ``embed_dim / 80`` (ViT-H's head width) and ``inner / 64`` (the decoder's
    ``dim_head``); the crop is the square whose central 3/4 gives the 4:3 patch grid. Raises one
    :class:`InputError` naming the missing key when the file is not an HMR 2.0 network.
    """
    try:
        pos = state["backbone.pos_embed"]
        patch = int(state["backbone.patch_embed.proj.weight"].shape[-1])
        mlp = int(state["backbone.blocks.0.mlp.fc1.weight"].shape[0])
        dec = int(state["smpl_head.transformer.to_token_embedding.weight"].shape[0])
        inner = int(state["smpl_head.transformer.transformer.layers.0.1.fn.to_q.weight"].shape[0])
        dec_mlp = int(state["smpl_head.transformer.transformer.layers.0.2.fn.net.0.weight"].shape[0])
    except KeyError as exc:
        raise InputError(f"not an HMR 2.0 network: no {exc.args[0]} (expected 4D-Humans' backbone.* / smpl_head.* keys)") from None
    embed, tokens = int(pos.shape[-1]), int(pos.shape[1]) - 1
    rows = round((tokens * 4 / 3) ** 0.5)  # 4:3 grid (16 x 12 at 256 x 192)
    return replace(
        base, crop_size=rows * patch, patch_size=patch, embed_dim=embed, depth=_count(state, "backbone.blocks."),
        num_heads=max(embed // VIT_HEAD_DIM, 1), mlp_ratio=mlp / embed, decoder_dim=dec,
        decoder_depth=_count(state, "smpl_head.transformer.transformer.layers."),
        decoder_heads=max(inner // DECODER_HEAD_DIM, 1), decoder_dim_head=min(inner, DECODER_HEAD_DIM), decoder_mlp_dim=dec_mlp,
    )  # fmt: skip


def load_hmr2(checkpoint: str | Path, config: HMR2Config | None = None) -> HMR2:
    """An :class:`HMR2` with the weights of ``checkpoint`` (strict; see the module docstring).

    ``config``: the network's sizes; by default read off the weights (:func:`infer_config`).
    """
    state = read_hmr2_state(checkpoint)
    model = HMR2(config or infer_config(state))
    load_state_strict(model, state, source=f"HMR 2.0 checkpoint {checkpoint}")
    return model.eval()
