"""Loading the released frozen encoders for training (VAE, umT5, CLIP, wav2vec2) as FrozenEncoders."""

from __future__ import annotations

from pathlib import Path

import torch

from .conditioning import FrozenEncoders

# Where the Wan2.1 release keeps each file (deepspeed_config/wan2.1/wan_civitai.yaml).
VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"


def scheduler_settings(config_path: str) -> tuple[int, float]:
    """(num_train_timesteps, shift) from the scheduler_kwargs of a wan_civitai.yaml."""
    from omegaconf import OmegaConf

    conf = OmegaConf.load(config_path)
    kw = conf.get("scheduler_kwargs", {})
    return int(kw.get("num_train_timesteps", 1000)), float(kw.get("shift", 5.0))


def _posterior_of(vae):
    """Adapt the VAE's encode output to (mean, std) in normalised latent space."""

    def posterior(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = vae.encode(pixels)
        dist = getattr(out, "latent_dist", out)
        if isinstance(dist, tuple | list):
            dist = dist[0]
        return dist.mean, dist.std

    return posterior


def load_frozen_encoders(base_dir: str, wav2vec_dir: str, tokenizer_max_length: int, dtype: torch.dtype) -> FrozenEncoders:
    """VAE / CLIP / T5 in ``dtype`` (bf16 in training, as the original), wav2vec2 in float32, all on the CPU."""
    from wan.audio import Wav2VecFeatureExtractor
    from wan.models.clip import load_clip_image_encoder
    from wan.models.t5 import encode_prompts, load_t5_encoder, load_tokenizer

    try:
        from wan.models.vae import load_vae
    except ImportError as exc:  # the VAE module is a separate component of this repository
        raise ImportError("training needs wan.models.vae.load_vae (the Wan VAE); it is not available in this checkout") from exc

    base = Path(base_dir)
    vae = load_vae(base / VAE_FILE, dtype=dtype)
    clip = load_clip_image_encoder(base / CLIP_FILE, dtype=dtype)
    t5 = load_t5_encoder(base / T5_FILE, dtype=dtype)
    tokenizer = load_tokenizer(base / TOKENIZER_DIR)
    wav2vec = Wav2VecFeatureExtractor(wav2vec_dir)

    def text(prompts: list[str]) -> list[torch.Tensor]:
        return encode_prompts(t5, tokenizer, prompts, max_length=tokenizer_max_length)

    def audio(values: torch.Tensor) -> torch.Tensor:
        # the dataset already normalised each window, as Wav2Vec2Processor does
        return wav2vec.model(values.to(wav2vec.device)).last_hidden_state

    return FrozenEncoders(_posterior_of(vae), clip, text, audio, modules={"vae": vae, "clip": clip, "text": t5, "audio": wav2vec.model})
