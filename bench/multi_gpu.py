"""Multi-GPU speed-up and memory: one 20-s 480x832 video, each parallel layout against one GPU.

    python bench/multi_gpu.py --gpus 2,4            # every layout on 2 and 4 GPUs (+ the 1-GPU baseline)
    python bench/multi_gpu.py --gpus 4 --modes default,ulysses_fsdp
    python bench/multi_gpu.py --tiny                # CPU check: tiny models, 2 processes over gloo

The driver starts one ``torchrun --standalone`` per (GPU count, layout); each prints one JSON line
(rank 0), and the driver adds one summary line per run with the speed-up over the 1-GPU baseline.
Models are full size with random weights (``wan.testing.random_models``): the speed is that of
the released weights. Timed: the denoising steps (``--steps`` run, the first one is warm-up; the
median of the rest), which are what the GPUs share; the 50-step total adds the measured
encoding/decoding time of one GPU (rank 0 decodes the video alone). Memory: peak allocated per GPU
after loading (the loading peak itself is not counted), max over ranks.

Layouts (``N`` = GPUs):
    single        1 GPU, the baseline
    default       window/CFG-row parallel: whole windows round-robin, left-over windows as CFG rows
    windows       whole windows only (no CFG-row split)
    ulysses       sequence parallel, Ulysses degree N (needs N | 12 heads)
    ring          sequence parallel, ring degree N
    usp           Ulysses 2 x ring N/2 (the original multiple_gpu_inference.sh on 4 GPUs)
    ulysses_fsdp  ulysses + the DiT's weights sharded (FSDP)
    usp_fsdp      usp + FSDP (the original script's full setting)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import emit, peak_gib, reset_peak, sync  # noqa: E402

LAYOUTS = {  # name: (ulysses degree, ring degree, fsdp, split rows); "N" = GPU count
    "single": (1, 1, False, True),
    "default": (1, 1, False, True),
    "windows": (1, 1, False, False),
    "ulysses": ("N", 1, False, True),
    "ring": (1, "N", False, True),
    "usp": (2, "N/2", False, True),
    "ulysses_fsdp": ("N", 1, True, True),
    "usp_fsdp": (2, "N/2", True, True),
}
HEADS = 12  # the 1.3B DiT
FULL = dict(height=480, width=832, seconds=20.0, clip_length=81, overlap=5)
TINY = dict(height=32, width=32, seconds=3.0, clip_length=17, overlap=2)


def degrees(layout: str, gpus: int) -> tuple[int, int, bool, bool] | None:
    """(ulysses, ring, fsdp, split_rows) of ``layout`` on ``gpus`` GPUs, or None where it does not apply."""
    u, r, fsdp, split = LAYOUTS[layout]
    value = {"N": gpus, "N/2": gpus // 2}
    u, r = value.get(u, u), value.get(r, r)
    if (layout == "single") != (gpus == 1) or u * r not in (1, gpus) or u < 1 or r < 1:
        return None
    if u * r == 1 and layout not in ("single", "default", "windows"):
        return None
    if layout.startswith("usp") and gpus < 4:  # ring degree N/2 = 1: that is "ulysses"
        return None
    if HEADS % u:
        return None
    return u, r, fsdp, split


# ----------------------------------------------------------------------------- worker (one torchrun)


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from wan.audio import load_audio
    from wan.distributed.fsdp import local_parameter_bytes

    case = TINY if args.tiny else FULL
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ulysses, ring, fsdp, split = degrees(args.layout, world)
    torch.manual_seed(0)  # the same random weights on every rank
    if args.tiny:
        from wan.pipelines import load_pipeline

        pipe = load_pipeline(*_tiny_paths(Path(args.tiny_dir)).values(), device="cpu", ulysses_degree=ulysses, ring_degree=ring, fsdp_dit=fsdp)
        device = torch.device("cpu")
    else:
        from wan.testing.random_models import random_pipeline

        runtime = None
        if world > 1:
            from wan.distributed import setup_parallel

            runtime = setup_parallel(ulysses, ring, split_rows=split)
        device = runtime.device if runtime else torch.device("cuda")
        pipe = random_pipeline(device=device)
        if runtime:
            runtime.attach(pipe, fsdp_dit=fsdp)
    if pipe.parallel is not None:
        pipe.parallel.split_rows = split
    pipe.set_progress_bar_config(disable=True)
    rank = dist.get_rank() if dist.is_initialized() else 0

    frames = int(case["seconds"] * 25)
    audio = load_audio(REPO / "examples" / "case-2" / "audio.wav")
    audio = torch.from_numpy(audio).repeat(frames * 640 // len(audio) + 1)[: frames * 640 + 320].numpy()  # loop the speech to length
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
        height=case["height"],
        width=case["width"],
        num_inference_steps=50,
        clip_length=case["clip_length"],
        overlap_window_length=case["overlap"],
        output_type="stream" if rank == 0 and args.layout == "single" else "latent",
        callback_on_step_end=on_step,
        generator=torch.Generator(device=device).manual_seed(42),
        end_step=args.steps,
    )
    decode_s = None
    if result.videos is not None:  # the 1-GPU baseline also times the decode (rank 0 does it alone in every layout)
        sync()
        t0 = time.perf_counter()
        for _chunk in result.videos:
            pass
        sync()
        decode_s = time.perf_counter() - t0
    steps = [b - a for a, b in zip(step_ends, step_ends[1:])]
    per_step = statistics.median(steps) if steps else step_ends[-1] - start
    encode_s = step_ends[0] - start - per_step  # before the first step (the first step itself ~ per_step)
    peak = peak_gib()
    peaks = [peak]
    if dist.is_initialized():
        peaks = [None] * dist.get_world_size()
        dist.all_gather_object(peaks, peak)
    if rank == 0:
        emit(
            bench="multi_gpu",
            layout=args.layout,
            gpus=world,
            ulysses=ulysses,
            ring=ring,
            fsdp=fsdp,
            split_rows=split,
            parallel=repr(pipe.parallel) if pipe.parallel is not None else None,
            size=f"{case['height']}x{case['width']}",
            seconds=case["seconds"],
            windows=len(result.windows),
            steps_run=len(step_ends),
            s_per_step=round(per_step, 3),
            s_encode=round(encode_s, 2),
            s_decode=None if decode_s is None else round(decode_s, 2),
            dit_weights_gib_per_rank=round(local_parameter_bytes(pipe.transformer) / 2**30, 3),
            peak_gib_max=None if peak is None else round(max(peaks), 2),
            peak_gib_per_rank=None if peak is None else [round(p, 2) for p in peaks],
        )
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _tiny_paths(folder: Path) -> dict:
    from wan.testing.tiny_checkpoints import BASE

    return {
        "pretrained_model_name_or_path": folder / BASE,
        "transformer_path": folder / "StableAvatar-1.3B" / "transformer3d-square.pt",
        "pretrained_wav2vec_path": folder / "wav2vec2-base-960h",
        "config_path": folder / "wan_civitai_tiny.yaml",
    }


# ----------------------------------------------------------------------------- driver


def launch(layout: str, gpus: int, args: argparse.Namespace) -> dict | None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    cmd += [str(Path(__file__).resolve()), "--worker", "--layout", layout, "--steps", str(args.steps)]
    if args.tiny:
        cmd += ["--tiny", "--tiny_dir", args.tiny_dir]
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.tiny else dict(os.environ)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not rows:
        emit(bench="multi_gpu", layout=layout, gpus=gpus, error=f"exit {proc.returncode}", stderr_tail=proc.stderr[-2000:])
        return None
    print(json.dumps(rows[-1]), flush=True)
    return rows[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", default="2,4", help="GPU counts to run (comma-separated); the 1-GPU baseline always runs")
    p.add_argument("--modes", default=",".join(k for k in LAYOUTS if k != "single"), help=f"layouts among {sorted(LAYOUTS)}")
    p.add_argument("--steps", type=int, default=3, help="denoising steps run per layout (the first is warm-up)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    p.add_argument("--tiny", action="store_true", help="CPU check: tiny models, 2 processes (gloo)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--layout", default="single", help=argparse.SUPPRESS)
    p.add_argument("--tiny_dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    gpu_counts = [2] if args.tiny else [int(g) for g in args.gpus.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.tiny:
        from wan.testing.tiny_checkpoints import write_tiny_checkpoints

        args.tiny_dir = tempfile.mkdtemp(prefix="tiny-ckpt-")
        write_tiny_checkpoints(Path(args.tiny_dir))
        modes = [m for m in modes if "ring" not in m and m not in ("usp", "usp_fsdp")]  # ring is GPU-only
    elif not torch.cuda.is_available() or torch.cuda.device_count() < max(gpu_counts):
        raise SystemExit(f"needs {max(gpu_counts)} CUDA GPUs (found {torch.cuda.device_count()}); --tiny checks the script on the CPU")
    base = launch("single", 1, args)
    for gpus in gpu_counts:
        for layout in modes:
            if degrees(layout, gpus) is None:
                continue
            row = launch(layout, gpus, args)
            if row and base:
                total_1 = base["s_encode"] + 50 * base["s_per_step"] + (base["s_decode"] or 0)
                total_n = row["s_encode"] + 50 * row["s_per_step"] + (base["s_decode"] or 0)
                emit(
                    bench="multi_gpu_summary",
                    layout=layout,
                    gpus=gpus,
                    size=row["size"],
                    seconds=row["seconds"],
                    windows=row["windows"],
                    speedup_step=round(base["s_per_step"] / row["s_per_step"], 2),
                    speedup_50_steps_with_decode=round(total_1 / total_n, 2),
                    efficiency_step=round(base["s_per_step"] / row["s_per_step"] / gpus, 2),
                    peak_gib_max=row["peak_gib_max"],
                    dit_weights_gib_per_rank=row["dit_weights_gib_per_rank"],
                    peak_gib_single=base["peak_gib_max"],
                )


if __name__ == "__main__":
    main()
