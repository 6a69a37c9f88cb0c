"""--GPU_memory_mode on the tiny pipeline, run on the CPU through the very same hooks.

The offload hooks take an execution device; with the CPU as that device every weight still goes
through accelerate's offload/onload path (sequential offload keeps the weights on ``meta`` between
calls and streams them in per leaf), so a mode that computes something else than
``model_full_load`` fails here. Real GPU placement and peaks: test_memory_modes_gpu.py and
bench/memory_modes.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.runtime.conftest import generate
from wan.runtime.memory import MEMORY_MODES, NEXT_MEMORY_MODE, apply_memory_mode, oom_advice

# fp8 e4m3 keeps 3 mantissa bits: the tiny random DiT's video stays above this PSNR (measured
# 33.4 dB on the CPU; the bound leaves margin for other thread counts).
FP8_MIN_PSNR_DB = 28.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [0, 1]."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.fixture(scope="module")
def reference(make_pipe):
    return generate(make_pipe(), output_type="pt")


def pipe_in_mode(make_pipe, mode):
    pipe = make_pipe()
    apply_memory_mode(pipe, mode, "cpu", require_accelerator=False)
    return pipe


@pytest.mark.parametrize("mode", ["model_cpu_offload", "sequential_cpu_offload"])
def test_offload_modes_equal_full_load_bit_for_bit(make_pipe, reference, mode):
    pipe = pipe_in_mode(make_pipe, mode)
    assert all(hasattr(m, "_hf_hook") or any(hasattr(s, "_hf_hook") for s in m.modules()) for m in pipe.components.values() if isinstance(m, torch.nn.Module))
    out = generate(pipe, output_type="pt")
    assert torch.equal(out.latents, reference.latents)
    assert torch.equal(out.videos, reference.videos)


def test_sequential_offload_streams_weights_and_keeps_direct_reads_resident(make_pipe):
    pipe = pipe_in_mode(make_pipe, "sequential_cpu_offload")
    dit = pipe.transformer
    assert dit.blocks[0].ffn[0].weight.device.type == "meta"  # streamed in per call
    assert dit.text_embedding[0].weight.device.type == "meta"
    # read directly by _fp32_sequential / umT5's position buckets: resident, not streamed
    assert dit.time_embedding[0].weight.device.type == "cpu"
    assert all(m.embedding.weight.device.type == "cpu" for n, m in pipe.text_encoder.named_modules() if n.endswith("pos_embedding"))
    assert next(pipe.vae.model.decoder.parameters()).device.type == "meta"


def test_fp8_stores_dit_weights_in_float8_and_stays_close(make_pipe, reference):
    pipe = pipe_in_mode(make_pipe, "model_cpu_offload_and_qfloat8")
    dit = pipe.transformer
    assert dit.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    assert dit.blocks[0].ffn[2].weight.dtype == torch.float8_e4m3fn
    assert dit.blocks[0].modulation.dtype == torch.float32  # skipped patterns keep the compute dtype
    assert dit.blocks[0].norm3.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in dit.vocal_projector.parameters())
    out = generate(pipe, output_type="pt")
    assert not torch.equal(out.latents, reference.latents)  # fp8 rounding is real
    assert psnr(out.videos, reference.videos) > FP8_MIN_PSNR_DB


def test_offload_modes_refuse_the_cpu_for_users(make_pipe):
    with pytest.raises(RuntimeError, match="on the CPU use model_full_load"):
        apply_memory_mode(make_pipe(), "model_cpu_offload", "cpu")
    with pytest.raises(ValueError, match="choose one of"):
        apply_memory_mode(make_pipe(), "fast", "cpu")


def test_oom_advice_walks_down_the_modes():
    assert [NEXT_MEMORY_MODE[m] for m in MEMORY_MODES] == [*MEMORY_MODES[1:], None]
    msg = oom_advice("model_cpu_offload", "out/resume_state.safetensors")
    assert "--GPU_memory_mode model_cpu_offload_and_qfloat8" in msg and "--resume" in msg and "out/resume_state.safetensors" in msg
    assert "lowest-memory mode" in oom_advice("sequential_cpu_offload")
