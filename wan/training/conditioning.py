"""Frozen encoders -> the DiT's inputs for one batch.

The trainer sees the encoders only through ``FrozenEncoders`` (defined in ``_encoders``, with its loader):
four callables with fixed shapes. ``on_device`` moves a module to the GPU only while it runs (``--low_vram``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from wan.data.masks import loss_mask_to_latent, mask_latent_channels

from ._encoders import FrozenEncoders


@contextlib.contextmanager
def on_device(module: nn.Module | None, device: torch.device, enabled: bool) -> Iterator[None]:
    """With ``enabled``, keep ``module`` on ``device`` for the block and return it to the CPU after."""
    if not enabled or module is None:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


@dataclass
class Conditioning:
    latents: torch.Tensor  # [B, 16, f, h, w] posterior sample of the clip
    y: torch.Tensor  # [B, 20, f, h, w] = 4 mask channels + 16 latents of the masked clip
    clip_fea: torch.Tensor  # [B, 257, 1280]
    context: list[torch.Tensor]  # B x [L_i, text_dim]
    vocal_embeddings: torch.Tensor  # [B, N, 768]
    face: torch.Tensor  # [B, 1, f, h, w] loss masks on the latent grid
    lip: torch.Tensor


def _posterior_sample(encoders: FrozenEncoders, pixels: torch.Tensor, generators: list[torch.Generator], mini_batch: int) -> torch.Tensor:
    """Encode [B, 3, F, H, W] in chunks of ``mini_batch`` and draw one posterior sample per clip
    with that clip's generator (CPU noise, so any device layout draws the same numbers)."""
    out = []
    for i in range(0, pixels.shape[0], mini_batch):
        mean, std = encoders.vae_posterior(pixels[i : i + mini_batch])
        for j in range(mean.shape[0]):
            eps = torch.randn(mean.shape[1:], generator=generators[i + j], dtype=torch.float32).to(mean.device, mean.dtype)
            out.append(mean[j] + std[j] * eps)
    return torch.stack(out)


@torch.no_grad()
def build_conditioning(
    batch: dict,
    encoders: FrozenEncoders,
    generators: list[torch.Generator],
    *,
    device: torch.device,
    dtype: torch.dtype,
    drop_audio: bool,
    clip_dropout: float = 0.0,
    t2v_mode: bool = True,
    vae_mini_batch: int = 1,
    low_vram: bool = False,
) -> Conditioning:
    """All DiT inputs except the noisy latents and timesteps, for one batch of the dataset.

    ``generators`` has one CPU generator per sample (posterior samples, CLIP dropout), used in that order.
    """
    mods = encoders.modules
    pixels = batch["pixel_values"].to(device, dtype).transpose(1, 2)  # [B, 3, F, H, W]
    masked = batch["masked_pixel_values"].to(device, dtype).transpose(1, 2)
    b = pixels.shape[0]

    # 1. VAE: clip latents and masked-clip latents (posterior samples), mask channels.
    with on_device(mods.get("vae"), device, low_vram):
        latents = _posterior_sample(encoders, pixels, generators, vae_mini_batch)
        masked_latents = _posterior_sample(encoders, masked, generators, vae_mini_batch)
    latent_size = tuple(latents.shape[2:])
    pixel_masks = batch["pixel_value_masks"].to(device, dtype)
    mask4 = mask_latent_channels(pixel_masks, latent_size).to(dtype)
    y = torch.cat([mask4, masked_latents.to(dtype)], dim=1)
    if t2v_mode:
        # The original's text-to-video switch: a clip whose mask is all ones would lose its
        # inpaint input with p=0.9; image-start masks never are, so the factor is 1 here.
        all_ones = (pixel_masks == 1).flatten(1).all(dim=1)
        y = y * (~all_ones).to(dtype)[:, None, None, None, None]

    # 2. CLIP on the reference frame, as the original: float -> uint8 (truncating) -> [-1, 1].
    with on_device(mods.get("clip"), device, low_vram):
        ref = batch["clip_pixel_values"].to(torch.uint8).permute(0, 3, 1, 2).to(device, torch.float32) / 255
        clip_fea = encoders.clip(((ref - 0.5) / 0.5).to(dtype))
    if clip_dropout > 0:
        keep = torch.tensor([float(torch.rand(1, generator=g).item() >= clip_dropout) for g in generators], device=device)
        clip_fea = clip_fea * keep.to(clip_fea.dtype)[:, None, None]

    # 3. Text.
    with on_device(mods.get("text"), device, low_vram):
        context = encoders.text(list(batch["text_prompt"]))

    # 4. Audio (dropped for the whole step with the step's draw, zeros like the original).
    with on_device(mods.get("audio"), device, low_vram):
        vocal = encoders.audio(batch["vocal_input_values"].to(device, torch.float32))
    if drop_audio:
        vocal = torch.zeros_like(vocal)

    face = loss_mask_to_latent(batch["tgt_face_masks"].to(device, torch.float32), latent_size)
    lip = loss_mask_to_latent(batch["tgt_lip_masks"].to(device, torch.float32), latent_size)
    assert latents.shape[0] == b
    return Conditioning(latents, y, clip_fea, context, vocal, face, lip)
