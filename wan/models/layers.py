"""Pieces shared by the DiT and its audio adapter: fp32 norms, timestep sinusoid, 3-axis RoPE, MLPProj.

Numerics follow the original Wan2.1 code: norms are computed in float32 and cast back to the
input dtype; the timestep sinusoid is built in float64; RoPE angles are float64 before they are
turned into the cos/sin tables.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from wan.constants import ROPE_MAX_POSITIONS, ROPE_THETA


class WanRMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in float32: ``x * rsqrt(mean(x^2) + eps) * weight``."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        # The original casts back to x's dtype BEFORE applying the gain (bf16 rounding point).
        return normed.type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype (affine optional)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, elementwise_affine=elementwise_affine, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return nn.functional.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """[B] timesteps -> [B, dim] float64 embedding, cos half first, frequencies 10000^(-k/half)."""
    half = dim // 2
    position = position.to(torch.float64)
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=position.device).div(half))
    angles = torch.outer(position, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_angles(head_dim: int, max_positions: int = ROPE_MAX_POSITIONS, theta: float = ROPE_THETA) -> list[torch.Tensor]:
    """Per-axis RoPE angle tables (float64) for (time, height, width): [max_positions, pairs_axis].

    The head dim's pairs are split 22/21/21 for d=128: time gets ``d - 4*(d//6)`` channels, height and
    width ``2*(d//6)`` each; frequency k of an axis with c channels is ``theta^(-2k/c)``.
    """
    assert head_dim % 2 == 0
    split = [head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)]
    pos = torch.arange(max_positions, dtype=torch.float64, device="cpu")  # CPU even under a meta-device context
    tables = []
    for channels in split:
        inv_freq = 1.0 / torch.pow(theta, torch.arange(0, channels, 2, dtype=torch.float64, device="cpu").div(channels))
        tables.append(torch.outer(pos, inv_freq))
    return tables


def rope_cos_sin(
    angles: list[torch.Tensor], grid: tuple[int, int, int], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [f*h*w, 1, d/2] (float32) for tokens in frame-major, row, column order.

    Positions restart at 0 in every window (no absolute-time offset), as in the original.
    """
    f, h, w = grid
    t_ang, h_ang, w_ang = angles
    ang = torch.cat(
        [
            t_ang[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
            h_ang[:h].view(1, h, 1, -1).expand(f, h, w, -1),
            w_ang[:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, -1)
    return ang.cos().float().to(device), ang.sin().float().to(device)


def rope_apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (2j, 2j+1) of the first ``cos.shape[0]`` tokens.

    x: [B, L, n, d]; cos/sin: [S, 1, d/2] with S <= L. Tokens past S (zero padding up to seq_len) are
    left unrotated. Returns float32, like the original (which works in complex64 x complex128).
    """
    s = cos.shape[0]
    b, length, n, d = x.shape
    head = x[:, :s].float().reshape(b, s, n, d // 2, 2)
    real, imag = head[..., 0], head[..., 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1).flatten(3)
    if s == length:
        return rotated
    return torch.cat([rotated, x[:, s:].float()], dim=1)


class MLPProj(nn.Module):
    """CLIP tokens -> DiT width: LN(1280) -> Linear -> GELU(erf) -> Linear -> LN(dim). Keys ``proj.{0,1,3,4}``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim)
        )

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.proj(image_embeds)
