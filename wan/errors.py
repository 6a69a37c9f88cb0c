"""The package's exceptions and the download commands their messages name.

This module imports nothing from ``wan``, so every layer can raise and catch the same classes: the
audio helper, the model loaders, the pipelines, training, the CLIs and the app. The classes keep
their old import paths too (``wan.models.loading.CheckpointError``,
``wan.runtime.resume.ResumeMismatchError``, ``wan.runtime.memory.GPUOutOfMemoryError``).
"""

from __future__ import annotations

import os
from pathlib import Path

# Where users get each file; used in "missing file" errors. ``hf`` is huggingface_hub's CLI since
# 0.34 (``pip install -U huggingface_hub``); 1.0 removed the command older guides use.
DOWNLOAD_HINTS: dict[str, str] = {
    "Wan2.1-Fun-V1.1-1.3B-InP": "hf download alibaba-pai/Wan2.1-Fun-V1.1-1.3B-InP --local-dir checkpoints/Wan2.1-Fun-V1.1-1.3B-InP",
    "Wan2.1-I2V-14B-480P": "hf download Wan-AI/Wan2.1-I2V-14B-480P --local-dir checkpoints/Wan2.1-I2V-14B-480P",
    "wav2vec2-base-960h": "hf download facebook/wav2vec2-base-960h --local-dir checkpoints/wav2vec2-base-960h",
    "Wan2.1-I2V-14B-720P": "hf download Wan-AI/Wan2.1-I2V-14B-720P --local-dir checkpoints/Wan2.1-I2V-14B-720P",
    "StableAvatar-1.3B": "hf download FrancisRing/StableAvatar --local-dir checkpoints",
    "Kim_Vocal_2.onnx": "hf download FrancisRing/StableAvatar Kim_Vocal_2.onnx --local-dir checkpoints",
}


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not match the module."""


class ResumeMismatchError(ValueError):
    """A saved resume state does not belong to this run; the message lists the differences."""


class GPUOutOfMemoryError(RuntimeError):
    """``torch.cuda.OutOfMemoryError`` during a run, with the memory mode to try next."""


def download_hint(path: str | os.PathLike) -> str:
    """The download command for the folder a missing file belongs to, or a generic pointer."""
    parts = Path(path).parts
    for folder, command in DOWNLOAD_HINTS.items():
        if folder in parts:
            return f"download it with: {command}"
    return "see checkpoints/README.md for the expected files and how to download them"
