"""Tiny stand-ins for training tests: a dataset on disk, frozen encoders, a tiny DiT and configs.

The stand-in encoders keep the real interfaces' shapes (VAE stride 4x8x8 with the first frame
apart, 257 CLIP tokens of 1280, wav2vec's 20 ms hop and 768 width) with fixed random weights.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from wan.training.conditioning import FrozenEncoders
from wan.training.config import TrainConfig

TEXT_DIM = 32
SIZE = 32  # pixels; latents 4x4
FRAMES = 9  # pixel frames per clip; 3 latent frames
FPS = 25


def tiny_transformer(seed: int = 0) -> nn.Module:
    from wan.configs import transformer_config
    from wan.models.transformer import WanAvatarTransformer3DModel

    torch.manual_seed(seed)
    cfg = transformer_config(
        "1.3B", dim=64, ffn_dim=64, num_heads=2, num_layers=1, audio_proj_dim=64, text_dim=TEXT_DIM, freq_dim=32, audio_cfg_last_row=False
    )
    return WanAvatarTransformer3DModel(**cfg)


class _Vae(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 16)

    def posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = F.avg_pool3d(pixels[:, :, :1], (1, 8, 8))
        rest = F.avg_pool3d(pixels[:, :, 1:], (4, 8, 8))
        x = torch.cat([first, rest], dim=2).movedim(1, -1)
        mean = self.proj(x.to(self.proj.weight.dtype)).movedim(-1, 1)
        return mean, torch.full_like(mean, 0.05)


class _Clip(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 1280)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(img, 16).flatten(2).transpose(1, 2)  # [B, 256, 3]
        x = torch.cat([x.mean(1, keepdim=True), x], dim=1)
        return self.proj(x.to(self.proj.weight.dtype))


class _Text(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(64, TEXT_DIM)

    def forward(self, prompts: list[str]) -> list[torch.Tensor]:
        out = []
        for p in prompts:
            ids = torch.tensor([sum(map(ord, w)) % 64 for w in p.split()], device=self.emb.weight.device)
            out.append(self.emb(ids))
        return out


class _Audio(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(320, 768)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        n = samples.shape[1] // 320
        return self.proj(samples[:, : n * 320].reshape(samples.shape[0], n, 320))


def tiny_encoders(seed: int = 1) -> FrozenEncoders:
    torch.manual_seed(seed)
    vae, clip, text, audio = _Vae(), _Clip(), _Text(), _Audio()
    return FrozenEncoders(vae.posterior, clip, text, audio, modules={"vae": vae, "clip": clip, "text": text, "audio": audio})


def make_clip(folder: Path, frames: int, seed: int, size: int = SIZE) -> None:
    """A clip folder with moving-square frames, rectangle face masks, lip masks and a tone."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "face_masks", "lip_masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 255, size=3)
    for i in range(frames):
        img = np.zeros((size, size, 3), np.uint8) + base.astype(np.uint8)
        x = (i * 2 + seed) % (size - 8)
        img[8:16, x : x + 8] = 255 - base.astype(np.uint8)
        Image.fromarray(img).save(folder / "images" / f"frame_{i}.png")
        face = np.zeros((size, size), np.uint8)
        face[4:24, 6:26] = 255
        Image.fromarray(face).save(folder / "face_masks" / f"frame_{i}.png")
        lip = np.zeros((size, size), np.uint8)
        lip[16:20, 12:20] = 255
        Image.fromarray(lip).save(folder / "lip_masks" / f"frame_{i}.png")
    import soundfile as sf

    n = int(frames / FPS * 16000)
    tone = 0.3 * np.sin(2 * math.pi * (220 + 40 * seed) * np.arange(n) / 16000)
    sf.write(folder / "audio.wav", tone.astype(np.float32), 16000)


def make_dataset(root: Path, clips: int = 2, frames: int = 12, bucket: str = "square") -> Path:
    """``clips`` folders under root/<bucket>/speech/ and their list file; returns the list file."""
    lines = []
    for c in range(clips):
        folder = root / bucket / ("speech" if c % 2 == 0 else "singing") / f"{c:05d}"
        make_clip(folder, frames, seed=c)
        lines.append(str(folder))
    list_file = root / f"video_{bucket}_path.txt"
    list_file.write_text("\n".join(lines) + "\n")
    return list_file


def tiny_config(list_file: Path, output_dir: Path, **over) -> TrainConfig:
    """A 1B_square run at 32x32, 9 frames, fp32, no clipping effect, no trackers."""
    cfg = TrainConfig(preset="1B_square", model_preset="1.3B")
    cfg.data.lists = {"square": str(list_file)}
    cfg.data.sizes = {"square": (SIZE, SIZE)}
    cfg.data.video_sample_n_frames = FRAMES
    cfg.data.train_batch_size = 1
    cfg.optim.learning_rate = 1e-3
    cfg.optim.lr_warmup_steps = 0
    cfg.optim.max_grad_norm = 1e6
    cfg.optim.adam_weight_decay = 0.0
    cfg.run.seed = 7
    cfg.run.report_to = None
    cfg.loss.uniform_sampling = True
    cfg.loss.motion_sub_loss = True
    cfg.loss.train_mode = "i2v"
    cfg.checkpoint.output_dir = str(output_dir)
    cfg.checkpoint.checkpointing_steps = 1000
    cfg.checkpoint.save_final = False
    for dotted, value in over.items():
        section, name = dotted.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def run(list_file: str, output_dir: str, result: str, overrides_json: str) -> None:
    """Entry for subprocess runs (torchrun): train and write the losses (main process)."""
    from wan.training.trainer import Trainer

    over = json.loads(overrides_json)
    cfg = tiny_config(Path(list_file), Path(output_dir), **over)
    trainer = Trainer(cfg, tiny_transformer(), tiny_encoders())
    losses = trainer.fit()
    if trainer.accelerator.is_main_process:
        Path(result).parent.mkdir(parents=True, exist_ok=True)
        Path(result).write_text(json.dumps({"losses": losses, "world": trainer.accelerator.num_processes, "device": str(trainer.device)}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 as fp32 (the GPU test compares)
    run(*sys.argv[1:5])
