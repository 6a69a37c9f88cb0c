"""GPU checks of the DiT (skipped without CUDA): bf16 numerics against the float32 golden, full size."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import CASES
from wan.golden import GoldenCase
from wan.testing.golden_dit import build_dit

pytestmark = pytest.mark.gpu


def _bf16_rel_l2_to_golden(compiled: bool, backend: str = "sdpa_unmasked", fast: bool = False) -> float:
    """dit_1b in bf16 under autocast on the GPU (as the pipeline runs it) vs the float32 golden."""
    from wan.models.attention import attention_backend, set_fp8_attention

    case = GoldenCase.load(CASES / "dit_1b")
    model = torch.nn.Module.to(build_dit(case.meta["constructor"]), device="cuda", dtype=torch.bfloat16)
    if fast:
        from wan.runtime.fast import enable_fast_mode

        enable_fast_mode(model, "cuda")
    if compiled:
        torch._dynamo.reset()
        model.compile_blocks()
    kw = case.call_kwargs()
    kw["clip_fea"] = kw["clip_fea"].repeat(3, 1, 1)
    for k in ("x", "y", "clip_fea", "vocal_embeddings"):
        kw[k] = kw[k].to("cuda", torch.bfloat16)
    kw["t"] = kw["t"].cuda()
    kw["context"] = [c.to("cuda", torch.bfloat16) for c in kw["context"]]
    try:
        with attention_backend(backend), torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**kw).float().cpu()
    finally:
        set_fp8_attention(False)
    ref = case.reference()["out"]
    rel_l2 = ((out - ref).norm() / ref.norm()).item()
    print(f"{'compiled ' if compiled else ''}{backend}{' fast' if fast else ''} bf16 vs float32 golden: rel_l2 {rel_l2:.3e}")
    return rel_l2


def test_dit_1b_bf16_autocast_close_to_float32_golden():
    assert _bf16_rel_l2_to_golden(compiled=False) < 1e-2


def test_full_size_1b_forward_480x832_batch3_is_finite():
    from bench.dit_step import build, cfg_inputs

    model = build("1.3B", None, "cuda", torch.bfloat16)
    inputs = cfg_inputs(480, 832, 81, "cuda", torch.bfloat16)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(**inputs)
    assert out.shape == (3, 16, 21, 60, 104)
    assert torch.isfinite(out.float()).all()


def test_dit_1b_compiled_bf16_close_to_float32_golden():
    """The regional torch.compile lever keeps the bf16 model within the same bound of the golden."""
    assert _bf16_rel_l2_to_golden(compiled=True) < 1e-2
