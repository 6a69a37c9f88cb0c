"""bench/profile_step.py's kernel split (BENCHMARKS.md "Where the fast step goes" is made from it)."""

from __future__ import annotations

import pytest

from bench.profile_step import kernel_category

KERNELS = [  # names as torch.profiler reported them on the H200 (2026-11-29), shortened
    ("void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<...>>>", "attention"),
    ("nvjet_sm90_tst_192x208_64x4_1x2_h_bz_coopB_bias_TNT", "gemm"),
    ("nvjet_sm90_qqtst_128x128_128x6_2x1_v_bz_ovscale_bias_TNT", "gemm"),
    # inductor names a fused kernel after every op it absorbed: these are FP8 scale/cast passes
    ("triton_red_fused__scaled_mm__to_copy_abs_amax_clamp_div_gelu_t_unsqueeze_view_36", "quantise"),
    ("triton_red_fused__to_copy_abs_amax_stack_view_5", "quantise"),
    ("triton_poi_fused__scaled_mm__to_copy_clamp_div_t_unsqueeze_view_1", "quantise"),
    # ... and these are the bf16 step's norms/RoPE/GELU, not attention or matmuls
    ("triton_poi_fused__to_copy_flash_attention_stack_view_3", "other"),
    ("triton_poi_fused_gelu_view_12", "other"),
    ("triton_red_fused__to_copy_add_mul_native_layer_norm_split_0", "other"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::bfloat16_copy_kernel_cuda>", "other"),
]


@pytest.mark.parametrize("name,category", KERNELS)
def test_kernel_category(name, category):
    assert kernel_category(name) == category
