"""Time one real training step of the DiT (forward + backward + AdamW), full size, random weights.

    python bench/train_step.py              # 1.3B at 512x512, 81 frames, bf16 weights, gradient checkpointing (CUDA)
    python bench/train_step.py --lora       # the same with LoRA rank 128 / alpha 64 (--lora in the launchers)
    python bench/train_step.py --tiny       # 1-layer model at 64x64, 9 frames, on CPU: checks the script

The step is the trainer's (wan.training): the original's trainable set (all blocks + the audio
adapter) or LoRA, bf16 weights trained in bf16 under autocast as the original does, the
face/lip-weighted flow-matching loss with the channel-difference term, AdamW (launcher
hyper-parameters). Conditioning (VAE latents, CLIP, T5, wav2vec) is random, precomputed: the frozen
encoders' cost is not part of the row. Prints one JSON line: median step seconds and peak GiB.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, peak_gib, reset_peak, timed  # noqa: E402
from wan.configs import transformer_config  # noqa: E402
from wan.models.transformer import WanAvatarTransformer3DModel  # noqa: E402
from wan.training import objective as obj  # noqa: E402
from wan.training.config import TrainConfig  # noqa: E402
from wan.training.trainer import select_trainable  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--lora", action="store_true")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()

    if a.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        a.height, a.width, a.frames = 64, 64, 9
        config = transformer_config("1.3B", dim=64, ffn_dim=64, num_heads=2, num_layers=1, audio_proj_dim=64)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("the full-size step needs a CUDA GPU; use --tiny on CPU")
        device, dtype = torch.device("cuda"), torch.bfloat16
        config = transformer_config("1.3B")
    torch.manual_seed(0)
    with torch.device(device):
        model = WanAvatarTransformer3DModel(**config)
    model.to(dtype)
    cfg = TrainConfig(preset="1B_square", model_preset="1.3B")
    cfg.lora.enabled = a.lora
    params = select_trainable(model, cfg)
    model.enable_gradient_checkpointing()
    model.train()
    optimizer = torch.optim.AdamW(params, lr=2e-5, weight_decay=3e-2, eps=1e-10)

    f, h, w = (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, f, h, w, generator=g).to(device, dtype)
    y = torch.randn(1, 20, f, h, w, generator=g).to(device, dtype)
    clip = torch.randn(1, 257, 1280, generator=g).to(device, dtype)
    context = [torch.randn(12, config["text_dim"], generator=g).to(device, dtype)]
    audio = torch.randn(1, int(a.frames / 25 * 50) + 1, 768, generator=g).to(device, dtype)
    face = torch.rand(1, 1, f, h, w, generator=g).to(device)
    lip = torch.rand(1, 1, f, h, w, generator=g).to(device)
    timesteps, sigmas = obj.sigma_table()
    seq_len = obj.seq_len_for((f, h, w), (1, 2, 2))

    def step() -> None:
        noise = torch.randn_like(latents)
        noisy, target = obj.add_noise(latents, noise, sigmas[[500]].to(device))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            pred = model(x=noisy, t=timesteps[[500]].to(device), context=context, seq_len=seq_len, clip_fea=clip, y=y,
                         vocal_embeddings=audio, video_sample_n_frames=a.frames)
        loss = obj.stableavatar_loss(pred, target, face, lip, 0.1, None, 0.25)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak()
    seconds, times = timed(step, warmup=a.warmup, repeat=a.repeat)
    emit(
        bench="train_step", model="1.3B" if not a.tiny else "tiny", lora=a.lora, size=f"{a.width}x{a.height}", frames=a.frames,
        dtype=str(dtype).replace("torch.", ""), gradient_checkpointing=True,
        trainable_params_m=round(sum(p.numel() for p in params) / 1e6, 2), step_s=round(seconds, 4),
        times_s=[round(t, 4) for t in times], peak_gib=None if peak_gib() is None else round(peak_gib(), 2),
    )


if __name__ == "__main__":
    main()
