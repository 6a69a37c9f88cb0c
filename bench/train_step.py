"""Time one real training step of the DiT (forward + backward + AdamW), full size, random weights.

    python bench/train_step.py              # 1.3B at 512x512, 81 frames, bf16 weights, gradient checkpointing (CUDA)
    python bench/train_step.py --lora       # the same with LoRA rank 128 / alpha 64 (--lora in the launchers)
    python bench/train_step.py --tiny       # 1-layer model at 64x64, 9 frames, on CPU: checks the script
    # DeepSpeed, one process per GPU: the shipped JSON's ZeRO stage, optimizer, scheduler, clipping and offload
    torchrun --standalone --nproc_per_node 2 bench/train_step.py --deepspeed deepspeed_config/zero_stage2_config.json
    torchrun --standalone --nproc_per_node 2 bench/train_step.py --deepspeed deepspeed_config/zero_stage3_config.json
    torchrun --standalone --nproc_per_node 2 bench/train_step.py --tiny --deepspeed deepspeed_config/zero_stage2_config.json  # CPU, gloo

The step is the trainer's (wan.training): the original's trainable set (all blocks + the audio
adapter) or LoRA, the face/lip-weighted flow-matching loss with the channel-difference term.
Without ``--deepspeed``: bf16 weights trained in bf16 under autocast as the original does, torch's
AdamW (launcher hyper-parameters), one GPU. With ``--deepspeed CONFIG``: the
model and trainable parameters go through ``deepspeed.initialize`` with that JSON, its ``"auto"``
fields filled for one clip per process (``train_batch_size`` = processes), as the trainer does
under ``--deepspeed_config``; DeepSpeed then keeps fp32 master weights and Adam states, sharded
over the processes, builds the JSON's optimizer (FusedAdam on GPU, DeepSpeedCPUAdam with
optimizer offload: both compiled by ninja on first use, before the timing; should the build fail,
torch's AdamW is timed and the row says why in ``adam_build_error``; ``--torch_adam`` asks for
torch's AdamW), and no autocast is used (accelerate adds none under DeepSpeed).
Every process trains on its own clip, so a step moves ``processes`` clips.

Conditioning (VAE latents, CLIP, T5, wav2vec) is random, precomputed: the frozen encoders' cost is
not part of the row. Rows (``bench.common.record``, on rank 0): ``train_step_s`` (median seconds per
step after the warm-up, slowest rank) and ``peak_gib`` (max allocated per GPU over the steps, max
over ranks; ``per_rank``), each with ``gpus``, ``zero_stage`` (None without DeepSpeed), ``size``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import peak_gib, record, reset_peak, timed  # noqa: E402
from wan.configs import transformer_config  # noqa: E402
from wan.models.transformer import WanAvatarTransformer3DModel  # noqa: E402
from wan.training import objective as obj  # noqa: E402
from wan.training.config import TrainConfig  # noqa: E402
from wan.training.trainer import select_trainable  # noqa: E402


def fill_deepspeed_config(config: dict, world: int, bf16: bool, torch_adam: bool) -> dict:
    """The JSON with every ``"auto"`` filled for one clip per process and no accumulation.

    bf16: the run's precision; the JSON's ``bf16.enabled`` is kept on GPU unless ``"auto"``, and
    turned off when ``bf16`` is False (the CPU check). torch_adam: torch's AdamW instead of
    DeepSpeed's compiled FusedAdam/DeepSpeedCPUAdam (offload then runs it on the CPU copy).
    """
    ds = copy.deepcopy(config)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if ds.get(key, "auto") == "auto":
            ds[key] = 1
    if ds.get("train_batch_size", "auto") == "auto":
        ds["train_batch_size"] = ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world
    if not bf16 or ds.get("bf16", {}).get("enabled") == "auto":
        ds.setdefault("bf16", {})["enabled"] = bf16
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("stage3_gather_16bit_weights_on_model_save") == "auto":
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    if torch_adam and "optimizer" in ds:
        ds["optimizer"].setdefault("params", {})["torch_adam"] = True
        ds["zero_force_ds_cpu_optimizer"] = False  # else offload insists on DeepSpeedCPUAdam
    left = [k for k, v in _walk(ds) if v == "auto"]
    if left:
        raise SystemExit(f"--deepspeed: no rule fills {', '.join(left)} = \"auto\" in this bench; set it in the JSON")
    return ds


def _walk(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def offload_of(ds: dict) -> str | None:
    """'optimizer:cpu,param:cpu' from the JSON's zero_optimization, or None."""
    zero = ds.get("zero_optimization", {})
    parts = [f"{what}:{zero[f'offload_{what}']['device']}" for what in ("optimizer", "param")
             if zero.get(f"offload_{what}", {}).get("device", "none") != "none"]  # fmt: skip
    return ",".join(parts) or None


def build_deepspeed_adam(ds: dict) -> str | None:
    """Build (or load from TORCH_EXTENSIONS_DIR) the Adam kernel DeepSpeed picks for this JSON:
    DeepSpeedCPUAdam with optimizer offload, else FusedAdam. None when it loads, else why not."""
    from deepspeed.accelerator import get_accelerator

    name = "CPUAdamBuilder" if (offload_of(ds) or "").startswith("optimizer") else "FusedAdamBuilder"
    try:
        get_accelerator().create_op_builder(name).load()
    except Exception as err:  # noqa: BLE001 - any build failure: the caller falls back to torch's AdamW
        return f"{name}: {type(err).__name__}: {str(err)[:300]}"
    return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--lora", action="store_true")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--deepspeed", metavar="CONFIG", default=None, help="DeepSpeed JSON (e.g. deepspeed_config/zero_stage2_config.json); run under torchrun")
    p.add_argument("--torch_adam", action="store_true", help="with --deepspeed: torch's AdamW instead of DeepSpeed's compiled Adam (always with --tiny)")
    a = p.parse_args()

    # 1. Processes and device. Under --deepspeed every process takes the GPU of its LOCAL_RANK.
    rank, world = 0, 1
    if not a.tiny and not torch.cuda.is_available():
        raise SystemExit("the full-size step needs a CUDA GPU; use --tiny on CPU")
    if a.deepspeed:
        import deepspeed
        import torch.distributed as dist

        if not a.tiny:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        deepspeed.init_distributed(dist_backend="gloo" if a.tiny else "nccl")
        rank, world = dist.get_rank(), dist.get_world_size()
    if a.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        a.height, a.width, a.frames = 64, 64, 9
        config = transformer_config("1.3B", dim=64, ffn_dim=64, num_heads=2, num_layers=1, audio_proj_dim=64)
    else:
        device, dtype = torch.device("cuda", torch.cuda.current_device()), torch.bfloat16
        config = transformer_config("1.3B")

    # 2. Model and trainable set (the same seed on every rank: data parallel starts from one model).
    torch.manual_seed(0)
    with torch.device(device):
        model = WanAvatarTransformer3DModel(**config)
    model.to(dtype)
    cfg = TrainConfig(preset="1B_square", model_preset="1.3B")
    cfg.lora.enabled = a.lora
    params = select_trainable(model, cfg)
    trainable_m = round(sum(p.numel() for p in params) / 1e6, 2)  # before ZeRO-3 partitions them
    model.enable_gradient_checkpointing()
    model.train()

    # 3. Optimizer: torch's AdamW on one GPU, or DeepSpeed's engine (the JSON's optimizer, else ours).
    ds, engine, autocast = None, None, dtype != torch.float32
    build_error = None
    if a.deepspeed:
        shipped = json.loads(Path(a.deepspeed).read_text())
        ds = fill_deepspeed_config(shipped, world, bf16=not a.tiny, torch_adam=a.torch_adam or a.tiny)
        if "optimizer" in ds and not (a.torch_adam or a.tiny):
            # Compiled on first use (ninja + nvcc/g++). Should that fail, time torch's AdamW rather
            # than lose the call; the row says so (optimizer, adam_build_error).
            build_error = build_deepspeed_adam(ds)
            if build_error:
                print(f"rank {rank}: DeepSpeed's Adam did not build ({build_error}); using torch's AdamW", flush=True)
                ds = fill_deepspeed_config(shipped, world, bf16=True, torch_adam=True)
        if "optimizer" not in ds:
            ds["zero_allow_untested_optimizer"] = True
        client = None if "optimizer" in ds else torch.optim.AdamW(params, lr=2e-5, weight_decay=3e-2, eps=1e-10)
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=client, config=ds)
        autocast = False  # as the trainer under DeepSpeed: accelerate adds no autocast, the engine holds bf16 weights
    else:
        optimizer = torch.optim.AdamW(params, lr=2e-5, weight_decay=3e-2, eps=1e-10)

    # 4. One clip of random conditioning per process (its own draw: data parallel sees different clips).
    f, h, w = (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8
    g = torch.Generator().manual_seed(rank)
    latents = torch.randn(1, 16, f, h, w, generator=g).to(device, dtype)
    y = torch.randn(1, 20, f, h, w, generator=g).to(device, dtype)
    clip = torch.randn(1, 257, 1280, generator=g).to(device, dtype)
    context = [torch.randn(12, config["text_dim"], generator=g).to(device, dtype)]
    audio = torch.randn(1, int(a.frames / 25 * 50) + 1, 768, generator=g).to(device, dtype)
    face = torch.rand(1, 1, f, h, w, generator=g).to(device)
    lip = torch.rand(1, 1, f, h, w, generator=g).to(device)
    timesteps, sigmas = obj.sigma_table()
    seq_len = obj.seq_len_for((f, h, w), (1, 2, 2))
    forward = engine if engine is not None else model

    def step() -> None:
        noise = torch.randn_like(latents)
        noisy, target = obj.add_noise(latents, noise, sigmas[[500]].to(device))
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            pred = forward(x=noisy, t=timesteps[[500]].to(device), context=context, seq_len=seq_len, clip_fea=clip, y=y,
                           vocal_embeddings=audio, video_sample_n_frames=a.frames)
        loss = obj.stableavatar_loss(pred, target, face, lip, 0.1, None, 0.25)
        if engine is not None:  # the engine clips (JSON gradient_clipping), steps and zeroes
            engine.backward(loss)
            engine.step()
            return
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # 5. Time it; rank 0 records the slowest rank's median and the largest peak.
    reset_peak()
    seconds, times = timed(step, warmup=a.warmup, repeat=a.repeat)
    peak = peak_gib()
    per_rank = [(seconds, peak)]
    if world > 1:
        import torch.distributed as dist

        per_rank = [None] * world
        dist.all_gather_object(per_rank, (seconds, peak))
    if rank != 0:
        return
    step_s = max(s for s, _ in per_rank)
    fields = dict(
        gpus=world, zero_stage=ds["zero_optimization"].get("stage", 0) if ds else None, size=f"{a.width}x{a.height}", frames=a.frames,
        model="tiny" if a.tiny else "1.3B", lora=a.lora, dtype=str(dtype).replace("torch.", ""), gradient_checkpointing=True,
        deepspeed=Path(a.deepspeed).name if a.deepspeed else None, offload=offload_of(ds) if ds else None,
        optimizer=type(getattr(engine.optimizer, "optimizer", engine.optimizer)).__name__ if engine is not None else "AdamW",
        trainable_params_m=trainable_m,
    )  # fmt: skip
    if build_error:
        fields["adam_build_error"] = build_error
    record("train_step_s", round(step_s, 4), "s", **fields, times_s=[round(t, 4) for t in times], clips_per_s=round(world / step_s, 3))
    if peak is not None:
        record("peak_gib", round(max(p for _, p in per_rank), 2), "GiB", **fields, phase="train_step",
               per_rank=[round(p, 2) for _, p in per_rank])  # fmt: skip


if __name__ == "__main__":
    main()
