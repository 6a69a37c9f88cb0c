"""The one training loop behind train_1B_square.py, train_1B_vec_rec.py and train_14B.py.

Launch (see docs/training.md): ``accelerate launch [--config_file accelerate_config/...] train_1B_square.py --flags``,
or ``torchrun --nproc_per_node=N train_1B_square.py ... --deepspeed_config deepspeed_config/zero_stage2_config.json``.

Reads top to bottom:
    setup      accelerator (DDP or DeepSpeed), dtype, trainable parameters, optimizer, scheduler, data
    resume     accelerate state + train_state.json of the newest checkpoint
    loop       per batch: conditioning -> timesteps/noise -> DiT -> weighted loss -> backward -> clip -> step
    cadence    logging, checkpoint (atomic, rotated), validation hook
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from wan.data.dataset import TalkingVideoDataset
from wan.data.mixing import MixedAspectLoader

from . import objective as obj
from .checkpoint import TrainState, read_state, resolve_resume, save_checkpoint, save_transformer_pt
from .conditioning import FrozenEncoders, build_conditioning
from .config import TrainConfig
from .lora import add_lora, save_lora

logger = logging.getLogger(__name__)

# The original unfreezes every DiT parameter whose name contains one of these: in effect all of
# ``blocks.*`` and ``vocal_projector.*`` (embeddings, head and img_emb stay frozen).
FULL_TRAIN_WORDS = ("vocal_projector", "audio_projector", "vocal", "audio", "attn", "blocks")
ValidationHook = Callable[[nn.Module, int], None]  # (unwrapped DiT, global step)


def make_accelerator(cfg: TrainConfig):
    """Accelerator for this launch. On CPU-only machines several processes use gloo (the default
    backend choice would leave accelerate believing it runs alone)."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs, ProjectConfiguration

    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    ds_from_env = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    plugin = DeepSpeedPlugin(hf_ds_config=cfg.run.deepspeed_config) if cfg.run.deepspeed_config and not ds_from_env else None
    use_ds = plugin is not None or ds_from_env
    kwargs: dict = {}
    if multi and not torch.cuda.is_available():
        if use_ds:
            kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
        else:
            kwargs["cpu"] = True
    report_to = cfg.run.report_to if cfg.run.report_to not in (None, "none", "") else None
    if report_to == "tensorboard":
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            logger.warning("--report_to tensorboard: tensorboard is not installed; logging to the console only")
            report_to = None
    out = cfg.checkpoint.output_dir
    return Accelerator(
        gradient_accumulation_steps=cfg.optim.gradient_accumulation_steps,
        mixed_precision=cfg.run.mixed_precision or "no",
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=out, logging_dir=os.path.join(out, cfg.run.logging_dir)),
        deepspeed_plugin=plugin,
        **kwargs,
    )


def select_trainable(model: nn.Module, cfg: TrainConfig) -> list[nn.Parameter]:
    """Freeze the DiT, then unfreeze what the original trains (full) or add LoRA (``--lora``)."""
    model.requires_grad_(False)
    if cfg.lora.enabled:
        targets = add_lora(model, cfg.lora.rank, cfg.lora.alpha)
        logger.info("LoRA rank %d alpha %g on %d Linear layers", cfg.lora.rank, cfg.lora.alpha, len(targets))
    else:
        for name, p in model.named_parameters():
            if any(w in name for w in FULL_TRAIN_WORDS):
                p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    logger.info("trainable parameters: %.2fM", sum(p.numel() for p in params) / 1e6)
    return params


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter], ds_config: dict | None) -> torch.optim.Optimizer:
    o = cfg.optim
    if ds_config is not None and "optimizer" in ds_config:  # the DeepSpeed JSON owns the optimizer
        from accelerate.utils import DummyOptim

        return DummyOptim(params, lr=o.learning_rate, weight_decay=o.adam_weight_decay)
    if o.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise ImportError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from exc
        cls = bnb.optim.AdamW8bit
    elif o.use_came:
        try:
            from came_pytorch import CAME
        except ImportError as exc:
            raise ImportError("--use_came needs came_pytorch: pip install came-pytorch") from exc
        return CAME(params, lr=o.learning_rate, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16))
    else:
        cls = torch.optim.AdamW
    return cls(params, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2), weight_decay=o.adam_weight_decay, eps=o.adam_epsilon)


def make_scheduler(cfg: TrainConfig, optimizer, max_steps: int, num_processes: int, ds_config: dict | None):
    if ds_config is not None and "scheduler" in ds_config:
        from accelerate.utils import DummyScheduler

        return DummyScheduler(optimizer, total_num_steps=max_steps, warmup_num_steps=cfg.optim.lr_warmup_steps)
    from diffusers.optimization import get_scheduler

    # accelerate steps a prepared scheduler once per process per optimizer step, hence the factor.
    return get_scheduler(
        cfg.optim.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.optim.lr_warmup_steps * num_processes,
        num_training_steps=max_steps * num_processes,
    )


class Trainer:
    """Trains ``transformer`` on the preset's buckets with conditioning from ``encoders``.

    datasets: one dataset per bucket of ``cfg.buckets``; built from ``cfg.data.lists`` when None.
    validation: called on the main process every ``--validation_steps`` (None: no validation).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        transformer: nn.Module,
        encoders: FrozenEncoders,
        datasets: list | None = None,
        validation: ValidationHook | None = None,
    ):
        self.cfg, self.encoders, self.validation = cfg, encoders, validation
        if cfg.run.seed is None:
            cfg.run.seed = 0
            logger.warning("--seed not given: using 0 (data order, noise and dropout are all derived from it)")
        self.accelerator = acc = make_accelerator(cfg)
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if acc.is_local_main_process else logging.WARNING)
        self.device = acc.device
        if acc.is_main_process:
            os.makedirs(cfg.checkpoint.output_dir, exist_ok=True)
        self.dtype = {"bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
        if cfg.optim.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True

        # 1. Model: bf16 weights trained in bf16 under --mixed_precision=bf16 (the original's choice).
        config = getattr(transformer, "config", None)
        if cfg.data.train_batch_size > 1 and getattr(config, "audio_cfg_last_row", False):
            raise ValueError(
                f"--train_batch_size={cfg.data.train_batch_size}: this DiT config (audio_cfg_last_row, the 1.3B release) runs its audio "
                "branch on one clip per forward; use --train_batch_size=1 (as every launcher does) and more processes"
            )
        self.patch_size = tuple(getattr(config, "patch_size", (1, 2, 2)))
        if self.dtype != torch.float32:
            transformer.to(self.dtype)
        self.trainable = select_trainable(transformer, cfg)
        if cfg.model.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()

        # 2. Data.
        if datasets is None:
            datasets = [
                TalkingVideoDataset(cfg.data.lists[b.name], b.width, b.height, cfg.data.video_sample_n_frames) for b in cfg.buckets
            ]
        self.loader = MixedAspectLoader(
            datasets, cfg.data.train_batch_size, cfg.run.seed, acc.process_index, acc.num_processes, cfg.data.dataloader_num_workers
        )
        accum = cfg.optim.gradient_accumulation_steps
        self.max_steps = cfg.optim.max_train_steps or cfg.optim.num_train_epochs * math.ceil(len(self.loader) / accum)

        # 3. Optimizer and scheduler (from the DeepSpeed JSON when it has them), then prepare.
        ds_config = acc.state.deepspeed_plugin.deepspeed_config if acc.state.deepspeed_plugin is not None else None
        if ds_config is not None and "gradient_clipping" not in ds_config:
            # DeepSpeed's default is 1.0, not "off": the run then differs from a plain one from the
            # second update on (Adam's first update is scale-invariant; later ones see the clip ratio).
            logger.warning(
                "the DeepSpeed config sets no gradient_clipping: DeepSpeed clips the gradient norm at 1.0 (its default); "
                "set \"gradient_clipping\" in the JSON (0 turns it off). --max_grad_norm applies only without DeepSpeed"
            )
        if ds_config is not None and ds_config.get("train_micro_batch_size_per_gpu") == "auto":
            ds_config["train_micro_batch_size_per_gpu"] = cfg.data.train_batch_size
        if cfg.optim.scale_lr:
            cfg.optim.learning_rate *= accum * cfg.data.train_batch_size * acc.num_processes
        optimizer = make_optimizer(cfg, self.trainable, ds_config)
        scheduler = make_scheduler(cfg, optimizer, self.max_steps, acc.num_processes, ds_config)
        self.model, self.optimizer, self.scheduler = acc.prepare(transformer, optimizer, scheduler)
        self.use_deepspeed = ds_config is not None or cfg.run.use_deepspeed
        for module in encoders.modules.values():
            module.requires_grad_(False).eval()
            if not cfg.run.low_vram:
                module.to(self.device)
        self.timesteps, self.sigmas = obj.sigma_table(cfg.loss.num_train_timesteps, cfg.loss.shift)
        if acc.is_main_process and acc.trackers:
            acc.init_trackers("Talking_Face")

    # -- one batch ---------------------------------------------------------------------------

    def compute_loss(self, batch: dict, epoch: int, position: int) -> torch.Tensor:
        """The loss of one batch at plan position (epoch, position): every random choice (posterior
        samples, dropout, timesteps, noise, mask weighting) is derived from those numbers."""
        cfg, acc, lc = self.cfg, self.accelerator, self.cfg.loss
        b = batch["pixel_values"].shape[0]
        global_batch = b * acc.num_processes
        first = acc.process_index * b
        gens = [obj.sample_generator(cfg.run.seed, epoch, position, first + j) for j in range(b)]
        draws = obj.draw_step(obj.step_generator(cfg.run.seed, epoch, position), lc.audio_dropout, lc.clip_level_prob)

        # 1. Frozen encoders.
        cond = build_conditioning(
            batch,
            self.encoders,
            gens,
            device=self.device,
            dtype=self.dtype,
            drop_audio=draws.drop_audio,
            clip_dropout=lc.clip_dropout,
            t2v_mode=lc.train_mode != "normal",
            vae_mini_batch=cfg.run.vae_mini_batch,
            low_vram=cfg.run.low_vram,
        )
        # 2. Timesteps (stratified over the global batch with --uniform_sampling) and noise.
        idx = [
            obj.sample_index(g, first + j, global_batch, lc.train_sampling_steps, lc.uniform_sampling, lc.weighting_scheme, lc.logit_mean, lc.logit_std, lc.mode_scale)
            for j, g in enumerate(gens)
        ]
        t = self.timesteps[idx].to(self.device)
        sigmas = self.sigmas[idx].to(self.device)
        noise = torch.stack([torch.randn(cond.latents.shape[1:], generator=g) for g in gens]).to(self.device, cond.latents.dtype)
        noisy, target = obj.add_noise(cond.latents, noise, sigmas)

        # 3. DiT velocity prediction.
        with acc.autocast():
            pred = self.model(
                x=noisy.to(self.dtype),
                t=t,
                context=[c.to(self.dtype) for c in cond.context],
                seq_len=obj.seq_len_for(tuple(noisy.shape[2:]), self.patch_size),
                clip_fea=cond.clip_fea.to(self.dtype),
                y=cond.y.to(self.dtype),
                vocal_embeddings=cond.vocal_embeddings.to(self.dtype),
                is_clip_level_modeling=draws.clip_level,
                video_sample_n_frames=cfg.data.video_sample_n_frames,
            )
        # 4. Face/lip-weighted MSE (+ channel-difference loss).
        ratio = lc.motion_sub_loss_ratio if lc.motion_sub_loss else None
        return obj.stableavatar_loss(pred, target, cond.face, cond.lip, draws.loss_r, obj.loss_weighting(lc.weighting_scheme, sigmas), ratio)

    def train_batch(self, batch: dict, epoch: int, position: int) -> float:
        """Backward of one batch (and an optimizer step when accumulation completes); returns the
        loss averaged over all processes."""
        acc = self.accelerator
        with acc.accumulate(self.model):
            loss = self.compute_loss(batch, epoch, position)
            acc.backward(loss)
            if acc.sync_gradients and not self.use_deepspeed:
                self._clip_gradients()
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return acc.reduce(loss.detach().float(), reduction="mean").item()

    def _clip_gradients(self) -> None:
        grads = [p.grad.detach() for p in self.trainable if p.grad is not None]
        if not grads:
            return
        o = self.cfg.optim
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()
        value = obj.clip_threshold(self.state.global_step, total, o.max_grad_norm, o.initial_grad_norm_ratio, o.abnormal_norm_clip_start)
        self.accelerator.clip_grad_norm_(self.trainable, value)

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self) -> Path:
        acc, step = self.accelerator, self.state.global_step
        if self.cfg.lora.enabled:
            weights = None
        else:
            weights = acc.get_state_dict(self.model)  # every process (gathers ZeRO-3 shards)

        def write(folder: Path) -> None:
            if self.cfg.lora.enabled:
                save_lora(acc.unwrap_model(self.model), folder / f"lora-checkpoint-{step}.safetensors")
            else:
                save_transformer_pt(weights, folder / f"transformer3d-checkpoint-{step}.pt")

        return save_checkpoint(acc, self.cfg.checkpoint.output_dir, self.state, write, self.cfg.checkpoint.checkpoints_total_limit)

    def resume(self) -> None:
        path = resolve_resume(self.cfg.checkpoint.output_dir, self.cfg.checkpoint.resume_from_checkpoint)
        if path is None:
            return
        self.accelerator.load_state(str(path))
        self.state = read_state(path)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.state.global_step, self.state.epoch, self.state.step_in_epoch)

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> list[float]:
        """Train to ``max_train_steps``; returns the per-batch losses (averaged over processes)."""
        cfg, acc = self.cfg, self.accelerator
        self.state = TrainState()
        self.resume()
        logger.info(
            "training %s: %d steps, %d batches per epoch, %d processes x batch %d, accumulation %d",
            cfg.preset, self.max_steps, len(self.loader), acc.num_processes, cfg.data.train_batch_size, cfg.optim.gradient_accumulation_steps,
        )
        losses: list[float] = []
        last_saved = self.state.global_step if cfg.checkpoint.resume_from_checkpoint else -1
        bar = tqdm(total=self.max_steps, initial=self.state.global_step, desc="steps", disable=not acc.is_local_main_process)
        while self.state.global_step < self.max_steps:
            for batch in self.loader.iterate(self.state.epoch, self.state.step_in_epoch):
                loss = self.train_batch(batch, self.state.epoch, self.state.step_in_epoch)
                losses.append(loss)
                self.state.step_in_epoch += 1
                if self.state.step_in_epoch == len(self.loader):
                    self.state.epoch, self.state.step_in_epoch = self.state.epoch + 1, 0
                if not acc.sync_gradients:
                    continue
                self.state.global_step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                acc.log({"train_loss": loss, "lr": self.scheduler.get_last_lr()[0]}, step=self.state.global_step)
                if self.state.global_step % cfg.checkpoint.checkpointing_steps == 0:
                    self.save()
                    last_saved = self.state.global_step
                if self.validation is not None and acc.is_main_process and self.state.global_step % cfg.run.validation_steps == 0:
                    self._validate()
                if self.state.global_step >= self.max_steps or self.state.step_in_epoch == 0:
                    break
        bar.close()
        if cfg.checkpoint.save_final and last_saved != self.state.global_step:
            self.save()
        acc.end_training()
        return losses

    def _validate(self) -> None:
        try:
            self.model.eval()
            with torch.no_grad():
                self.validation(self.accelerator.unwrap_model(self.model), self.state.global_step)
        except Exception:  # a failed preview must not end a long run
            logger.exception("validation at step %d failed; training continues", self.state.global_step)
        finally:
            self.model.train()
