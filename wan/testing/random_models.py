"""Full-size StableAvatar components with random weights, built straight on the device.

For benchmarks of speed and memory where the released files are not at hand: every module is
constructed on the meta device, materialised on ``device`` and filled with small random values
(norm gains 1, biases 0), so nothing of full size is ever initialised on the host.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn as nn


@torch.no_grad()
def materialize(module: nn.Module, device: torch.device | str, dtype: torch.dtype, std: float = 0.02, seed: int = 0) -> nn.Module:
    """Allocate a meta-device ``module`` on ``device`` in ``dtype`` and fill it randomly."""
    gen = torch.Generator(device=device).manual_seed(seed)
    module = module.to_empty(device=device)
    for name, p in module.named_parameters():
        if p.dim() <= 1 and name.endswith(("weight", "gamma")):
            p.fill_(1.0)
        elif p.dim() <= 1:
            p.zero_()
        else:
            p.normal_(0.0, std, generator=gen)
    for _name, b in module.named_buffers():
        if b.is_floating_point():
            b.zero_()
    return nn.Module.to(module, dtype=dtype)


def random_transformer(preset: str = "1.3B", device="cuda", dtype=torch.bfloat16, **overrides):
    from wan.configs import transformer_config
    from wan.models.transformer import WanAvatarTransformer3DModel

    with torch.device("meta"):
        model = WanAvatarTransformer3DModel(**transformer_config(preset, **overrides))
    return materialize(model, device, dtype).eval().requires_grad_(False)


def random_pipeline(device="cuda", dtype=torch.bfloat16, preset: str = "1.3B"):
    """A StableAvatarPipeline of full-size random components on ``device`` (umT5-XXL, CLIP ViT-H,
    Wan VAE, the DiT, wav2vec2-base), the released dtypes: DiT and umT5 in ``dtype``, the rest
    float32. The tokenizer is the tiny word-level stand-in (no umT5 vocabulary offline)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from wan.audio import Wav2VecFeatureExtractor
    from wan.models.clip import CLIP_PRESETS, CLIPVisionEncoder
    from wan.models.t5 import T5_PRESETS, WanT5Encoder
    from wan.models.vae import WanVAE
    from wan.pipelines.pipeline_stableavatar import StableAvatarPipeline
    from wan.pipelines.scheduling import build_scheduler
    from wan.testing.tiny_checkpoints import write_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="tokenizer-"))
    write_tokenizer(folder)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    with torch.device("meta"):
        t5 = WanT5Encoder(**T5_PRESETS["umt5-xxl"])
        clip = CLIPVisionEncoder(**CLIP_PRESETS["xlm-roberta-large-vit-huge-14"])
        vae = WanVAE()
    t5 = materialize(t5, device, dtype).eval().requires_grad_(False)
    clip = materialize(clip, device, torch.float32).eval().requires_grad_(False)
    vae = materialize(vae, device, torch.float32, std=0.01).eval().requires_grad_(False)
    wav2vec_model = Wav2Vec2Model(Wav2Vec2Config()).to(device).eval()
    processor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False)
    wav2vec = Wav2VecFeatureExtractor(model=wav2vec_model, processor=processor, device=device)
    return StableAvatarPipeline(tokenizer, t5, vae, random_transformer(preset, device, dtype), clip, build_scheduler(), wav2vec)


def write_random_checkpoints(root: str | Path, device="cuda", dtype=torch.bfloat16, preset: str = "1.3B") -> dict[str, Path]:
    """``random_pipeline``'s full-size models saved in the release layout under ``root`` (about 20 GB
    for the 1.3B), for benchmarks that time what inference.py does, reading the files included.
    Returns the paths inference.py needs (the repo's yaml: real sizes)."""
    from wan.testing.tiny_checkpoints import write_checkpoint_folder

    pipe = random_pipeline(device=device, dtype=dtype, preset=preset)
    wav2vec = pipe.wav2vec.model.to("cpu")  # save_pretrained writes from the host
    return write_checkpoint_folder(root, pipe.transformer, pipe.vae, pipe.text_encoder, pipe.clip_image_encoder, wav2vec)
