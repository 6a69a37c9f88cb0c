"""Validation during training: one video from the model being trained, through the real pipeline.

The trainer calls ``hook(transformer, global_step)`` on the main process every ``--validation_steps``
(eval mode, no grad). ``make_validation_hook`` builds a hook that writes
``<output_dir>/sample/sample-<step>.mp4`` (h264 + the driving audio) from ``--validation_reference_path``
and ``--validation_driven_audio_path``, as the original's ``log_validation``: one window of
``--video_sample_n_frames`` frames, the prompt "The protagonist is singing", text and audio guidance
5.0, seeded by ``--seed``, at the preset's validation size (512x512 for 1B_square, 480x832 for
1B_vec_rec; the 14B script never validated). ``--validation_sample_steps`` (default 50, the
original's fixed number) sets the denoising steps.

The pipeline is a ``StableAvatarPipeline`` around the trainer's own (unwrapped) DiT and the frozen
encoders already loaded for training: no second copy of any model. With ``--lora`` the DiT carries
its peft layers and the video shows the adapters as trained so far.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from wan.constants import AUDIO_SAMPLES_PER_FRAME, DEFAULT_FPS, NEGATIVE_PROMPT, VAE_STRIDE

from .conditioning import FrozenEncoders, on_device
from .config import TrainConfig

logger = logging.getLogger(__name__)

VALIDATION_PROMPT = "The protagonist is singing"  # the original's log_validation prompt
VALIDATION_GUIDANCE = 5.0  # its prompt_cfg_scale and audio_cfg_scale
VALIDATION_OVERLAP = 5  # the pipeline's default overlap_window_length
PIPELINE_PARTS = ("tokenizer", "text_encoder", "vae", "clip_image_encoder", "wav2vec")


def render_validation(
    transformer: nn.Module,
    encoders: FrozenEncoders,
    reference_path: str | os.PathLike,
    audio_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    width: int,
    height: int,
    clip_length: int,
    num_inference_steps: int,
    seed: int,
    low_vram: bool = False,
) -> Path:
    """Generate one window (``clip_length`` frames) and write it with its audio to ``output_path``.

    transformer: the DiT being trained (unwrapped from DDP/DeepSpeed), on its training device.
    encoders: the training encoders; ``encoders.parts`` supplies the pipeline's other components.
    low_vram: the frozen encoders live on the CPU; they visit the DiT's device for this call.
    """
    from wan.audio import load_audio
    from wan.pipelines.pipeline_stableavatar import StableAvatarPipeline
    from wan.pipelines.scheduling import build_scheduler
    from wan.utils.video_io import decoded_to_uint8, write_video

    parts = encoders.parts
    missing = [name for name in PIPELINE_PARTS if name not in parts]
    if missing:
        raise ValueError(f"render_validation: the frozen encoders carry no {missing}; load them with FrozenEncoders.from_pretrained")
    device = next(transformer.parameters()).device
    pipe = StableAvatarPipeline(
        parts["tokenizer"],
        parts["text_encoder"],
        parts["vae"],
        transformer,
        parts["clip_image_encoder"],
        build_scheduler(parts.get("scheduler_kwargs")),
        parts["wav2vec"],
    )
    # One window, as the original validated: the audio of clip_length frames (shorter audio is padded).
    samples = load_audio(audio_path)[: clip_length * AUDIO_SAMPLES_PER_FRAME]
    with contextlib.ExitStack() as stack:
        for module in encoders.modules.values():
            stack.enter_context(on_device(module, device, low_vram))
        generator = torch.Generator(device=device).manual_seed(seed)
        result = pipe(
            image=str(reference_path),
            audio=samples,
            prompt=VALIDATION_PROMPT,
            negative_prompt=NEGATIVE_PROMPT,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            text_guide_scale=VALIDATION_GUIDANCE,
            audio_guide_scale=VALIDATION_GUIDANCE,
            clip_length=clip_length,
            # one window: the overlap never applies, it only has to fit a short --video_sample_n_frames
            overlap_window_length=min(VALIDATION_OVERLAP, (clip_length - 1) // VAE_STRIDE[0]),
            generator=generator,
            output_type="stream",
        )
        frames = (decoded_to_uint8(chunk) for chunk in result.videos)
        written = write_video(output_path, frames, fps=DEFAULT_FPS, audio_path=audio_path, progress=False)
    logger.info("validation video %s (%d frames)", written.path, written.num_frames)
    return written.path


def make_validation_hook(cfg: TrainConfig, encoders: FrozenEncoders) -> Callable[[nn.Module, int], None] | None:
    """The hook for this run, or None (with the reason logged) when the run has no validation."""
    run = cfg.run
    if run.validation_size is None:
        return None
    if not (run.validation_reference_path and run.validation_driven_audio_path):
        logger.warning("no --validation_reference_path/--validation_driven_audio_path: validation is skipped")
        return None
    if not encoders.parts:
        logger.warning("validation is skipped: these frozen encoders carry no pipeline components")
        return None
    if run.mixed_precision == "bf16" and not torch.cuda.is_available():
        # the pipeline runs a bf16 DiT only under CUDA autocast; on the CPU it needs float32
        logger.warning("validation is skipped: --mixed_precision=bf16 on the CPU (the pipeline runs bf16 only on CUDA)")
        return None
    width, height = run.validation_size
    out_dir = Path(cfg.checkpoint.output_dir) / "sample"

    def hook(transformer: nn.Module, step: int) -> None:
        render_validation(
            transformer,
            encoders,
            run.validation_reference_path,
            run.validation_driven_audio_path,
            out_dir / f"sample-{step}.mp4",
            width=width,
            height=height,
            clip_length=cfg.data.video_sample_n_frames,
            num_inference_steps=run.validation_sample_steps,
            seed=run.seed or 0,
            low_vram=run.low_vram,
        )

    return hook
