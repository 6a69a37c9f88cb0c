"""Time the first (compiling) and second call of a 2-layer full-width DiT with one --fast lever.

    python bench/fast_probe.py --lever attention|linear|both [--no_emulate] [--hang_s 50]

A diagnostic for compile time: prints where Python is (faulthandler) if the first call takes
longer than --hang_s, then exits.
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import record, sync  # noqa: E402
from bench.dit_step import build, cfg_inputs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lever", choices=("attention", "linear", "both", "none"), default="both")
    p.add_argument("--no_emulate", action="store_true", help="inductor's emulate_precision_casts off")
    p.add_argument("--hang_s", type=float, default=50)
    p.add_argument("--layers", type=int, default=2)
    args = p.parse_args()
    from wan.runtime.fast import enable_fast_mode

    model = build("1.3B", args.layers, "cuda", torch.bfloat16)
    mode = enable_fast_mode(model, "cuda", fp8_linear=args.lever in ("linear", "both"), fp8_attention=args.lever in ("attention", "both"))
    model.compile_blocks()
    if args.no_emulate:
        import torch._inductor.config as inductor_config

        inductor_config.emulate_precision_casts = False
    inputs = cfg_inputs(480, 832, 81, "cuda", torch.bfloat16)
    faulthandler.dump_traceback_later(args.hang_s, exit=True)
    times = []
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(**inputs)
        sync()
        times.append(time.perf_counter() - t0)
    faulthandler.cancel_dump_traceback_later()
    record("fast_probe_first_call_s", round(times[0], 2), "s", lever=args.lever, enabled=mode.describe(), layers=args.layers,
           emulate_precision_casts=not args.no_emulate, later_calls_s=[round(t, 4) for t in times[1:]])  # fmt: skip


if __name__ == "__main__":
    main()
