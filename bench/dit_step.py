"""Time one DiT forward as the pipeline calls it (a CFG batch of 3 rows), full size, random weights.

    python bench/dit_step.py                 # 1.3B, 480x832 and 512x512, 81 frames, bf16 (H100)
    python bench/dit_step.py --tiny          # 2-layer model at 64x64 on CPU: checks the script
    python bench/dit_step.py --variants eager-sdpa,eager-fa3,compiled-sdpa,faithful,fast

Variants (see VARIANTS): the original's eager SDPA step, fa3, compiled blocks, ``faithful`` (the GPU
default: compiled + auto attention) and ``fast`` (--fast). Each row also gives the first call's time
(compilation included) and the rel. L2 of the output against the first variant listed.

Each row: median seconds of --repeat forwards after --warmup, and peak allocated GiB. The call
mirrors the original pipeline: bf16 weights, bf16 latents, torch.autocast(bf16), no grad,
512-token text padded inside the model, 167 wav2vec tokens (84 frames of audio).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import peak_gib, record, reset_peak, sync, timed  # noqa: E402
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


VARIANTS = {  # name: (compiled, attention backend, fast)
    "eager-sdpa": (False, "sdpa_unmasked", False),  # what the original runs
    "eager-fa3": (False, "fa3", False),
    "compiled-sdpa": (True, "sdpa_unmasked", False),
    "faithful": (True, "auto", False),  # the default on a GPU: compiled blocks, fa3 where installed
    "fast": (True, "auto", True),  # --fast: FP8 matmuls + FP8 attention
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="1.3B", choices=["1.3B", "14B"])
    p.add_argument("--sizes", default="480x832,512x512", help="comma-separated HxW")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--variants", default="eager-sdpa,faithful", help=f"comma-separated, in this order, from {list(VARIANTS)} ('fast' last: it quantises the model)")
    p.add_argument("--tiny", action="store_true", help="2 layers, 64x64, 17 frames, float32 on CPU")
    args = p.parse_args()

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sizes = ["64x64"] if args.tiny else args.sizes.split(",")
    frames = 17 if args.tiny else args.frames
    model = build(args.preset, 2 if args.tiny else None, device, dtype)
    preset = args.preset + (" (2 layers)" if args.tiny else "")
    reference: dict[str, torch.Tensor] = {}  # size -> output of the first variant, for the error columns
    compiled = False
    for variant in args.variants.split(","):
        want_compile, backend, fast = VARIANTS[variant]
        if want_compile and not compiled:
            from wan.runtime.compile_cache import configure_compile_cache

            configure_compile_cache()
            model.compile_blocks()
            compiled = True
        elif compiled and not want_compile:
            raise SystemExit("list eager variants before compiled ones (compiling is in place)")
        if fast:
            from wan.runtime.fast import enable_fast_mode

            print("fast mode:", enable_fast_mode(model, device).describe(), flush=True)
        set_attention_backend(backend)
        for size in sizes:
            h, w = map(int, size.split("x"))
            inputs = cfg_inputs(h, w, frames, device, dtype, audio_tokens=33 if args.tiny else 167)
            reset_peak()

            def step(inputs=inputs):
                with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
                    return model(**inputs)

            start = time.perf_counter()
            out = step()
            sync()
            first_s = time.perf_counter() - start
            assert torch.isfinite(out.float()).all(), f"non-finite DiT output ({variant})"
            median, times = timed(step, warmup=args.warmup, repeat=args.repeat)
            fields = dict(size=f"{h}x{w}x{frames}", variant=variant, preset=preset, batch=3, attention=backend, compiled=want_compile)
            if size in reference:
                ref = reference[size].float()
                fields["rel_l2_vs_" + args.variants.split(",")[0]] = round(((out.float() - ref).norm() / ref.norm()).item(), 6)
            else:
                reference[size] = out.detach()
            record("dit_step_s", round(median, 4), "s", runs_s=[round(t, 4) for t in times], first_call_s=round(first_s, 2), **fields)
            if peak_gib() is not None:
                record("peak_gib", round(peak_gib(), 2), "GiB", phase="dit_step", **fields)


if __name__ == "__main__":
    main()
