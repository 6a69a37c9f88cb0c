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

import logging
import sys
from collections.abc import Sequence

# The command line, its checks and the single-video run live beside this module (``main`` hands
# ``--batch_file`` to ``wan.cli.batch``); their names stay importable from here.
from wan.cli.args import (  # noqa: F401
    ATTENTION_BACKENDS,
    CHECKPOINT_HELP,
    DEAD_FLAGS,
    DEFAULT_CONFIG,
    MEMORY_MODES,
    OUTPUT_NAME,
    REPO_ROOT,
    RESOLUTION_MULTIPLE,
    InferenceArgumentError,
    add_solver_and_lora_flags,
    build_parser,
    given_flags,
    parse_args,
)
from wan.cli.generation import ResumePoint, _uint8_chunks, generate, load, resume_fields, resume_point, run  # noqa: F401
from wan.cli.validation import validate, validate_solver_and_loras, validate_speed_flags  # noqa: F401

logger = logging.getLogger("wan.inference")


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
