"""Where one DiT step spends its time, and what each speed lever buys (issue 10).

    python bench/profile_step.py                       # H100, 1.3B, 480x832x81, CFG batch 3, bf16
    python bench/profile_step.py --tiny                # CPU smoke test
    python bench/profile_step.py --variants faithful,fast --breakdown faithful,fast   # issue 14

Prints JSON lines:
* ``matmul_ceiling``: achieved bf16 TFLOP/s of a large GEMM on this card (the MFU denominator);
* ``variant``: median step time / peak memory / model FLOP utilisation for each lever combination,
  and the rel. L2 distance of its output to the baseline output (same inputs, same weights);
* ``breakdown``: CUDA kernel time of one step split into attention, GEMM, FP8 quantisation passes
  and everything else, for the baseline and the fastest variant (or the ``--breakdown`` list), with
  the ``--top`` kernels by time (``top_kernels``: name, ms per step, calls).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, peak_gib, reset_peak, timed  # noqa: E402
from bench.dit_step import build, cfg_inputs  # noqa: E402
from wan.models.attention import quantize_fp8 as _QUANTIZE_FP8  # noqa: E402
from wan.models.attention import set_attention_backend, set_sdpa_kernel  # noqa: E402

VARIANTS = {  # name: (sdpa kernel, regional compile, attention backend, --fast)
    "baseline": ("auto", False, "sdpa_unmasked", False),
    "cudnn": ("cudnn", False, "sdpa_unmasked", False),
    "flash": ("flash", False, "sdpa_unmasked", False),
    "compile": ("auto", True, "sdpa_unmasked", False),
    "cudnn+compile": ("cudnn", True, "sdpa_unmasked", False),
    "fa3": ("auto", False, "fa3", False),
    "faithful": ("auto", True, "auto", False),  # the GPU default (compiled blocks, fa3 where installed)
    "fast": ("auto", True, "auto", True),  # --fast: FP8 matmuls + FP8 attention
    # experiments on --fast's quantisation passes (see setup()):
    "fast-noemulate": ("auto", True, "auto", True),  # inductor's emulate_precision_casts off
    "fast-amax2": ("auto", True, "auto", True),  # q/k/v amax in two stages (per token, then per head)
    "fast-both": ("auto", True, "auto", True),
}
QUANT_MARKERS = ("amax", "float8", "fp8", "e4m3", "quant", "clamp_div")


def kernel_category(name: str) -> str:
    """attention / gemm / quantise / other. Inductor's fused Triton kernels are named after every op
    they absorbed (``triton_red_fused__scaled_mm__to_copy_abs_amax_...``): never a matmul or an
    attention kernel themselves, they count as quantisation passes when they compute FP8 scales."""
    name = name.lower()
    if name.startswith("triton_"):
        return "quantise" if any(s in name for s in QUANT_MARKERS) else "other"
    if any(s in name for s in ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")):
        return "attention"
    if any(s in name for s in ("gemm", "cutlass", "xmma", "nvjet", "matmul", "sm90_", "scaled_mm")):
        return "gemm"
    if any(s in name for s in QUANT_MARKERS):
        return "quantise"
    return "other"


def step_flops(model, inputs) -> float:
    """Matmul + attention FLOPs of one forward (2 per multiply-add); norms and elementwise ignored."""
    cfg = model.config
    b, tokens, d, f = inputs["x"].shape[0], inputs["seq_len"], cfg.dim, cfg.ffn_dim
    ctx = 257 + cfg.text_len
    frames = (inputs["video_sample_n_frames"] - 1) // 4 + 1
    audio_window = 17  # tokens per latent frame window for 167 wav2vec tokens
    per_layer = 2 * tokens * (4 * d * d + 2 * d * d + 2 * d * f)  # self qkvo, cross q+o, ffn
    per_layer += 2 * 2 * ctx * d * d + 2 * 2 * frames * audio_window * d * d  # cross k/v (text+img, audio)
    per_layer += 4 * tokens * tokens * d + 4 * tokens * (ctx + audio_window) * d  # attention scores + values
    return b * cfg.num_layers * per_layer


def matmul_ceiling(device) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    m, _ = timed(lambda: a @ a, warmup=3, repeat=10)
    return 2 * 8192**3 / m


def _quantize_fp8_two_stage(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As wan.models.attention.quantize_fp8, the amax taken per token first (parallel), then per head."""
    from wan.models.attention import FP8_MAX

    scale = x.abs().amax(dim=3).amax(dim=1).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale[:, None, :, None]).to(torch.float8_e4m3fn), scale


def setup(name: str, tiny: bool, device, dtype):
    """A fresh model with variant ``name``'s levers switched on."""
    kernel, compiled, backend, fast = VARIANTS[name]
    torch.compiler.reset()
    model = build("1.3B", 2 if tiny else None, device, dtype)
    set_sdpa_kernel(kernel)
    set_attention_backend(backend)
    if compiled:
        from wan.runtime.compile_cache import configure_compile_cache

        configure_compile_cache()
        model.compile_blocks()
    if fast:
        from wan.runtime.fast import disable_fast_attention, enable_fast_mode

        disable_fast_attention()
        print("fast mode:", enable_fast_mode(model, device).describe(), flush=True)
        import torch._inductor.config as inductor_config

        import wan.models.attention as attention

        inductor_config.emulate_precision_casts = name not in ("fast-noemulate", "fast-both") or not compiled
        attention.quantize_fp8 = _quantize_fp8_two_stage if name in ("fast-amax2", "fast-both") else _QUANTIZE_FP8
    else:
        from wan.runtime.fast import disable_fast_attention

        disable_fast_attention()
    return model


def breakdown(model, inputs, device, top: int = 0) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), profile(activities=[ProfilerActivity.CUDA]) as prof:
        model(**inputs)
        torch.cuda.synchronize()
    cats = {"attention": 0.0, "gemm": 0.0, "quantise": 0.0, "other": 0.0}
    kernels = []
    for evt in prof.key_averages():
        t = getattr(evt, "self_device_time_total", None)
        if t is None:
            t = getattr(evt, "self_cuda_time_total", 0.0)
        if not t:
            continue
        cats[kernel_category(evt.key)] += t
        kernels.append((t, evt.key, evt.count))
    total = sum(cats.values())
    row = {k: round(v / 1e6, 3) for k, v in cats.items()} | {"total_s": round(total / 1e6, 3)}
    if top:
        kernels.sort(reverse=True)
        row["top_kernels"] = [[name[:160], round(t / 1e3, 2), n] for t, name, n in kernels[:top]]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="480x832")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--breakdown", default="", help="variants to profile kernel by kernel (default: baseline and the fastest)")
    p.add_argument("--top", type=int, default=25, help="kernels listed per breakdown")
    args = p.parse_args()
    profiled = [v for v in args.breakdown.split(",") if v]
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    h, w = (64, 64) if args.tiny else map(int, args.size.split("x"))
    frames = 17 if args.tiny else 81
    if device == "cuda":
        ceiling = matmul_ceiling(device)
        emit(bench="matmul_ceiling", tflops=round(ceiling / 1e12, 1))
    inputs = cfg_inputs(h, w, frames, device, dtype, audio_tokens=33 if args.tiny else 167)
    reference = None
    best: tuple[float, str] | None = None  # (median, name) of the fastest lever
    for name in args.variants.split(","):
        model = setup(name, args.tiny, device, dtype)

        def step(model=model):
            with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                return model(**inputs)

        reset_peak()
        out = step().float()
        if reference is None:
            reference = out
        rel = ((out - reference).norm() / reference.norm()).item()
        median, runs = timed(step, warmup=2, repeat=args.repeat)
        row = dict(bench="variant", variant=name, size=f"{h}x{w}x{frames}", median_s=round(median, 4), runs_s=[round(r, 4) for r in runs],
                   peak_gib=None if peak_gib() is None else round(peak_gib(), 2), rel_l2_vs_baseline=float(f"{rel:.3e}"))  # fmt: skip
        if device == "cuda":
            row["mfu"] = round(step_flops(model, inputs) / median / ceiling, 3)
            row["tflops_achieved"] = round(step_flops(model, inputs) / median / 1e12, 1)
        emit(**row)
        if device == "cuda" and (name in profiled or (not profiled and name == "baseline")):
            emit(bench="breakdown", variant=name, size=row["size"], **breakdown(model, inputs, device, args.top))
        elif best is None or median < best[0]:
            best = (median, name)
        del model, out  # one model alive at a time: each variant's peak is its own
    if device == "cuda" and best is not None and not profiled:
        model = setup(best[1], False, device, dtype)
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            model(**inputs)  # compile outside the profiled step
        emit(bench="breakdown", variant=best[1], size=f"{h}x{w}x{frames}", **breakdown(model, inputs, device, args.top))
    set_sdpa_kernel("auto")
    set_attention_backend("auto")


if __name__ == "__main__":
    main()
