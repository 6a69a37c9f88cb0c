"""The DiT: released key sets, golden cases against the original, loading, tiny-model behaviour."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import assert_golden, key_map
from wan.configs import transformer_config
from wan.models.loading import CheckpointError
from wan.models.transformer import WanAvatarTransformer3DModel, load_transformer

# ----------------------------------------------------------------------------- released key sets


@pytest.mark.parametrize("preset,keys", [("1.3B", "transformer_1b"), ("14B", "transformer_14b")])
def test_full_size_state_dict_matches_release(preset, keys):
    with torch.device("meta"):
        model = WanAvatarTransformer3DModel(**transformer_config(preset))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    ref = {k: shape for k, (shape, _dtype) in key_map(keys).items()}
    assert sorted(set(ours) - set(ref)) == [] and sorted(set(ref) - set(ours)) == []
    assert ours == ref
    assert list(ours) == list(ref), "state_dict order differs from the original"


# ----------------------------------------------------------------------------- golden cases


@pytest.mark.parametrize("case", ["dit_1b", "dit_1b_distinct", "dit_1b_lastwindow", "dit_1b_f21"])
def test_golden_dit_1b(case):
    assert_golden(case)


@pytest.mark.slow
def test_golden_dit_14b():
    assert_golden("dit_14b")


# ----------------------------------------------------------------------------- tiny model


def tiny_config(**overrides):
    base = dict(dim=64, ffn_dim=96, num_heads=4, num_layers=2, audio_proj_dim=64, audio_adapter_heads=4, text_dim=32)
    return transformer_config("1.3B", **{**base, **overrides})


def tiny_inputs(batch=3, frames=5, size=8, audio_tokens=33, text_dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, 16, frames, size, size, generator=g),
        t=torch.full((batch,), 900.0),
        context=[torch.randn(7 + i, text_dim, generator=g) for i in range(batch)],
        seq_len=frames * (size // 2) ** 2,
        clip_fea=torch.randn(batch, 257, 1280, generator=g),
        y=torch.randn(batch, 20, frames, size, size, generator=g),
        vocal_embeddings=torch.randn(batch, audio_tokens, 768, generator=g),
        video_sample_n_frames=4 * frames - 3,
    )


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = WanAvatarTransformer3DModel(**tiny_config()).eval()
    # Non-zero audio projections so the audio path is visible in the output.
    for block in model.blocks:
        torch.nn.init.normal_(block.cross_attn.k_vocal.weight, std=0.05)
        torch.nn.init.normal_(block.cross_attn.v_vocal.weight, std=0.05)
    return model


def test_tiny_forward_shape_and_determinism(tiny_model):
    with torch.no_grad():
        a = tiny_model(**tiny_inputs())
        b = tiny_model(**tiny_inputs())
    assert a.shape == (3, 16, 5, 8, 8)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_cfg_batch_uses_last_row_audio_only(tiny_model):
    """1.3B: rows 0 and 1 see the audio of row 2; row 0 sees none at all."""
    inputs = tiny_inputs()
    changed = dict(inputs, vocal_embeddings=inputs["vocal_embeddings"].clone())
    changed["vocal_embeddings"][:2] = torch.randn_like(changed["vocal_embeddings"][:2])
    with torch.no_grad():
        assert torch.equal(tiny_model(**inputs), tiny_model(**changed))
        changed["vocal_embeddings"][2] += 1.0
        out_a, out_b = tiny_model(**inputs), tiny_model(**changed)
    assert torch.equal(out_a[0], out_b[0]), "the no-audio row must not depend on audio"
    assert not torch.allclose(out_a[1], out_b[1]) and not torch.allclose(out_a[2], out_b[2])


def test_cfg_batch_of_wrong_size_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="3 rows"):
        tiny_model(**tiny_inputs(batch=2))


def test_padding_tokens_are_attended_by_default(tiny_model):
    """The last window: 4 latent frames padded to the seq_len of 5. Faithful default attends the
    zero-padding tokens (and padded text); the masked backend does not, so the results differ."""
    from wan.models.attention import attention_backend

    inputs = tiny_inputs(frames=4)
    inputs.update(seq_len=5 * 16, video_sample_n_frames=17)
    with torch.no_grad():
        default = tiny_model(**inputs)
        with attention_backend("sdpa"):
            masked = tiny_model(**inputs)
    assert default.shape == masked.shape == (3, 16, 4, 8, 8)
    assert (default - masked).abs().max() > 1e-3


def test_any_clip_length(tiny_model):
    """Frame counts come from the inputs: 9 latent frames of a 33-frame window."""
    with torch.no_grad():
        out = tiny_model(**tiny_inputs(batch=1, frames=9, audio_tokens=65))
    assert out.shape == (1, 16, 9, 8, 8)


def test_bf16_without_autocast_runs(tiny_model):
    model = torch.nn.Module.to(WanAvatarTransformer3DModel(**tiny_config()), torch.bfloat16).eval()
    inputs = tiny_inputs()
    for k in ("x", "clip_fea", "y", "vocal_embeddings"):
        inputs[k] = inputs[k].bfloat16()
    inputs["context"] = [c.bfloat16() for c in inputs["context"]]
    with torch.no_grad():
        out = model(**inputs)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = WanAvatarTransformer3DModel(**tiny_config(num_layers=2))
    inputs = tiny_inputs(batch=1)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(**inputs).square().mean().backward()
        grads.append(model.blocks[0].self_attn.q.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_save_load_round_trip(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    again = WanAvatarTransformer3DModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(tiny_model(**tiny_inputs()), again(**tiny_inputs()))


# ----------------------------------------------------------------------------- loading released files


def _write_release(tmp_path, model, wrapped: bool, fmt: str = "pt"):
    """A Wan-Fun-style base folder (no audio keys) and a StableAvatar file with every key."""
    import json

    state = {k: v.clone() for k, v in model.state_dict().items()}
    base_dir = tmp_path / "Wan2.1-Fun-V1.1-1.3B-InP"
    base_dir.mkdir()
    cfg = model.config
    (base_dir / "config.json").write_text(
        json.dumps({"_class_name": "WanModel", "dim": cfg.dim, "eps": cfg.eps, "ffn_dim": cfg.ffn_dim, "freq_dim": 256, "in_dim": 36,
                    "model_type": "i2v", "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "out_dim": 16, "text_len": 512,
                    "text_dim": cfg.text_dim})
    )
    base = {k: v for k, v in state.items() if "vocal" not in k}
    save_file(base, str(base_dir / "diffusion_pytorch_model.safetensors"))
    if fmt == "pt":
        path = tmp_path / "transformer3d-square.pt"
        torch.save({"state_dict": state} if wrapped else state, path)
    else:
        path = tmp_path / "transformer3d-square.safetensors"
        save_file(state, str(path))
    return base_dir, path


@pytest.mark.parametrize("wrapped,fmt", [(False, "pt"), (True, "pt"), (False, "safetensors")])
def test_load_release_files(tmp_path, tiny_model, wrapped, fmt):
    base_dir, pt = _write_release(tmp_path, tiny_model, wrapped, fmt)
    # the tiny config differs from the preset only in sizes, which config.json carries (plus overrides)
    loaded = _load_tiny(base_dir, pt)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def _load_tiny(base_dir, pt, **kw):
    import wan.models.transformer as T

    original = T.transformer_config_from_base

    def tiny_from_base(d):
        return tiny_config()

    T.transformer_config_from_base = tiny_from_base
    try:
        return load_transformer(base_dir, pt, dtype=torch.float32, **kw)
    finally:
        T.transformer_config_from_base = original


def test_strict_loading_names_file_and_keys(tmp_path, tiny_model):
    base_dir, pt = _write_release(tmp_path, tiny_model, wrapped=False)
    state = torch.load(pt, weights_only=True)
    del state["vocal_projector.final_head.final_proj.weight"]
    state["blocks.0.not_a_real_key"] = torch.zeros(1)
    torch.save(state, pt)
    with pytest.raises(CheckpointError, match="transformer3d-square.pt.*not_a_real_key"):
        _load_tiny(base_dir, pt)
    del state["blocks.0.not_a_real_key"]
    torch.save(state, pt)
    with pytest.raises(CheckpointError, match=r"1 missing keys: vocal_projector\.final_head\.final_proj\.weight"):
        _load_tiny(base_dir, pt)


def test_base_only_warns_once_and_zero_audio(tmp_path, tiny_model, caplog):
    base_dir, _ = _write_release(tmp_path, tiny_model, wrapped=False)
    import logging

    with caplog.at_level(logging.WARNING):
        model = _load_tiny(base_dir, None)
    assert sum("No --transformer_path" in r.message for r in caplog.records) == 1
    assert all(b.cross_attn.k_vocal.weight.abs().sum() == 0 for b in model.blocks)
    caplog.clear()
    from wan.models.loading import WeightsMatch, check_only

    with caplog.at_level(logging.WARNING), check_only(), torch.device("meta"), pytest.raises(WeightsMatch):
        _load_tiny(base_dir, None)  # the weight check before a load: the load says it, not the check
    assert not any("No --transformer_path" in r.message for r in caplog.records)


def test_missing_base_file_names_download(tmp_path):
    (tmp_path / "Wan2.1-Fun-V1.1-1.3B-InP").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json.*hf download alibaba-pai/Wan2.1-Fun-V1.1-1.3B-InP"):
        load_transformer(tmp_path / "Wan2.1-Fun-V1.1-1.3B-InP")


def test_real_config_json_builds_1b(tmp_path):
    """The published Wan2.1-Fun-1.3B-InP config.json maps to the 1.3B preset."""
    import json

    from wan.models.transformer import transformer_config_from_base

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanModel", "dim": 1536, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256,
                                                       "in_dim": 36, "model_type": "i2v", "num_heads": 12, "num_layers": 30, "out_dim": 16, "text_len": 512}))
    assert transformer_config_from_base(tmp_path) == transformer_config("1.3B")


# ----------------------------------------------------------------------------- speed levers stay faithful


@pytest.mark.slow
def test_compiled_blocks_reproduce_golden_dit_1b():
    """Regression guard for the speed work: the regional torch.compile path (``--compile``)
    reproduces the original on the dit_1b golden case at the case's tolerances."""
    from tests.conftest import CASES
    from wan.golden import GoldenCase, compare
    from wan.testing.golden_dit import build_dit

    case = GoldenCase.load(CASES / "dit_1b")
    model = build_dit(case.meta["constructor"])
    model.compile_blocks()
    kw = case.call_kwargs()
    kw["clip_fea"] = kw["clip_fea"].repeat(3, 1, 1)
    with torch.no_grad():
        out = model(**kw)
    failures = compare({"out": out}, case.reference(), {"out": case.meta["tolerances"]["out"]})
    assert not failures, failures
    torch.compiler.reset()
