"""The frozen encoders of training (VAE, umT5, CLIP, wav2vec2): the ``FrozenEncoders`` interface and its loader.

``FrozenEncoders.from_pretrained`` wraps the real Wan VAE, umT5, CLIP and wav2vec2 (unit tests pass tiny stand-ins;
tests/training/test_entrypoint.py runs the real ones at tiny sizes).

The files and their sizes come from the same place as inference: ``wan.pipelines.loading.checked_checkpoints``
(the original layout + ``--config_path``, whose ``text_encoder_kwargs``/``image_encoder_kwargs``/``vae_kwargs``
may also declare smaller test models). Every file is checked before anything large is read.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn


def _accepted(fn, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The entries of a yaml section that ``fn`` takes as keyword arguments (the rest are subpaths etc.)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def scheduler_settings(config_path: str | os.PathLike | None) -> tuple[int, float]:
    """(num_train_timesteps, shift) from the ``scheduler_kwargs`` of a wan_civitai.yaml (defaults 1000, 5.0)."""
    from wan.pipelines.loading import read_yaml_config

    kw = read_yaml_config(config_path).get("scheduler_kwargs") or {}
    return int(kw.get("num_train_timesteps", 1000)), float(kw.get("shift", 5.0))


def vae_posterior(vae) -> Any:
    """``pixels -> (mean, std)`` of a ``wan.models.vae.WanVAE``, as the original's training samples it.

    The original's VAE normalises the encoder mean (``(mu - latents_mean) / latents_std``) but hands
    the *raw* log-variance to ``DiagonalGaussianDistribution``, and training calls ``.sample()``:
    ``z = mean_normalised + exp(logvar / 2) * eps``. So the noise is not rescaled by ``1/latents_std``.
    ``encode_moments(normalize=True)`` returns exactly that pair (logvar clamped to [-30, 20] as
    diffusers' distribution does), and this keeps the original's numbers rather than "fixing" them.
    """

    def posterior(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = vae.encode_moments(pixels, normalize=True)
        return mean, torch.exp(0.5 * logvar)

    return posterior


@dataclass
class FrozenEncoders:
    """The frozen models of training, as callables.

    vae_posterior: pixels [B, 3, F, H, W] in [-1, 1] -> (mean, std), each [B, 16, f, h, w], such
        that a posterior sample is ``mean + std * eps`` (the original's: normalised mean, raw std;
        see ``vae_posterior``).
    clip: image [B, 3, H, W] in [-1, 1] -> [B, 257, 1280].
    text: prompts (B strings) -> B tensors [L_i, text_dim] trimmed to their real lengths.
    audio: normalised 16 kHz samples [B, S] -> [B, N, 768] wav2vec2 hidden states.
    modules: the nn.Modules behind the callables, in the order they run (for ``on_device``).
    parts: the loaded pipeline components (tokenizer, text_encoder, vae, clip_image_encoder, wav2vec,
        scheduler_kwargs) for the validation video; empty for stand-ins (then there is no validation).
    """

    vae_posterior: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    clip: Callable[[torch.Tensor], torch.Tensor]
    text: Callable[[list[str]], list[torch.Tensor]]
    audio: Callable[[torch.Tensor], torch.Tensor]
    modules: dict[str, nn.Module] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_pretrained(
        cls, base_dir: str, wav2vec_dir: str | None, tokenizer_max_length: int, dtype: torch.dtype, config_path: str | None = None
    ) -> FrozenEncoders:
        """The released Wan VAE / umT5 / CLIP from ``base_dir`` and wav2vec2 from ``wav2vec_dir``, sized
        by ``config_path`` (the wan_civitai.yaml; None: the repository's)."""
        return load_frozen_encoders(base_dir, wav2vec_dir, tokenizer_max_length, dtype, config_path)


def load_frozen_encoders(
    base_dir: str | os.PathLike,
    wav2vec_dir: str | os.PathLike | None,
    tokenizer_max_length: int,
    dtype: torch.dtype,
    config_path: str | os.PathLike | None = None,
) -> FrozenEncoders:
    """VAE / umT5 in ``dtype`` (bf16 in training, as the original), CLIP and wav2vec2 in float32, all on the CPU.

    ``parts`` of the result holds what the validation pipeline needs besides the DiT (tokenizer,
    text_encoder, vae, clip_image_encoder, wav2vec, scheduler_kwargs): the same objects, no copies.
    """
    from wan.audio import Wav2VecFeatureExtractor
    from wan.models.clip import CLIPVisionEncoder, load_clip_image_encoder
    from wan.models.t5 import WanT5Encoder, encode_prompts, load_t5_encoder, load_tokenizer
    from wan.models.vae import WanVAE, load_vae
    from wan.pipelines.loading import checked_checkpoints

    paths, yaml = checked_checkpoints(base_dir, None, wav2vec_dir, config_path)
    text_kw, vae_kw, clip_kw = (dict(yaml.get(k) or {}) for k in ("text_encoder_kwargs", "vae_kwargs", "image_encoder_kwargs"))

    vae = load_vae(paths.vae, dtype=dtype, **_accepted(WanVAE, vae_kw))
    # CLIP stays float32 (as in the inference pipeline). Its LayerNorms compute in float32 on weights
    # of the model's dtype, and layer_norm refuses float32 input with bf16 weights on CPU and CUDA
    # alike (torch 2.11); the original got away with bf16 weights by running CLIP under CUDA autocast.
    clip = load_clip_image_encoder(paths.clip, dtype=torch.float32, **_accepted(CLIPVisionEncoder, clip_kw))
    t5 = load_t5_encoder(paths.t5, dtype=dtype, **_accepted(WanT5Encoder, text_kw))
    tokenizer = load_tokenizer(paths.tokenizer_dir)
    wav2vec = Wav2VecFeatureExtractor(paths.wav2vec_dir)

    def text(prompts: list[str]) -> list[torch.Tensor]:
        return encode_prompts(t5, tokenizer, prompts, max_length=tokenizer_max_length)

    def audio(values: torch.Tensor) -> torch.Tensor:
        # the dataset already normalised each window, as Wav2Vec2Processor does
        return wav2vec.model(values.to(wav2vec.device)).last_hidden_state

    parts = {
        "tokenizer": tokenizer,
        "text_encoder": t5,
        "vae": vae,
        "clip_image_encoder": clip,
        "wav2vec": wav2vec,
        "scheduler_kwargs": yaml.get("scheduler_kwargs"),
    }
    modules = {"vae": vae, "clip": clip, "text": t5, "audio": wav2vec.model}
    return FrozenEncoders(vae_posterior(vae), clip, text, audio, modules=modules, parts=parts)
