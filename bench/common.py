"""Small helpers shared by the benchmarks: timing with CUDA sync, peak memory, JSON lines."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], warmup: int = 2, repeat: int = 5) -> tuple[float, list[float]]:
    """Median wall seconds of ``repeat`` calls after ``warmup`` calls (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def emit(**row) -> None:
    """A row of several numbers (the older scripts' form): printed and appended like ``record``,
    with ``metric`` = its ``bench`` name and the numbers in their own fields."""
    row = dict(row)
    record(row.pop("bench", "row"), None, "see fields", **row)


def device_slug(name: str | None = None) -> str:
    """File-name form of the device: 'NVIDIA H200' -> 'nvidia-h200', CPUs -> 'cpu'."""
    name = name or device_name()
    if name.startswith("CPU"):
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def versions() -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    for pkg in ("diffusers", "transformers", "torchao", "fa3_fwd", "flash_attn_interface", "xfuser", "yunchang", "peft"):
        try:
            from importlib.metadata import version

            out[pkg] = version(pkg.replace("_", "-"))
        except Exception:  # not installed: leave it out
            continue
    return out


def git_commit() -> str:
    """The commit the measured code came from. The device copy has no .git: BENCH_COMMIT carries it there."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def results_path(device: str | None = None) -> Path:
    """bench/results/<device-slug>.jsonl, or under BENCH_RESULTS_DIR (the device machine's $OUT)."""
    folder = Path(os.environ.get("BENCH_RESULTS_DIR") or RESULTS_DIR)
    return folder / f"{device_slug(device)}.jsonl"


def record(metric: str, value: float | None, unit: str, **fields) -> dict:
    """One measurement as data: print it and append it as a JSON line to ``results_path()``.

    Every line carries metric, value, unit, the caller's fields (size, variant, ...), and the
    device, versions, commit, UTC date and the command that produced it.
    """
    row = {
        "metric": metric,
        "value": value,
        "unit": unit,
        **fields,
        "device": device_name(),
        "versions": versions(),
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }
    print(json.dumps(row), flush=True)
    path = results_path(row["device"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:  # one short append per line: concurrent ranks do not interleave within a line
        fh.write(json.dumps(row) + "\n")
    return row
