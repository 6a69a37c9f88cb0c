"""One video from the flags: ``load`` the pipeline, ``generate`` the mp4, ``resume_point`` for
``--save_every``/``--resume``; ``run`` chains them for ``inference.py`` without ``--batch_file``.

``wan.cli.batch`` reuses ``load``, ``generate`` and ``resume_point`` for each of its jobs; both it and
``wan.cli.inference.main`` import this module, so neither imports the other.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from wan.cli.args import OUTPUT_NAME

logger = logging.getLogger("wan.inference")


def _uint8_chunks(result: object, chunk_frames: int = 16) -> Iterator:
    """Frames of the pipeline's result as uint8 ``[T, H, W, 3]`` chunks for ``write_video``.

    ``result.videos`` (or ``result`` itself) may be:

    * an iterator (``output_type="stream"``): raw decoder chunks, float ``[1, 3, t, H, W]`` in
      [-1, 1] as ``vae.stream_decode`` yields them, or chunks already in uint8 ``[t, H, W, 3]``;
    * the whole video, tensor or array ``[1, 3, T, H, W]`` in [0, 1] (the original's ``.videos``).

    Both are converted as the original does, ``(x * 255)`` truncated to uint8.
    """
    import numpy as np
    import torch

    from wan.utils.video_io import decoded_to_uint8

    videos = getattr(result, "videos", result)
    if isinstance(videos, np.ndarray):
        videos = torch.from_numpy(videos)
    if isinstance(videos, torch.Tensor):
        if videos.dim() != 5 or videos.shape[:2] != (1, 3):
            raise ValueError(f"pipeline returned videos of shape {tuple(videos.shape)}, expected [1, 3, T, H, W]")
        for t in range(0, videos.shape[2], chunk_frames):
            part = videos[0, :, t : t + chunk_frames].float().cpu().clamp(0, 1)
            yield (part.permute(1, 2, 3, 0) * 255).numpy().astype(np.uint8)
        return
    if isinstance(videos, Iterable):
        for chunk in videos:
            is_float = isinstance(chunk, torch.Tensor) and chunk.is_floating_point()
            yield decoded_to_uint8(chunk) if is_float else chunk
        return
    raise TypeError(f"cannot write a pipeline result of type {type(result).__name__}")


def resume_fields(args: argparse.Namespace) -> dict[str, object]:
    """What determines a run's numbers (the resume fingerprint): input contents, sampling flags,
    TeaCache flags, weight files. Not the memory mode, the device or the output options."""
    from wan.models.lora import LoraSpec
    from wan.runtime.resume import file_digest, file_identity

    numbers = (
        "prompt", "width", "height", "seed", "sample_steps", "sample_text_guide_scale", "sample_audio_guide_scale",
        "clip_sample_n_frames", "overlap_window_length", "overlapping_weight_scheme", "attention_backend", "last_window_true_length",
        "enable_teacache", "ulysses_degree", "ring_degree",
    )  # fmt: skip
    fields: dict[str, object] = {name: getattr(args, name) for name in numbers}
    if args.fast:
        fields["fast"] = True  # FP8: other numbers (absent when off, so older states still resume)
    if args.enable_teacache:
        fields.update(teacache_threshold=args.teacache_threshold, num_skip_start_steps=args.num_skip_start_steps)
    if args.sample_solver != "euler" or args.sample_shift is not None or args.lora_path:  # absent by default: older states stay valid
        fields.update(sample_solver=args.sample_solver, sample_shift=args.sample_shift, lora_no_merge=args.lora_no_merge)
        fields["lora_path"] = [[text, file_identity(LoraSpec.parse(text).path)] for text in args.lora_path]
    fields["reference_image_sha256"] = file_digest(args.validation_reference_path)
    fields["driving_audio_sha256"] = file_digest(args.validation_driven_audio_path)
    for flag in ("pretrained_model_name_or_path", "transformer_path", "pretrained_wav2vec_path", "config_path"):
        fields[flag] = file_identity(getattr(args, flag))
    return fields


@dataclass
class ResumePoint:
    """Where a run starts (``start_step``, ``latents``: from a saved state, else 0 and None) and the
    step saver that keeps it resumable (None with ``--save_every 0`` or on a rank that does not write)."""

    state_path: Path
    start_step: int = 0
    latents: object = None
    saver: object = None


def resume_point(args: argparse.Namespace, state_path: Path, writer: bool) -> ResumePoint:
    """Read ``state_path`` for ``--resume`` (raises ``ResumeMismatchError`` when it belongs to another
    run) and make the step saver. Cheap: called before any model loads."""
    from wan.runtime.resume import StepSaver, check_compatible, load_state

    point = ResumePoint(state_path)
    fields = resume_fields(args)
    if args.resume and state_path.is_file():
        state = load_state(state_path)
        check_compatible(state, fields, args.GPU_memory_mode, state_path)
        point.start_step, point.latents = state.steps_done, state.latents
        logger.info("resuming from %s: %d of %d steps done", state_path, point.start_step, args.sample_steps)
    elif args.resume:
        logger.warning("--resume: no saved state at %s; starting from step 0", state_path)
    elif state_path.is_file() and args.save_every > 0:
        logger.warning("%s holds a saved run and will be overwritten; pass --resume to continue it instead", state_path)
    if args.save_every > 0 and writer:
        point.saver = StepSaver(state_path, args.save_every, args.sample_steps, args.seed, args.GPU_memory_mode, fields)
    return point


def load(args: argparse.Namespace, ranks_per_job: int | None = None):
    """The pipeline for these flags (``ranks_per_job``: processes that share one video, None = all)."""
    try:
        from wan.pipelines import load_pipeline
    except ImportError as err:
        raise SystemExit(
            f"inference.py: pipeline not available in this checkout ({err}); wan.pipelines.load_pipeline is required"
        ) from None
    import torch

    return load_pipeline(
        args.pretrained_model_name_or_path,
        transformer_path=args.transformer_path,
        wav2vec_path=args.pretrained_wav2vec_path,
        config_path=args.config_path,
        memory_mode=args.GPU_memory_mode,
        attention_backend=args.attention_backend,
        compile_transformer=args.compile,
        compile_cache_dir=args.compile_cache_dir,
        fast=args.fast,
        vae_dtype=getattr(torch, args.vae_dtype),
        sdpa_kernel=args.sdpa_kernel,
        device=args.device,
        ulysses_degree=args.ulysses_degree,
        ring_degree=args.ring_degree,
        fsdp_dit=args.fsdp_dit,
        teacache_threshold=args.teacache_threshold if args.enable_teacache else None,
        teacache_skip_start_steps=args.num_skip_start_steps,
        teacache_offload=args.teacache_offload,
        ranks_per_job=ranks_per_job,
        loras=args.lora_path,
        lora_merge=not args.lora_no_merge,
    )


def generate(pipe, args: argparse.Namespace, video_path: Path, resume: ResumePoint, writer: bool):
    """One video with a loaded pipeline: ``video_path`` (mp4 with the audio, atomic) on the writing
    rank, returns its ``WrittenVideo`` there and None elsewhere. Out of GPU memory raises
    ``GPUOutOfMemoryError`` naming the memory mode to try next (the saved state is kept)."""
    import torch

    from wan.constants import DEFAULT_FPS, NEGATIVE_PROMPT
    from wan.runtime.memory import GPUOutOfMemoryError, oom_advice
    from wan.utils.video_io import remove_stale_temp_files, write_video

    if writer:  # a write killed earlier left its temporary mp4: nothing can resume it
        remove_stale_temp_files(video_path)
    generator = torch.Generator(device=getattr(pipe, "device", "cpu")).manual_seed(args.seed)
    try:
        result = pipe(
            prompt=args.prompt,
            negative_prompt=NEGATIVE_PROMPT,
            image=args.validation_reference_path,
            audio=args.validation_driven_audio_path,
            height=args.height,
            width=args.width,
            num_inference_steps=args.sample_steps,
            text_guide_scale=args.sample_text_guide_scale,
            audio_guide_scale=args.sample_audio_guide_scale,
            clip_length=args.clip_sample_n_frames,
            overlap_window_length=args.overlap_window_length,
            overlapping_weight_scheme=args.overlapping_weight_scheme,
            last_window_true_length=args.last_window_true_length,
            generator=generator,
            output_type="stream",  # decoded chunk by chunk while the mp4 is written
            latents=resume.latents,
            start_step=resume.start_step,
            callback_on_step_end=resume.saver,
            sample_solver=args.sample_solver,
            sample_shift=args.sample_shift,
        )
        if not writer:
            return None
        final = getattr(result, "latents", None)  # [1, 16, T, h, w]: the video has 1 + 4 (T - 1) frames
        written = write_video(
            video_path,
            _uint8_chunks(result),
            fps=DEFAULT_FPS,
            audio_path=args.validation_driven_audio_path,
            save_intermediate=args.save_intermediate,
            total_frames=1 + 4 * (final.shape[2] - 1) if final is not None else None,
        )
    except torch.cuda.OutOfMemoryError as err:  # the saved state (if any) is kept for --resume
        kept = str(resume.state_path) if resume.saver is not None and resume.state_path.is_file() else None
        raise GPUOutOfMemoryError(oom_advice(args.GPU_memory_mode, kept)) from err
    logger.info("wrote %s (%d frames, %.2f s)", written.path, written.num_frames, written.duration)
    if resume.saver is not None:
        resume.state_path.unlink(missing_ok=True)  # the video is written: the run is no longer resumable
    return written


def run(args: argparse.Namespace) -> Path | None:
    """Load the pipeline, generate, write ``<output_dir>/video_with_audio.mp4``; returns its path on rank 0.

    With ``--save_every N`` the latents are saved every N steps; ``--resume`` continues from them
    (the saved state is checked before any model loads: a mismatch fails in a second)."""
    from wan.runtime.resume import STATE_FILE

    writer = int(os.environ.get("RANK", "0")) == 0  # sequence parallel: every rank generates, rank 0 writes
    resume = resume_point(args, Path(args.output_dir) / STATE_FILE, writer)
    written = generate(load(args), args, Path(args.output_dir) / OUTPUT_NAME, resume, writer)
    return None if written is None else written.path
