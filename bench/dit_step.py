"""Time one DiT forward as the pipeline calls it (a CFG batch of 3 rows), full size, random weights.

    python bench/dit_step.py                 # 1.3B, 480x832 and 512x512, 81 frames, bf16 (H100)
    python bench/dit_step.py --tiny          # 2-layer model at 64x64 on CPU: checks the script

Each row: median seconds of --repeat forwards after --warmup, and peak allocated GiB. The call
mirrors the original pipeline: bf16 weights, bf16 latents, torch.autocast(bf16), no grad,
512-token text padded inside the model, 167 wav2vec tokens (84 frames of audio).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, peak_gib, reset_peak, timed  # noqa: E402
from wan.configs import transformer_config  # noqa: E402
from wan.models.attention import set_attention_backend  # noqa: E402
from wan.models.transformer import WanAvatarTransformer3DModel  # noqa: E402


def cfg_inputs(height: int, width: int, frames: int, device, dtype, text_tokens: int = 120, audio_tokens: int = 167, batch: int = 3):
    lat_f, lat_h, lat_w = (frames - 1) // 4 + 1, height // 8, width // 8
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    return dict(
        x=rnd(batch, 16, lat_f, lat_h, lat_w),
        t=torch.full((batch,), 999.0, device=device),
        context=[rnd(text_tokens, 4096) for _ in range(batch)],
        seq_len=lat_f * (lat_h // 2) * (lat_w // 2),
        clip_fea=rnd(batch, 257, 1280),
        y=rnd(batch, 20, lat_f, lat_h, lat_w),
        vocal_embeddings=rnd(batch, audio_tokens, 768),
        video_sample_n_frames=frames,
    )


def build(preset: str, num_layers: int | None, device, dtype) -> WanAvatarTransformer3DModel:
    overrides = {} if num_layers is None else {"num_layers": num_layers}
    torch.manual_seed(0)  # same random weights for every variant
    with torch.device(device):
        model = WanAvatarTransformer3DModel(**transformer_config(preset, **overrides))
    # Random audio projections (released files have trained ones; zeros would skip nothing, but be honest).
    for block in model.blocks:
        torch.nn.init.normal_(block.cross_attn.k_vocal.weight, std=0.02)
        torch.nn.init.normal_(block.cross_attn.v_vocal.weight, std=0.02)
    return torch.nn.Module.to(model, dtype=dtype).eval().requires_grad_(False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="1.3B", choices=["1.3B", "14B"])
    p.add_argument("--sizes", default="480x832,512x512", help="comma-separated HxW")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--attention", default="sdpa_unmasked")
    p.add_argument("--tiny", action="store_true", help="2 layers, 64x64, 17 frames, float32 on CPU")
    args = p.parse_args()

    set_attention_backend(args.attention)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sizes = ["64x64"] if args.tiny else args.sizes.split(",")
    frames = 17 if args.tiny else args.frames
    model = build(args.preset, 2 if args.tiny else None, device, dtype)
    for size in sizes:
        h, w = map(int, size.split("x"))
        inputs = cfg_inputs(h, w, frames, device, dtype, audio_tokens=33 if args.tiny else 167)
        reset_peak()

        def step():
            with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
                return model(**inputs)

        out = step()
        assert torch.isfinite(out.float()).all(), "non-finite DiT output"
        median, times = timed(step, warmup=args.warmup, repeat=args.repeat)
        emit(
            bench="dit_step",
            preset=args.preset + (" (2 layers)" if args.tiny else ""),
            size=f"{h}x{w}x{frames}",
            batch=3,
            dtype=str(dtype).replace("torch.", ""),
            attention=args.attention,
            median_s=round(median, 4),
            runs_s=[round(t, 4) for t in times],
            peak_gib=None if peak_gib() is None else round(peak_gib(), 2),
        )


if __name__ == "__main__":
    main()
