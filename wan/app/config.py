"""Command line of ``app.py`` and where the checkpoints are.

Checkpoint paths come from, in order: the flags; ``STABLEAVATAR_CHECKPOINTS=DIR`` (a folder in the
original layout, e.g. the one ``python -m wan.testing.tiny_checkpoints DIR`` writes; its
``wan_civitai_tiny.yaml`` is used when present); ``checkpoints/`` of the repository.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS_ENV = "STABLEAVATAR_CHECKPOINTS"
BASE_NAME = "Wan2.1-Fun-V1.1-1.3B-InP"
TRANSFORMER_NAME = Path("StableAvatar-1.3B") / "transformer3d-square.pt"
WAV2VEC_NAME = "wav2vec2-base-960h"
TINY_YAML = "wan_civitai_tiny.yaml"
DEFAULT_YAML = REPO_ROOT / "deepspeed_config" / "wan2.1" / "wan_civitai.yaml"
VOCAL_MODEL = Path("checkpoints") / "Kim_Vocal_2.onnx"

logger = logging.getLogger("wan.app")


@dataclass(frozen=True)
class CheckpointConfig:
    pretrained_model_name_or_path: Path
    transformer_path: Path | None
    pretrained_wav2vec_path: Path
    config_path: Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="app.py",
        description="StableAvatar web app: reference image + audio -> talking-avatar video, in the browser.",
    )
    g = p.add_argument_group("server")
    g.add_argument("--server_name", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the app to your network)")
    g.add_argument("--server_port", type=int, default=7891, help="port (default 7891)")
    g.add_argument("--share", action="store_true", help="also open a public gradio.live link (sends traffic through Gradio's servers)")
    g.add_argument("--mcp_server", action="store_true", help="serve the app as an MCP tool too (needs gradio[mcp]; warned and ignored without it)")
    g.add_argument("--language", choices=("English", "中文"), default="English", help="initial page language, English (default) or 中文; a toggle in the page switches it")
    g.add_argument("--inbrowser", action="store_true", help="open the page in the default browser (the original always did)")

    g = p.add_argument_group(f"models (default: ${CHECKPOINTS_ENV} if set, else checkpoints/)")
    g.add_argument("--pretrained_model_name_or_path", default=None, help=f"Wan2.1-Fun base folder (default <checkpoints>/{BASE_NAME})")
    g.add_argument("--transformer_path", default=None, help=f"StableAvatar DiT weights (default <checkpoints>/{TRANSFORMER_NAME})")
    g.add_argument("--pretrained_wav2vec_path", default=None, help=f"wav2vec2 folder (default <checkpoints>/{WAV2VEC_NAME})")
    g.add_argument("--config_path", default=None, help=f"model yaml (default <checkpoints>/{TINY_YAML} if present, else deepspeed_config/wan2.1/wan_civitai.yaml)")
    g.add_argument("--vocal_separator_model", default=str(VOCAL_MODEL), help=f"Kim_Vocal_2.onnx for the vocal separation tab (default {VOCAL_MODEL})")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--attention_backend", default=None, help="auto (the default: fa3 on Hopper where installed, else SDPA; the released model's maths), sdpa_unmasked, fa3, sdpa, flash2 or flash3; as inference.py")
    g.add_argument("--eager", action="store_true", help="do not torch.compile the DiT (by default it is compiled on one CUDA GPU, cached on disk, as inference.py)")

    g = p.add_argument_group("limits and files")
    g.add_argument(
        "--output_dir", default="outputs", help="results go to <output_dir>/session_<start>_<pid>/<timestamp>_<id>/, one folder per request (default outputs)"
    )
    g.add_argument(
        "--keep_results", type=int, default=20, help="keep the N newest result folders in --output_dir, from any session (default 20; 0 keeps all)"
    )
    g.add_argument("--max_upload_mb", type=float, default=100.0, help="largest upload accepted, in MB (default 100; also enforced by the server)")
    g.add_argument("--max_duration_s", type=float, default=300.0, help="longest audio/video accepted, in seconds (default 300)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.max_upload_mb <= 0 or args.max_duration_s <= 0:
        build_parser().error("--max_upload_mb and --max_duration_s must be positive")
    if args.keep_results < 0:
        build_parser().error("--keep_results must be >= 0 (0 keeps every result)")
    return args


def checkpoint_problems(checkpoints: CheckpointConfig) -> str | None:
    """What is missing or damaged in the checkpoint folders (presence, headers, sizes: well under a
    second), as the message the generation would give; None when all is there."""
    from wan.models.loading import CheckpointError
    from wan.pipelines.loading import checked_checkpoints

    c = checkpoints
    try:
        checked_checkpoints(c.pretrained_model_name_or_path, c.transformer_path, c.pretrained_wav2vec_path, c.config_path)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        return str(err)
    return None


def resolve_checkpoints(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> CheckpointConfig:
    """Checkpoint paths from the flags, then ``$STABLEAVATAR_CHECKPOINTS``, then ``checkpoints/``.
    Nothing is checked here: a missing file is reported in the page when the pipeline first loads."""
    environ = os.environ if environ is None else environ
    root = Path(environ[CHECKPOINTS_ENV]) if environ.get(CHECKPOINTS_ENV) else REPO_ROOT / "checkpoints"
    config = args.config_path
    if config is None:
        config = root / TINY_YAML if (root / TINY_YAML).is_file() else DEFAULT_YAML
    return CheckpointConfig(
        pretrained_model_name_or_path=Path(args.pretrained_model_name_or_path or root / BASE_NAME),
        transformer_path=Path(args.transformer_path) if args.transformer_path else root / TRANSFORMER_NAME,
        pretrained_wav2vec_path=Path(args.pretrained_wav2vec_path or root / WAV2VEC_NAME),
        config_path=Path(config),
    )
