"""What defines a training run: presets (what the original hard-coded per script) and dataclasses.

Each top-level ``train_*.py`` owns only a preset name. The preset fills in the model size, the
resolution buckets and which ``--train_data_*_dir`` flags are required; everything else comes
from the command line (``wan.training.cli``) into the small dataclasses below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """One resolution bucket: a path-list flag and the (width, height) its clips are resized to."""

    name: str  # "square" | "rec" | "vec"
    width: int
    height: int

    @property
    def flag(self) -> str:
        return f"train_data_{self.name}_dir"


SQUARE = Bucket("square", 512, 512)
REC = Bucket("rec", 832, 480)  # landscape: W x H = 832 x 480
VEC = Bucket("vec", 480, 832)  # portrait:  W x H = 480 x 832


@dataclass(frozen=True)
class TrainPreset:
    """What one original training script hard-coded."""

    name: str
    model_preset: str  # key of wan.configs.TRANSFORMER_PRESETS
    buckets: tuple[Bucket, ...]  # interleaved in this order's index space (see wan.data.mixing)
    validation_size: tuple[int, int] | None  # (width, height) of the validation video; None = the script never validated
    clip_dropout: float  # probability of zeroing one sample's CLIP tokens (14B scripts only)
    save_final: bool  # the 1B scripts write one more checkpoint after the last step


TRAIN_PRESETS: dict[str, TrainPreset] = {
    "1B_square": TrainPreset("1B_square", "1.3B", (SQUARE,), (512, 512), 0.0, True),
    "1B_vec_rec": TrainPreset("1B_vec_rec", "1.3B", (REC, VEC), (480, 832), 0.0, True),
    "14B": TrainPreset("14B", "14B", (REC, SQUARE, VEC), None, 0.1, False),
}

# --------------------------------------------------------------------------------------------
# Run configuration
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    pretrained_model_name_or_path: str | None = None  # Wan base folder (VAE, T5, CLIP, DiT config + weights)
    transformer_path: str | None = None  # StableAvatar transformer3d-*.pt to start from (fine-tuning)
    pretrained_wav2vec_path: str | None = None  # wav2vec2-base-960h folder
    config_path: str | None = None  # deepspeed_config/wan2.1/wan_civitai.yaml (scheduler + subpaths)
    gradient_checkpointing: bool = False  # recompute each DiT block in backward
    tokenizer_max_length: int = 226  # umT5 tokens per prompt (the original's training value)


@dataclass
class LoraSettings:
    enabled: bool = False  # --lora: train peft adapters + the audio modules instead of all blocks
    rank: int = 128  # --rank
    alpha: float = 64.0  # --network_alpha; scale = alpha / rank


@dataclass
class DataConfig:
    lists: dict[str, str] = field(default_factory=dict)  # bucket name -> path of its video_*_path.txt
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # bucket name -> (width, height); preset values
    video_sample_n_frames: int = 17  # pixel frames per clip (every launcher passes 81)
    train_batch_size: int = 16  # per process (every launcher passes 1)
    dataloader_num_workers: int = 0


@dataclass
class OptimConfig:
    learning_rate: float = 1e-4
    scale_lr: bool = False  # lr *= grad_accum * batch * processes
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "constant"  # any diffusers.optimization.get_scheduler name
    lr_warmup_steps: int = 500
    max_grad_norm: float = 1.0  # final clip value of the decaying schedule (objective.clip_threshold)
    initial_grad_norm_ratio: float = 5.0  # the clip value starts at ratio * max_grad_norm ...
    abnormal_norm_clip_start: int = 1000  # ... and reaches max_grad_norm at this step
    gradient_accumulation_steps: int = 1
    num_train_epochs: int = 100
    max_train_steps: int | None = None  # None: epochs * steps per epoch
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit
    use_came: bool = False  # came_pytorch.CAME
    allow_tf32: bool = False


@dataclass
class LossConfig:
    num_train_timesteps: int = 1000  # scheduler_kwargs of wan_civitai.yaml
    shift: float = 5.0  # flow-matching shift of the training sigma table
    train_sampling_steps: int = 1000  # index range of DiscreteSampling
    uniform_sampling: bool = False  # stratify timestep indices across the global batch
    weighting_scheme: str = "none"  # none | sigma_sqrt | logit_normal | mode | cosmap
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    motion_sub_loss: bool = False
    motion_sub_loss_ratio: float = 0.25
    audio_dropout: float = 0.1  # zero the wav2vec features of a step
    clip_level_prob: float = 0.3  # whole-clip audio attention for a step
    clip_dropout: float = 0.0  # zero one sample's CLIP tokens (preset)
    train_mode: str = "normal"  # anything but "normal" enables the t2v flag (the launchers use "i2v")


@dataclass
class CheckpointConfig:
    output_dir: str = "sd-model-finetuned"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None  # keep at most this many checkpoint-N folders
    resume_from_checkpoint: str | None = None  # a checkpoint folder or "latest"
    save_final: bool = True


@dataclass
class RunConfig:
    seed: int | None = None
    mixed_precision: str | None = None  # no | fp16 | bf16 (bf16: DiT weights in bf16, as the original)
    low_vram: bool = False  # frozen encoders on the GPU only while they run
    use_deepspeed: bool = False  # clipping and saving follow DeepSpeed (optimizer/scheduler from its JSON when present)
    deepspeed_config: str | None = None  # DeepSpeed JSON used without an accelerate config (e.g. under torchrun)
    report_to: str | None = "tensorboard"
    logging_dir: str = "logs"
    vae_mini_batch: int = 32  # clips per VAE encode call
    validation_steps: int = 2000
    validation_reference_path: str | None = None
    validation_driven_audio_path: str | None = None
    validation_size: tuple[int, int] | None = None  # (width, height); None = no validation
    validation_sample_steps: int = 50  # denoising steps of the validation video (the original's fixed 50)


@dataclass
class TrainConfig:
    preset: str
    model_preset: str
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        """The preset's buckets, at the sizes of ``data.sizes`` where given (tests train at 32x32)."""
        out = []
        for b in TRAIN_PRESETS[self.preset].buckets:
            w, h = self.data.sizes.get(b.name, (b.width, b.height))
            out.append(Bucket(b.name, w, h))
        return tuple(out)
