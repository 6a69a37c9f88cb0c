"""umT5-XXL text encoder (encoder stack only), keys of ``models_t5_umt5-xxl-enc-bf16.pth``.

The prompt path of StableAvatar, as the original pipeline runs it:

1. ``AutoTokenizer.from_pretrained(<base model>/google/umt5-xxl)``; each prompt is tokenised with
   ``padding="max_length", max_length=512, truncation=True`` (the tokenizer appends ``</s>``,
   pads with id 0). No text cleaning.
2. ``WanT5Encoder(ids, mask)`` -> ``[B, 512, 4096]``.
3. Each row is cut to its real token count (``mask.sum()``, ``</s>`` included): the pipeline gets a
   list of ``[L_b, 4096]`` tensors; the DiT zero-pads them back to 512 itself.

Numerics that matter for parity (do not "fix"): T5 attention has NO ``1/sqrt(d)`` scaling; padded
keys get ``finfo(dtype).min`` (replacing, not adding to, the position bias); the softmax runs in
float32; RMS norms are computed in float32 and cast back to the weight dtype; the FFN uses the tanh
GELU. With ``shared_pos=False`` (umT5) every block owns its relative-position table.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from wan.constants import TEXT_LEN
from wan.models.loading import CheckpointError, download_hint, load_into, load_state_dict_file

logger = logging.getLogger(__name__)

# Constructor kwargs of the released encoder (wan_civitai.yaml text_encoder_kwargs).
T5_PRESETS: dict[str, dict] = {
    "umt5-xxl": dict(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24, num_buckets=32, shared_pos=False),
}
T5_MAX_DISTANCE = 128  # relative distances >= this share the last logarithmic bucket


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    # float16 activations of the XXL model can overflow; the original clamps them just below the max.
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(torch.float16).max - 1000
        x = x.clamp(-limit, limit)
    return x


# ----------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------


class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction or bias; statistics in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.type_as(self.weight)
        return self.weight * x


class T5Attention(nn.Module):
    """Multi-head self-attention without scaling, with an additive position bias and key mask."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim_attn % num_heads:
            raise ValueError(f"dim_attn {dim_attn} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim_attn // num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, dim]; mask [B, L] (1 = real token) or None; pos_bias [1, heads, L, L] -> [B, L, dim]."""
        b, length, _ = x.shape
        n, d = self.num_heads, self.head_dim
        q = self.q(x).view(b, length, n, d).transpose(1, 2)  # [B, n, L, d]
        k = self.k(x).view(b, length, n, d).transpose(1, 2)
        v = self.v(x).view(b, length, n, d).transpose(1, 2)

        bias = x.new_zeros(b, n, length, length)
        if pos_bias is not None:
            bias = bias + pos_bias
        if mask is not None:
            bias = bias.masked_fill(mask.view(b, 1, 1, length) == 0, torch.finfo(x.dtype).min)

        logits = q @ k.transpose(-1, -2) + bias  # no 1/sqrt(d): T5 folds it into the weights
        probs = F.softmax(logits.float(), dim=-1).type_as(logits)
        out = (probs @ v).transpose(1, 2).reshape(b, length, n * d)
        return self.dropout(self.o(out))


class T5FeedForward(nn.Module):
    """Gated GELU FFN: ``fc2(fc1(x) * gelu_tanh(gate(x)))``; ``gate`` is a Sequential for its key ``gate.0``."""

    def __init__(self, dim: int, dim_ffn: int, dropout: float = 0.0):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.fc1(x) * self.gate(x))
        return self.dropout(self.fc2(x))


class T5RelativeEmbedding(nn.Module):
    """Bidirectional bucketed relative-position bias: ``embedding[bucket(k - q)]`` -> [1, heads, Lq, Lk]."""

    def __init__(self, num_buckets: int, num_heads: int, max_dist: int = T5_MAX_DISTANCE):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_dist = max_dist
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def relative_position_bucket(self, rel_pos: torch.Tensor) -> torch.Tensor:
        """Bucket index of each ``key_pos - query_pos``.

        Half the buckets are for positive offsets. Inside a half, offsets below ``max_exact`` get a
        bucket each; larger ones are spread logarithmically up to ``max_dist`` and capped.
        """
        half = self.num_buckets // 2
        max_exact = half // 2
        offset = (rel_pos > 0).long() * half
        dist = rel_pos.abs()
        # clamp only avoids log(0); every distance below max_exact takes the exact branch anyway
        far = dist.clamp_min(max_exact).float()
        log_bucket = max_exact + (torch.log(far / max_exact) / math.log(self.max_dist / max_exact) * (half - max_exact)).long()
        log_bucket = log_bucket.clamp_max(half - 1)
        return offset + torch.where(dist < max_exact, dist, log_bucket)

    def forward(self, lq: int, lk: int) -> torch.Tensor:
        device = self.embedding.weight.device
        rel_pos = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]
        bias = self.embedding(self.relative_position_bucket(rel_pos))  # [Lq, Lk, heads]
        return bias.permute(2, 0, 1).unsqueeze(0).contiguous()


class T5Block(nn.Module):
    """Pre-norm encoder block: self-attention then gated FFN, each residual."""

    def __init__(self, dim: int, dim_attn: int, dim_ffn: int, num_heads: int, num_buckets: int, shared_pos: bool, dropout: float):
        super().__init__()
        self.norm1 = T5LayerNorm(dim)
        self.attn = T5Attention(dim, dim_attn, num_heads, dropout)
        self.norm2 = T5LayerNorm(dim)
        self.ffn = T5FeedForward(dim, dim_ffn, dropout)
        self.pos_embedding = None if shared_pos else T5RelativeEmbedding(num_buckets, num_heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, pos_bias: torch.Tensor | None) -> torch.Tensor:
        if self.pos_embedding is not None:
            pos_bias = self.pos_embedding(x.shape[1], x.shape[1])
        x = _clamp_fp16(x + self.attn(self.norm1(x), mask=mask, pos_bias=pos_bias))
        return _clamp_fp16(x + self.ffn(self.norm2(x)))


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------


class WanT5Encoder(ModelMixin, ConfigMixin):
    """The umT5 encoder stack (``WanT5EncoderModel`` in the original).

    Args:
        vocab: token-embedding rows (256384 for umT5).
        dim: model width (4096); also the width of the returned features.
        dim_attn: total attention width (heads x head_dim).
        dim_ffn: hidden width of the gated FFN.
        num_heads: attention heads.
        num_layers: encoder blocks.
        num_buckets: relative-position buckets (both directions together).
        shared_pos: one position table for all blocks (T5) or one per block (umT5, False).
        dropout: dropout probability (0 in every released config).
    """

    _no_split_modules = ["T5Block"]

    @register_to_config
    def __init__(
        self,
        vocab: int = 256384,
        dim: int = 4096,
        dim_attn: int = 4096,
        dim_ffn: int = 10240,
        num_heads: int = 64,
        num_layers: int = 24,
        num_buckets: int = 32,
        shared_pos: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.pos_embedding = T5RelativeEmbedding(num_buckets, num_heads) if shared_pos else None
        self.drop = nn.Dropout(dropout)  # not `dropout`: that name is a config field
        self.blocks = nn.ModuleList(T5Block(dim, dim_attn, dim_ffn, num_heads, num_buckets, shared_pos, dropout) for _ in range(num_layers))
        self.norm = T5LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, L] int64; attention_mask [B, L] (1 = token, 0 = padding) -> [B, L, dim].

        Rows at padded positions are computed too (the prompt path cuts them off).
        """
        x = self.drop(self.token_embedding(input_ids))
        length = x.shape[1]
        shared = self.pos_embedding(length, length) if self.pos_embedding is not None else None
        for block in self.blocks:
            x = block(x, attention_mask, shared)
        return self.drop(self.norm(x))


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------


def load_t5_encoder(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    preset: str = "umt5-xxl",
    **overrides,
) -> WanT5Encoder:
    """Build the encoder of ``preset`` without allocating it, then load ``path`` strictly.

    The released file is bf16 (11.4 GB); it is memory-mapped and cast to ``dtype`` (the original
    runs T5 in bf16). Any missing or unexpected key raises CheckpointError naming the file.
    """
    if preset not in T5_PRESETS:
        raise ValueError(f"unknown T5 preset {preset!r}; choose from {sorted(T5_PRESETS)}")
    state = load_state_dict_file(path)
    with torch.device("meta"):
        model = WanT5Encoder(**{**T5_PRESETS[preset], **overrides})
    nn.Module.to(model, dtype)  # (diffusers' ModelMixin.to warns on every dtype cast)
    load_into(model, state, source=str(path), assign=True)
    return nn.Module.to(model, device).eval().requires_grad_(False)


def load_tokenizer(path: str | os.PathLike):
    """The umT5 tokenizer folder (``google/umt5-xxl``) through transformers' AutoTokenizer.

    transformers 5's ``T5Tokenizer(vocab_file=...)`` silently tokenises everything to ``<unk>``, so the
    folder route is the only one used.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {path}; {download_hint(path)}")
    if not any((path / name).is_file() for name in ("tokenizer.json", "spiece.model")):
        raise CheckpointError(f"{path} holds neither tokenizer.json nor spiece.model; {download_hint(path)}")
    return AutoTokenizer.from_pretrained(str(path))


def tokenize_prompts(tokenizer, prompts: str | Sequence[str], max_length: int = TEXT_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise as the original pipeline: pad to ``max_length``, truncate, append ``</s>``.

    Returns ids [B, max_length] int64 and mask [B, max_length] int64. Warns when a prompt is cut.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    enc = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True, return_tensors="pt")
    full = tokenizer(prompts, padding="longest", add_special_tokens=True)["input_ids"]
    for prompt, ids in zip(prompts, full, strict=True):
        if len(ids) > max_length:
            logger.warning("prompt truncated to %d tokens (it has %d): %r", max_length, len(ids), prompt[:80])
    return enc["input_ids"].long(), enc["attention_mask"].long()


@torch.no_grad()
def encode_prompts(
    encoder: WanT5Encoder,
    tokenizer,
    prompts: str | Sequence[str],
    max_length: int = TEXT_LEN,
    device: str | torch.device | None = None,
) -> list[torch.Tensor]:
    """Prompts -> one ``[L_b, dim]`` tensor each (``L_b`` = real tokens incl. ``</s>``), in the encoder's dtype."""
    ids, mask = tokenize_prompts(tokenizer, prompts, max_length)
    device = device if device is not None else encoder.device
    out = encoder(ids.to(device), attention_mask=mask.to(device))
    lengths = mask.gt(0).sum(dim=1).tolist()
    return [row[:n] for row, n in zip(out, lengths, strict=True)]
