"""Checkpoints: atomic ``checkpoint-<step>`` folders, rotation and resume.

A checkpoint folder holds accelerate's state (model, optimizer, lr scheduler, RNG states; the
DeepSpeed shards under ZeRO), ``train_state.json`` (step, epoch, position in the epoch's data
plan) and the weights in the released format: ``transformer3d-checkpoint-<step>.pt`` (a plain
state dict) for full training, ``lora-checkpoint-<step>.safetensors`` with ``--lora``.

Every process writes into ``.checkpoint-<step>.tmp``; once all are done the main process renames
it to ``checkpoint-<step>`` (os.replace), then prunes the oldest folders beyond
``--checkpoints_total_limit``. A run killed while saving leaves only a ``.tmp`` folder, which
resume ignores, and the previous checkpoint intact. (The original pruned *before* saving.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    """Where the run is; saved with every checkpoint."""

    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch of the next batch
    step_in_epoch: int = 0  # index of the next batch in that epoch's plan (wan.data.mixing)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: str | os.PathLike, resume: str | None) -> Path | None:
    """The folder ``--resume_from_checkpoint`` points at: "latest" = newest in output_dir (None if
    there is none yet, so a fresh run can use the same command), else a path or a folder name."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("no checkpoint in %s yet; starting a new run", output_dir)
            return None
        return found[-1]
    path = Path(resume)
    if not path.is_dir():
        path = Path(output_dir) / resume
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder (nor {path})")
    return path


def read_state(checkpoint: Path) -> TrainState:
    file = checkpoint / STATE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: {checkpoint} was not written by this trainer")
    return TrainState(**json.loads(file.read_text()))


def prune(output_dir: str | os.PathLike, keep: int | None) -> None:
    """Delete the oldest checkpoint folders so that at most ``keep`` remain."""
    if keep is None:
        return
    found = list_checkpoints(output_dir)
    for old in found[: max(0, len(found) - keep)]:
        logger.info("removing old checkpoint %s", old)
        shutil.rmtree(old)


def save_checkpoint(accelerator, output_dir: str | os.PathLike, state: TrainState, write_weights, keep: int | None) -> Path:
    """Save on every process, publish atomically on the main one, then rotate.

    write_weights(folder): called on the main process to add the released-format weight file.
    """
    root = Path(output_dir)
    final = root / f"checkpoint-{state.global_step}"
    tmp = root / f".checkpoint-{state.global_step}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        write_weights(tmp)
        (tmp / STATE_FILE).write_text(state.to_json())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again (final save): swap, then drop the old copy
            old = root / f".checkpoint-{state.global_step}.old"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        logger.info("saved %s", final)
        prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def save_transformer_pt(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """The released ``transformer3d-*.pt`` format: one plain state dict (no wrapper, no prefix)."""
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, path)
