"""Resumable long runs: the latents are saved every N denoising steps, and ``--resume`` continues.

The state file (``<output_dir>/resume_state.safetensors``, written atomically: temp file +
``os.replace``) holds the latents after the last saved step ``[1, 16, T, H/8, W/8]`` in their run
dtype, plus metadata: the number of steps done, the seed, the memory mode, and a fingerprint of
everything that determines the numbers (input files' contents, prompt, sizes, sampling flags,
TeaCache flags, weight files). A resume whose fingerprint differs is refused with the list of
what changed. The memory mode is not part of it (switching to a lower-memory mode after running
out of memory is the point of resuming), but a change to or from fp8 is logged: fp8 weights give
slightly different numbers.

Because every window of a step reads only the previous step's latents (and the scheduler's step
is a pure function of the timestep), the latents after step k are the whole state of the run:
resuming gives bit-for-bit the uninterrupted result. Not saved: TeaCache's per-window residuals
(hundreds of MB each at 480x832), so a TeaCache run computes every window at its first resumed
step and is then close to, not identical with, the uninterrupted TeaCache run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wan.errors import ResumeMismatchError

logger = logging.getLogger(__name__)

STATE_FILE = "resume_state.safetensors"
FORMAT_VERSION = "1"


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's contents (for the inputs: image and audio, small)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_identity(path: str | os.PathLike | None) -> str | None:
    """Cheap identity of a (possibly multi-GB) weight file or folder: resolved path, size, mtime."""
    if path is None:
        return None
    p = Path(path).resolve()
    if not p.exists():
        return f"{p} (missing)"
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    stats = [(str(f.relative_to(p)) if p.is_dir() else f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]
    return f"{p}:" + hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def fingerprint(fields: Mapping[str, Any]) -> str:
    """sha256 of the JSON of ``fields`` (sorted keys)."""
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ResumeState:
    latents: torch.Tensor  # [1, 16, T, H/8, W/8] after ``steps_done`` steps
    steps_done: int  # the run continues with step index ``steps_done`` (== start_step)
    num_steps: int
    seed: int
    memory_mode: str
    fields: dict[str, Any]  # what the fingerprint covers, kept to explain a mismatch

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.fields)


def save_state(path: str | os.PathLike, state: ResumeState) -> Path:
    """Write ``state`` atomically (a reader sees the old file or the new one, never half of one)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT_VERSION,
        "steps_done": str(state.steps_done),
        "num_steps": str(state.num_steps),
        "seed": str(state.seed),
        "memory_mode": state.memory_mode,
        "fields": json.dumps(state.fields, sort_keys=True, default=str),
        "fingerprint": state.fingerprint,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({"latents": state.latents.detach().contiguous().cpu()}, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_state(path: str | os.PathLike) -> ResumeState:
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            latents = f.get_tensor("latents")
    except Exception as err:
        raise ResumeMismatchError(f"{path} is not a readable resume state ({err}); delete it to start over") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ResumeMismatchError(f"{path} has resume format {meta.get('format')!r}, expected {FORMAT_VERSION}; delete it to start over")
    return ResumeState(
        latents=latents,
        steps_done=int(meta["steps_done"]),
        num_steps=int(meta["num_steps"]),
        seed=int(meta["seed"]),
        memory_mode=meta["memory_mode"],
        fields=json.loads(meta["fields"]),
    )


def check_compatible(state: ResumeState, fields: Mapping[str, Any], memory_mode: str, path: str | os.PathLike) -> None:
    """Raise ``ResumeMismatchError`` naming every field that differs from the saved run."""
    if state.fingerprint != fingerprint(fields):
        keys = sorted(set(state.fields) | set(fields))
        diffs = [f"{k}: saved {state.fields.get(k)!r}, now {fields.get(k)!r}" for k in keys if state.fields.get(k) != fields.get(k)]
        raise ResumeMismatchError(
            f"--resume refused: {path} was saved by a different run ("
            + "; ".join(diffs or ["fingerprint differs"])
            + "). Rerun with the original flags and inputs, or delete the file to start over."
        )
    if (state.memory_mode == "model_cpu_offload_and_qfloat8") != (memory_mode == "model_cpu_offload_and_qfloat8"):
        logger.warning(
            "resuming a %s run in %s: fp8 weights change the numbers slightly, the rest of the run will not match an uninterrupted one exactly",
            state.memory_mode,
            memory_mode,
        )


class StepSaver:
    """``callback_on_step_end`` that saves the latents every ``every`` steps and after the last.

    every: save period in steps (>= 1). The file always holds the newest saved step.
    """

    def __init__(self, path: str | os.PathLike, every: int, num_steps: int, seed: int, memory_mode: str, fields: Mapping[str, Any]):
        if every < 1:
            raise ValueError(f"--save_every must be >= 1 (got {every}); 0 turns saving off at the caller")
        self.path = Path(path)
        self.every, self.num_steps, self.seed, self.memory_mode = every, num_steps, seed, memory_mode
        self.fields = dict(fields)
        self.saved_steps: list[int] = []

    def __call__(self, pipe, step: int, t: torch.Tensor, latents: torch.Tensor) -> None:
        done = step + 1
        if done % self.every == 0 or done == self.num_steps:
            save_state(self.path, ResumeState(latents, done, self.num_steps, self.seed, self.memory_mode, self.fields))
            self.saved_steps.append(done)
