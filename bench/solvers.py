"""Seconds per 5-s 480x832 video for each solver at 10, 20 and 50 steps (full-size random weights).

    python bench/solvers.py                 # GPU: euler, unipc, dpm++; 3 steps timed per solver, extrapolated
    python bench/solvers.py --full          # GPU: every (solver, steps) run to the end, nothing extrapolated
    python bench/solvers.py --tiny          # CPU check of the script (tiny models, 64x64)

Default: for each solver the pipeline runs ``--steps`` denoising steps of a 50-step schedule (the
solver's own schedule), then decodes and writes the mp4; the video time for ``n`` steps is
extrapolated as ``fixed + n * per_step`` (``bench/inference.py``'s ``run_case``), where ``fixed`` is
everything but the steps (encoders, wav2vec, decode, mp4). A multistep solver's step costs a few
tensor operations per window more than Euler's; the timed steps include them. The DiT runs as
``bench/inference.py --variant`` sets it (default ``faithful``: the GPU default of inference.py),
after one untimed warm-up step (compilation and kernel selection stay out of ``fixed``).
Each row is recorded with ``bench.common.record``: metric ``video5s_e2e_s``, fields ``solver``,
``steps``, ``extrapolated`` (and the measured ``s_per_step``, ``s_fixed``, ``steps_run``).

The weights are random: this measures time only, not the quality of few-step videos.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import record  # noqa: E402
from bench.inference import CASES, run_case, setup_variant  # noqa: E402
from wan.pipelines.solvers import SOLVERS  # noqa: E402

STEP_COUNTS = (10, 20, 50)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--steps", type=int, default=3, help="denoising steps timed per solver (extrapolated to 10/20/50)")
    p.add_argument("--full", action="store_true", help="run every step count to the end instead of extrapolating")
    p.add_argument("--variant", default="faithful", choices=("eager", "faithful", "fast"), help="as bench/inference.py")
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU (checks the script, numbers meaningless)")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        from wan.pipelines import load_pipeline
        from wan.testing.tiny_checkpoints import write_tiny_checkpoints

        pipe = load_pipeline(*write_tiny_checkpoints(tempfile.mkdtemp()).values(), device="cpu")
        height, width, frames = 64, 64, 125
    else:
        from wan.testing.random_models import random_pipeline

        pipe = random_pipeline(device=device)
        height, width, frames = CASES["video5s_480x832"]
    pipe.set_progress_bar_config(disable=True)
    setup_variant(pipe, args.variant, device, None)
    fields = dict(size=f"{height}x{width}", variant=args.variant, weights="tiny" if args.tiny else "random")
    run_case(pipe, height, width, frames, 1, max(STEP_COUNTS), device)  # warm-up (compilation, kernels), not recorded
    for solver in args.solvers.split(","):
        runs = {n: run_case(pipe, height, width, frames, n, n, device, sample_solver=solver) for n in STEP_COUNTS} if args.full else None
        timed = None if args.full else run_case(pipe, height, width, frames, args.steps, max(STEP_COUNTS), device, sample_solver=solver)
        for n in STEP_COUNTS:
            r = runs[n] if args.full else timed
            total = r["total_s"] if args.full else r["fixed"] + n * r["per_step"]
            record("video5s_e2e_s", round(total, 1), "s", solver=solver, steps=n, extrapolated=not args.full, s_per_step=round(r["per_step"], 3),
                   s_fixed=round(r["fixed"], 2), steps_run=r["steps_run"], windows=r["windows"], **fields)  # fmt: skip


if __name__ == "__main__":
    main()
