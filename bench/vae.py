"""Time the Wan2.1 VAE at full size with random (recipe) weights: decode, encode, streaming decode.

    python bench/vae.py                      # H100: the rows below at 480x832
    python bench/vae.py --tiling             # + opt-in spatially tiled decode rows
    python bench/vae.py --tiny               # narrow VAE at 64x64 on CPU: checks the script

Rows (one JSON line each; median seconds of --repeat runs after --warmup, peak allocated GiB
since the start of the row, weights included, 0.47 GiB in float32):
  decode         21 latent frames -> 81 frames, float32 and bfloat16 (original on an H100: fp32 3.25 s, 8.73 GiB)
  encode         one 81-frame clip -> 21 latent frames, float32 and bfloat16 (original: fp32 2.01 s, 7.30 GiB)
  stream_decode  21 and 84 latent frames, each chunk converted to uint8 and copied to the host
                 as a video writer would; the peak should not grow with the length
  decode         84 latent frames one-shot, for contrast with the streaming peak
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, peak_gib, reset_peak, timed  # noqa: E402
from wan.models.vae import WanVAE  # noqa: E402
from wan.testing.recipe import fill_state_dict  # noqa: E402


def build(device: str, dtype: torch.dtype, tiny: bool) -> WanVAE:
    vae = fill_state_dict(WanVAE(base_dim=8) if tiny else WanVAE()).eval().requires_grad_(False)
    return torch.nn.Module.to(vae, device=device, dtype=dtype)


def time_row(args: argparse.Namespace, dtype_name: str, bench: str, shape: list[int], fn, **extra) -> None:
    """Time ``fn`` (after ``args.warmup`` untimed calls) and emit one JSON row."""
    for _ in range(args.warmup):
        fn()
    reset_peak()  # the peak of the timed runs only (first-call allocations excluded)
    median, times = timed(fn, warmup=0, repeat=args.repeat)
    peak = peak_gib()
    emit(bench=f"vae_{bench}", dtype=dtype_name, shape=shape, median_s=round(median, 4),
         runs_s=[round(t, 4) for t in times], peak_gib=None if peak is None else round(peak, 2),
         **({"tiny": True} if args.tiny else {}), **extra)  # fmt: skip


def consume_stream(vae: WanVAE, z: torch.Tensor) -> int:
    """Stream-decode ``z`` and hand every chunk to the host as uint8 [t, H, W, 3]; returns frames."""
    frames = 0
    for chunk in vae.stream_decode(z):
        pixels = ((chunk[0].float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).cpu()
        frames += pixels.shape[0]
    return frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="480x832", help="HxW of the video")
    p.add_argument("--latent-frames", type=int, default=21, help="decode/encode length in latent frames (81 video frames)")
    p.add_argument("--long-factor", type=int, default=4, help="streaming decode also runs this many times longer")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tiling", action="store_true", help="also time the opt-in spatially tiled decode")
    p.add_argument("--reference", action="store_true", help="also time diffusers' concatenating decode loop (the original's pattern)")
    p.add_argument("--only-decode", action="store_true", help="decode rows only (skip encode, streaming, long decode)")
    p.add_argument("--tile", default="256,192", help="tile size,stride in pixels for --tiling")
    p.add_argument("--tiny", action="store_true", help="narrow VAE (base_dim 8), 64x64, 3 latent frames, float32 on CPU")
    args = p.parse_args()

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        args.size, args.latent_frames, args.dtypes, args.tile = "64x64", 3, "float32", "32,24"
    h, w = map(int, args.size.split("x"))
    lat = args.latent_frames
    frames = 1 + 4 * (lat - 1)
    gen = torch.Generator().manual_seed(0)

    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        vae = build(device, dtype, args.tiny)
        # The timed lambdas take their tensors as default arguments: the body `del`s the names to free memory.
        row = functools.partial(time_row, args, dtype_name)

        z = torch.randn(1, 16, lat, h // 8, w // 8, generator=gen).to(device, dtype)
        video = (torch.rand(1, 3, frames, h, w, generator=gen) * 2 - 1).to(device, dtype)
        with torch.no_grad():
            out = vae.decode(z)
            assert out.shape == (1, 3, frames, h, w) and torch.isfinite(out.float()).all(), "bad decode output"
            del out
            row("decode", list(z.shape), lambda vae=vae, z=z: vae.decode(z))
            if args.reference:
                # diffusers' own loop (frame after frame, concatenated): the original's memory pattern.
                row("decode_diffusers_loop", list(z.shape), lambda vae=vae, z=z: vae.model.decode(vae.denormalize_latents(z)).sample)
            if args.only_decode:
                continue
            row("encode", list(video.shape), lambda vae=vae, video=video: vae.encode(video))
            del video
            long_z = torch.randn(1, 16, lat * args.long_factor, h // 8, w // 8, generator=gen).to(device, dtype)
            for zz in (z, long_z):
                row("stream_decode", list(zz.shape), lambda vae=vae, zz=zz: consume_stream(vae, zz), video_frames=1 + 4 * (zz.shape[2] - 1))
            row(
                "decode",
                list(long_z.shape),
                lambda vae=vae, long_z=long_z: vae.decode(long_z),
                note="one-shot, for contrast with stream_decode",
            )
            del long_z
            if args.tiling:
                size, stride = map(int, args.tile.split(","))
                vae.enable_tiling(tile_sample_min_height=size, tile_sample_min_width=size, tile_sample_stride_height=stride, tile_sample_stride_width=stride)
                row("decode_tiled", list(z.shape), lambda vae=vae, z=z: vae.decode(z), tile_px=size, stride_px=stride)
                vae.disable_tiling()
        del vae, z
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
