"""``inference.py``'s flags: the original's names and types, our additions, the parser.

``build_parser`` is the one definition of the command line (``--help`` is generated from it);
``parse_args`` also warns about flags the original parsed and never used.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from wan.pipelines.sliding_window import BLEND_SCHEMES

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
