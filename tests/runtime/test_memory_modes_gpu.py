"""--GPU_memory_mode on a real GPU (tiny pipeline): each mode gives full load's video.

Run on the GPU machine: ``pytest -m gpu tests/runtime/test_memory_modes_gpu.py``. Offload modes
must match model_full_load bit for bit (same kernels, only the placement differs); fp8 weights
within a PSNR bound. Also checks that models really leave the GPU between uses.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.runtime.conftest import generate

pytestmark = pytest.mark.gpu
FP8_MIN_PSNR_DB = 28.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.fixture(scope="module")
def cuda_pipe(tiny_folder):
    from wan.pipelines.loading import load_pipeline

    def make(mode):
        pipe = load_pipeline(*tiny_folder.values(), memory_mode=mode, device="cuda")
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


@pytest.fixture(scope="module")
def reference(cuda_pipe):
    return generate(cuda_pipe("model_full_load"), output_type="pt")


@pytest.mark.parametrize("mode", ["model_cpu_offload", "sequential_cpu_offload"])
def test_offload_mode_equals_full_load(cuda_pipe, reference, mode):
    pipe = cuda_pipe(mode)
    out = generate(pipe, output_type="pt")
    assert torch.equal(out.latents.cpu(), reference.latents.cpu())
    assert torch.equal(out.videos, reference.videos)
    chunks = list(generate(pipe, output_type="stream").videos)  # the CLI's streamed decode
    assert sum(c.shape[2] for c in chunks) == reference.videos.shape[2]
    assert pipe.text_encoder.device.type in ("cpu", "meta")  # T5 left the GPU after encoding


def test_fp8_close_to_full_load(cuda_pipe, reference):
    out = generate(cuda_pipe("model_cpu_offload_and_qfloat8"), output_type="pt")
    assert psnr(out.videos, reference.videos) > FP8_MIN_PSNR_DB


def test_teacache_threshold_zero_is_exact_on_gpu(tiny_folder, reference):
    from wan.pipelines.loading import load_pipeline

    pipe = load_pipeline(*tiny_folder.values(), device="cuda", teacache_threshold=0.0, teacache_skip_start_steps=0, teacache_offload=True)
    pipe.set_progress_bar_config(disable=True)
    assert torch.equal(generate(pipe).latents.cpu(), reference.latents.cpu())
