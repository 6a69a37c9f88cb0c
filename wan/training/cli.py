"""The one command line of train_1B_square.py, train_1B_vec_rec.py (= train_1B_rec_vec.py) and train_14B.py.

Every flag name of the original scripts is accepted. Flags they parsed but never used are
accepted too and warned about when set. New here: ``--lora`` (LoRA on the same trainer, instead
of the separate ``*_lora.py`` scripts) and ``--deepspeed_config`` (DeepSpeed without an accelerate
config file, e.g. under torchrun).

    accelerate launch train_1B_square.py --pretrained_model_name_or_path=checkpoints/Wan2.1-Fun-V1.1-1.3B-InP \\
        --pretrained_wav2vec_path=checkpoints/wav2vec2-base-960h --train_data_square_dir=talking_face_data/video_square_path.txt \\
        --video_sample_n_frames=81 --train_batch_size=1 --gradient_checkpointing --mixed_precision=bf16 ...
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from .config import TRAIN_PRESETS, TrainConfig

logger = logging.getLogger(__name__)

# Parsed by the original scripts but never read: name -> default (a warning names any that is set).
UNUSED_FLAGS: dict[str, object] = {
    "input_perturbation": 0.0,
    "revision": None,
    "variant": None,
    "max_train_samples": None,
    "validation_prompts": None,
    "cache_dir": None,
    "random_flip": False,
    "use_ema": False,
    "non_ema_revision": None,
    "push_to_hub": False,
    "hub_token": None,
    "prediction_type": None,
    "hub_model_id": None,
    "noise_offset": 0.0,
    "validation_epochs": 5,
    "tracker_project_name": "text2image-fine-tune",
    "train_text_encoder": False,
    "snr_loss": False,
    "enable_text_encoder_in_dataloader": False,
    "random_ratio_crop": False,
    "random_frame_crop": False,
    "random_hw_adapt": False,
    "noise_share_in_frames": False,
    "noise_share_in_frames_ratio": 0.5,
    "keep_all_node_same_token_length": False,
    "video_repeat": 0,
    "image_repeat_in_forward": 0,
    "vae_path": None,
    "save_state": False,
    "vocal_window_size": 5,
    "pretrained_musicfm_stat_path": None,
    "pretrained_musicfm_model_path": None,
    "train_data_dir": None,
    "multi_stream": False,
    "local_rank": -1,
}


def _bucket_size(text: str) -> tuple[str, int, int]:
    """``square=256x256`` -> ("square", 256, 256); sizes must be multiples of 16 (VAE x DiT patch)."""
    try:
        name, size = text.split("=")
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bucket_size {text!r}: expected NAME=WxH, e.g. square=256x256") from None
    if width <= 0 or height <= 0 or width % 16 or height % 16:
        raise argparse.ArgumentTypeError(f"--bucket_size {text!r}: width and height must be positive multiples of 16")
    return name, width, height


def build_parser(preset: str) -> argparse.ArgumentParser:
    """The parser; defaults are the original scripts' argparse defaults (the launchers override most)."""
    p = argparse.ArgumentParser(description=f"StableAvatar training ({preset}). Flags keep the original names.")

    g = p.add_argument_group("models")
    g.add_argument("--pretrained_model_name_or_path", type=str, default=None, help="Wan base folder (required)")
    g.add_argument("--config_path", type=str, default=None, help="deepspeed_config/wan2.1/wan_civitai.yaml")
    g.add_argument("--transformer_path", type=str, default=None, help="StableAvatar transformer3d-*.pt to fine-tune from")
    g.add_argument("--pretrained_wav2vec_path", type=str, default=None, help="wav2vec2-base-960h folder")
    g.add_argument("--tokenizer_max_length", type=int, default=226)
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--lora", action="store_true", help="train LoRA adapters (+ the audio modules) instead of all blocks")
    g.add_argument("--rank", type=int, default=128, help="LoRA rank")
    g.add_argument("--network_alpha", type=float, default=64, help="LoRA alpha (scale = alpha / rank)")

    g = p.add_argument_group("data")
    for b in ("rec", "square", "vec"):
        g.add_argument(f"--train_data_{b}_dir", type=str, default=None, help=f"video_{b}_path.txt: one clip folder per line")
    g.add_argument("--video_sample_n_frames", type=int, default=17)
    g.add_argument("--train_batch_size", type=int, default=16, help="per process (launchers: 1)")
    g.add_argument("--dataloader_num_workers", type=int, default=0)
    g.add_argument("--vae_mini_batch", type=int, default=32)
    g.add_argument(
        "--bucket_size", type=_bucket_size, action="append", default=[], metavar="NAME=WxH",
        help="override a preset bucket's resolution, e.g. square=256x256 (repeatable; the validation video follows "
        "its bucket). The original hard-coded them: square 512x512, rec 832x480, vec 480x832",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--learning_rate", type=float, default=1e-4)
    g.add_argument("--scale_lr", action="store_true", default=False)
    g.add_argument("--lr_scheduler", type=str, default="constant")
    g.add_argument("--lr_warmup_steps", type=int, default=500)
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=1e-2)
    g.add_argument("--adam_epsilon", type=float, default=1e-08)
    g.add_argument("--use_8bit_adam", action="store_true")
    g.add_argument("--use_came", action="store_true")
    g.add_argument("--allow_tf32", action="store_true")
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--initial_grad_norm_ratio", type=int, default=5)
    g.add_argument("--abnormal_norm_clip_start", type=int, default=1000)
    g.add_argument("--num_train_epochs", type=int, default=100)
    g.add_argument("--max_train_steps", type=int, default=None)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)

    g = p.add_argument_group("objective")
    g.add_argument("--train_sampling_steps", type=int, default=1000)
    g.add_argument("--uniform_sampling", action="store_true")
    g.add_argument("--weighting_scheme", type=str, default="none", choices=["sigma_sqrt", "logit_normal", "mode", "cosmap", "none"])
    g.add_argument("--logit_mean", type=float, default=0.0)
    g.add_argument("--logit_std", type=float, default=1.0)
    g.add_argument("--mode_scale", type=float, default=1.29)
    g.add_argument("--motion_sub_loss", action="store_true")
    g.add_argument("--motion_sub_loss_ratio", type=float, default=0.25)
    g.add_argument("--train_mode", type=str, default="normal")

    g = p.add_argument_group("run")
    g.add_argument("--output_dir", type=str, default="sd-model-finetuned")
    g.add_argument("--logging_dir", type=str, default="logs")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    g.add_argument("--report_to", type=str, default="tensorboard")
    g.add_argument("--checkpointing_steps", type=int, default=500)
    g.add_argument("--checkpoints_total_limit", type=int, default=None)
    g.add_argument("--resume_from_checkpoint", type=str, default=None, help='a checkpoint folder or "latest"')
    g.add_argument("--validation_steps", type=int, default=2000)
    g.add_argument("--validation_reference_path", type=str, default=None)
    g.add_argument("--validation_driven_audio_path", type=str, default=None)
    g.add_argument("--validation_sample_steps", type=int, default=50, help="denoising steps of the validation video (the original: 50)")
    g.add_argument("--use_deepspeed", action="store_true")
    g.add_argument("--deepspeed_config", type=str, default=None, help="DeepSpeed JSON when not launched with an accelerate DeepSpeed config")
    g.add_argument("--low_vram", action="store_true")

    g = p.add_argument_group("accepted for compatibility, unused (as in the original)")
    for name, default in UNUSED_FLAGS.items():
        if name in ("validation_prompts",):
            g.add_argument(f"--{name}", type=str, default=default, nargs="+")
        elif isinstance(default, bool):
            g.add_argument(f"--{name}", action="store_true")
        else:
            kind = type(default) if default is not None else str
            g.add_argument(f"--{name}", type=kind, default=default)
    return p


def parse_args(preset: str, argv: list[str] | None = None) -> argparse.Namespace:
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {preset!r}; choose from {sorted(TRAIN_PRESETS)}")
    args = build_parser(preset).parse_args(argv)
    env_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_rank != -1:
        args.local_rank = env_rank
    for name, default in UNUSED_FLAGS.items():
        if name != "local_rank" and getattr(args, name) != default:
            warnings.warn(f"--{name} is accepted for compatibility but has no effect (the original never used it)", stacklevel=2)
    return args


def to_config(preset: str, args: argparse.Namespace) -> TrainConfig:
    """Namespace -> TrainConfig, with the preset's fixed parts filled in."""
    pre = TRAIN_PRESETS[preset]
    cfg = TrainConfig(preset=preset, model_preset=pre.model_preset)
    m = cfg.model
    m.pretrained_model_name_or_path, m.config_path = args.pretrained_model_name_or_path, args.config_path
    m.transformer_path, m.pretrained_wav2vec_path = args.transformer_path, args.pretrained_wav2vec_path
    m.gradient_checkpointing, m.tokenizer_max_length = args.gradient_checkpointing, args.tokenizer_max_length
    cfg.lora.enabled, cfg.lora.rank, cfg.lora.alpha = args.lora, args.rank, float(args.network_alpha)

    d = cfg.data
    d.lists = {b.name: getattr(args, b.flag) for b in pre.buckets if getattr(args, b.flag)}
    d.sizes = {b.name: (b.width, b.height) for b in pre.buckets}
    for name, width, height in args.bucket_size:
        if name not in d.sizes:
            raise SystemExit(f"--bucket_size {name}={width}x{height}: preset {preset} has the buckets {sorted(d.sizes)}")
        d.sizes[name] = (width, height)
    d.video_sample_n_frames, d.train_batch_size = args.video_sample_n_frames, args.train_batch_size
    d.dataloader_num_workers = args.dataloader_num_workers

    for name in vars(cfg.optim):
        setattr(cfg.optim, name, getattr(args, name))
    cfg.optim.initial_grad_norm_ratio = float(args.initial_grad_norm_ratio)

    lc = cfg.loss
    for name in ("train_sampling_steps", "uniform_sampling", "weighting_scheme", "logit_mean", "logit_std", "mode_scale"):
        setattr(lc, name, getattr(args, name))
    lc.motion_sub_loss, lc.motion_sub_loss_ratio, lc.train_mode = args.motion_sub_loss, args.motion_sub_loss_ratio, args.train_mode
    lc.clip_dropout = pre.clip_dropout

    c = cfg.checkpoint
    c.output_dir, c.checkpointing_steps = args.output_dir, args.checkpointing_steps
    c.checkpoints_total_limit, c.resume_from_checkpoint = args.checkpoints_total_limit, args.resume_from_checkpoint
    c.save_final = pre.save_final

    r = cfg.run
    r.seed, r.mixed_precision, r.low_vram = args.seed, args.mixed_precision, args.low_vram
    r.use_deepspeed, r.deepspeed_config = args.use_deepspeed, args.deepspeed_config
    r.report_to, r.logging_dir, r.vae_mini_batch = args.report_to, args.logging_dir, args.vae_mini_batch
    r.validation_steps, r.validation_sample_steps = args.validation_steps, args.validation_sample_steps
    # The validation video takes the size of the bucket it matched in the original (after --bucket_size).
    r.validation_size = next((d.sizes[b.name] for b in pre.buckets if (b.width, b.height) == pre.validation_size), pre.validation_size)
    r.validation_reference_path, r.validation_driven_audio_path = args.validation_reference_path, args.validation_driven_audio_path
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Errors that need no model: missing required flags and files, with the fix."""
    missing = [b.flag for b in cfg.buckets if b.name not in cfg.data.lists]
    if missing:
        raise SystemExit(f"preset {cfg.preset} trains on {[b.name for b in cfg.buckets]}: pass " + ", ".join(f"--{f}" for f in missing))
    for name, path in cfg.data.lists.items():
        if not os.path.isfile(path):
            raise SystemExit(f"--train_data_{name}_dir {path}: file not found (one clip folder per line)")
    if not cfg.model.pretrained_model_name_or_path:
        raise SystemExit("--pretrained_model_name_or_path is required (the Wan base folder, e.g. checkpoints/Wan2.1-Fun-V1.1-1.3B-InP)")
    if not cfg.model.pretrained_wav2vec_path:
        raise SystemExit("--pretrained_wav2vec_path is required (e.g. checkpoints/wav2vec2-base-960h)")
    for flag in ("validation_reference_path", "validation_driven_audio_path"):
        path = getattr(cfg.run, flag)
        if path and not os.path.isfile(path):
            raise SystemExit(f"--{flag} {path}: file not found (the validation video's reference image / driving audio)")
    if cfg.run.mixed_precision == "fp16":
        logger.warning("--mixed_precision=fp16: weights stay fp32 under fp16 autocast (the launchers use bf16)")


def main(preset: str, argv: list[str] | None = None):
    """Parse, check every checkpoint file, load the real models and train; returns the finished Trainer."""
    args = parse_args(preset, argv)
    cfg = to_config(preset, args)
    validate(cfg)
    import torch

    from wan.models.loading import CheckpointError
    from wan.models.transformer import load_transformer
    from wan.pipelines.loading import checked_checkpoints

    from ._encoders import scheduler_settings
    from .conditioning import FrozenEncoders
    from .trainer import Trainer
    from .validation import make_validation_hook

    m = cfg.model
    try:  # presence, headers and sizes of every file, before anything large is read
        checked_checkpoints(m.pretrained_model_name_or_path, m.transformer_path, m.pretrained_wav2vec_path, m.config_path)
    except CheckpointError as err:
        raise SystemExit(f"{sys.argv[0] or 'train'}: {err}") from None
    dtype = torch.bfloat16 if cfg.run.mixed_precision == "bf16" else torch.float32
    transformer = load_transformer(m.pretrained_model_name_or_path, m.transformer_path, dtype=dtype)
    encoders = FrozenEncoders.from_pretrained(
        m.pretrained_model_name_or_path, m.pretrained_wav2vec_path, m.tokenizer_max_length, dtype, m.config_path
    )
    cfg.loss.num_train_timesteps, cfg.loss.shift = scheduler_settings(m.config_path)
    trainer = Trainer(cfg, transformer, encoders, validation=make_validation_hook(cfg, encoders))
    trainer.fit()
    return trainer
