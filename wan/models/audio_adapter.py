"""StableAvatar's time-step-aware audio adapter (state_dict prefix ``vocal_projector.``).

wav2vec2 tokens are projected to the adapter width, cut into one overlapping window per latent
frame, refined by two blocks that are modulated by the DiT's timestep embedding and cross-attend
to the DiT tokens of their own latent frame, and leave through a modulated head. The DiT blocks
then attend, frame by frame, to these per-frame audio tokens (``cross_attn.k_vocal/v_vocal``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from wan.constants import ADAPTER_EXPAND

from .attention import attention, get_attention_backend
from .layers import WanLayerNorm, WanRMSNorm

# ---------------------------------------------------------------------------------------------
# Audio windows per latent frame
# ---------------------------------------------------------------------------------------------


def audio_window_ranges(num_tokens: int, video_frames: int) -> list[tuple[int, int]]:
    """Inclusive token ranges [s, e], one per latent frame of a ``video_frames``-frame clip.

    ``tpf = num_tokens / video_frames`` tokens per video frame; latent frame i >= 1 is centred on
    ``int(tpf * (4i - 1)) - 1`` (floor of the midpoint of its 4 video frames, minus one) with
    half-width ``int(2 * tpf)``. Frame 0 instead takes the window that ends where frame 1's begins.
    The count is ``(video_frames - 1) // 4 + 1`` whatever the real number of latent frames is.
    """
    tpf = num_tokens / video_frames
    half = int(tpf * 4 / 2)
    count = (video_frames - 1) // 4 + 1
    centres = [0] + [int((tpf * ((i - 1) * 4 + 1) + tpf * (i * 4 + 1)) / 2) - 1 for i in range(1, count)]
    ranges = [(c - half, c + half) for c in centres]
    if count > 1:
        first_end = ranges[1][0]
        ranges[0] = (first_end - 2 * half, first_end)
    else:  # a one-frame clip has no "frame 1" to anchor on
        ranges[0] = (-2 * half, 0)
    return ranges


def audio_window_index(num_tokens: int, ranges: list[tuple[int, int]], expand: int = ADAPTER_EXPAND) -> tuple[torch.Tensor, torch.Tensor]:
    """Source index [F, window_len] (-1 = zero padding) and valid counts [F] for widened ranges.

    Each range is widened by ``expand`` on both sides; the in-bounds tokens come first and ALL
    padding (also the part that fell before token 0) is appended at the end, as the original does.
    """
    widened = [(s - expand, e + expand) for s, e in ranges]
    window_len = widened[0][1] - widened[0][0] + 1
    index = torch.full((len(widened), window_len), -1, dtype=torch.long)
    lens = torch.zeros(len(widened), dtype=torch.long)
    for i, (s, e) in enumerate(widened):
        lo, hi = max(s, 0), min(e, num_tokens - 1)
        n = max(hi - lo + 1, 0)
        index[i, :n] = torch.arange(lo, lo + n)
        lens[i] = n
    return index, lens


def split_audio_windows(tokens: torch.Tensor, video_frames: int, expand: int = ADAPTER_EXPAND) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N, C] tokens -> ([B, F, window_len, C] windows with zero padding at the end, [F] valid lengths)."""
    ranges = audio_window_ranges(tokens.shape[1], video_frames)
    index, lens = audio_window_index(tokens.shape[1], ranges, expand)
    index = index.to(tokens.device)
    gathered = tokens[:, index.clamp_min(0)]  # [B, F, W, C]
    return gathered * (index >= 0)[None, :, :, None].to(tokens.dtype), lens


# ---------------------------------------------------------------------------------------------
# Modules (attribute names are the checkpoint keys)
# ---------------------------------------------------------------------------------------------


class AudioProjection(nn.Module):
    """768 -> width. One stage (``proj``/``norm``, 1.3B) or two (``proj_1/norm_1/proj_2/norm_2``, 14B)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None):
        super().__init__()
        self.two_stage = hidden_dim is not None
        if self.two_stage:
            self.proj_1 = nn.Linear(in_dim, hidden_dim, bias=False)
            self.norm_1 = nn.LayerNorm(hidden_dim)
            self.proj_2 = nn.Linear(hidden_dim, out_dim, bias=False)
            self.norm_2 = nn.LayerNorm(out_dim)
        else:
            self.proj = nn.Linear(in_dim, out_dim, bias=False)
            self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.two_stage:
            return self.norm_2(self.proj_2(self.norm_1(self.proj_1(x))))
        return self.norm(self.proj(x))


class FrameCrossAttention(nn.Module):
    """Audio queries of latent frame f attend to the DiT tokens of frame f only."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(context_dim, dim)
        self.v = nn.Linear(context_dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps=eps)
        self.norm_k = WanRMSNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, frames: int, dtype: torch.dtype) -> torch.Tensor:
        """x [B, F*W, A] audio; tokens [B, L, D] DiT tokens with L = F * tokens_per_frame -> [B, F*W, A]."""
        b, n = x.shape[0], self.num_heads
        q = self.norm_q(self.q(x.to(dtype))).view(b * frames, -1, n, x.shape[-1] // n)
        k = self.norm_k(self.k(tokens.to(dtype))).view(b * frames, -1, n, x.shape[-1] // n)
        v = self.v(tokens.to(dtype)).view(b * frames, -1, n, x.shape[-1] // n)
        # No lengths are passed, so every backend computes full attention. Under sequence
        # parallelism the adapter runs on the full sequence on every rank: plain SDPA there.
        backend = "sdpa_unmasked" if get_attention_backend() == "usp" else None
        out = attention(q.to(dtype), k.to(dtype), v.to(dtype), backend=backend)
        return self.o(out.to(dtype).reshape(b, -1, x.shape[-1]))


class AdapterBlock(nn.Module):
    """Modulated residual (no self-attention) -> per-frame cross-attention -> modulated FFN."""

    def __init__(self, dim: int, context_dim: int, ffn_dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = WanLayerNorm(dim, eps)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True)
        self.cross_attn = FrameCrossAttention(dim, context_dim, num_heads, eps)
        self.norm2 = WanLayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, tokens: torch.Tensor, frames: int, dtype: torch.dtype) -> torch.Tensor:
        """x [B, F*W, A]; e0 [B, 6, D] timestep modulation; tokens [B, L, D]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation + e0).chunk(6, dim=1)
        # 1. Timestep-modulated residual in the slot where a DiT block has self-attention.
        x = x + (self.norm1(x) * (1 + scale1) + shift1).to(dtype) * gate1
        # 2. Per-frame cross-attention to the DiT tokens (no gate).
        x = x + self.cross_attn(self.norm3(x), tokens, frames, dtype)
        # 3. Modulated FFN.
        return x + self.ffn((self.norm2(x) * (1 + scale2) + shift2).to(dtype)) * gate2


class AdapterHead(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = WanLayerNorm(dim, eps)
        self.final_proj = nn.Linear(dim, dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation + e.unsqueeze(1)).chunk(2, dim=1)
        return self.final_proj(self.norm(x) * (1 + scale) + shift)


class AudioAdapter(nn.Module):
    """wav2vec tokens [B, N, 768] -> per-latent-frame audio tokens [B, F, W, A] (+ valid lengths [F])."""

    def __init__(
        self,
        audio_in_dim: int = 768,
        dim: int = 1536,
        context_dim: int = 1536,
        hidden_dim: int | None = None,
        num_layers: int = 2,
        num_heads: int = 8,
    ):
        super().__init__()
        self.proj_model = AudioProjection(audio_in_dim, dim, hidden_dim)
        self.blocks = nn.ModuleList([AdapterBlock(dim, context_dim, 2 * dim, num_heads) for _ in range(num_layers)])
        self.final_head = AdapterHead(dim)

    def forward(
        self,
        vocal_embeddings: torch.Tensor,
        latents: torch.Tensor,
        e0: torch.Tensor,
        e: torch.Tensor,
        video_sample_n_frames: int = 81,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        vocal_embeddings: [B, N, 768] wav2vec2 last_hidden_state of the window's audio.
        latents: [B, seq_len, D] patch-embedded DiT tokens (zero-padded); cut into F equal groups.
        e0: [B, 6, D] projected timestep embedding; e: [B, D] timestep embedding.
        video_sample_n_frames: pixel frames of the nominal clip; F = (n - 1) // 4 + 1.
        Returns ([B, F, W, A] tokens, [F] valid lengths per window).
        """
        # The original never passes a dtype to its adapter blocks, so their casts go to float32;
        # under the pipeline's bf16 autocast the matmuls still run in bf16. Without autocast, cast
        # to the weights' dtype instead so a bf16 model still runs.
        weight_dtype = self.final_head.final_proj.weight.dtype
        dtype = torch.float32 if torch.is_autocast_enabled(vocal_embeddings.device.type) else weight_dtype
        tokens = self.proj_model(vocal_embeddings)
        windows, lens = split_audio_windows(tokens, video_sample_n_frames)
        b, frames, width, channels = windows.shape
        x = windows.reshape(b, frames * width, channels)
        for block in self.blocks:
            x = block(x, e0, latents, frames, dtype)
        x = self.final_head(x, e)
        return x.reshape(b, frames, width, channels), lens
