"""The one attention function of the package, with named backends.

Tensors use Wan's layout: q [B, Lq, n, d], k/v [B, Lk, n, d] -> out [B, Lq, n, d].

Backends
--------
``auto`` (default)
    ``fa3`` where it can run (a CUDA Hopper GPU, bf16/fp16 inputs, inference, a FlashAttention-3/4
    build installed), else ``sdpa_unmasked`` (cuDNN's kernel first on CUDA). Both are the original's
    unmasked maths; only the floating-point rounding differs.
``sdpa_unmasked``
    ``torch.nn.functional.scaled_dot_product_attention`` with NO mask. This is what the original
    1.3B code runs (it forces flash-attn off and its SDPA fallback ignores every length), so
    zero-padded video tokens, the 512 padded text positions and padded audio slots are all
    attended. Required to match the released checkpoints' outputs.
``sdpa``
    SDPA with a key-padding mask built from ``k_lens``: padding is ignored. Not the original's maths.
``fa3``
    FlashAttention-3 (``flash_attn_interface`` from flash-attn's hopper/ build, or the forward-only
    ``fa3_fwd`` wheel) or FlashAttention-4 (``flash_attn.cute``), unmasked like ``sdpa_unmasked``:
    the same maths, about 1.2x faster than cuDNN on an H200. Called through the custom op
    ``torch.ops.wan.flash_attention`` (with a fake implementation), so regional ``torch.compile``
    traces it without a graph break. Inference only (the kernels here are forward-only). Calls the
    kernels cannot take (float32 inputs, head sizes other than 64/96/128/192/256) go to SDPA.
    With ``set_fp8_attention(True)`` (the ``--fast`` mode) q/k/v are quantised to float8 e4m3
    with one scale per (batch row, head) and the kernel's FP8 path runs: faster, not exact.
``flash2`` / ``flash3``
    flash-attn 2 / 3 varlen kernels (masked like ``sdpa``, computed in bf16/fp16). Faster on GPUs,
    not bit-identical to the default.
``usp``
    sequence-parallel attention (xfuser); installed by ``wan.distributed.sequence_parallel``.

Pick one with ``set_attention_backend(name)``, the ``attention_backend(name)`` context manager, or
the environment variable ``WAN_ATTENTION_BACKEND``. Unlike the original, nothing raises when
PyTorch's flash SDP kernel is disabled.

For the SDPA backends, ``set_sdpa_kernel(name)`` (or ``WAN_SDPA_KERNEL``) puts one of PyTorch's
kernels first: ``auto`` (PyTorch's choice, default), ``cudnn`` (cuDNN attention, the fastest on
H100), ``flash`` (FlashAttention-2 inside PyTorch), ``efficient``, ``math``. Where the preferred
kernel cannot run a shape, PyTorch falls back to the next. All compute the same softmax
attention; they differ only in floating-point rounding.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa_unmasked", "fa3", "sdpa", "flash2", "flash3", "usp")
EXACT_BACKENDS = ("auto", "sdpa_unmasked", "fa3")  # the original's unmasked maths
# FlashAttention builds tried by ``fa3``/``auto``, first found wins: (module, GPU majors it runs on, FP8 support).
FLASH_MODULES = (
    ("flash_attn_interface", (9,), True),  # flash-attn 3, built from its hopper/ folder
    ("fa3_fwd_interface", (9,), True),  # pip install fa3-fwd: the FA3 forward kernel alone
    ("flash_attn.cute.interface", (9, 10), False),  # flash-attn-4 (CuTe DSL)
)
FLASH_HEAD_DIMS = (64, 96, 128, 192, 256)  # head sizes the FA3 kernels are built for (Wan: 128)
FP8_MAX = 448.0  # largest finite float8_e4m3fn
SDPA_KERNELS = ("auto", "cudnn", "flash", "efficient", "math")
_EXTRA: dict[str, Callable[..., torch.Tensor]] = {}
_backend: str | None = None
_fp8_attention = False
_flash_ok: dict[int, bool] = {}  # CUDA device index -> the flash kernel runs there (filled by prepare_attention)
_sdpa_order: list | None = None  # kernel priority list for torch.nn.attention.sdpa_kernel, None = PyTorch's


def set_sdpa_kernel(name: str | None) -> None:
    """Prefer one of PyTorch's SDPA kernels (see module doc); ``None``/``"auto"``: PyTorch decides."""
    global _sdpa_order
    name = name or os.environ.get("WAN_SDPA_KERNEL", "auto")
    if name not in SDPA_KERNELS:
        raise ValueError(f"unknown SDPA kernel {name!r}; choose from {SDPA_KERNELS}")
    if name == "auto":
        _sdpa_order = None
        return
    from torch.nn.attention import SDPBackend

    kinds = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    _sdpa_order = [kinds[name]] + [k for n, k in kinds.items() if n != name]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, prefer_cudnn: bool = False) -> torch.Tensor:
    """SDPA on [B, L, n, d] tensors, with the preferred kernel first when one is set
    (``prefer_cudnn``: cuDNN first when no kernel was chosen, as ``auto`` does on CUDA)."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    order = _sdpa_order
    if order is None and prefer_cudnn:
        from torch.nn.attention import SDPBackend

        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if order is None or q.device.type != "cuda":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(order, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


def register_backend(name: str, fn: Callable[..., torch.Tensor]) -> None:
    """Install an implementation for a backend that lives elsewhere (``usp``)."""
    _EXTRA[name] = fn


def get_attention_backend() -> str:
    name = _backend or os.environ.get("WAN_ATTENTION_BACKEND", "auto")
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r} (WAN_ATTENTION_BACKEND?); choose from {BACKENDS}")
    return name


def set_attention_backend(name: str | None) -> None:
    """Select the backend for every later call; ``None`` goes back to the environment/default."""
    global _backend
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {BACKENDS}")
    if name in ("flash2", "flash3"):
        _import_flash(name)  # fail now, with the fix, rather than inside the first forward
    if name == "fa3" and flash_kernel() is None:
        raise ImportError(
            "attention backend 'fa3' needs a FlashAttention-3/4 build: pip install fa3-fwd (Hopper, forward only), "
            "or flash-attn 3 from its hopper/ folder, or flash-attn-4; or use --attention_backend auto"
        )
    _backend = name


def set_fp8_attention(enabled: bool) -> bool:
    """FP8 (e4m3) q/k/v in the ``fa3`` kernel (``--fast``). Returns whether it will take effect:
    False, with a warning, where no installed flash build has an FP8 path."""
    global _fp8_attention
    kernel = flash_kernel()
    if enabled and (kernel is None or not kernel[2]):
        warnings.warn("FP8 attention needs FlashAttention-3 (fa3-fwd or flash_attn_interface); attention stays bf16", stacklevel=2)
        enabled = False
    _fp8_attention = enabled
    return enabled


@functools.cache
def flash_kernel() -> tuple[str, Callable, bool, tuple[int, ...]] | None:
    """(module name, flash_attn_func, has FP8, GPU majors) of the first FlashAttention-3/4 build
    that imports, or None. A build whose CUDA library fails to load counts as absent."""
    for module_name, majors, fp8 in FLASH_MODULES:
        try:
            fn = importlib.import_module(module_name).flash_attn_func
        except Exception:  # ImportError, or an OSError/RuntimeError from a build for another torch/CUDA
            continue
        return module_name, fn, fp8, majors
    return None


@torch.compiler.disable
def prepare_attention(device: torch.device | str) -> bool:
    """Decide once, outside any compiled region, whether ``fa3`` can run on ``device``.
    The DiT's (uncompiled) forward calls this, so ``auto`` is a dictionary lookup inside the
    compiled blocks."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _flash_ok:
        kernel = flash_kernel()
        _flash_ok[index] = kernel is not None and torch.cuda.get_device_capability(index)[0] in kernel[3]
    return _flash_ok[index]


def _flash_inputs_ok(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Half-precision inputs of a head size the kernels are built for."""
    return q.dtype in (torch.bfloat16, torch.float16) and k.dtype == q.dtype and q.shape[-1] in FLASH_HEAD_DIMS


def _resolve_auto(q: torch.Tensor, k: torch.Tensor) -> str:
    usable = q.is_cuda and _flash_inputs_ok(q, k)
    if usable and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        usable = False  # training: the flash kernels here have no backward
    if usable:
        ok = _flash_ok.get(q.device.index if q.device.index is not None else 0)
        usable = prepare_attention(q.device) if ok is None else ok
    return "fa3" if usable else "sdpa_unmasked"


@torch.library.custom_op("wan::flash_attention", mutates_args=())
def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_descale: torch.Tensor | None = None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unmasked softmax attention by the installed FlashAttention build, [B, L, n, d] layout.
    FP8 inputs take their descales ([B, n] float32) and give bf16."""
    kernel = flash_kernel()
    if kernel is None:
        raise RuntimeError("no FlashAttention-3/4 build is installed (pip install fa3-fwd)")
    extra = {} if q_descale is None else {"q_descale": q_descale, "k_descale": k_descale, "v_descale": v_descale}
    out = kernel[1](q, k, v, **extra)
    return (out[0] if isinstance(out, tuple) else out).contiguous()


@flash_attention.register_fake
def _flash_attention_fake(q, k, v, q_descale=None, k_descale=None, v_descale=None):
    dtype = torch.bfloat16 if q.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else q.dtype
    return q.new_empty((*q.shape[:-1], v.shape[-1]), dtype=dtype)


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L, n, d] -> (float8 e4m3 tensor, [B, n] float32 descale): one scale per batch row and head."""
    scale = x.abs().amax(dim=(1, 3)).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale[:, None, :, None]).to(torch.float8_e4m3fn), scale


def _fa3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    dtype = q.dtype
    if _fp8_attention:
        (q8, qs), (k8, ks), (v8, vs) = quantize_fp8(q), quantize_fp8(k), quantize_fp8(v)
        return flash_attention(q8, k8, v8, qs, ks, vs).to(dtype)
    return flash_attention(q.contiguous(), k.contiguous(), v.contiguous())


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    previous = _backend
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def _import_flash(name: str):
    try:
        if name == "flash3":
            import flash_attn_interface as module
        else:
            import flash_attn as module
    except ImportError as exc:
        pkg = "flash-attn 3 (flash_attn_interface, built from the hopper/ folder)" if name == "flash3" else "flash-attn 2"
        raise ImportError(f"attention backend {name!r} needs {pkg}: pip install flash-attn --no-build-isolation") from exc
    return module


def _key_padding_mask(k_lens: torch.Tensor, batch: int, lk: int, device: torch.device) -> torch.Tensor:
    """[B, 1, 1, Lk] bool mask, True where the key is real."""
    k_lens = k_lens.to(device)
    if k_lens.numel() != batch:
        raise ValueError(f"k_lens has {k_lens.numel()} entries for a batch of {batch}")
    return (torch.arange(lk, device=device)[None, :] < k_lens[:, None])[:, None, None, :]


def _flash_varlen(name: str, q, k, v, q_lens, k_lens) -> torch.Tensor:
    module = _import_flash(name)
    b, lq, n, d = q.shape
    lk = k.shape[1]
    half = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    q_lens = torch.full((b,), lq, dtype=torch.int32, device=q.device) if q_lens is None else q_lens.to(q.device, torch.int32)
    k_lens = torch.full((b,), lk, dtype=torch.int32, device=q.device) if k_lens is None else k_lens.to(q.device, torch.int32)
    qv = torch.cat([q[i, : q_lens[i]] for i in range(b)]).to(half)
    kv = torch.cat([k[i, : k_lens[i]] for i in range(b)]).to(half)
    vv = torch.cat([v[i, : k_lens[i]] for i in range(b)]).to(half)
    cu_q = F.pad(q_lens.cumsum(0, dtype=torch.int32), (1, 0))
    cu_k = F.pad(k_lens.cumsum(0, dtype=torch.int32), (1, 0))
    out = module.flash_attn_varlen_func(qv, kv, vv, cu_q, cu_k, lq, lk)
    if isinstance(out, tuple):  # flash-attn 3 returns (out, lse)
        out = out[0]
    # Scatter back to [B, Lq, n, d]; padded query rows are zero (their outputs are dropped later).
    full = q.new_zeros(b, lq, n, d)
    offset = 0
    for i in range(b):
        full[i, : q_lens[i]] = out[offset : offset + q_lens[i]].to(q.dtype)
        offset += int(q_lens[i])
    return full


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lens: torch.Tensor | None = None,
    k_lens: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Softmax attention with scale 1/sqrt(d). q [B,Lq,n,d], k/v [B,Lk,n,d] -> [B,Lq,n,d].

    ``q_lens``/``k_lens`` ([B] valid lengths) are used by the masked backends only.
    """
    name = backend or get_attention_backend()
    if name == "auto":
        name = _resolve_auto(q, k)
        if name == "sdpa_unmasked":
            return _sdpa(q, k, v, prefer_cudnn=True)
    if name == "fa3":
        if not _flash_inputs_ok(q, k):  # e.g. a float32 branch of the model: the same maths by SDPA
            return _sdpa(q, k, v, prefer_cudnn=True)
        return _fa3(q, k, v)
    if name == "sdpa_unmasked" or (name == "sdpa" and k_lens is None):
        return _sdpa(q, k, v)
    if name == "sdpa":
        return _sdpa(q, k, v, _key_padding_mask(k_lens, q.shape[0], k.shape[1], q.device))
    if name in ("flash2", "flash3"):
        return _flash_varlen(name, q, k, v, q_lens, k_lens)
    if name in _EXTRA:
        return _EXTRA[name](q, k, v, q_lens=q_lens, k_lens=k_lens)
    raise RuntimeError(f"attention backend {name!r} is not installed (wan.distributed.sequence_parallel sets up 'usp')")


set_sdpa_kernel(None)  # read WAN_SDPA_KERNEL once at import
