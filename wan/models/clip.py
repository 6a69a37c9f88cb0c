"""CLIP image encoder: the ViT-H/14 visual tower of open-clip ``xlm-roberta-large-vit-huge-14``.

What StableAvatar takes from CLIP is the token sequence after the PENULTIMATE block (31 of 32),
all 257 tokens (class token + 16x16 patches), with no post-norm and no projection head, computed on
the reference image resized bicubically to 224x224 (aspect ratio not kept), mapped from [-1, 1] to
[0, 1] and normalised with the OpenAI CLIP mean/std.

Checkpoint contract: ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` stores keys WITHOUT
the ``model.`` prefix; the visual tower's keys are ``visual.*`` and the file also holds the
XLM-RoBERTa text tower (``textual.*``, 561M parameters) and ``log_scale``. This module keeps only
the visual tower, under ``model.visual.*`` (the original wrapper's key names, so recipe-filled
weights match the originals). ``load_clip_image_encoder`` is strict about what it keeps: every
visual key must be in the file with its shape; it drops exactly ``textual.*`` and ``log_scale``
(present or not) and rejects any other key. See docs/encoders.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from wan.models.loading import CheckpointError, load_into, load_state_dict_file

# torchvision Normalize constants the original applies (OpenAI CLIP statistics).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# File keys dropped on load: the unused text tower and the contrastive temperature.
CLIP_DROPPED_PREFIXES = ("textual.", "log_scale")

CLIP_PRESETS: dict[str, dict] = {
    "xlm-roberta-large-vit-huge-14": dict(image_size=224, patch_size=14, dim=1280, mlp_ratio=4, num_heads=16, num_layers=32, out_dim=1024),
}


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)


class SelfAttention(nn.Module):
    """Full bidirectional attention with a fused ``to_qkv`` projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, C] -> [B, L, C]."""
        b, length, c = x.shape
        q, k, v = self.to_qkv(x).view(b, length, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)  # 3 x [B, n, L, d]
        # No padding and no sequence parallelism here, so plain SDPA is the whole story (what the
        # original's attention() falls back to without flash-attn).
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, length, c))


class AttentionBlock(nn.Module):
    """Pre-norm ViT block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` with exact GELU."""

    def __init__(self, dim: int, mlp_ratio: float, num_heads: int, norm_eps: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = FP32LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = FP32LayerNorm(dim, eps=norm_eps)
        # Sequential indices are the key names: mlp.0 and mlp.2 (mlp.3 is the original's no-op dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT with a class token, a pre-norm and (unused here) post-norm + projection ``head``."""

    def __init__(self, image_size: int, patch_size: int, dim: int, mlp_ratio: float, num_heads: int, num_layers: int, out_dim: int, norm_eps: float):
        super().__init__()
        self.image_size = image_size
        num_patches = (image_size // patch_size) ** 2
        self.patch_embedding = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size, bias=False)  # no bias with a pre-norm
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.pre_norm = FP32LayerNorm(dim, eps=norm_eps)
        self.transformer = nn.Sequential(*[AttentionBlock(dim, mlp_ratio, num_heads, norm_eps) for _ in range(num_layers)])
        # Kept so the released visual keys load strictly; StableAvatar never runs them.
        self.post_norm = FP32LayerNorm(dim, eps=norm_eps)
        self.head = nn.Parameter(torch.zeros(dim, out_dim))

    def forward(self, x: torch.Tensor, skip_last_blocks: int = 1) -> torch.Tensor:
        """x [B, 3, S, S] normalised pixels -> tokens [B, 1 + (S/patch)^2, dim] after all but the last ``skip_last_blocks`` blocks."""
        x = self.patch_embedding(x).flatten(2).transpose(1, 2)  # [B, patches, dim]
        x = torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = self.pre_norm(x + self.pos_embedding)
        blocks = self.transformer[: len(self.transformer) - skip_last_blocks] if skip_last_blocks else self.transformer
        return blocks(x)


class CLIPVisionEncoder(ModelMixin, ConfigMixin):
    """The image encoder of the pipeline (``CLIPModel`` in the original), visual tower only.

    Args:
        image_size: square input size after the resize (224).
        patch_size: ViT patch (14) -> (224/14)^2 = 256 patches + 1 class token.
        dim: ViT width (1280), the width of the returned tokens.
        mlp_ratio: MLP hidden width / dim.
        num_heads: attention heads (16).
        num_layers: ViT blocks (32); the output is taken after ``num_layers - 1`` of them.
        out_dim: width of the (unused) projection head (1024).
        norm_eps: LayerNorm epsilon.
    """

    _no_split_modules = ["AttentionBlock"]

    @register_to_config
    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 14,
        dim: int = 1280,
        mlp_ratio: float = 4,
        num_heads: int = 16,
        num_layers: int = 32,
        out_dim: int = 1024,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        vit = VisionTransformer(image_size, patch_size, dim, mlp_ratio, num_heads, num_layers, out_dim, norm_eps)
        self.model = nn.ModuleDict({"visual": vit})  # keys model.visual.*, as in the original wrapper

    @property
    def visual(self) -> VisionTransformer:
        return self.model["visual"]

    def preprocess(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Images in [-1, 1] -> normalised [B, 3, S, S], computed in the images' dtype.

        ``images``: a list of ``[3, 1, H, W]`` (how the pipeline passes the reference frame) or
        ``[3, H, W]`` tensors, or one ``[B, 3, H, W]`` batch. Each is resized bicubically to S x S.
        """
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"CLIP input batch must be [B, 3, H, W], got {tuple(images.shape)}")
            images = [images]
        else:
            images = [u.transpose(0, 1) if u.ndim == 4 else u[None] for u in images]  # -> [1, 3, H, W]
        size = (self.config.image_size, self.config.image_size)
        x = torch.cat([F.interpolate(u, size=size, mode="bicubic", align_corners=False) for u in images])
        x = x * 0.5 + 0.5
        mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Images in [-1, 1] (see ``preprocess``) -> penultimate-block tokens [B, 257, dim] in the weights' dtype."""
        x = self.preprocess(images).to(self.visual.patch_embedding.weight.dtype)
        return self.visual(x, skip_last_blocks=1)


def clip_visual_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Map the released file's keys to this module's: ``visual.*`` -> ``model.visual.*``.

    Keys already carrying ``model.`` are accepted too. ``textual.*`` and ``log_scale`` are dropped;
    anything else raises CheckpointError naming ``source``.
    """
    kept, stray = {}, []
    for key, value in state.items():
        bare = key[len("model.") :] if key.startswith("model.") else key
        if bare.startswith("visual."):
            kept["model." + bare] = value
        elif not bare.startswith(CLIP_DROPPED_PREFIXES):
            stray.append(key)
    if stray:
        raise CheckpointError(f"{source}: {len(stray)} keys are neither visual.*, textual.* nor log_scale, e.g. {sorted(stray)[:5]}; is this the open-clip XLM-R ViT-H/14 file?")
    return kept


def load_clip_image_encoder(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    preset: str = "xlm-roberta-large-vit-huge-14",
    **overrides,
) -> CLIPVisionEncoder:
    """Build the visual tower without allocating it and load it strictly from ``path``.

    The original keeps CLIP in float32 at inference (its input may be bf16). ``overrides`` change
    preset fields (tests use tiny towers).
    """
    if preset not in CLIP_PRESETS:
        raise ValueError(f"unknown CLIP preset {preset!r}; choose from {sorted(CLIP_PRESETS)}")
    state = clip_visual_state(load_state_dict_file(path), source=str(path))
    with torch.device("meta"):
        model = CLIPVisionEncoder(**{**CLIP_PRESETS[preset], **overrides})
    load_into(model, state, source=str(path), assign=True)
    nn.Module.to(model, device=device, dtype=dtype)  # (diffusers' ModelMixin.to warns on every dtype cast)
    return model.eval().requires_grad_(False)
