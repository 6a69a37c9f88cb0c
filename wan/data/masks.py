"""Inpainting masks and their resizing to the latent grid.

The original training draws its inpainting mask with ``image_start_only=True``: the first frame is
known (mask 0) and every later frame is generated (mask 1). Its other random mask types are never
reached by any script, so only this one exists here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wan.constants import VAE_STRIDE


def image_start_mask(num_frames: int, height: int, width: int) -> torch.Tensor:
    """[F, 1, H, W] inpainting mask: 0 on frame 0 (the reference), 1 on every later frame."""
    mask = torch.ones(num_frames, 1, height, width)
    mask[0] = 0
    return mask


def _resize_first_frame_apart(mask: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resize of [B, C, T, H, W] to ``size`` = (f, h, w), with frame 0 resized on its own
    to latent frame 0 and frames 1.. resized to latent frames 1.. (the original's resize_mask)."""
    f, h, w = size
    first = F.interpolate(mask[:, :, :1], size=(1, h, w), mode="trilinear", align_corners=False)
    if f == 1:
        return first
    rest = F.interpolate(mask[:, :, 1:], size=(f - 1, h, w), mode="trilinear", align_corners=False)
    return torch.cat([first, rest], dim=2)


def mask_latent_channels(pixel_masks: torch.Tensor, latent_size: tuple[int, int, int]) -> torch.Tensor:
    """The 4 mask channels of the DiT's ``y`` input.

    pixel_masks: [B, F, 1, H, W] inpainting mask (1 = generate), F = 4k + 1 pixel frames.
    latent_size: (f, h, w) of the latents, f = k + 1.
    Returns [B, 4, f, h, w] holding ``1 - mask`` ("known" = 1): frame 0 is repeated 4 times so
    that 4k + 4 frames fold into f groups of 4 (one channel per frame of a group), then resized.
    """
    b, frames, _, height, width = pixel_masks.shape
    if (frames - 1) % VAE_STRIDE[0]:
        raise ValueError(f"inpainting mask has {frames} frames; the VAE needs 4k+1")
    m = pixel_masks.transpose(1, 2)  # [B, 1, F, H, W]
    m = torch.cat([m[:, :, :1].repeat_interleave(VAE_STRIDE[0], dim=2), m[:, :, 1:]], dim=2)
    m = m.reshape(b, m.shape[2] // VAE_STRIDE[0], VAE_STRIDE[0], height, width).transpose(1, 2)
    return _resize_first_frame_apart(1 - m, latent_size)


def loss_mask_to_latent(mask: torch.Tensor, latent_size: tuple[int, int, int]) -> torch.Tensor:
    """[B, 1, F, H, W] face or lip mask in [0, 1] -> [B, 1, f, h, w]: one trilinear resize of all
    frames together (align_corners=False), as the original weights its loss."""
    return F.interpolate(mask, size=tuple(latent_size), mode="trilinear", align_corners=False)
