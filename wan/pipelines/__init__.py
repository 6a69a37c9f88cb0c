"""The StableAvatar pipeline and its loader (imported lazily: nothing heavy at import time)."""

from __future__ import annotations

import importlib

_LAZY = {
    "StableAvatarPipeline": "wan.pipelines.pipeline_stableavatar",
    "StableAvatarPipelineOutput": "wan.pipelines.pipeline_stableavatar",
    "load_pipeline": "wan.pipelines.loading",
    "MEMORY_MODES": "wan.pipelines.loading",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wan.pipelines' has no attribute {name!r}")
