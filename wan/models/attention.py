"""The one attention function of the package, with named backends.

Tensors use Wan's layout: q [B, Lq, n, d], k/v [B, Lk, n, d] -> out [B, Lq, n, d].

Backends
--------
``sdpa_unmasked`` (default)
    ``torch.nn.functional.scaled_dot_product_attention`` with NO mask. This is what the original
    1.3B code runs (it forces flash-attn off and its SDPA fallback ignores every length), so
    zero-padded video tokens, the 512 padded text positions and padded audio slots are all
    attended. Required to match the released checkpoints' outputs.
``sdpa``
    SDPA with a key-padding mask built from ``k_lens``: padding is ignored. Not the original's maths.
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
import os
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa_unmasked", "sdpa", "flash2", "flash3", "usp")
SDPA_KERNELS = ("auto", "cudnn", "flash", "efficient", "math")
_EXTRA: dict[str, Callable[..., torch.Tensor]] = {}
_backend: str | None = None
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


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA on [B, L, n, d] tensors, with the preferred kernel first when one is set."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if _sdpa_order is None or q.device.type != "cuda":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(_sdpa_order, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


def register_backend(name: str, fn: Callable[..., torch.Tensor]) -> None:
    """Install an implementation for a backend that lives elsewhere (``usp``)."""
    _EXTRA[name] = fn


def get_attention_backend() -> str:
    name = _backend or os.environ.get("WAN_ATTENTION_BACKEND", "sdpa_unmasked")
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
    _backend = name


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
