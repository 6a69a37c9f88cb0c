"""Multi-GPU speed-up and memory: one 20-s 480x832 video, each parallel layout against one GPU.

    python bench/multi_gpu.py --gpus 2                 # every layout on 2 GPUs (+ the 1-GPU baseline)
    python bench/multi_gpu.py --gpus 4 --modes default,usp,usp_fsdp
    python bench/multi_gpu.py --gpus 8 --preset 14B    # the 14B DiT: Ulysses (+ FSDP) against the 14B on one GPU
    python bench/multi_gpu.py --tiny                   # CPU check: tiny models, 2 processes over gloo

The driver starts one ``torchrun --standalone`` per (GPU count, layout); rank 0 records its numbers
through ``bench.common.record`` (JSON lines in bench/results/<device>.jsonl, or $BENCH_RESULTS_DIR):
``dit_step_s`` (s per denoising step) and ``peak_gib`` (max over ranks) per layout, then the driver
``multi_gpu_speedup`` (value: per-step speed-up over 1 GPU) and ``video_50_steps_s``; every row
has the fields ``gpus`` and ``layout``. Models are full size with random weights
(``wan.testing.random_models``): the speed is that of the released weights. Timed: the denoising
steps (``--steps`` run, the first one is warm-up; the median of the rest), which are what the GPUs
share; the 50-step total adds the measured encoding and the 1-GPU decode (rank 0 decodes alone in
every layout). Memory: peak allocated per GPU after loading (the loading peak itself is not
counted), max over ranks.

Layouts (``N`` = GPUs; ``U x R`` = ulysses x ring degree of one sequence-parallel group):
    single        1 GPU, the baseline
    default       window/CFG-row parallel: whole windows round-robin, left-over windows as CFG rows
    windows       whole windows only (no CFG-row split)
    ulysses       sequence parallel, U = N
    ring          sequence parallel, R = N
    usp           U = N/2 x R = 2 (the original's 2 x 2 on 4 GPUs; 4 x 2 on 8)
    ulysses_fsdp  ulysses + the DiT's weights sharded (FSDP)
    usp_fsdp      usp + FSDP (the original script's full setting)
    hybrid        N/2 window groups of Ulysses 2 (ours: windows across groups, sequence parallel inside)
A layout that does not apply to a GPU count (``ring`` = ``usp`` on 2 GPUs, a Ulysses degree that
does not divide the heads) is skipped.
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

from bench.common import peak_gib, record, reset_peak, sync  # noqa: E402

LAYOUTS = {  # name: (ulysses degree, ring degree, fsdp, split rows); "N" = GPU count, "N/2" half of it
    "single": (1, 1, False, True),
    "default": (1, 1, False, True),
    "windows": (1, 1, False, False),
    "ulysses": ("N", 1, False, True),
    "ring": (1, "N", False, True),
    "usp": ("N/2", 2, False, True),
    "ulysses_fsdp": ("N", 1, True, True),
    "usp_fsdp": ("N/2", 2, True, True),
    "hybrid": (2, 1, False, True),
}
MODES = {"1.3B": [k for k in LAYOUTS if k != "single"], "14B": ["ulysses", "ulysses_fsdp", "usp_fsdp"]}
CASES = {  # "full": what the numbers are about; "tiny": the CPU check (tiny checkpoint folder)
    "full": dict(height=480, width=832, seconds=20.0, clip_length=81, overlap=5),
    "tiny": dict(height=32, width=32, seconds=3.0, clip_length=17, overlap=2),
}
SECONDS_14B = 5.0  # 2 windows: the 14B shares each window's DiT call (sequence parallel), so fewer windows time the same per call


def heads(preset: str) -> int:
    from wan.configs import transformer_config

    return transformer_config(preset)["num_heads"]


def degrees(layout: str, gpus: int, num_heads: int = 12) -> tuple[int, int, bool, bool] | None:
    """(ulysses, ring, fsdp, split_rows) of ``layout`` on ``gpus`` GPUs, or None where it does not
    apply or repeats another layout (``usp`` on 2 GPUs is ``ring``, ``hybrid`` on 2 is ``ulysses``)."""
    u, r, fsdp, split = LAYOUTS[layout]
    value = {"N": gpus, "N/2": gpus // 2}
    u, r = value.get(u, u), value.get(r, r)
    if layout == "single":
        ok = gpus == 1
    elif layout in ("default", "windows"):
        ok = gpus > 1
    elif layout == "hybrid":
        ok = gpus >= 4 and gpus % (u * r) == 0
    else:
        ok = u * r == gpus > 1 and (not layout.startswith("usp") or min(u, r) >= 2)
    return (u, r, fsdp, split) if ok and num_heads % u == 0 else None


def this_device() -> torch.device:
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else torch.device("cpu")


def build_pipeline(layout: str, preset: str = "1.3B", tiny_dir: str | Path | None = None):
    """The pipeline of ``layout`` on this torchrun's processes (one GPU each; the CPU without CUDA):
    the tiny checkpoint folder through ``load_pipeline`` (as inference.py), or full-size random
    weights (the same on every rank) wired by ``setup_parallel``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    layout_degrees = degrees(layout, world, heads(preset))
    if layout_degrees is None:
        raise ValueError(f"layout {layout!r} does not apply to {world} process(es) (see bench/multi_gpu.py)")
    ulysses, ring, fsdp, split = layout_degrees
    torch.manual_seed(0)  # the same random weights on every rank
    if tiny_dir is not None:
        from wan.pipelines import load_pipeline

        pipe = load_pipeline(*_tiny_paths(Path(tiny_dir)).values(), ulysses_degree=ulysses, ring_degree=ring, fsdp_dit=fsdp)
    else:
        from wan.testing.random_models import random_pipeline

        runtime = None
        if world > 1:
            from wan.distributed import setup_parallel

            runtime = setup_parallel(ulysses, ring, split_rows=split)
        pipe = random_pipeline(device=this_device(), preset=preset)
        if runtime:
            runtime.attach(pipe, fsdp_dit=fsdp)
    if pipe.parallel is not None:
        pipe.parallel.split_rows = split
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, case: dict, steps: int, decode: bool = False, callback=None):
    """``steps`` denoising steps of the 50-step schedule on ``case`` (the example speech looped to
    ``case["seconds"]``); latents, or the decoded video stream with ``decode``."""
    from wan.audio import load_audio

    frames = int(case["seconds"] * 25)
    audio = load_audio(REPO / "examples" / "case-2" / "audio.wav")
    audio = torch.from_numpy(audio).repeat(frames * 640 // len(audio) + 1)[: frames * 640 + 320].numpy()  # loop the speech to length
    return pipe(
        image=str(REPO / "examples" / "case-1" / "reference.png"),
        audio=audio,
        prompt="a woman is talking to the camera",
        height=case["height"],
        width=case["width"],
        num_inference_steps=50,
        clip_length=case["clip_length"],
        overlap_window_length=case["overlap"],
        output_type="stream" if decode else "latent",
        callback_on_step_end=callback,
        generator=torch.Generator(device=this_device()).manual_seed(42),
        end_step=steps,
    )


# ----------------------------------------------------------------------------- worker (one torchrun)


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from wan.distributed.fsdp import local_parameter_bytes

    case = dict(CASES["tiny" if args.tiny else "full"], seconds=args.seconds or CASES["tiny" if args.tiny else "full"]["seconds"])
    pipe = build_pipeline(args.layout, args.preset, args.tiny_dir)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    step_ends: list[float] = []

    def on_step(_pipe, _i, _t, _latents):
        sync()
        step_ends.append(time.perf_counter())

    reset_peak()
    sync()
    start = time.perf_counter()
    result = generate(pipe, case, args.steps, decode=rank == 0 and args.layout == "single", callback=on_step)
    decode_s = None
    if result.videos is not None:  # the 1-GPU baseline also times the decode (rank 0 does it alone in every layout)
        sync()
        t0 = time.perf_counter()
        for _chunk in result.videos:
            pass
        sync()
        decode_s = time.perf_counter() - t0
    steps = [b - a for a, b in zip(step_ends, step_ends[1:], strict=False)]
    per_step = statistics.median(steps) if steps else step_ends[-1] - start
    encode_s = step_ends[0] - start - per_step  # before the first step (the first step itself ~ per_step)
    peak = peak_gib()
    peaks = [peak]
    if dist.is_initialized():
        peaks = [None] * world
        dist.all_gather_object(peaks, peak)
    if rank == 0:
        ulysses, ring, fsdp, split = degrees(args.layout, world, heads(args.preset))
        fields = dict(gpus=world, layout=args.layout, preset=args.preset, size=f"{case['height']}x{case['width']}", seconds=case["seconds"])
        record(
            "dit_step_s",
            round(per_step, 3),
            "s",
            **fields,
            ulysses=ulysses,
            ring=ring,
            fsdp=fsdp,
            split_rows=split,
            parallel=repr(pipe.parallel) if pipe.parallel is not None else None,
            windows=len(result.windows),
            steps_run=len(step_ends),
            step_s_all=[round(s, 3) for s in steps],
            s_encode=round(encode_s, 2),
            s_decode=None if decode_s is None else round(decode_s, 2),
            dit_weights_gib_per_rank=round(local_parameter_bytes(pipe.transformer) / 2**30, 3),
        )
        if peak is not None:
            per_rank = [round(p, 2) for p in peaks]
            record("peak_gib", round(max(peaks), 2), "GiB", **fields, per_rank=per_rank, what="max allocated per GPU after loading")
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

# NVLink multicast off in every child: on the shared multi-GPU hosts it can take the GPUs out of service.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def launch(layout: str, gpus: int, args: argparse.Namespace) -> dict | None:
    """One torchrun of ``layout`` on ``gpus`` processes; its rows by metric, or None (error row recorded)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    cmd += [str(Path(__file__).resolve()), "--worker", "--layout", layout, "--steps", str(args.steps), "--preset", args.preset]
    cmd += ["--seconds", str(args.seconds)] if args.seconds else []
    cmd += ["--tiny", "--tiny_dir", args.tiny_dir] if args.tiny else []
    env = {**NO_MULTICAST, **os.environ, **({"OMP_NUM_THREADS": "1"} if args.tiny else {})}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, err, rc = exc.stdout or "", exc.stderr or "", f"timeout after {args.timeout} s"
        out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
    if args.log_dir:
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        Path(args.log_dir, f"{args.preset}-{gpus}gpu-{layout}.log").write_text(f"$ {' '.join(cmd)}\n{out}\n{err}")
    rows = {row["metric"]: row for row in (json.loads(line) for line in out.splitlines() if line.startswith("{"))}
    if rc or "dit_step_s" not in rows:
        record("multi_gpu_error", None, "", gpus=gpus, layout=layout, preset=args.preset, exit=rc, stderr_tail=err[-2000:])
        return None
    return rows


def summarise(layout: str, gpus: int, row: dict, base: dict) -> None:
    """Speed-up over the 1-GPU baseline (per step, and for 50 steps with encode and decode)."""
    step, base_step = row["dit_step_s"], base["dit_step_s"]
    decode = base_step["s_decode"] or 0.0  # rank 0 decodes alone in every layout
    total_1 = base_step["s_encode"] + 50 * base_step["value"] + decode
    total_n = step["s_encode"] + 50 * step["value"] + decode
    fields = dict(gpus=gpus, layout=layout, preset=step["preset"], size=step["size"], seconds=step["seconds"], windows=step["windows"])
    if gpus == 1:
        record("video_50_steps_s", round(total_1, 1), "s", **fields, what="encode + 50 x step + decode")
        return
    peak = row.get("peak_gib", {}).get("value")
    speedup = base_step["value"] / step["value"]
    record(
        "multi_gpu_speedup",
        round(speedup, 2),
        "x",
        **fields,
        what="s/step on 1 GPU / s/step on N",
        speedup_50_steps_with_decode=round(total_1 / total_n, 2),
        efficiency_step=round(speedup / gpus, 2),
        s_per_step=step["value"],
        s_per_step_single=base_step["value"],
        peak_gib_max=peak,
        peak_gib_single=base.get("peak_gib", {}).get("value"),
        dit_weights_gib_per_rank=step["dit_weights_gib_per_rank"],
    )
    record("video_50_steps_s", round(total_n, 1), "s", **fields, what="encode + 50 x step + the 1-GPU decode")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", default="2", help="GPU counts to run (comma-separated, e.g. 2,4); the 1-GPU baseline always runs")
    p.add_argument("--modes", default=None, help=f"layouts among {sorted(LAYOUTS)} (default: every one for 1.3B, {MODES['14B']} for 14B)")
    p.add_argument("--preset", default="1.3B", choices=sorted(MODES), help="DiT size (random weights)")
    seconds = f"video length (default {CASES['full']['seconds']:g} s, 14B {SECONDS_14B:g} s)"
    p.add_argument("--seconds", type=float, default=None, help=seconds)
    p.add_argument("--steps", type=int, default=3, help="denoising steps run per layout (the first is warm-up)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per torchrun")
    p.add_argument("--log_dir", default=None, help="write each torchrun's output to LOG_DIR/<preset>-<N>gpu-<layout>.log")
    p.add_argument("--tiny", action="store_true", help="CPU check: tiny models, processes over gloo (--gpus = process counts)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--layout", default="single", help=argparse.SUPPRESS)
    p.add_argument("--tiny_dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.preset == "14B" and not args.seconds and not args.tiny:
        args.seconds = SECONDS_14B
    if args.worker:
        return worker(args)
    gpu_counts = [int(g) for g in args.gpus.split(",")]
    modes = [m.strip() for m in (args.modes or ",".join(MODES[args.preset])).split(",") if m.strip()]
    unknown = set(modes) - set(LAYOUTS)
    if unknown:
        raise SystemExit(f"--modes: unknown layouts {sorted(unknown)}; choose among {sorted(LAYOUTS)}")
    if args.tiny:
        if args.preset != "1.3B":
            raise SystemExit("--tiny checks the layouts with the tiny 1.3B checkpoint folder; --preset 14B needs GPUs")
        from wan.testing.tiny_checkpoints import write_tiny_checkpoints

        args.tiny_dir = tempfile.mkdtemp(prefix="tiny-ckpt-")
        write_tiny_checkpoints(Path(args.tiny_dir))
        if not torch.cuda.is_available():  # ring attention is GPU-only (wan.distributed.sequence_parallel)
            modes = [m for m in modes if LAYOUTS[m][1] == 1]
    elif not torch.cuda.is_available() or torch.cuda.device_count() < max(gpu_counts):
        raise SystemExit(f"needs {max(gpu_counts)} CUDA GPUs (found {torch.cuda.device_count()}); --tiny checks the script on the CPU")
    base = launch("single", 1, args)
    if base:
        summarise("single", 1, base, base)
    for gpus in gpu_counts:
        for layout in modes:
            if degrees(layout, gpus, heads(args.preset)) is None:
                continue
            row = launch(layout, gpus, args)
            if row and base:
                summarise(layout, gpus, row, base)


if __name__ == "__main__":
    main()
