"""TeaCache speed-up and fidelity: thresholds 0.05 / 0.1 / 0.2 against no cache.

    python bench/teacache.py            # H100: 512x512, 81 frames (1 window), 50 steps, random weights (~3 min)
    python bench/teacache.py --tiny     # CPU check of the script (tiny models)

CAVEAT: the weights are random. TeaCache skips a step when the DiT's timestep modulation ``e0``
changed little, rescaled by a polynomial fitted on the REAL 1.3B model; with random weights the
``e0`` trajectory, hence how many steps get skipped, and the error a skip causes are not those
of the released model. The timings per computed/skipped step are real; the skip counts and PSNR
only show the mechanism works. Rerun with the released weights for representative numbers.

One JSON line per threshold: denoising seconds, speed-up over no cache, computed DiT calls out
of steps x windows, PSNR (dB) of the decoded video against the uncached one.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import emit, sync  # noqa: E402
from bench.memory_modes import REFERENCE, speech  # noqa: E402
from wan.models.teacache import disable_teacache, enable_teacache  # noqa: E402


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return math.inf if mse == 0 else round(10 * math.log10(1.0 / mse), 2)


def generate(pipe, args, device):
    sync()
    start = time.perf_counter()
    out = pipe(
        str(REFERENCE), speech(args.seconds), prompt="a woman is talking to the camera", height=args.size, width=args.size,
        num_inference_steps=args.steps, output_type="latent", generator=torch.Generator(device=device).manual_seed(0),
    )  # fmt: skip
    sync()
    seconds = time.perf_counter() - start
    video = (pipe.vae.decode(out.latents.to(device)).float().cpu() / 2 + 0.5).clamp(0, 1)
    return seconds, video, len(out.windows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--thresholds", default="0.05,0.1,0.2")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--skip_start_steps", type=int, default=5, help="inference.py's --num_skip_start_steps default")
    p.add_argument("--seconds", type=float, default=3.25, help="audio: 3.25 s -> 81 frames, one window")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    if args.tiny:
        from wan.pipelines import load_pipeline
        from wan.testing.tiny_checkpoints import write_tiny_checkpoints

        device = torch.device("cpu")
        args.size, args.steps = 64, min(args.steps, 12)
        pipe = load_pipeline(*write_tiny_checkpoints(tempfile.mkdtemp()).values(), device="cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench/teacache.py needs a CUDA GPU (or --tiny for a CPU check)")
        from wan.testing.random_models import random_pipeline

        device = torch.device("cuda")
        pipe = random_pipeline(device=device)
    pipe.set_progress_bar_config(disable=True)
    common = dict(bench="teacache", size=f"{args.size}x{args.size}", steps=args.steps, weights="tiny" if args.tiny else "random (full size)")
    generate(pipe, argparse.Namespace(**{**vars(args), "steps": 2}), device)  # warm-up (kernels, allocator)
    base_s, base_video, windows = generate(pipe, args, device)
    emit(**common, threshold=None, windows=windows, s_denoise=round(base_s, 2), speedup=1.0, dit_calls=args.steps * windows, psnr_db=None)
    for threshold in (float(x) for x in args.thresholds.split(",")):
        cache = enable_teacache(pipe, threshold, num_skip_start_steps=args.skip_start_steps)
        seconds, video, _ = generate(pipe, args, device)
        disable_teacache(pipe)
        computed = sum(d.computed for d in cache.decisions)
        emit(
            **common,
            threshold=threshold,
            skip_start_steps=args.skip_start_steps,
            windows=windows,
            s_denoise=round(seconds, 2),
            speedup=round(base_s / seconds, 2),
            dit_calls=computed,
            dit_calls_skipped=len(cache.decisions) - computed,
            psnr_db=psnr(video, base_video),
            note="random weights: skip counts and PSNR are not those of the released model",
        )


if __name__ == "__main__":
    main()
