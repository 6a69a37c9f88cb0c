"""Golden runner for the ``vae`` case (original ``AutoencoderKLWan``, full size, recipe weights)."""

from __future__ import annotations

import torch

from wan.golden import GoldenCase
from wan.models.vae import SPATIAL_STRIDE, TEMPORAL_STRIDE, WanVAE
from wan.testing.recipe import fill_state_dict


def build_vae(constructor: dict) -> WanVAE:
    """Our VAE for the original constructor (latent_channels, temporal/spacial compression).

    The original builds the fixed Wan2.1 layout around ``latent_channels``; its
    ``spacial_compression_ratio`` argument is stored and never used, so only the default is
    meaningful, and we check it rather than pretend to honour another value.
    """
    if constructor.get("temporal_compression_ratio", TEMPORAL_STRIDE) != TEMPORAL_STRIDE:
        raise ValueError(f"WanVAE supports temporal compression {TEMPORAL_STRIDE} only, got {constructor['temporal_compression_ratio']}")
    if constructor.get("spacial_compression_ratio", SPATIAL_STRIDE) != SPATIAL_STRIDE:
        raise ValueError(f"WanVAE supports spatial compression {SPATIAL_STRIDE} only, got {constructor['spacial_compression_ratio']}")
    vae = WanVAE(z_dim=constructor.get("latent_channels", 16)).float()
    return fill_state_dict(vae).eval()  # keys are Wan's ('model.encoder...'): the recipe's values


def run_vae(case: GoldenCase) -> dict[str, torch.Tensor]:
    """Every output of the case; the calls are described in case.json["calls"]."""
    vae = build_vae(case.meta["constructor"])
    inputs = case.inputs
    out: dict[str, torch.Tensor] = {}
    mu_raw, out["enc5_logvar"] = vae.encode_moments(inputs["video_5f"], normalize=False)
    out["enc5_mu_raw"] = mu_raw
    out["enc5_mean"] = vae.normalize_latents(mu_raw)
    out["enc9_mean"], out["enc9_logvar"] = vae.encode_moments(inputs["video_9f"])
    out["dec_z2"] = vae.decode(inputs["z_2f"])
    out["dec_z2_unclamped"] = vae.decode(inputs["z_2f"], clamp=False)
    out["dec_enc9_mean"] = vae.decode(out["enc9_mean"])
    out["latent_norm_mean"] = torch.tensor(vae.config.latents_mean, dtype=torch.float32)
    out["latent_norm_std"] = torch.tensor(vae.config.latents_std, dtype=torch.float32)
    return out
