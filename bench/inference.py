"""End-to-end generation time on one GPU with full-size random-weight models.

    python bench/inference.py                                  # faithful (GPU default): the three cases, 4 steps each, extrapolated
    python bench/inference.py --cases video5s_480x832 --steps 50 --variant fast   # a real 50-step 5-s video in fast mode
    python bench/inference.py --compare_fast --cases window_480x832 --total_steps 10   # fast-mode error vs faithful
    python bench/inference.py --tiny                           # CPU check of the script (tiny sizes)

Variants: ``eager`` (the original's setting: eager DiT, SDPA), ``faithful`` (the GPU default:
compiled DiT blocks with the persistent compile cache, ``auto`` attention = fa3 where installed),
``fast`` (faithful + ``--fast``). For each case the pipeline runs ``--steps`` denoising steps of a
``--total_steps`` schedule; per-step time comes from the step callback. When fewer steps run than
the schedule has, the total is extrapolated as ``fixed + total * per_step`` (``fixed`` = everything
but the denoising steps: encoders, wav2vec, decode, mp4) and the row says ``extrapolated``.
``compile_s`` is the first DiT call's excess over the median call: the compilation, or with a warm
compile cache what is left of it (Dynamo's tracing, loading the cached kernels). Memory is peak allocated. Audio: the real speech of examples/case-2, cut
to the case's length. Every number is appended to bench/results/<device>.jsonl.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import peak_gib, record, reset_peak, sync  # noqa: E402
from wan.audio import load_audio  # noqa: E402

CASES = {  # name: (height, width, video frames of audio)
    "window_512x512": (512, 512, 81),
    "window_480x832": (480, 832, 81),
    "video5s_480x832": (480, 832, 125),
}


METRIC = {"video5s_480x832": "video5s_e2e_s"}  # other cases: window_e2e_s


def run_case(pipe, height: int, width: int, frames: int, steps: int, total_steps: int, device: str, keep: bool = False, **call) -> dict:
    """One generation; returns timings (and, with ``keep``, the final latents and uint8 frames)."""
    import soundfile as sf

    audio = load_audio(REPO / "examples" / "case-2" / "audio.wav")[: frames * 640 + 320]
    tmp = Path(tempfile.mkdtemp())
    sf.write(tmp / "audio.wav", audio, 16000)
    step_ends: list[float] = []

    def on_step(_pipe, _i, _t, _latents):
        sync()
        step_ends.append(time.perf_counter())

    dit_calls: list[float] = []  # wall time of each DiT call: the first one holds the compilation
    forward = pipe.transformer.forward

    def timed_forward(*a, **kw):
        sync()
        t0 = time.perf_counter()
        out = forward(*a, **kw)
        sync()
        dit_calls.append(time.perf_counter() - t0)
        return out

    pipe.transformer.forward = timed_forward
    reset_peak()
    sync()
    start = time.perf_counter()
    result = pipe(
        image=str(REPO / "examples" / "case-1" / "reference.png"),
        audio=audio,
        prompt="a woman is talking to the camera",
        height=height,
        width=width,
        num_inference_steps=total_steps,
        output_type="stream",
        callback_on_step_end=on_step,
        generator=torch.Generator(device=device).manual_seed(42),
        end_step=None if steps >= total_steps else steps,
        **call,
    )
    denoise_end = time.perf_counter()
    del pipe.transformer.forward  # back to the class's method
    from wan.utils.video_io import decoded_to_uint8

    chunks = (decoded_to_uint8(c) for c in result.videos)
    kept: list = []
    if keep:
        chunks = (kept.append(c) or c for c in chunks)
    try:  # PyAV (the mp4 writer) may be absent on a bare GPU box: then decode only, and say so
        from wan.utils.video_io import write_video

        n_frames = write_video(tmp / "out.mp4", chunks, audio_path=tmp / "audio.wav", progress=False).num_frames
        wrote_mp4 = True
    except ImportError:
        n_frames = sum(c.shape[0] if c.ndim == 4 else c.shape[2] for c in chunks)
        wrote_mp4 = False
    sync()
    end = time.perf_counter()
    gaps = [b - a for a, b in zip(step_ends, step_ends[1:], strict=False)]
    per_step = statistics.median(gaps) if gaps else step_ends[0] - start
    first_step = step_ends[0] - start  # includes the encoders and, cold, the compilation
    fixed = (end - start) - (step_ends[-1] - step_ends[0]) - per_step  # everything but the denoising steps
    out = dict(
        total_s=end - start,
        per_step=per_step,
        fixed=fixed,
        first_step=first_step,
        compile_s=dit_calls[0] - statistics.median(dit_calls[1:]) if len(dit_calls) > 1 else None,
        decode_s=end - denoise_end,
        windows=len(result.windows),
        frames=n_frames,
        steps_run=len(step_ends),
        wrote_mp4=wrote_mp4,
        peak=peak_gib(),
    )
    out["peak_gib"] = None if out["peak"] is None else round(out["peak"], 2)
    if keep:
        import numpy as np

        out["latents"] = result.latents.float().cpu()
        out["video"] = np.concatenate([np.asarray(c) for c in kept])
    return out




def setup_variant(pipe, variant: str, device: str, cache_dir: str | None) -> None:
    from wan.models.attention import set_attention_backend

    set_attention_backend("sdpa_unmasked" if variant == "eager" else "auto")
    if variant in ("faithful", "fast") and not getattr(pipe.transformer, "_compiled_blocks", False) and device == "cuda":
        from wan.runtime.compile_cache import configure_compile_cache

        print("compile cache:", configure_compile_cache(cache_dir), flush=True)
        pipe.transformer.compile_blocks()
    if variant == "fast":
        from wan.runtime.fast import enable_fast_mode

        print("fast mode:", enable_fast_mode(pipe.transformer, device).describe(), flush=True)


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--steps", type=int, default=4, help="denoising steps actually run per case")
    p.add_argument("--total_steps", type=int, default=50, help="the schedule's length (extrapolated to when --steps is smaller)")
    p.add_argument("--variant", default="faithful", choices=("eager", "faithful", "fast"))
    p.add_argument("--compile_cache_dir", default=None, help="as inference.py (default ~/.cache/stableavatar/torch_compile)")
    p.add_argument("--compare_fast", action="store_true", help="run each case faithful, then fast, the whole --total_steps schedule: error of fast mode")
    p.add_argument("--tiny", action="store_true", help="the tiny checkpoint folder (on the GPU if there is one)")
    p.add_argument("--last_window_true_length", action="store_true", help="also run each multi-window case with the short last window unpadded")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        from wan.pipelines import load_pipeline
        from wan.testing.tiny_checkpoints import write_tiny_checkpoints

        paths = write_tiny_checkpoints(tempfile.mkdtemp())
        pipe = load_pipeline(*paths.values(), device=device)
        cases = {"tiny_window_64x64": (64, 64, 81)}
    else:
        from wan.testing.random_models import random_pipeline

        pipe = random_pipeline(device=device)
        cases = {k: CASES[k] for k in args.cases.split(",")}
    pipe.set_progress_bar_config(disable=True)
    weights = "tiny" if args.tiny else "random"
    if args.compare_fast:
        for name, (h, w, frames) in cases.items():
            runs = {}
            for variant in ("faithful", "fast"):
                setup_variant(pipe, variant, device, args.compile_cache_dir)
                runs[variant] = run_case(pipe, h, w, frames, args.total_steps, args.total_steps, device, keep=True)
            a, b = runs["faithful"], runs["fast"]
            rel = ((b["latents"] - a["latents"]).norm() / a["latents"].norm()).item()
            fields = dict(case=name, size=f"{h}x{w}", steps=args.total_steps, weights=weights)
            for variant, r in runs.items():  # the first DiT call of each (cold unless the cache was filled before)
                if r["compile_s"] is not None and device == "cuda":
                    record("compile_s", round(r["compile_s"], 1), "s", variant=variant, first_step_s=round(r["first_step"], 1), **fields)
                record("pipeline_step_s", round(r["per_step"], 3), "s", variant=variant, **fields)
            record("fast_latents_rel_l2", round(rel, 5), "ratio", **fields)
            record("fast_frames_psnr_db", round(psnr(b["video"], a["video"]), 2), "dB", **fields)
        return
    setup_variant(pipe, args.variant, device, args.compile_cache_dir)
    for name, (h, w, frames) in cases.items():
        calls = [{}] + ([{"last_window_true_length": True}] if args.last_window_true_length and frames > 84 else [])
        for call in calls:
            r = run_case(pipe, h, w, frames, args.steps, args.total_steps, device, **call)
            extrapolated = r["steps_run"] < args.total_steps
            total = r["fixed"] + args.total_steps * r["per_step"] if extrapolated else r["total_s"]
            fields = dict(
                case=name + ("+last_window_true_length" if call else ""), size=f"{h}x{w}", variant=args.variant, weights=weights,
                steps=args.total_steps, steps_run=r["steps_run"], extrapolated=extrapolated, windows=r["windows"], video_frames=r["frames"],
                wrote_mp4=r["wrote_mp4"],
            )  # fmt: skip
            record(METRIC.get(name, "window_e2e_s"), round(total, 1), "s", s_fixed=round(r["fixed"], 2), s_decode_and_write=round(r["decode_s"], 2), **fields)
            record("pipeline_step_s", round(r["per_step"], 3), "s", s_per_window_step=round(r["per_step"] / r["windows"], 3), **fields)
            if r["compile_s"] is not None and args.variant != "eager":
                record("compile_s", round(r["compile_s"], 1), "s", first_step_s=round(r["first_step"], 1), **fields)
            if r["peak"] is not None:
                record("peak_gib", round(r["peak"], 2), "GiB", phase="generation", **fields)


if __name__ == "__main__":
    main()
