"""``validate()``: every flag and input file of ``inference.py`` checked before any model loads.

Each problem raises ``InferenceArgumentError`` with the message the user sees (exit 2), naming the
flag or file and the fix. ``wan.cli.preflight`` holds the checks that read files or the disk.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from wan.cli.args import CHECKPOINT_HELP, DEFAULT_CONFIG, RESOLUTION_MULTIPLE, InferenceArgumentError
from wan.pipelines.sliding_window import frames_per_window, validate_overlap

logger = logging.getLogger("wan.inference")


def validate_solver_and_loras(args: argparse.Namespace) -> None:
    """Raise ``InferenceArgumentError`` for an unknown solver (a batch line may set one), a non-positive
    shift or a LoRA file that is not there."""
    from wan.models.lora import LoraSpec
    from wan.pipelines.solvers import SOLVERS

    if args.sample_solver not in SOLVERS:
        raise InferenceArgumentError(f"sample_solver={args.sample_solver!r} must be one of {', '.join(SOLVERS)}")

    if args.sample_shift is not None and args.sample_shift <= 0:
        raise InferenceArgumentError(f"--sample_shift={args.sample_shift} must be > 0 (Wan2.1 uses 3.0 at 480p, 5.0 at 720p)")
    for text in args.lora_path:
        spec = LoraSpec.parse(text)
        if not spec.path.is_file():
            raise InferenceArgumentError(f"--lora_path: LoRA file not found: {spec.path} (write PATH or PATH:SCALE)")




def _require_path(value: str | None, flag: str, what: str, folder: bool = False) -> Path:
    """``value`` as a Path that exists (a folder with ``folder``), else an error naming ``flag``;
    a missing checkpoint folder also says where the checkpoints come from."""
    hint = f" ({CHECKPOINT_HELP})" if folder else ""
    if not value:
        raise InferenceArgumentError(f"{flag} is required: the {what}{hint}")
    path = Path(value)
    if not (path.is_dir() if folder else path.is_file()):
        raise InferenceArgumentError(f"{flag}: {what} not found: {path}{hint}")
    return path


def validate_speed_flags(args: argparse.Namespace) -> None:
    """--fast, --compile and the compile cache: checked before any model loads."""
    import torch

    if args.fast and args.GPU_memory_mode != "model_full_load":
        raise InferenceArgumentError(f"--fast quantises the DiT on the GPU: use it with --GPU_memory_mode model_full_load, not {args.GPU_memory_mode}")
    if args.fast and args.compile is False:
        logger.warning("--fast with --eager: FP8 matmuls are slower than bf16 without torch.compile (the quantisation is not fused)")
    if args.compile or (args.compile is None and torch.cuda.is_available()):
        from wan.runtime.compile_cache import check_compile_cache_dir

        try:
            check_compile_cache_dir(args.compile_cache_dir)
        except ValueError as err:
            if args.compile:
                raise InferenceArgumentError(str(err)) from None
            logger.warning("%s; compiling without a persistent cache", err)


def validate(args: argparse.Namespace, check_checkpoints: bool = True) -> None:
    """Check every flag and input file; raise ``InferenceArgumentError`` naming the first problem.

    With ``check_checkpoints`` every weight file in the model folders is checked too
    (``wan.pipelines.checkpoints``: presence, headers, sizes), listing all that are missing or
    damaged with their download commands. Fills ``args.config_path`` with the repository default
    when it was not given.
    """
    # 1. Sizes and sampling numbers.
    for flag in ("width", "height"):
        value = getattr(args, flag)
        if value <= 0 or value % RESOLUTION_MULTIPLE:
            raise InferenceArgumentError(
                f"--{flag}={value} must be a positive multiple of {RESOLUTION_MULTIPLE} "
                f"(e.g. {max(RESOLUTION_MULTIPLE, round(value / RESOLUTION_MULTIPLE) * RESOLUTION_MULTIPLE)})"
            )
    n = args.clip_sample_n_frames
    if n < 1 or (n - 1) % 4:
        raise InferenceArgumentError(f"--clip_sample_n_frames={n} must be 4k+1 (e.g. 81, 77, 85): the VAE compresses 4 frames into one")
    try:
        validate_overlap(args.overlap_window_length, frames_per_window(n))
    except ValueError as err:
        raise InferenceArgumentError(str(err)) from None
    if args.sample_steps < 1:
        raise InferenceArgumentError(f"--sample_steps={args.sample_steps} must be >= 1")
    validate_solver_and_loras(args)
    if args.save_every < 0:
        raise InferenceArgumentError(f"--save_every={args.save_every} must be >= 0 (0 turns saving off)")
    if args.teacache_threshold < 0 or args.num_skip_start_steps < 0:
        raise InferenceArgumentError("--teacache_threshold and --num_skip_start_steps must be >= 0")
    validate_speed_flags(args)
    if args.ulysses_degree < 1 or args.ring_degree < 1:
        raise InferenceArgumentError("--ulysses_degree and --ring_degree must be >= 1")
    degree = args.ulysses_degree * args.ring_degree
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if degree > 1 and world != degree and args.batch_file is None:  # batch: checked by wan.cli.batch
        raise InferenceArgumentError(
            f"--ulysses_degree x --ring_degree = {degree} but {world} process(es) run; "
            f"launch with: torchrun --nproc_per_node={degree} inference.py ..."
        )
    if args.fsdp_dit and degree == 1:
        raise InferenceArgumentError("--fsdp_dit needs several GPUs (--ulysses_degree/--ring_degree > 1 under torchrun)")
    if args.device is not None:
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError as err:
            raise InferenceArgumentError(f"--device={args.device!r} is not a torch device: {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InferenceArgumentError(f"--device={args.device} but CUDA is not available here; use --device=cpu")

    # 2. Files.
    _require_path(args.pretrained_model_name_or_path, "--pretrained_model_name_or_path", "Wan2.1-Fun base model folder", folder=True)
    _require_path(args.pretrained_wav2vec_path, "--pretrained_wav2vec_path", "wav2vec2 folder", folder=True)
    if args.transformer_path is not None and not Path(args.transformer_path).is_file():
        raise InferenceArgumentError(f"--transformer_path: StableAvatar weights not found: {args.transformer_path} ({CHECKPOINT_HELP})")
    if args.config_path is None:
        args.config_path = str(DEFAULT_CONFIG)
    _require_path(args.config_path, "--config_path", "model config yaml (deepspeed_config/wan2.1/wan_civitai.yaml)")
    image = _require_path(args.validation_reference_path, "--validation_reference_path", "reference image")
    try:
        from PIL import Image

        with Image.open(image) as img:
            img.verify()
            image_size = img.size
    except Exception as err:
        raise InferenceArgumentError(f"--validation_reference_path: cannot read image {image}: {err}") from None
    audio = _require_path(args.validation_driven_audio_path, "--validation_driven_audio_path", "driving audio")
    import av  # PyAV: the same demuxer the mp4 writer uses

    try:
        with av.open(str(audio)) as container:
            if not container.streams.audio:
                raise InferenceArgumentError(f"--validation_driven_audio_path: {audio} has no audio stream")
    except av.error.FFmpegError as err:
        raise InferenceArgumentError(f"--validation_driven_audio_path: cannot read audio {audio}: {err}") from None
    if not args.output_dir:
        raise InferenceArgumentError("--output_dir is required: the folder that receives the video")

    # 3. What would otherwise fail after the models loaded: silent audio, an output folder that
    #    cannot take the video (see wan.cli.preflight).
    from wan.cli import preflight

    preflight.warn_upscale(image_size, args.width, args.height, image)
    try:
        try:
            num_frames = preflight.check_audio(audio)
        except ValueError as err:
            raise ValueError(f"--validation_driven_audio_path: {err}") from None
        need = preflight.output_bytes(num_frames, args.width, args.height, args.save_intermediate, args.save_every)
        preflight.check_output_dir(args.output_dir, need)
    except ValueError as err:
        raise InferenceArgumentError(str(err)) from None

    # 4. Every weight file (last: the slowest check, and the flags above name simpler mistakes).
    if check_checkpoints:  # presence, headers, sizes, then keys and shapes on the meta device (no weight is read)
        from wan.models.loading import CheckpointError
        from wan.pipelines.loading import checked_checkpoints

        try:
            checked_checkpoints(
                args.pretrained_model_name_or_path, args.transformer_path, args.pretrained_wav2vec_path, args.config_path, contents=True
            )
        except CheckpointError as err:
            raise InferenceArgumentError(str(err)) from None
