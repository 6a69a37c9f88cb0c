"""Multi-GPU inference: sequence parallelism (xfuser USP), window/CFG-row parallelism, FSDP of the DiT.

Entry point: ``setup_parallel(ulysses_degree, ring_degree)`` under torchrun, then
``runtime.attach(pipe, fsdp_dit)``; ``wan.pipelines.load_pipeline`` does both. See docs/multi_gpu.md.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "setup_parallel": "wan.distributed.runtime",
    "ParallelRuntime": "wan.distributed.runtime",
    "init_process_group": "wan.distributed.runtime",
    "launched_world_size": "wan.distributed.runtime",
    "SequenceParallel": "wan.distributed.sequence_parallel",
    "setup_sequence_parallel": "wan.distributed.sequence_parallel",
    "enable_sequence_parallel": "wan.distributed.sequence_parallel",
    "WindowParallel": "wan.distributed.window_parallel",
    "schedule": "wan.distributed.window_parallel",
    "shard_dit": "wan.distributed.fsdp",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wan.distributed' has no attribute {name!r}")
