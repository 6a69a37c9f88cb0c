"""``--GPU_memory_mode``: where the pipeline's models live during a run, on diffusers/accelerate hooks.

=================================  =====================================================================
mode                               placement
=================================  =====================================================================
``model_full_load``                every model on the GPU for the whole run (fastest, most memory).
``model_cpu_offload``              whole models wait on the CPU and move to the GPU when called, the
                                   previous one moving back (diffusers ``enable_model_cpu_offload``,
                                   order ``model_cpu_offload_seq``): umT5 and CLIP run once at the start
                                   and then leave the GPU; during denoising only the DiT is there.
``model_cpu_offload_and_qfloat8``  as above, and the DiT's Linear/Conv weights are STORED in float8 e4m3
                                   and upcast layer by layer to the compute dtype (diffusers
                                   ``enable_layerwise_casting``); halves the DiT's footprint and its
                                   host-to-GPU copy. Norms, modulation, patch embedding and the audio
                                   adapter stay in bf16 (see ``FP8_SKIP_PATTERNS``).
``sequential_cpu_offload``         weights stay on the CPU and stream to the GPU one leaf module at a
                                   time (accelerate ``cpu_offload``); lowest memory, slowest.
=================================  =====================================================================

The wav2vec2 extractor is not a ``torch.nn.Module`` component of the pipeline: it sits on the GPU
in every mode (0.36 GiB), so every mode computes the same audio features as ``model_full_load``
(computed on the CPU they differ in float rounding, which the sampler then amplifies).

On the CPU the offload modes are meaningless for a user (they raise), but the very same hooks run
with the CPU as "execution device" (``require_accelerator=False``): that is how the tests check
that each mode computes what ``model_full_load`` computes without a GPU.
"""

from __future__ import annotations

import torch

from wan.errors import GPUOutOfMemoryError  # noqa: F401  (re-exported: its old home)

MEMORY_MODES = ("model_full_load", "model_cpu_offload", "model_cpu_offload_and_qfloat8", "sequential_cpu_offload")

# What to try when a mode runs out of GPU memory (each step roughly halves the peak or more).
NEXT_MEMORY_MODE: dict[str, str | None] = {
    "model_full_load": "model_cpu_offload",
    "model_cpu_offload": "model_cpu_offload_and_qfloat8",
    "model_cpu_offload_and_qfloat8": "sequential_cpu_offload",
    "sequential_cpu_offload": None,
}

# DiT modules kept out of float8 storage. The model's own list (patch embedding, norms, modulation:
# small and precision-critical), plus the audio adapter: ~3% of the weights, the part StableAvatar
# trained, and its blocks pick their cast dtype from a weight's dtype (``AudioAdapter.forward``),
# which must not read float8. (The original casts all but ``modulation`` to float8 unscaled.)
FP8_EXTRA_SKIP_PATTERNS = ("vocal_projector",)
FP8_STORAGE_DTYPE = torch.float8_e4m3fn

# Submodules whose weights may be read directly, not through their own forward, so accelerate's
# per-leaf hooks would not load them: the DiT's fp32 timestep MLPs (``_fp32_sequential`` upcasts
# Linear weights by hand off CUDA; 17M parameters at 1.3B) and umT5's relative-position tables
# (which take their device from the weight). Sequential offload keeps them resident on the GPU.
# Keys: pipeline component; values: module-name suffixes.
RESIDENT_IN_SEQUENTIAL: dict[str, tuple[str, ...]] = {
    "transformer": ("time_embedding", "time_projection"),
    "text_encoder": ("pos_embedding",),
}


def apply_memory_mode(pipe, mode: str, device: torch.device | str, *, require_accelerator: bool = True) -> None:
    """Place ``pipe``'s models for ``mode`` (one of ``MEMORY_MODES``) with ``device`` as the GPU.

    Args:
        pipe: a ``StableAvatarPipeline`` with its models on the CPU.
        mode: the ``--GPU_memory_mode``.
        device: execution device (``cuda``, ``cuda:1``...).
        require_accelerator: refuse the offload modes on a CPU device (the default; tests pass
            False to run the same hooks with the CPU as execution device).
    """
    device = torch.device(device)
    if mode not in MEMORY_MODES:
        raise ValueError(f"--GPU_memory_mode {mode!r}: choose one of {MEMORY_MODES}")
    if require_accelerator and device.type == "cpu" and mode != "model_full_load":
        raise RuntimeError(f"--GPU_memory_mode {mode} moves models between the CPU and a GPU; on the CPU use model_full_load")
    if mode == "model_full_load":
        pipe.to(device)
        pipe.wav2vec.to(device)
        return
    if mode == "model_cpu_offload_and_qfloat8":
        enable_fp8_storage(pipe.transformer)
    if mode == "sequential_cpu_offload":
        enable_sequential_offload(pipe, device)
    else:
        pipe.enable_model_cpu_offload(device=device)
    pipe.wav2vec.to(device)


def enable_sequential_offload(pipe, device: torch.device) -> None:
    """accelerate's ``cpu_offload`` on every model component (what diffusers'
    ``enable_sequential_cpu_offload`` does, called directly: diffusers rewrites ``cpu`` to ``cpu:0``,
    which accelerate's hooks mishandle, so the CPU-executed test would not run), then the
    ``RESIDENT_IN_SEQUENTIAL`` modules of the DiT are put back on ``device``."""
    pipe.remove_all_hooks()
    pipe.to("cpu")
    for model in pipe.components.values():
        if isinstance(model, torch.nn.Module):
            _offload_tree(model, device)
    pipe._offload_device = device
    for component, suffixes in RESIDENT_IN_SEQUENTIAL.items():
        _keep_resident(getattr(pipe, component), suffixes, device)


def enable_fp8_storage(transformer: torch.nn.Module) -> None:
    """Store the DiT's Linear/Conv weights in float8 e4m3 and compute in its current dtype."""
    compute_dtype = next(transformer.parameters()).dtype
    if compute_dtype == FP8_STORAGE_DTYPE:
        raise RuntimeError("the DiT weights are already float8; build a fresh pipeline to change the memory mode")
    patterns = tuple(getattr(transformer, "_skip_layerwise_casting_patterns", None) or ()) + FP8_EXTRA_SKIP_PATTERNS
    transformer.enable_layerwise_casting(storage_dtype=FP8_STORAGE_DTYPE, compute_dtype=compute_dtype, skip_modules_pattern=patterns)


def _offload_tree(model: torch.nn.Module, device: torch.device) -> None:
    """``cpu_offload(model)``, or child by child where ``model.state_dict()`` renames its keys
    (the Wan VAE presents Wan's key names): accelerate looks weights up by module path."""
    from accelerate import cpu_offload

    paths = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    if set(model.state_dict()) <= paths:
        # buffers too when the model has tensors of its own outside submodules (as diffusers does)
        cpu_offload(model, device, offload_buffers=len(model._parameters) > 0)
        return
    if model._parameters:
        raise RuntimeError(f"{type(model).__name__} renames its state_dict keys and holds parameters itself: cannot offload it sequentially")
    for child in model.children():
        _offload_tree(child, device)


def _keep_resident(model: torch.nn.Module, suffixes: tuple[str, ...], device: torch.device) -> None:
    """Take the submodules of ``model`` whose names end with one of ``suffixes`` out of
    accelerate's sequential offload and put them on ``device``."""
    from accelerate.hooks import remove_hook_from_module

    for name, sub in list(model.named_modules()):
        if name.split(".")[-1] in suffixes:
            remove_hook_from_module(sub, recurse=True)  # restores the CPU weights from the offload map
            sub.to(device)


def oom_advice(mode: str, resume_path: str | None = None) -> str:
    """The message for ``torch.cuda.OutOfMemoryError`` under ``mode``: the next mode to try, and
    where the saved progress is (``resume_path``, when one was written)."""
    nxt = NEXT_MEMORY_MODE.get(mode)
    if nxt is not None:
        advice = f"rerun with --GPU_memory_mode {nxt}"
    else:
        advice = "this is already the lowest-memory mode: lower --width/--height, or free the GPU of other processes"
    msg = f"out of GPU memory in --GPU_memory_mode {mode}: {advice}"
    if resume_path:
        msg += f" and add --resume to continue from the saved latents ({resume_path})"
    return msg
