"""End-to-end generation time on one GPU with full-size random-weight models.

    python bench/inference.py                     # H100: one 81-frame window at 512x512 and 480x832, 5-s 480x832 video
    python bench/inference.py --tiny              # CPU check of the script (tiny sizes)

For each case: the pipeline runs a few denoising steps (``--steps``); per-step time is measured
from the step callback, and the 50-step time is extrapolated as
``fixed + 50 * per_step`` where ``fixed`` is everything that is not a denoising step (prompt/image
encoding, wav2vec, decode, mp4 writing). Memory is peak allocated. Audio: the real speech of
examples/case-2, cut to the case's length.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import emit, peak_gib, reset_peak, sync  # noqa: E402
from wan.audio import load_audio  # noqa: E402

CASES = {  # name: (height, width, video frames of audio)
    "window_512x512": (512, 512, 81),
    "window_480x832": (480, 832, 81),
    "video5s_480x832": (480, 832, 125),
}


def measure(pipe, height: int, width: int, frames: int, steps: int, total_steps: int, device: str, **call) -> dict:
    """Run ``steps`` denoising steps of a ``total_steps`` schedule, decode and write the mp4; returns the
    timings: ``per_step`` (median), ``fixed`` (everything but the steps), ``decode_and_write``, and
    ``steps_run``, ``windows``, ``frames``, ``wrote_mp4``, ``peak_gib``."""
    import soundfile as sf

    audio = load_audio(REPO / "examples" / "case-2" / "audio.wav")[: frames * 640 + 320]
    tmp = Path(tempfile.mkdtemp())
    sf.write(tmp / "audio.wav", audio, 16000)
    step_ends: list[float] = []

    def on_step(_pipe, _i, _t, _latents):
        sync()
        step_ends.append(time.perf_counter())

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
        end_step=steps,
        **call,
    )
    denoise_end = time.perf_counter()
    try:  # PyAV (the mp4 writer) may be absent on a bare GPU box: then decode only, and say so
        from wan.utils.video_io import decoded_to_uint8, write_video

        frames = write_video(tmp / "out.mp4", (decoded_to_uint8(c) for c in result.videos), audio_path=tmp / "audio.wav", progress=False).num_frames
        wrote_mp4 = True
    except ImportError:
        frames = sum(c.shape[2] for c in result.videos)
        wrote_mp4 = False
    sync()
    end = time.perf_counter()
    per_step = statistics.median(b - a for a, b in zip(step_ends, step_ends[1:])) if len(step_ends) > 1 else step_ends[0] - start
    fixed = (end - start) - (step_ends[-1] - step_ends[0]) - per_step  # everything but the denoising steps
    return dict(
        per_step=per_step, fixed=fixed, decode_and_write=end - denoise_end, steps_run=len(step_ends), windows=len(result.windows),
        frames=frames, wrote_mp4=wrote_mp4, peak_gib=None if peak_gib() is None else round(peak_gib(), 2),
    )  # fmt: skip


def run_case(pipe, name: str, height: int, width: int, frames: int, steps: int, total_steps: int, device: str, **call) -> None:
    m = measure(pipe, height, width, frames, steps, total_steps, device, **call)
    emit(
        bench="inference",
        case=name + ("+last_window_true_length" if call.get("last_window_true_length") else ""),
        compiled=getattr(pipe.transformer, "_compiled_blocks", False),
        size=f"{height}x{width}",
        video_frames=m["frames"],
        wrote_mp4=m["wrote_mp4"],
        windows=m["windows"],
        steps_run=m["steps_run"],
        s_per_step=round(m["per_step"], 3),
        s_per_window_step=round(m["per_step"] / m["windows"], 3),
        s_fixed=round(m["fixed"], 2),
        s_decode_and_write=round(m["decode_and_write"], 2),
        s_total_extrapolated_50_steps=round(m["fixed"] + 50 * m["per_step"], 1),
        peak_gib=m["peak_gib"],
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--steps", type=int, default=4, help="denoising steps actually run per case")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--last_window_true_length", action="store_true", help="also run each multi-window case with the short last window unpadded")
    p.add_argument("--compile", action="store_true", help="regional torch.compile of the DiT blocks (the --compile flag of inference.py)")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        from wan.pipelines import load_pipeline
        from wan.testing.tiny_checkpoints import write_tiny_checkpoints

        paths = write_tiny_checkpoints(tempfile.mkdtemp())
        pipe = load_pipeline(*paths.values(), device="cpu")
        cases = {"tiny_window_64x64": (64, 64, 81)}
    else:
        from wan.testing.random_models import random_pipeline

        pipe = random_pipeline(device=device)
        cases = {k: CASES[k] for k in args.cases.split(",")}
    pipe.set_progress_bar_config(disable=True)
    if args.compile:
        pipe.transformer.compile_blocks()
    for name, (h, w, frames) in cases.items():
        run_case(pipe, name, h, w, frames, args.steps, 50, device)
        if args.last_window_true_length and frames > 84:
            run_case(pipe, name, h, w, frames, args.steps, 50, device, last_window_true_length=True)


if __name__ == "__main__":
    main()
