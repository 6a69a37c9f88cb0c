"""``--GPU_memory_mode``: where the pipeline's models live during a run, on diffusers' offload hooks.

* ``model_full_load``: everything on the GPU.
* ``model_cpu_offload``: each model moves to the GPU when it runs and back after
  (diffusers ``enable_model_cpu_offload``).
* ``model_cpu_offload_and_qfloat8``: as above, and the DiT's linear weights are STORED in float8
  (e4m3) and upcast to bf16 layer by layer for compute (diffusers ``enable_layerwise_casting``).
* ``sequential_cpu_offload``: weights stream to the GPU one layer at a time
  (``enable_sequential_cpu_offload``); lowest memory, slowest.

The wav2vec2 extractor (95M parameters) always sits on the execution device.
"""

from __future__ import annotations

import torch


def apply_memory_mode(pipe, mode: str, device: torch.device) -> None:
    if device.type != "cuda" and mode != "model_full_load":
        raise RuntimeError(f"--GPU_memory_mode {mode} offloads to the CPU between GPU uses and needs CUDA; use model_full_load on the CPU")
    if mode == "model_full_load":
        pipe.to(device)
    elif mode == "model_cpu_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "model_cpu_offload_and_qfloat8":
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential_cpu_offload":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        raise ValueError(f"unknown memory mode {mode!r}")
    pipe.wav2vec.to(device)
