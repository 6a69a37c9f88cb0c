"""LoRA files at inference (wan.models.lora): every key format gives the hand-applied delta."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.models.test_transformer import tiny_config, tiny_inputs
from wan.models.lora import LoraError, LoraSpec, load_loras
from wan.models.transformer import WanAvatarTransformer3DModel

# Linear layers the test LoRAs touch: self-attention, cross-attention (incl. the image branch), FFN, a
# layer of the float32 time MLP and the head.
TARGETS = ("blocks.0.self_attn.q", "blocks.1.cross_attn.k_img", "blocks.1.ffn.0", "time_projection.1", "head.head")
AUDIO_PARAM = "blocks.0.cross_attn.v_vocal.weight"  # a full tensor our training files carry


def _model() -> WanAvatarTransformer3DModel:
    torch.manual_seed(0)
    return WanAvatarTransformer3DModel(**tiny_config()).eval()


def _factors(seed: int, rank: int = 3) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """module -> (down [r, in], up [out, r], alpha), random, with a different rank on the last one."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(_model().named_modules())
    out = {}
    for i, name in enumerate(TARGETS):
        r = rank + (i == len(TARGETS) - 1)
        m = modules[name]
        out[name] = (torch.randn(r, m.in_features, generator=g) * 0.3, torch.randn(m.out_features, r, generator=g) * 0.3, 2.0 + i)
    return out


def _write(path, factors, fmt: str, audio: torch.Tensor | None = None):
    """Write ``factors`` in one of the four key styles."""
    state = {}
    for name, (down, up, alpha) in factors.items():
        if fmt == "peft":  # peft has no alpha key: fold alpha / r into up
            key = f"transformer.{name}".replace(".self_attn.q", ".attn1.to_q").replace(".ffn.0", ".ffn.net.0.proj")
            state[f"{key}.lora_A.weight"], state[f"{key}.lora_B.weight"] = down, up * (alpha / down.shape[0])
            continue
        key = {"stableavatar": "lora_transformer__" + name.replace(".", "_"), "kohya": "lora_unet_" + name.replace(".", "_"),
               "comfyui": "diffusion_model." + name}[fmt]  # fmt: skip
        state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"], state[f"{key}.alpha"] = down, up, torch.tensor(alpha)
    if audio is not None:
        state[AUDIO_PARAM] = audio
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _by_hand(loras: list[tuple[dict, float]], audio: list[tuple[torch.Tensor, float]] = ()) -> WanAvatarTransformer3DModel:
    model = _model()
    params = dict(model.named_parameters())
    base = {AUDIO_PARAM: params[AUDIO_PARAM].detach().clone()}
    with torch.no_grad():
        for factors, scale in loras:
            for name, (down, up, alpha) in factors.items():
                params[f"{name}.weight"] += (up @ down) * (scale * alpha / down.shape[0])
        for tensor, scale in audio:
            params[AUDIO_PARAM] += scale * (tensor - base[AUDIO_PARAM])
    return model


def _out(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_inputs())


@pytest.fixture(scope="module")
def plain() -> torch.Tensor:
    return _out(_model())


@pytest.mark.parametrize("fmt", ["stableavatar", "kohya", "comfyui", "peft"])
@pytest.mark.parametrize("merge", [True, False], ids=["merged", "hooks"])
def test_each_format_applies_the_hand_computed_delta(tmp_path, plain, fmt, merge):
    factors = _factors(1)
    audio = torch.randn(64, 64) * 0.05 if fmt == "stableavatar" else None
    path = _write(tmp_path / f"{fmt}.safetensors", factors, fmt, audio)
    got = _out(load_loras(_model(), [f"{path}:0.7"], merge=merge))
    expected = _out(_by_hand([(factors, 0.7)], [(audio, 0.7)] if audio is not None else []))
    assert not torch.allclose(expected, plain, atol=1e-3), "the test LoRA must change the output"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "hooks"])
def test_scale_zero_is_no_lora_bit_for_bit(tmp_path, plain, merge):
    path = _write(tmp_path / "a.safetensors", _factors(1), "stableavatar", torch.randn(64, 64))
    assert torch.equal(_out(load_loras(_model(), [LoraSpec(path, 0.0)], merge=merge)), plain)


def test_two_loras_add(tmp_path):
    a, b = _factors(1), _factors(2)
    audio_a, audio_b = torch.randn(64, 64) * 0.05, torch.randn(64, 64) * 0.05
    pa = _write(tmp_path / "a.safetensors", a, "stableavatar", audio_a)
    pb = _write(tmp_path / "b.safetensors", b, "comfyui", audio_b)
    got = _out(load_loras(_model(), [str(pa), f"{pb}:0.5"]))
    expected = _out(_by_hand([(a, 1.0), (b, 0.5)], [(audio_a, 1.0), (audio_b, 0.5)]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_unmatched_keys_are_listed_with_the_guessed_format(tmp_path):
    factors = _factors(1)
    factors["blocks.7.self_attn.q"] = tuple(t.clone() if torch.is_tensor(t) else t for t in factors["blocks.0.self_attn.q"])  # 2 blocks
    path = _write(tmp_path / "k.safetensors", factors, "kohya")
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LoraError, match=r"3 of 18 keys match no module.*lora_unet_blocks_7_self_attn_q.*kohya") as err:
        load_loras(model, [path])
    assert str(path) in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "nothing is applied before the check"


def test_rank_mismatch_names_the_key(tmp_path):
    factors = _factors(1)
    down, up, alpha = factors["blocks.1.ffn.0"]
    factors["blocks.1.ffn.0"] = (down, up[:, :2], alpha)  # up has rank 2, down rank 3
    path = _write(tmp_path / "r.safetensors", factors, "comfyui")
    with pytest.raises(LoraError, match=r"blocks\.1\.ffn\.0: down \(3, 64\) / up \(96, 2\) do not fit"):
        load_loras(_model(), [path])


def test_a_14b_lora_on_the_1_3b_model_is_refused(tmp_path):
    from wan.configs import transformer_config

    with torch.device("meta"):
        model = WanAvatarTransformer3DModel(**transformer_config("1.3B"))
    rank = 2
    state = {}
    for i in (0, 35):  # a 14B file: 5120 wide, 40 blocks
        state[f"diffusion_model.blocks.{i}.self_attn.q.lora_down.weight"] = torch.zeros(rank, 5120)
        state[f"diffusion_model.blocks.{i}.self_attn.q.lora_up.weight"] = torch.zeros(5120, rank)
    path = tmp_path / "wan14b.safetensors"
    save_file(state, str(path))
    message = r"blocks\.0\.self_attn\.q.*made for the 14B model \(dim 5120\), this is the 1\.3B model \(dim 1536\)"
    with pytest.raises(LoraError, match=message):
        load_loras(model, [path])


def test_spec_parsing_and_missing_file(tmp_path):
    assert LoraSpec.parse("a/b.safetensors") == LoraSpec(__import__("pathlib").Path("a/b.safetensors"), 1.0)
    assert LoraSpec.parse("a/b.safetensors:0.5").scale == 0.5
    assert LoraSpec.parse("C:/x/b.safetensors").path.name == "b.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_loras(_model(), [tmp_path / "nope.safetensors"])
