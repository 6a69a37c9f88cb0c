"""The ``fa3``/``auto`` attention backends on the CPU: selection, fallbacks, the custom op and its fake.

No FlashAttention build runs on a CPU, so a stand-in module (plain softmax attention in the
kernel's [B, L, n, d] layout, FP8 dequantised by its descales) is installed under the name of a
real one; the GPU tests (test_attention_gpu.py) run the real kernels.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from wan.models import attention as A


def qkv(b=2, lq=6, lk=9, n=2, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, length, n, d, generator=g).to(dtype) for length in (lq, lk, lk))


def reference(q, k, v):
    scores = torch.einsum("bqnd,bknd->bnqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    return torch.einsum("bnqk,bknd->bqnd", scores.softmax(-1), v.double())


@pytest.fixture
def fake_flash(monkeypatch):
    """A stand-in 'fa3_fwd_interface' module; records every call."""
    calls = []

    def flash_attn_func(q, k, v, q_descale=None, k_descale=None, v_descale=None):
        calls.append({"dtype": q.dtype, "descale": q_descale is not None, "shape": tuple(q.shape)})
        if q_descale is not None:  # FP8: dequantise with the per-(row, head) scales
            q, k, v = (t.float() * s[:, None, :, None] for t, s in ((q, q_descale), (k, k_descale), (v, v_descale)))
            return reference(q, k, v).to(torch.bfloat16), None
        return reference(q, k, v).to(q.dtype), None  # (out, lse) like flash-attn 3

    module = types.ModuleType("fa3_fwd_interface")
    module.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, "fa3_fwd_interface", module)
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # a real FA3 build here must not win
    A.flash_kernel.cache_clear()
    monkeypatch.setattr(A, "_flash_ok", {})
    monkeypatch.setattr(A, "_fp8_attention", False)
    yield calls
    A.flash_kernel.cache_clear()


def test_default_backend_is_auto_and_exact_on_cpu():
    assert A.get_attention_backend() == "auto"
    q, k, v = qkv()
    torch.testing.assert_close(A.attention(q, k, v), reference(q, k, v).float(), rtol=1e-5, atol=1e-5)


def test_fa3_without_a_build_is_a_clear_error(monkeypatch):
    for name in ("flash_attn_interface", "fa3_fwd_interface", "flash_attn.cute.interface", "flash_attn.cute", "flash_attn"):
        monkeypatch.setitem(sys.modules, name, None)  # import of each raises ImportError
    A.flash_kernel.cache_clear()
    try:
        assert A.flash_kernel() is None
        with pytest.raises(ImportError, match="pip install fa3-fwd"):
            A.set_attention_backend("fa3")
        with pytest.warns(UserWarning, match="FP8 attention needs FlashAttention-3"):
            assert A.set_fp8_attention(True) is False
    finally:
        A.flash_kernel.cache_clear()


def test_fa3_runs_the_installed_kernel_through_the_custom_op(fake_flash):
    q, k, v = qkv(d=64, dtype=torch.bfloat16)
    out = A.attention(q, k, v, backend="fa3")
    assert fake_flash == [{"dtype": torch.bfloat16, "descale": False, "shape": (2, 6, 2, 64)}]
    torch.testing.assert_close(out, reference(q, k, v).to(torch.bfloat16))
    # the padding lengths are ignored: fa3 is the original's unmasked maths, like sdpa_unmasked
    masked_lens = torch.tensor([3, 9])
    assert torch.equal(A.attention(q, k, v, k_lens=masked_lens, backend="fa3"), out)


def test_fa3_sends_what_the_kernel_cannot_take_to_sdpa(fake_flash):
    for q, k, v in (qkv(d=64), qkv(d=16, dtype=torch.bfloat16)):  # float32; a head size the kernels lack
        torch.testing.assert_close(A.attention(q, k, v, backend="fa3"), A.attention(q, k, v, backend="sdpa_unmasked"))
    assert fake_flash == []


def test_auto_on_cpu_never_calls_the_flash_kernel(fake_flash):
    q, k, v = qkv(dtype=torch.bfloat16)
    A.attention(q, k, v)
    assert fake_flash == []


class _Fake:
    """Just the attributes _resolve_auto reads (no CUDA tensor can exist here)."""

    def __init__(self, cuda=True, dtype=torch.bfloat16, requires_grad=False, head_dim=128):
        self.is_cuda, self.dtype, self.requires_grad = cuda, dtype, requires_grad
        self.device = torch.device("cuda:0" if cuda else "cpu")
        self.shape = (1, 10, 2, head_dim)


@pytest.mark.parametrize(
    "kwargs, grad, flash_ok, expected",
    [
        ({}, False, True, "fa3"),
        ({}, False, False, "sdpa_unmasked"),  # not a Hopper GPU / no build
        ({"dtype": torch.float32}, False, True, "sdpa_unmasked"),  # flash kernels are half precision only
        ({"cuda": False}, False, True, "sdpa_unmasked"),
        ({"requires_grad": True}, True, True, "sdpa_unmasked"),  # training: forward-only kernels
        ({"requires_grad": True}, False, True, "fa3"),  # under no_grad a leaf that requires grad is fine
        ({"head_dim": 16}, False, True, "sdpa_unmasked"),  # a head size the kernels are not built for (tiny models)
    ],
)
def test_auto_selection(monkeypatch, kwargs, grad, flash_ok, expected):
    monkeypatch.setattr(A, "_flash_ok", {0: flash_ok})
    t = _Fake(**kwargs)
    with torch.set_grad_enabled(grad):
        assert A._resolve_auto(t, t) == expected


def test_prepare_attention_needs_a_hopper_gpu(fake_flash, monkeypatch):
    capability = {"value": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability["value"])
    assert A.prepare_attention("cuda:0") is True
    capability["value"] = (8, 0)  # cached per device: an A100 at index 1 is refused
    assert A.prepare_attention("cuda:1") is False
    assert A._flash_ok == {0: True, 1: False}
    assert A.prepare_attention("cpu") is False


def test_custom_op_compiles_without_graph_breaks(fake_flash):
    """fullgraph=True fails on any graph break; aot_eager runs the fake implementation for shapes."""
    q, k, v = qkv(d=64, dtype=torch.bfloat16)

    def block(q, k, v):
        return A.attention(q * 2, k, v, backend="fa3").sin()

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), block(q, k, v))
    assert fake_flash and all(call["dtype"] == torch.bfloat16 for call in fake_flash)
    explanation = torch._dynamo.explain(block)(q, k, v)
    assert explanation.graph_break_count == 0


def test_fake_implementation_shapes_and_fp8_output_dtype():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(3, 10, 4, 16, dtype=torch.float8_e4m3fn)
        kv = torch.empty(3, 7, 4, 16, dtype=torch.float8_e4m3fn)
        scale = torch.empty(3, 4)
        out = torch.ops.wan.flash_attention(q, kv, kv, scale, scale, scale)
        assert out.shape == (3, 10, 4, 16) and out.dtype == torch.bfloat16
        half = torch.empty(3, 10, 4, 16, dtype=torch.bfloat16)
        assert torch.ops.wan.flash_attention(half, half, half).dtype == torch.bfloat16


def test_quantize_fp8_scales_per_row_and_head():
    x = torch.randn(2, 50, 3, 16) * torch.tensor([1.0, 10.0, 0.01])[None, None, :, None]
    x8, scale = A.quantize_fp8(x)
    assert x8.dtype == torch.float8_e4m3fn and scale.shape == (2, 3)
    torch.testing.assert_close(scale, x.abs().amax(dim=(1, 3)) / A.FP8_MAX)
    assert torch.allclose(x8.float().abs().amax(dim=(1, 3)), torch.full((2, 3), A.FP8_MAX))  # each head uses the full range
    back = x8.float() * scale[:, None, :, None]
    rel = (back - x).norm(dim=(1, 3)) / x.norm(dim=(1, 3))
    assert rel.max() < 0.05  # e4m3 has a 3-bit mantissa: ~2-3% per element, relative to each head's own size


def test_fp8_attention_sends_quantised_inputs_and_stays_close(fake_flash):
    q, k, v = qkv(b=2, lq=64, lk=64, n=2, d=64, dtype=torch.bfloat16)
    assert A.set_fp8_attention(True) is True
    try:
        out = A.attention(q, k, v, backend="fa3")
    finally:
        A.set_fp8_attention(False)
    assert fake_flash[-1] == {"dtype": torch.float8_e4m3fn, "descale": True, "shape": (2, 64, 2, 64)}
    assert out.dtype == torch.bfloat16
    ref = reference(q.float(), k.float(), v.float()).float()
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert 1e-3 < rel < 0.08  # not exact (it is FP8), but close
    A.attention(q, k, v, backend="fa3")
    assert fake_flash[-1]["dtype"] == torch.bfloat16  # switched off again
