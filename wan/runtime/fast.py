"""``--fast``: FP8 (e4m3) matmuls and attention in the DiT. Faster, and NOT the original's numbers.

Two levers, each used where the hardware and the installed packages allow it (a warning names
whatever is left out):

* **FP8 matmuls** in the linear layers that run on the video tokens of every block (self-attention
  q/k/v/o, cross-attention q/o, the FFN), through torchao's
  ``Float8DynamicActivationFloat8WeightConfig(PerRow())``: weights stored in float8 with one scale
  per output row, activations quantised per token on the fly. Needs a CUDA GPU of compute capability
  8.9+ (Ada, Hopper) and torchao. The audio adapter, the embeddings, the time MLPs, the head and the
  small-context projections (text, CLIP and audio keys/values) stay in bf16. The gain comes with
  ``torch.compile`` (the activation quantisation is fused into the ops before each matmul); in eager
  mode it is slower than bf16, so the CLI warns about ``--fast`` with ``--eager``.
* **FP8 attention**: q/k/v quantised per (batch row, head) and the FlashAttention-3 FP8 kernel
  (``wan.models.attention.set_fp8_attention``).

The error this costs is measured in BENCHMARKS.md (random weights); the released weights' visual
quality in fast mode is not measured here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

# Linear layers (names inside a block) that see all video tokens: the FLOPs of the DiT.
FAST_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.o", "ffn.0", "ffn.2")
FP8_MIN_CAPABILITY = (8, 9)


@dataclass
class FastMode:
    fp8_linear: bool = False
    fp8_attention: bool = False
    skipped: list[str] = field(default_factory=list)  # why a lever is off

    def describe(self) -> str:
        on = [name for name, flag in (("FP8 matmuls", self.fp8_linear), ("FP8 attention", self.fp8_attention)) if flag]
        return ", ".join(on) or "nothing (see warnings)"


def is_fast_linear(module: nn.Module, fqn: str) -> bool:
    """torchao ``filter_fn``: the DiT blocks' big linear layers (see ``FAST_LINEARS``)."""
    parts = fqn.split(".", 2)
    return isinstance(module, nn.Linear) and len(parts) == 3 and parts[0] == "blocks" and parts[2] in FAST_LINEARS


def _fp8_capable(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY


def enable_fast_mode(transformer: nn.Module, device: torch.device | str, fp8_linear: bool = True, fp8_attention: bool = True) -> FastMode:
    """Turn on the FP8 levers for ``transformer`` (already in bf16) running on ``device``.
    Idempotent for attention; quantises the weights in place (call once per model)."""
    from wan.models.attention import set_fp8_attention

    device = torch.device(device)
    mode = FastMode()
    capable = _fp8_capable(device)
    if not capable:
        mode.skipped.append(f"FP8 needs a CUDA GPU of compute capability {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]}+ (here: {device})")
    if fp8_linear and capable:
        try:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
        except ImportError:
            mode.skipped.append("FP8 matmuls need torchao: pip install torchao")
        else:
            # set_inductor_config=False: torchao's "recommended" settings turn on inductor's coordinate-descent
            # autotuning for the whole process, which spent minutes per kernel at these shapes on an H200.
            config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
            quantize_(transformer, config, filter_fn=is_fast_linear)
            mode.fp8_linear = True
    if fp8_attention and capable:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mode.fp8_attention = set_fp8_attention(True)
        mode.skipped.extend(str(w.message) for w in caught)
    for reason in mode.skipped:
        warnings.warn(f"--fast: {reason}", stacklevel=2)
    return mode


def disable_fast_attention() -> None:
    """Back to bf16 attention (the weights of a quantised model stay quantised)."""
    from wan.models.attention import set_fp8_attention

    set_fp8_attention(False)
