"""``inference.py``: reference image + driving audio -> talking-avatar mp4 with the audio muxed in.

Single GPU (what ``inference.sh`` runs)::

    python inference.py --config_path=deepspeed_config/wan2.1/wan_civitai.yaml \\
        --pretrained_model_name_or_path=checkpoints/Wan2.1-Fun-V1.1-1.3B-InP \\
        --transformer_path=checkpoints/StableAvatar-1.3B/transformer3d-square.pt \\
        --pretrained_wav2vec_path=checkpoints/wav2vec2-base-960h \\
        --validation_reference_path=examples/case-1/reference.png \\
        --validation_driven_audio_path=examples/case-1/audio.wav \\
        --output_dir=output_infer --validation_prompts="A woman is speaking ..." \\
        --sample_steps=50 --overlap_window_length=5 --sample_text_guide_scale=3.0 --sample_audio_guide_scale=5.0

Several GPUs (sequence parallel): ``torchrun --nproc_per_node=4 inference.py ... --ulysses_degree=2 --ring_degree=2``.

Every flag of the original ``inference.py`` keeps its name and type. Differences: ``--seed`` and
``--sample_steps`` have defaults (42, 50) instead of crashing when omitted; flags the original
parsed but never used are accepted with a warning; inputs are checked before any model loads;
the result is ``<output_dir>/video_with_audio.mp4`` (audio muxed, no manual ffmpeg step), and
``--save_intermediate`` also writes the original's ``video_without_audio.mp4`` plus ``cropped_audio.wav``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av

from wan.pipelines.sliding_window import BLEND_SCHEMES, frames_per_window, validate_overlap

logger = logging.getLogger("wan.inference")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "deepspeed_config" / "wan2.1" / "wan_civitai.yaml"
OUTPUT_NAME = "video_with_audio.mp4"
MEMORY_MODES = ("model_full_load", "sequential_cpu_offload", "model_cpu_offload_and_qfloat8", "model_cpu_offload")
ATTENTION_BACKENDS = ("auto", "sdpa_unmasked", "fa3", "sdpa", "flash2", "flash3")
RESOLUTION_MULTIPLE = 16  # VAE stride 8 x DiT patch 2
CHECKPOINT_HELP = "see checkpoints/README.md for what to download and where to put it"

# Flags the original parses and never reads: accepted, warned about when given.
DEAD_FLAGS: dict[str, str] = {
    "input_perturbation": "a training option; inference never used it",
    "revision": "the models are read from local folders",
    "variant": "the models are read from local folders",
    "offload_model": "use --GPU_memory_mode instead",
    "t5_fsdp": "the original never sharded T5",
    "t5_cpu": "the original never moved T5 to the CPU; use --GPU_memory_mode",
    "motion_frame": "the long-video pipeline never read it",
}


class InferenceArgumentError(ValueError):
    """An inference flag or input file is wrong; the message says which and how to fix it."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" only where there is a value to show: a ``None`` default is
    explained in the flag's own help when it means something."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inference.py",
        description="StableAvatar: animate a reference image with a driving audio track (any length, sliding windows).",
        formatter_class=_HelpFormatter,
    )
    g = p.add_argument_group("models")
    g.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help=f"Wan2.1-Fun-V1.1-1.3B-InP folder (T5, VAE, CLIP, base DiT); {CHECKPOINT_HELP}",
    )
    g.add_argument(
        "--transformer_path",
        type=str,
        default=None,
        help="StableAvatar DiT weights (.pt/.safetensors) loaded over the base DiT, e.g. "
        "checkpoints/StableAvatar-1.3B/transformer3d-square.pt; without it the audio modules are untrained",
    )
    g.add_argument("--pretrained_wav2vec_path", type=str, default=None, help="wav2vec2-base-960h folder (audio features)")
    g.add_argument("--config_path", type=str, default=None, help=f"model/scheduler yaml; default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)}")

    g = p.add_argument_group("inputs and output")
    g.add_argument(
        "--validation_reference_path",
        type=str,
        default=None,
        help="reference image (png/jpg; alpha is dropped); resized to --width x --height without keeping the aspect ratio",
    )
    g.add_argument(
        "--validation_driven_audio_path",
        type=str,
        default=None,
        help="driving audio (wav/mp3/...); its length sets the video length (25 fps)",
    )
    g.add_argument(
        "--validation_prompts",
        type=str,
        nargs="+",
        default="The protagonist is singing",
        help="text prompt describing the person and scene (quote it: several words are joined into one prompt)",
    )
    g.add_argument("--output_dir", type=str, default=None, help=f"output folder; the result is <output_dir>/{OUTPUT_NAME}")
    g.add_argument(
        "--save_intermediate",
        action="store_true",
        help="also write the original's video_without_audio.mp4 and cropped_audio.wav (audio cut to the video)",
    )

    g = p.add_argument_group("sampling")
    g.add_argument("--width", type=int, default=512, help="video width in pixels, a multiple of 16")
    g.add_argument("--height", type=int, default=512, help="video height in pixels, a multiple of 16")
    g.add_argument("--seed", type=int, default=42, help="seed of the initial noise (the original had no default)")
    g.add_argument("--sample_steps", type=int, default=50, help="denoising steps (the original had no default)")
    g.add_argument("--sample_text_guide_scale", type=float, default=5.0, help="text guidance scale (3-6 recommended)")
    g.add_argument("--sample_audio_guide_scale", type=float, default=4.0, help="audio guidance scale (3-6 recommended)")
    g.add_argument(
        "--clip_sample_n_frames", type=int, default=81, help="video frames per sliding window, 4k+1 (81 -> 21 latent frames per window)"
    )
    g.add_argument(
        "--overlap_window_length",
        type=int,
        default=10,
        help="latent frames shared by consecutive windows, 0 <= overlap < frames per window (5-10 typical)",
    )
    g.add_argument(
        "--overlapping_weight_scheme",
        type=str,
        default="uniform",
        choices=BLEND_SCHEMES,
        help="blend of the shared frames: linear ramp (uniform) or log ramp (log)",
    )

    add_solver_and_lora_flags(p)

    g = p.add_argument_group("speed and memory")
    g.add_argument(
        "--GPU_memory_mode",
        type=str,
        default="model_full_load",
        choices=MEMORY_MODES,
        help="model_full_load: everything on the GPU; model_cpu_offload: one model at a time; "
        "model_cpu_offload_and_qfloat8: + fp8 DiT weights; sequential_cpu_offload: lowest memory, slowest",
    )
    g.add_argument(
        "--attention_backend",
        type=str,
        default="auto",
        choices=ATTENTION_BACKENDS,
        help="auto: FlashAttention-3 (fa3) on a Hopper GPU where installed, else PyTorch SDPA (cuDNN first); "
        "auto, fa3 and sdpa_unmasked are the original's maths (padding attended); sdpa/flash2/flash3 mask "
        "padding and are NOT the released model's outputs",
    )
    g.add_argument("--device", type=str, default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    g.add_argument(
        "--compile",
        dest="compile",
        action="store_const",
        const=True,
        default=None,
        help="regional torch.compile of the DiT blocks (same maths, bf16 rounding may differ slightly). "
        "Default: on for one CUDA GPU with --GPU_memory_mode model_full_load/model_cpu_offload; compiled once per "
        "machine and cached in --compile_cache_dir",
    )
    g.add_argument("--eager", dest="compile", action="store_const", const=False, help="never compile (the eager DiT)")
    g.add_argument(
        "--compile_cache_dir",
        type=str,
        default=None,
        help="where compiled kernels are kept between runs (default: $STABLEAVATAR_COMPILE_CACHE or "
        "~/.cache/stableavatar/torch_compile)",
    )
    g.add_argument(
        "--fast",
        action="store_true",
        help="FP8 (e4m3) matmuls (torchao) and FP8 attention (FlashAttention-3) in the DiT: faster on Ada/Hopper GPUs, "
        "NOT the original's numbers (error in BENCHMARKS.md); needs --GPU_memory_mode model_full_load",
    )
    g.add_argument(
        "--vae_dtype",
        type=str,
        default="float32",
        choices=("float32", "bfloat16"),
        help="VAE precision: float32 as the original; bfloat16 decodes in about 2/3 of the time with half the memory "
        "(frames differ by bf16 rounding)",
    )
    g.add_argument(
        "--last_window_true_length",
        action="store_true",
        help="run the shorter last window at its own length instead of padded to a full window: less work, audio "
        "slots aligned to its frames; NOT the original's output for the last window's frames",
    )
    g.add_argument(
        "--sdpa_kernel",
        type=str,
        default="auto",
        choices=("auto", "cudnn", "flash", "efficient", "math"),
        help="which PyTorch attention kernel to prefer for the sdpa backends (auto: PyTorch decides; cuDNN on H100)",
    )
    g.add_argument("--enable_teacache", action="store_true", help="skip DiT calls whose input barely changed (TeaCache)")
    g.add_argument("--teacache_threshold", type=float, default=0.10, help="TeaCache relative-L1 threshold (higher = faster, worse)")
    g.add_argument("--num_skip_start_steps", type=int, default=5, help="TeaCache: DiT calls always computed at the start")
    g.add_argument("--teacache_offload", action="store_true", help="TeaCache: keep the cached residuals on the CPU")
    g.add_argument(
        "--save_every",
        type=int,
        default=1,
        help="save the latents to <output_dir>/resume_state.safetensors every N denoising steps (and after the last); 0: never",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from <output_dir>/resume_state.safetensors (same flags and inputs required; "
        "--GPU_memory_mode may change)",
    )

    g = p.add_argument_group("multi-GPU (launch with torchrun; ulysses x ring = number of processes)")
    g.add_argument("--ulysses_degree", type=int, default=1, help="Ulysses sequence-parallel degree of the DiT")
    g.add_argument("--ring_degree", type=int, default=1, help="ring-attention sequence-parallel degree of the DiT")
    g.add_argument("--fsdp_dit", action="store_true", help="shard the DiT weights with FSDP (multi-GPU only)")

    g = p.add_argument_group("many videos (docs/batch.md)")
    g.add_argument(
        "--batch_file",
        type=str,
        default=None,
        help="a .jsonl or .csv with one video per line (reference, audio, prompt, output_name, ...): the models load once, "
        "under torchrun the jobs are shared out; every other flag applies to all jobs",
    )
    g.add_argument(
        "--gpus_per_job",
        type=int,
        default=None,
        help="--batch_file under torchrun: processes that make one video together (default ulysses x ring; a multiple "
        "of it spreads each video's windows over the extra groups)",
    )

    g = p.add_argument_group("accepted for compatibility, ignored (a warning says so)")
    g.add_argument("--input_perturbation", type=float, default=0, help=DEAD_FLAGS["input_perturbation"])
    g.add_argument("--revision", type=str, default=None, help=DEAD_FLAGS["revision"])
    g.add_argument("--variant", type=str, default=None, help=DEAD_FLAGS["variant"])
    g.add_argument("--offload_model", action="store_true", help=DEAD_FLAGS["offload_model"])
    g.add_argument("--t5_fsdp", action="store_true", help=DEAD_FLAGS["t5_fsdp"])
    g.add_argument("--t5_cpu", action="store_true", help=DEAD_FLAGS["t5_cpu"])
    g.add_argument("--motion_frame", type=int, default=25, help=DEAD_FLAGS["motion_frame"])
    return p


def add_solver_and_lora_flags(p: argparse.ArgumentParser) -> None:
    """--sample_solver, --sample_shift, --lora_path, --lora_no_merge (wan.pipelines.solvers, wan.models.lora)."""
    from wan.pipelines.solvers import SOLVERS

    g = p.add_argument_group("solver and LoRA (docs/inference.md)")
    g.add_argument(
        "--sample_solver",
        type=str,
        default="euler",
        choices=SOLVERS,
        help="euler: the original's Euler step (its exact numbers); unipc / dpm++: diffusers' multistep solvers for flow "
        "matching, closer to the 50-step result at 10-20 steps (one solver state per window)",
    )
    g.add_argument(
        "--sample_shift",
        type=float,
        default=None,
        help="flow shift of the sigma schedule (default: scheduler_kwargs.shift of --config_path, 5.0)",
    )
    g.add_argument(
        "--lora_path",
        type=str,
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="LoRA file for the DiT, optionally with a scale (default 1); repeat for several (their deltas add). Reads our "
        "training output and the diffusers/peft, kohya and ComfyUI key styles",
    )
    g.add_argument(
        "--lora_no_merge", action="store_true", help="keep LoRAs as peft hooks instead of merging them into the weights (slower per step)"
    )


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


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations of the options present in ``argv`` (``--flag``, ``--flag=value`` or an
    abbreviation argparse accepted), so that a dead flag given at its default still warns."""
    options = {opt: action.dest for action in parser._actions for opt in action.option_strings}
    given = set()
    for token in argv:
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        matches = [dest for opt, dest in options.items() if opt == name] or [dest for opt, dest in options.items() if opt.startswith(name)]
        if len(set(matches)) == 1:
            given.add(matches[0])
    return given


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``), warn about ignored flags, normalise the prompt."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in sorted(given_flags(parser, argv) & DEAD_FLAGS.keys()):
        logger.warning("--%s is accepted for compatibility and ignored: %s", name, DEAD_FLAGS[name])
    prompts = args.validation_prompts
    if isinstance(prompts, list):
        if len(prompts) > 1:
            logger.warning("--validation_prompts got %d strings; they are joined into one prompt (quote the prompt)", len(prompts))
        prompts = " ".join(prompts)
    args.prompt = prompts
    return args


# ---------------------------------------------------------------------------------------------
# Validation (before any model loads)
# ---------------------------------------------------------------------------------------------


def _require_file(value: str | None, flag: str, what: str) -> Path:
    if not value:
        raise InferenceArgumentError(f"{flag} is required: the {what}")
    path = Path(value)
    if not path.is_file():
        raise InferenceArgumentError(f"{flag}: {what} not found: {path}")
    return path


def _require_dir(value: str | None, flag: str, what: str) -> Path:
    if not value:
        raise InferenceArgumentError(f"{flag} is required: the {what} ({CHECKPOINT_HELP})")
    path = Path(value)
    if not path.is_dir():
        raise InferenceArgumentError(f"{flag}: {what} not found: {path} ({CHECKPOINT_HELP})")
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
    _require_dir(args.pretrained_model_name_or_path, "--pretrained_model_name_or_path", "Wan2.1-Fun base model folder")
    _require_dir(args.pretrained_wav2vec_path, "--pretrained_wav2vec_path", "wav2vec2 folder")
    if args.transformer_path is not None and not Path(args.transformer_path).is_file():
        raise InferenceArgumentError(f"--transformer_path: StableAvatar weights not found: {args.transformer_path} ({CHECKPOINT_HELP})")
    if args.config_path is None:
        args.config_path = str(DEFAULT_CONFIG)
    _require_file(args.config_path, "--config_path", "model config yaml (deepspeed_config/wan2.1/wan_civitai.yaml)")
    image = _require_file(args.validation_reference_path, "--validation_reference_path", "reference image")
    try:
        from PIL import Image

        with Image.open(image) as img:
            img.verify()
            image_size = img.size
    except Exception as err:
        raise InferenceArgumentError(f"--validation_reference_path: cannot read image {image}: {err}") from None
    audio = _require_file(args.validation_driven_audio_path, "--validation_driven_audio_path", "driving audio")
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


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


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


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.batch_file is not None:
        from wan.cli.batch import run_batch

        return run_batch(args)
    try:
        validate(args)
    except InferenceArgumentError as err:
        print(f"inference.py: error: {err}", file=sys.stderr)
        return 2
    from wan.models.loading import CheckpointError
    from wan.runtime.memory import GPUOutOfMemoryError
    from wan.runtime.resume import ResumeMismatchError

    try:
        path = run(args)
    except (ResumeMismatchError, CheckpointError) as err:
        print(f"inference.py: error: {err}", file=sys.stderr)
        return 2
    except GPUOutOfMemoryError as err:
        print(f"inference.py: error: {err}", file=sys.stderr)
        return 3
    if path is not None:
        print(path)
    return 0
