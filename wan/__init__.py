"""StableAvatar on Wan2.1: audio-driven avatar video of any length.

Public names are imported lazily so that ``import wan`` stays cheap (no torch model code runs).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "WanAvatarTransformer3DModel": "wan.models.transformer",
    "TRANSFORMER_PRESETS": "wan.configs.presets",
    "StableAvatarPipeline": "wan.pipelines.pipeline_stableavatar",
    "load_pipeline": "wan.pipelines.loading",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wan' has no attribute {name!r}")
