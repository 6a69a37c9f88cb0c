"""Peak GPU memory and time per step of each --GPU_memory_mode, full-size random weights.

    python bench/memory_modes.py            # H100: 5-s 480x832 video (2 windows), 3 steps per mode (~4 min)
    python bench/memory_modes.py --tiny     # CPU check of the script (tiny models, CPU as "GPU")

Every mode gets a fresh pipeline of full-size random components (umT5-XXL, CLIP ViT-H, Wan VAE,
DiT 1.3B, wav2vec2-base; ``wan.testing.random_models``: built on the meta device, materialised
on the GPU, no files), placed by ``apply_memory_mode`` exactly as inference.py places them. One
JSON line per mode:

* ``peak_encode_step0_gib``: peak from the start of the call through the first denoising step
  (umT5 + CLIP + VAE encode of the reference + wav2vec + step 0), where T5 matters;
* ``peak_denoise_gib``: peak of the later steps (the DiT, one window at a time);
* ``peak_decode_gib``: the VAE decode as inference.py runs it (streamed, chunk by chunk, to uint8
  on the host) -- the original decodes the whole video at once (8.9 GiB at this size);
* ``peak_gib``: the max of the three (the original: 28.5 full load, 12.2 model_cpu_offload and
  qfloat8, 9.3 sequential);
* ``s_per_step``: median seconds per denoising step (all windows), ``s_encode_step0`` and
  ``s_decode``.
Peaks are ``torch.cuda.max_memory_allocated`` (what the original's numbers are).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import emit, sync  # noqa: E402
from wan.runtime.memory import MEMORY_MODES, apply_memory_mode  # noqa: E402

REFERENCE = REPO / "examples" / "case-1" / "reference.png"


def build(tiny: bool, device: torch.device):
    if tiny:
        from wan.pipelines import load_pipeline
        from wan.testing.tiny_checkpoints import write_tiny_checkpoints

        return load_pipeline(*write_tiny_checkpoints(tempfile.mkdtemp()).values(), device="cpu")
    from wan.testing.random_models import random_pipeline

    return random_pipeline(device=device)


def peak_and_reset(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 2)


def speech(seconds: float) -> np.ndarray:
    """The real speech of examples/case-2 (wav2vec sees speech), cut to ``seconds``."""
    from wan.audio import load_audio

    return load_audio(REPO / "examples" / "case-2" / "audio.wav")[: int(seconds * 16000)]


def measure(mode: str, args, device: torch.device) -> None:
    pipe = build(args.tiny, device)
    pipe.set_progress_bar_config(disable=True)
    apply_memory_mode(pipe, mode, device, require_accelerator=not args.tiny)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    peaks, ends = [], []

    def on_step(_pipe, _i, _t, _latents):
        sync()
        ends.append(time.perf_counter())
        peaks.append(peak_and_reset(device))

    sync()
    start = time.perf_counter()
    out = pipe(
        str(REFERENCE), speech(args.seconds), prompt="a woman is talking to the camera", height=args.height, width=args.width,
        num_inference_steps=50, end_step=args.steps, output_type="latent", callback_on_step_end=on_step,
        generator=torch.Generator(device=device).manual_seed(0),
    )  # fmt: skip
    latents = out.latents
    sync()
    peak_and_reset(device)
    dec_start = time.perf_counter()
    frames = 0
    for chunk in pipe.vae.stream_decode(latents.to(device)):  # inference.py's decode: chunks to uint8 on the host
        frames += chunk.shape[2]
        ((chunk.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8).cpu()
    sync()
    s_decode = time.perf_counter() - dec_start
    peak_decode = peak_and_reset(device)
    steps = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    later = [p for p in peaks[1:] if p is not None]
    emit(
        bench="memory_modes",
        mode=mode,
        size=f"{args.height}x{args.width}",
        seconds_audio=args.seconds,
        windows=len(out.windows),
        video_frames=frames,
        steps_run=len(ends),
        s_encode_step0=round(ends[0] - start, 2),
        s_per_step=round(statistics.median(steps), 3) if steps else None,
        s_decode=round(s_decode, 2),
        peak_encode_step0_gib=peaks[0],
        peak_denoise_gib=max(later) if later else None,
        peak_decode_gib=peak_decode,
        peak_gib=max([p for p in [*peaks, peak_decode] if p is not None], default=None),
        weights="random (full size)" if not args.tiny else "tiny",
    )
    pipe.remove_all_hooks()
    del pipe, out, latents
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default=",".join(MEMORY_MODES))
    p.add_argument("--steps", type=int, default=3, help="denoising steps run per mode (of a 50-step schedule)")
    p.add_argument("--seconds", type=float, default=5.0, help="audio length: 5 s -> 125 frames, 2 windows")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU (checks the script)")
    args = p.parse_args()
    if args.tiny:
        args.height, args.width, args.seconds = 64, 64, min(args.seconds, 1.6)
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench/memory_modes.py needs a CUDA GPU (or --tiny for a CPU check)")
        device = torch.device("cuda")
    for mode in args.modes.split(","):
        measure(mode, args, device)


if __name__ == "__main__":
    main()
