"""Small helpers shared by the benchmarks: timing with CUDA sync, peak memory, JSON lines."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch


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
    """Print one JSON line with the device, torch version and UTC date added."""
    row = {"device": device_name(), "torch": torch.__version__, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), **row}
    print(json.dumps(row), flush=True)
