"""Validation during training: a pluggable hook, filled by the inference pipeline when it exists.

The trainer calls ``hook(transformer, global_step)`` on the main process every
``--validation_steps``. ``make_validation_hook`` builds one that renders
``<output_dir>/sample/sample-<step>.mp4`` from ``--validation_reference_path`` and
``--validation_driven_audio_path`` at the preset's validation size, through
``wan.pipelines.render_validation`` (provided by the pipeline package). When that is not
importable, or the preset never validated (14B), it logs why and returns None.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch.nn as nn

from .conditioning import FrozenEncoders
from .config import TrainConfig

logger = logging.getLogger(__name__)


def make_validation_hook(cfg: TrainConfig, encoders: FrozenEncoders) -> Callable[[nn.Module, int], None] | None:
    run = cfg.run
    if run.validation_size is None:
        return None
    if not (run.validation_reference_path and run.validation_driven_audio_path):
        logger.warning("no --validation_reference_path/--validation_driven_audio_path: validation is skipped")
        return None
    try:
        from wan.pipelines import render_validation
    except ImportError as exc:
        logger.warning("validation is skipped: the inference pipeline is not importable (%s)", exc)
        return None
    width, height = run.validation_size
    out_dir = Path(cfg.checkpoint.output_dir) / "sample"

    def hook(transformer: nn.Module, step: int) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        render_validation(
            transformer=transformer,
            base_dir=cfg.model.pretrained_model_name_or_path,
            wav2vec_dir=cfg.model.pretrained_wav2vec_path,
            reference_path=run.validation_reference_path,
            audio_path=run.validation_driven_audio_path,
            width=width,
            height=height,
            seed=run.seed,
            output_path=out_dir / f"sample-{step}.mp4",
        )

    return hook
