"""GPU checks of the fa3 backend and --fast (skipped without CUDA; fa3 ones also without a FlashAttention-3 build).

Run on the H200: ``python -m pytest -m gpu tests/models/test_attention_gpu.py tests/models/test_transformer_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from tests.models.test_transformer_gpu import _bf16_rel_l2_to_golden
from wan.models import attention as A

pytestmark = pytest.mark.gpu


def needs_fa3():
    if A.flash_kernel() is None or not A.prepare_attention("cuda"):
        pytest.skip("needs a FlashAttention-3 build (pip install fa3-fwd) on a Hopper GPU")


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _qkv(b=3, lq=4096, lk=4096, n=12, d=128):
    g = torch.Generator(device="cuda").manual_seed(0)
    return [torch.randn(b, length, n, d, device="cuda", generator=g) for length in (lq, lk, lk)]


@pytest.mark.parametrize("lk", [4096, 512, 257])  # self-attention, the text and the CLIP branch
def test_fa3_error_against_float32_is_cudnns(lk):
    needs_fa3()
    q, k, v = _qkv(lk=lk)
    exact = A.attention(q, k, v, backend="sdpa_unmasked")  # float32
    hq, hk, hv = (t.bfloat16() for t in (q, k, v))
    A.set_sdpa_kernel("cudnn")
    try:
        cudnn = A.attention(hq, hk, hv, backend="sdpa_unmasked")
    finally:
        A.set_sdpa_kernel("auto")
    fa3 = A.attention(hq, hk, hv, backend="fa3")
    err_fa3, err_cudnn = _rel(fa3, exact), _rel(cudnn, exact)
    print(f"Lk={lk}: rel L2 to float32: fa3 {err_fa3:.3e}, cuDNN {err_cudnn:.3e}")
    assert err_fa3 <= 1.1 * err_cudnn + 1e-4


def test_auto_picks_fa3_on_hopper_and_sdpa_for_float32():
    needs_fa3()
    q, k, v = _qkv(b=1, lq=256, lk=256, n=2)
    assert A._resolve_auto(q.bfloat16(), k.bfloat16()) == "fa3"
    assert A._resolve_auto(q, k) == "sdpa_unmasked"


def test_dit_golden_with_fa3_eager_and_compiled():
    needs_fa3()
    assert _bf16_rel_l2_to_golden(compiled=False, backend="fa3") < 1e-2
    assert _bf16_rel_l2_to_golden(compiled=True, backend="fa3") < 1e-2


def test_compiled_block_has_no_graph_break_with_fa3():
    needs_fa3()
    from bench.dit_step import build, cfg_inputs

    model = build("1.3B", 1, "cuda", torch.bfloat16)
    inputs = cfg_inputs(96, 160, 17, "cuda", torch.bfloat16)
    captured = {}

    def grab(x, **kw):
        captured.update(x=x, kw=kw)
        return x

    model.run_blocks = grab
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(**inputs)
    block = model.blocks[0]
    with A.attention_backend("fa3"), torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(block)(captured["x"], **captured["kw"])
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_fast_mode_is_close_to_the_golden_and_not_the_faithful_numbers():
    """--fast on the golden DiT: FP8 weights in the blocks, a bounded error, different numbers."""
    needs_fa3()
    faithful = _bf16_rel_l2_to_golden(compiled=True, backend="fa3")
    fast = _bf16_rel_l2_to_golden(compiled=True, backend="fa3", fast=True)
    assert fast != faithful
    assert fast < 0.1
