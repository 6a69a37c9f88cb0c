"""--fast and the compile default on the CPU: which layers go FP8, what falls back, what is refused."""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch

from wan.configs import transformer_config
from wan.models import attention as A
from wan.models.transformer import WanAvatarTransformer3DModel
from wan.pipelines.loading import auto_compile
from wan.runtime import fast


@pytest.fixture(scope="module")
def tiny_dit():
    torch.manual_seed(0)
    config = transformer_config("1.3B", dim=64, ffn_dim=96, num_heads=4, num_layers=2, audio_proj_dim=64, audio_adapter_heads=4, text_dim=32)
    return WanAvatarTransformer3DModel(**config).eval()


def selected(model):
    return [name for name, module in model.named_modules() if fast.is_fast_linear(module, name)]


def test_fp8_layers_are_the_blocks_big_linears(tiny_dit):
    names = selected(tiny_dit)
    expected = [f"blocks.{i}.{suffix}" for i in range(2) for suffix in fast.FAST_LINEARS]
    assert sorted(names) == sorted(expected)
    for name in expected:  # every listed name is a real Linear (a rename would silently drop it)
        assert isinstance(tiny_dit.get_submodule(name), torch.nn.Linear)
    assert not any("vocal" in n or "k_img" in n or n.endswith("cross_attn.k") for n in names)


def test_on_cpu_fast_mode_changes_nothing_and_says_why(tiny_dit):
    before = {k: v.clone() for k, v in tiny_dit.state_dict().items()}
    with pytest.warns(UserWarning, match="--fast: FP8 needs a CUDA GPU of compute capability 8.9"):
        mode = fast.enable_fast_mode(tiny_dit, "cpu")
    assert (mode.fp8_linear, mode.fp8_attention) == (False, False)
    assert not A._fp8_attention
    after = tiny_dit.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_capable_device_quantises_with_torchao_row_wise(tiny_dit, monkeypatch):
    """quantize_ is torchao's real API: called once, float8 dynamic activations x float8 weights,
    row-wise scales, with our filter."""
    calls = []
    quantization = types.ModuleType("torchao.quantization")

    class PerRow:
        pass

    class Float8DynamicActivationFloat8WeightConfig:
        def __init__(self, granularity, set_inductor_config=True):
            self.granularity, self.set_inductor_config = granularity, set_inductor_config

    quantization.PerRow = PerRow
    quantization.Float8DynamicActivationFloat8WeightConfig = Float8DynamicActivationFloat8WeightConfig
    quantization.quantize_ = lambda model, config, filter_fn: calls.append((model, config, filter_fn))
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.quantization", quantization)
    monkeypatch.setattr(fast, "_fp8_capable", lambda device: True)
    monkeypatch.setattr(A, "set_fp8_attention", lambda enabled: False)  # no FP8 attention kernel here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mode = fast.enable_fast_mode(tiny_dit, "cuda")
    assert mode.fp8_linear and not mode.fp8_attention
    [(model, config, filter_fn)] = calls
    assert model is tiny_dit and isinstance(config.granularity, PerRow)
    assert config.set_inductor_config is False  # torchao's default turns on process-wide coordinate-descent autotuning
    assert filter_fn is fast.is_fast_linear


def test_without_torchao_the_reason_is_named(tiny_dit, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    monkeypatch.setattr(fast, "_fp8_capable", lambda device: True)
    monkeypatch.setattr(A, "set_fp8_attention", lambda enabled: False)
    with pytest.warns(UserWarning, match="pip install torchao"):
        mode = fast.enable_fast_mode(tiny_dit, "cuda", fp8_attention=False)
    assert not mode.fp8_linear


@pytest.mark.parametrize(
    "device, mode, multi, expected",
    [
        ("cuda", "model_full_load", False, True),
        ("cuda", "model_cpu_offload", False, True),
        ("cuda", "sequential_cpu_offload", False, False),
        ("cuda", "model_cpu_offload_and_qfloat8", False, False),
        ("cuda", "model_full_load", True, False),
        ("cpu", "model_full_load", False, False),
    ],
)
def test_compile_is_on_by_default_only_where_it_pays(device, mode, multi, expected):
    assert auto_compile(torch.device(device), mode, multi) is expected


def test_cli_compile_flags_and_fast_checks(tmp_path):
    from wan.cli.inference import InferenceArgumentError, build_parser, validate_speed_flags

    def parse(extra):
        return build_parser().parse_args(["--pretrained_model_name_or_path", "base", *extra])

    assert parse([]).compile is None and parse(["--compile"]).compile is True and parse(["--eager"]).compile is False
    assert parse([]).attention_backend == "auto" and parse([]).fast is False
    with pytest.raises(InferenceArgumentError, match="--fast .* model_full_load"):
        validate_speed_flags(parse(["--fast", "--GPU_memory_mode", "model_cpu_offload"]))
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(InferenceArgumentError, match="not writable"):
        validate_speed_flags(parse(["--compile", "--compile_cache_dir", str(blocker / "x")]))
    validate_speed_flags(parse(["--eager", "--compile_cache_dir", str(blocker / "x")]))  # not compiling: not checked
