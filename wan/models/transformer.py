"""WanAvatarTransformer3DModel: the Wan2.1 i2v DiT with StableAvatar's audio branch.

One class for both releases; ``wan.configs.TRANSFORMER_PRESETS`` holds "1.3B"
(Wan2.1-Fun-V1.1-1.3B-InP + adapter) and "14B" (Wan2.1-I2V-14B + adapter). Attribute names are
the checkpoint keys of the released ``transformer3d-*.pt`` files, so they load strictly.

Forward, per CFG batch row (shapes for the 1.3B at 512x512, one 81-frame window):
    1. [x | y] (16 + 20 channels) -> Conv3d patch embedding -> tokens [B, F*h*w, D], zero-padded
       to ``seq_len`` (the last, shorter window keeps padding tokens; nothing masks them).
    2. timestep -> float64 sinusoid -> time MLP in float32 -> e [B, D], e0 [B, 6, D].
    3. text [L_i, 4096] zero-padded to 512 -> text_embedding; CLIP [257, 1280] -> img_emb;
       context = [img (257) | text (512)].
    4. audio adapter -> per-latent-frame audio tokens [B, F, W, D].
    5. blocks: modulated self-attention (3-axis RoPE), cross-attention to image + text + the
       token's own frame of audio (summed before one output projection), modulated FFN.
    6. modulated head -> unpatchify -> [B, 16, F, H, W] (flow-matching velocity).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import logging

from wan.configs import transformer_config
from wan.constants import CLIP_DIM, CLIP_TOKENS

from .attention import attention, prepare_attention
from .audio_adapter import AudioAdapter
from .layers import MLPProj, WanLayerNorm, WanRMSNorm, rope_angles, rope_apply, rope_cos_sin, sinusoidal_embedding_1d
from .loading import CheckpointError, checking_only, download_hint, load_into, load_state_dict_file, load_state_dict_files, require_file

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------------------------------
# Attention layers
# ---------------------------------------------------------------------------------------------


class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        # Self-attention's backend; None = the global one. Sequence parallelism sets "usp" here
        # (wan.distributed.sequence_parallel), so cross-attention stays local.
        self.attn_backend: str | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1, self.num_heads, self.head_dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], seq_lens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x [B, L, D] -> [B, L, D]; q/k are RMS-normalised over the full width before the head split."""
        x = x.to(dtype)
        q = self._heads(self.norm_q(self.q(x)))
        k = self._heads(self.norm_k(self.k(x)))
        v = self._heads(self.v(x))
        out = attention(
            rope_apply(q, *rope).to(dtype), rope_apply(k, *rope).to(dtype), v, q_lens=seq_lens, k_lens=seq_lens, backend=self.attn_backend
        )
        return self.o(out.to(dtype).flatten(2))


class WanAvatarCrossAttention(WanSelfAttention):
    """Video queries attend to text (``k/v``), CLIP image tokens (``k_img/v_img``) and audio (``k_vocal/v_vocal``)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__(dim, num_heads, qk_norm, eps)
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_k_img = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        # StableAvatar's audio keys/values: zero-initialised, no norm on the keys.
        self.k_vocal = nn.Linear(dim, dim)
        self.v_vocal = nn.Linear(dim, dim)
        for layer in (self.k_vocal, self.v_vocal):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_lens: torch.Tensor | None,
        vocal_context: torch.Tensor,
        vocal_context_lens: torch.Tensor | None,
        frames: int,
        dtype: torch.dtype,
        frame_segments: Sequence[tuple[int, int, int]] | None = None,
    ) -> torch.Tensor:
        """
        x: [B, L, D] normed video tokens, L = frames * tokens_per_frame.
        context: [B, 257 + 512, D] image then text tokens.
        vocal_context: [B, frames, W, D] per-frame audio tokens, or [B, frames*W, D] (clip-level).
        frame_segments: under sequence parallelism x is a chunk of the sequence; (start, stop, frame)
            triples say which frame each run of its tokens belongs to. None: x is the whole sequence.
        """
        b = x.shape[0]
        img, text = context[:, :CLIP_TOKENS].to(dtype), context[:, CLIP_TOKENS:].to(dtype)
        q = self._heads(self.norm_q(self.q(x.to(dtype)))).to(dtype)
        # 1. Image branch (never masked).
        out_img = attention(q, self._heads(self.norm_k_img(self.k_img(img))).to(dtype), self._heads(self.v_img(img)).to(dtype))
        # 2. Text branch.
        out_txt = attention(q, self._heads(self.norm_k(self.k(text))).to(dtype), self._heads(self.v(text)).to(dtype), k_lens=context_lens)
        # 3. Audio branch: frame f's queries see frame f's audio window only.
        k_voc, v_voc = self.k_vocal(vocal_context), self.v_vocal(vocal_context)
        if vocal_context.dim() == 4 and frame_segments is not None:
            # A sequence-parallel chunk: each run of tokens attends to its own frame's audio (the
            # original regrouped the chunk as if it were the whole sequence: PIPELINE.md quirk 10).
            lens = None if vocal_context_lens is None else vocal_context_lens.view(b, -1)
            out_voc = torch.cat(
                [
                    attention(
                        q[:, lo:hi],
                        self._heads(k_voc[:, f]).to(dtype),
                        self._heads(v_voc[:, f]).to(dtype),
                        k_lens=None if lens is None else lens[:, f],
                    )
                    for lo, hi, f in frame_segments
                ],
                dim=1,
            )
        elif vocal_context.dim() == 4:
            per_frame = (b * frames, -1, self.num_heads, self.head_dim)
            out_voc = attention(q.reshape(per_frame), k_voc.reshape(per_frame).to(dtype), v_voc.reshape(per_frame).to(dtype), k_lens=vocal_context_lens)
            out_voc = out_voc.reshape(b, -1, self.num_heads, self.head_dim)
        else:
            out_voc = attention(q, self._heads(k_voc).to(dtype), self._heads(v_voc).to(dtype))
        return self.o(out_txt.to(dtype).flatten(2) + out_img.to(dtype).flatten(2) + out_voc.flatten(2))


class WanAttentionBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool, cross_attn_norm: bool, eps: float):
        super().__init__()
        self.norm1 = WanLayerNorm(dim, eps)
        self.self_attn = WanSelfAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = WanAvatarCrossAttention(dim, num_heads, qk_norm, eps)
        self.norm2 = WanLayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        seq_lens: torch.Tensor,
        context: torch.Tensor,
        context_lens: torch.Tensor | None,
        vocal_context: torch.Tensor,
        vocal_context_lens: torch.Tensor | None,
        frames: int,
        dtype: torch.dtype,
        frame_segments: Sequence[tuple[int, int, int]] | None = None,
    ) -> torch.Tensor:
        """x [B, L, D]; e0 [B, 6, D] -> [B, L, D] (L: a sequence chunk when ``frame_segments`` is given)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation + e0).chunk(6, dim=1)
        # 1. Modulated self-attention.
        x = x + self.self_attn((self.norm1(x) * (1 + scale1) + shift1).to(dtype), rope, seq_lens, dtype) * gate1
        # 2. Cross-attention to image, text and audio (no modulation, no gate).
        x = x + self.cross_attn(self.norm3(x), context, context_lens, vocal_context, vocal_context_lens, frames, dtype, frame_segments)
        # 3. Modulated FFN.
        return x + self.ffn((self.norm2(x) * (1 + scale2) + shift2).to(dtype)) * gate2


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float = 1e-6):
        super().__init__()
        self.norm = WanLayerNorm(dim, eps)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation + e.unsqueeze(1)).chunk(2, dim=1)
        return self.head(self.norm(x) * (1 + scale) + shift)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class WanAvatarTransformer3DModel(ModelMixin, ConfigMixin):
    r"""Wan2.1 image-to-video DiT with StableAvatar's time-step-aware audio adapter.

    Args:
        model_type: only ``"i2v"`` (StableAvatar's releases are image-to-video).
        patch_size: (t, h, w) patch of the Conv3d embedding, (1, 2, 2).
        text_len: text tokens after zero padding (512).
        in_dim: input channels, 16 noisy latents + 4 mask + 16 reference latents = 36.
        dim, ffn_dim, num_heads, num_layers: transformer width, FFN width, heads, blocks.
        freq_dim: timestep sinusoid width (256). text_dim: umT5 width (4096). out_dim: 16.
        window_size: kept for config compatibility; only global attention (-1, -1) exists.
        qk_norm, cross_attn_norm, eps: as in Wan2.1.
        audio_in_dim: wav2vec2 width (768). audio_proj_dim: adapter width (must equal ``dim``:
            the adapter adds the DiT's e0 to its own tokens). audio_proj_hidden_dim: ``None`` for the
            1.3B one-stage projection, 2048 for the 14B two-stage one.
        clip_dim: width of the CLIP tokens fed to ``img_emb`` (1280 for ViT-H/14; small in tests).
        audio_adapter_layers, audio_adapter_heads: adapter depth (2) and heads (8).
        audio_cfg_last_row: 1.3B behaviour for a CFG batch (B > 1): run the adapter on the LAST row
            only and give the rows audio tokens ``[0, v, v]`` (B must be 3). The 14B runs every row.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["WanAttentionBlock"]
    _skip_layerwise_casting_patterns = ["patch_embedding", "norm", "modulation"]

    @register_to_config
    def __init__(
        self,
        model_type: str = "i2v",
        patch_size: tuple[int, int, int] = (1, 2, 2),
        text_len: int = 512,
        in_dim: int = 36,
        dim: int = 1536,
        ffn_dim: int = 8960,
        freq_dim: int = 256,
        text_dim: int = 4096,
        out_dim: int = 16,
        num_heads: int = 12,
        num_layers: int = 30,
        window_size: tuple[int, int] = (-1, -1),
        qk_norm: bool = True,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        audio_in_dim: int = 768,
        audio_proj_dim: int = 1536,
        audio_proj_hidden_dim: int | None = None,
        audio_adapter_layers: int = 2,
        audio_adapter_heads: int = 8,
        audio_cfg_last_row: bool = True,
        clip_dim: int = CLIP_DIM,
    ):
        super().__init__()
        if model_type != "i2v":
            raise ValueError(f"model_type {model_type!r}: StableAvatar needs the image-to-video ('i2v') Wan model")
        if tuple(window_size) != (-1, -1):
            raise ValueError(f"window_size {window_size}: only global attention (-1, -1) is implemented")
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim {dim} must split into {num_heads} heads of even size")
        if audio_proj_dim != dim:
            raise ValueError(f"audio_proj_dim ({audio_proj_dim}) must equal dim ({dim}): the adapter is modulated by the DiT's e0")
        self.patch_size = tuple(patch_size)
        self.dim, self.out_dim, self.freq_dim, self.text_len = dim, out_dim, freq_dim, text_len

        # Embeddings
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))

        self.blocks = nn.ModuleList([WanAttentionBlock(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps) for _ in range(num_layers)])
        self.head = Head(dim, out_dim, self.patch_size, eps)
        self.img_emb = MLPProj(clip_dim, dim)
        self.vocal_projector = AudioAdapter(audio_in_dim, audio_proj_dim, dim, audio_proj_hidden_dim, audio_adapter_layers, audio_adapter_heads)

        # RoPE angles: plain attribute, not a buffer (no state_dict key, never cast to bf16).
        self.rope_angles = rope_angles(dim // num_heads)
        self.gradient_checkpointing = False
        # Set by wan.distributed.sequence_parallel.enable_sequence_parallel; None = one device.
        self.sequence_parallel = None

    # -- pieces of forward -------------------------------------------------------------------

    def time_embeddings(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """[B] timesteps -> e [B, D], e0 [B, 6, D], computed in float32 then cast to ``dtype``."""
        sinusoid = sinusoidal_embedding_1d(self.freq_dim, t).float()
        # fp32 island: the original runs these MLPs under autocast(float32) with the (possibly
        # bf16) weights upcast.
        e = _fp32_sequential(self.time_embedding, sinusoid)
        e0 = _fp32_sequential(self.time_projection, e).unflatten(1, (6, self.dim))
        return e.to(dtype), e0.to(dtype)

    def embed_context(self, context: list[torch.Tensor], clip_fea: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text list of [L_i, 4096] + CLIP [B, 257, 1280] -> ([B, 257 + 512, D], text lengths [B])."""
        for i, u in enumerate(context):
            if u.shape[0] > self.text_len:
                raise ValueError(f"text context {i} has {u.shape[0]} tokens, more than text_len={self.text_len}")
        padded = torch.stack([torch.cat([u, u.new_zeros(self.text_len - u.shape[0], u.shape[1])]) for u in context])
        lens = torch.tensor([u.shape[0] for u in context], dtype=torch.long)
        return torch.cat([self.img_emb(clip_fea), self.text_embedding(padded)], dim=1), lens

    def audio_context(
        self, vocal_embeddings: torch.Tensor, tokens: torch.Tensor, e0: torch.Tensor, e: torch.Tensor, video_sample_n_frames: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame audio tokens [B, F, W, D] for every row, and their valid lengths [B * F]."""
        b = tokens.shape[0]
        if self.config.audio_cfg_last_row and vocal_embeddings.shape[0] > 1:
            # 1.3B CFG batch: the adapter sees only the last row; row 0 (no audio) gets exact zeros.
            if b != 3:
                raise ValueError(f"the 1.3B model's CFG audio batch has 3 rows [no audio, audio, audio]; got batch {b}")
            v, lens = self.vocal_projector(vocal_embeddings[-1:], tokens[-1:], e0[-1:], e[-1:], video_sample_n_frames)
            return torch.cat([torch.zeros_like(v), v, v]), lens.repeat(3)
        v, lens = self.vocal_projector(vocal_embeddings, tokens, e0, e, video_sample_n_frames)
        return v, lens.repeat(b)

    def run_blocks(self, x: torch.Tensor, **block_kwargs) -> torch.Tensor:
        """The block loop; TeaCache and other wrappers replace this one call."""
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(functools.partial(block, **block_kwargs), x)
            else:
                x = block(x, **block_kwargs)
        return x

    def compile_blocks(self, **compile_kwargs) -> None:
        """Regional ``torch.compile``: every block compiled on its own (one graph per distinct
        input shape: the full windows and the shorter last one). Fuses the float32 norms,
        modulation and RoPE around the matmuls; the maths is unchanged, and inductor is told to
        keep the eager code's intermediate bf16 roundings (``emulate_precision_casts``) so the
        numbers stay as close to the uncompiled model as fusion allows."""
        import torch._inductor.config as inductor_config

        inductor_config.emulate_precision_casts = True
        for block in self.blocks:
            block.compile(**compile_kwargs)
        self._compiled_blocks = True

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, prod(patch)*C] (padding tokens past f*h*w dropped) -> [B, C, F*pt, h*ph, w*pw]."""
        f, h, w = grid
        pt, ph, pw = self.patch_size
        b = x.shape[0]
        x = x[:, : f * h * w].reshape(b, f, h, w, pt, ph, pw, self.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(b, self.out_dim, f * pt, h * ph, w * pw)

    # -- forward -----------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: list[torch.Tensor],
        seq_len: int,
        clip_fea: torch.Tensor,
        y: torch.Tensor,
        vocal_embeddings: torch.Tensor,
        is_clip_level_modeling: bool = False,
        video_sample_n_frames: int = 81,
        cond_flag: bool = True,
        rows: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """
        x: [B, 16, F, H, W] noisy latents.  t: [B] timesteps on the 0..1000 scale.
        context: B text embeddings [L_i, 4096], trimmed to their real token counts.
        seq_len: token count to pad to (that of the nominal window: ((n-1)//4+1) * H/2 * W/2).
        clip_fea: [B, 257, 1280].  y: [B, 20, F, H, W] = 4 mask channels + 16 reference latents.
        vocal_embeddings: [B, N, 768] wav2vec2 features of the window's audio.
        is_clip_level_modeling: training-only; every token sees all audio tokens of the clip.
        video_sample_n_frames: pixel frames of the nominal window (81); the audio adapter makes
            (n-1)//4+1 per-frame windows and the DiT cuts its tokens into that many groups.
        cond_flag: accepted for signature compatibility (the original's TeaCache uses it).
        rows: compute only these batch rows (CFG-row parallelism). The inputs still hold every row,
            so the 1.3B adapter sees the last row as usual; the blocks and head run on ``rows``.
        Returns [B, 16, F, H, W] ([len(rows), ...] with ``rows``).
        """
        dtype = x.dtype
        frames = (video_sample_n_frames - 1) // 4 + 1

        # 1. Patch embedding, frame-major token order, zero padding to seq_len.
        x = self.patch_embedding(torch.cat([x, y.to(x.dtype)], dim=1))
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)
        if x.shape[1] > seq_len:
            raise ValueError(f"{x.shape[1]} video tokens do not fit seq_len={seq_len}")
        x = torch.cat([x, x.new_zeros(x.shape[0], seq_len - x.shape[1], x.shape[2])], dim=1)
        if seq_len % frames:
            raise ValueError(f"seq_len {seq_len} is not divisible by the {frames} latent frames of a {video_sample_n_frames}-frame window")
        seq_lens = torch.full((x.shape[0],), math.prod(grid), dtype=torch.long)

        # 2. Timestep embeddings (fp32 island).
        e, e0 = self.time_embeddings(t, dtype)

        # 3. Image + text context; 4. audio tokens per latent frame.
        ctx, context_lens = self.embed_context(context, clip_fea)
        vocal_context, vocal_lens = self.audio_context(vocal_embeddings, x, e0, e, video_sample_n_frames)
        if is_clip_level_modeling:
            vocal_context = vocal_context.flatten(1, 2)
        if rows is not None:
            rows, b = list(rows), x.shape[0]
            x, e, e0, ctx, seq_lens, context_lens = (u[rows] for u in (x, e, e0, ctx, seq_lens, context_lens))
            vocal_context, vocal_lens = vocal_context[rows], vocal_lens.view(b, -1)[rows].flatten()

        # 5. Blocks (on this rank's chunk of the sequence under sequence parallelism).
        rope = rope_cos_sin(self.rope_angles, grid, device=x.device)
        prepare_attention(x.device)  # settle 'auto' here, outside the (compiled) blocks
        sp, frame_segments = self.sequence_parallel, None
        if sp is not None:
            x, rope, frame_segments = sp.shard(x, rope, frames)
        x = self.run_blocks(
            x,
            e0=e0,
            rope=rope,
            seq_lens=seq_lens,
            context=ctx,
            context_lens=context_lens,
            vocal_context=vocal_context,
            vocal_context_lens=vocal_lens,
            frames=frames,
            dtype=dtype,
            frame_segments=frame_segments,
        )
        if sp is not None:
            x = sp.gather(x, seq_len)

        # 6. Head and unpatchify.
        return self.unpatchify(self.head(x, e), grid)


def _fp32_sequential(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a Linear/activation Sequential in float32 whatever the weights' dtype.

    On CUDA this is the original's ``autocast(dtype=float32)``, which also covers wrapped layers
    (peft LoRA); elsewhere float32 weights run as they are and plain Linears are upcast by hand.
    """
    if x.device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.float32):
            return seq(x)
    if all(p.dtype == torch.float32 for p in seq.parameters()):
        return seq(x)
    for layer in seq:
        if isinstance(layer, nn.Linear):
            x = nn.functional.linear(x, layer.weight.float(), layer.bias.float() if layer.bias is not None else None)
        else:
            x = layer(x)
    return x


# ---------------------------------------------------------------------------------------------
# Loading the released weights
# ---------------------------------------------------------------------------------------------

# config.json fields of the Wan(-Fun) base that map onto our config; the rest (patch size, qk/cross
# norms, window) is forced as the original's from_pretrained does.
_BASE_CONFIG_FIELDS = ("dim", "eps", "ffn_dim", "freq_dim", "in_dim", "num_heads", "num_layers", "out_dim", "text_len", "text_dim")
AUDIO_KEY_PREFIXES = ("vocal_projector.",)
AUDIO_KEY_INFIXES = (".cross_attn.k_vocal.", ".cross_attn.v_vocal.")


def _is_audio_key(key: str) -> bool:
    return key.startswith(AUDIO_KEY_PREFIXES) or any(s in key for s in AUDIO_KEY_INFIXES)


def base_weight_files(base_dir: str | os.PathLike) -> list[Path]:
    """The Wan base DiT weight files of ``base_dir``, in the original's order of preference."""
    base_dir = Path(base_dir)
    for name in ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"):
        if (base_dir / name).is_file():
            return [base_dir / name]
    shards = sorted(base_dir.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no diffusion_pytorch_model.safetensors (or shards) in {base_dir}; {download_hint(base_dir)}")
    return shards


def transformer_config_from_base(base_dir: str | os.PathLike) -> dict:
    """Our constructor kwargs for the base folder's config.json.

    A Wan(-Fun) ``WanModel`` config picks the preset by width (1536 -> 1.3B, 5120 -> 14B) and takes
    its sizes from the file; a config written by this class (``save_pretrained``, tiny test
    folders) is used as it is.
    """
    config_file = require_file(Path(base_dir) / "config.json", "Wan base config")
    raw = json.loads(config_file.read_text())
    if raw.get("_class_name") == WanAvatarTransformer3DModel.__name__:
        own = set(inspect.signature(WanAvatarTransformer3DModel.__init__).parameters) - {"self"}
        return {k: v for k, v in raw.items() if k in own}
    preset = {1536: "1.3B", 5120: "14B"}.get(raw.get("dim"))
    if preset is None:
        raise CheckpointError(f"{config_file}: dim={raw.get('dim')} is neither the 1.3B (1536) nor the 14B (5120) Wan model")
    if raw.get("model_type", "i2v") != "i2v":
        raise CheckpointError(f"{config_file}: model_type {raw.get('model_type')!r}; StableAvatar needs an i2v (InP) base model")
    return transformer_config(preset, **{k: raw[k] for k in _BASE_CONFIG_FIELDS if k in raw})


def load_transformer(
    base_dir: str | os.PathLike,
    transformer_path: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    strict: bool = True,
) -> WanAvatarTransformer3DModel:
    """The DiT as ``inference.py`` builds it: Wan base weights, then StableAvatar's ``.pt`` on top.

    base_dir: the Wan2.1-Fun(-V1.1)-1.3B-InP (or Wan2.1-I2V-14B) folder with config.json and
        diffusion_pytorch_model.safetensors (or shards).
    transformer_path: ``transformer3d-square.pt`` / ``transformer3d-rec-vec.pt`` (plain or wrapped in
        ``{"state_dict": ...}``) or a ``.safetensors`` file. Without it the audio modules keep the
        original's initialisation (zero k_vocal/v_vocal), with one warning.
    With ``strict`` every model key must come from one of the files and no file may carry an
    unknown key; errors list the keys and name the file.
    """
    config = transformer_config_from_base(base_dir)
    base_files = base_weight_files(base_dir)
    state = load_state_dict_files(base_files)
    source = ", ".join(str(f) for f in base_files)
    if transformer_path is not None:
        extra = load_state_dict_file(transformer_path)
        model = nn.Module.to(_meta_model(config), dtype=dtype)
        unknown = sorted(set(extra) - set(model.state_dict()))
        if strict and unknown:
            raise CheckpointError(f"{transformer_path}: {len(unknown)} keys are not StableAvatar DiT keys: {unknown[:10]}")
        state.update(extra)
        load_into(model, state, f"{source} + {transformer_path}", strict=strict, assign=True)
        still_empty = [name for name, p in model.named_parameters() if p.is_meta]
        if still_empty:
            raise CheckpointError(f"{source} + {transformer_path} leave {len(still_empty)} parameters unset: {still_empty[:10]}")
    else:
        if not checking_only():  # inference.py checks the weights (check_only) and then loads them: say it once, on the load
            logger.warning(
                "No --transformer_path: loading the Wan base DiT alone; the audio adapter and k_vocal/v_vocal keep their "
                "initial values (zero audio attention). Pass StableAvatar-1.3B/transformer3d-square.pt for talking videos."
            )
        model = nn.Module.to(WanAvatarTransformer3DModel(**config), dtype=dtype)
        audio_keys = tuple(k for k in model.state_dict() if _is_audio_key(k))
        load_into(model, state, source, strict=strict, allow_missing=audio_keys)
    # nn.Module.to: diffusers' ModelMixin.to warns about fp32 modules even when the list is empty.
    return nn.Module.to(model, device=device, dtype=dtype).eval()


def _meta_model(config: dict) -> WanAvatarTransformer3DModel:
    with torch.device("meta"):
        return WanAvatarTransformer3DModel(**config)
