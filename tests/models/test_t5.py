"""umT5 encoder: release key set, golden case, prompt path (tokenise -> encode -> trim), loading."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import CASES, assert_golden, key_map
from wan.models.loading import CheckpointError
from wan.models.t5 import T5_PRESETS, WanT5Encoder, encode_prompts, load_t5_encoder, load_tokenizer, tokenize_prompts
from wan.testing.recipe import fill_state_dict

TINY = dict(vocab=512, dim=64, dim_attn=64, dim_ffn=128, num_heads=4, num_layers=2, num_buckets=32, shared_pos=False)
PIPELINE = CASES / "pipeline"


def test_umt5_xxl_keys_and_shapes_match_release():
    with torch.device("meta"):
        model = WanT5Encoder(**T5_PRESETS["umt5-xxl"])
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = {k: shape for k, (shape, _dtype) in key_map("t5_umt5_xxl").items()}
    assert got == want


def test_golden_t5():
    got = assert_golden("t5")
    ref = load_file(str(CASES / "t5" / "outputs.safetensors"))
    assert set(got) == set(ref)
    # not toleranced in case.json; an embedding lookup, so it must be exact
    torch.testing.assert_close(got["block0_pos_bias_16x16"], ref["block0_pos_bias_16x16"], rtol=0, atol=0)


def test_padding_does_not_change_real_tokens():
    model = fill_state_dict(WanT5Encoder(**TINY)).eval()
    ids = torch.randint(3, 512, (1, 9), generator=torch.Generator().manual_seed(0))
    outs = []
    for pad in (0, 7, 40):
        padded = torch.cat([ids, torch.zeros(1, pad, dtype=torch.long)], dim=1)
        mask = (torch.arange(padded.shape[1]) < 9).long()[None]
        with torch.no_grad():
            outs.append(model(padded, attention_mask=mask)[:, :9])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-5, atol=1e-5)
    # without the mask the padding leaks into the real tokens
    with torch.no_grad():
        unmasked = model(torch.cat([ids, torch.zeros(1, 40, dtype=torch.long)], dim=1))[:, :9]
    assert (unmasked - outs[0]).abs().max() > 1e-3


def test_prompt_path_matches_pipeline_case():
    """Tokens, masks, trimmed lengths and embeddings of the pipeline case's two prompts."""
    meta = json.loads((PIPELINE / "case.json").read_text())
    inputs = load_file(str(PIPELINE / "inputs.safetensors"))
    ref = load_file(str(PIPELINE / "outputs.safetensors"))
    tokenizer = load_tokenizer(PIPELINE / "tokenizer")
    encoder = fill_state_dict(WanT5Encoder(**meta["components"]["text_encoder"]["constructor"]).float()).eval()
    for name, prompt in (("pos", meta["call"]["args"]["prompt"]), ("neg", meta["call"]["args"]["negative_prompt"])):
        ids, mask = tokenize_prompts(tokenizer, prompt)
        assert torch.equal(ids, inputs[f"token_ids_{name}"]) and torch.equal(mask, inputs[f"token_mask_{name}"])
        (emb,) = encode_prompts(encoder, tokenizer, prompt)
        want = ref[f"prompt_embeds_{name}_first64ch"]
        assert emb.shape == (want.shape[0], 4096) and emb.shape[0] == int(mask.sum())
        torch.testing.assert_close(emb[:, :64], want, rtol=1e-5, atol=4e-5)


def test_encode_prompts_batch_trims_each_row():
    tokenizer = load_tokenizer(PIPELINE / "tokenizer")
    encoder = fill_state_dict(WanT5Encoder(**TINY)).eval()
    prompts = ["a woman is speaking", "a woman with short brown hair is speaking to the camera"]
    embs = encode_prompts(encoder, tokenizer, prompts, max_length=32)
    _, mask = tokenize_prompts(tokenizer, prompts, max_length=32)
    assert [e.shape for e in embs] == [torch.Size([int(n), 64]) for n in mask.sum(1)]
    assert embs[0].shape[0] != embs[1].shape[0]


def test_truncation_warns(caplog):
    tokenizer = load_tokenizer(PIPELINE / "tokenizer")
    with caplog.at_level(logging.WARNING, logger="wan.models.t5"):
        ids, mask = tokenize_prompts(tokenizer, "speaking " * 20, max_length=8)
    assert ids.shape == (1, 8) and int(mask.sum()) == 8
    assert "truncated" in caplog.text


def test_bf16_norms_run_in_fp32_and_cast_back():
    model = fill_state_dict(WanT5Encoder(**TINY)).eval()
    ids = torch.randint(3, 512, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids)
        out = model.to(torch.bfloat16)(ids)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()) < 6e-2  # bf16 through 2 random-weight blocks: ~3%


def test_load_t5_encoder_from_bf16_file(tmp_path):
    model = fill_state_dict(WanT5Encoder(**TINY)).eval()
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}, path)
    loaded = load_t5_encoder(path, dtype=torch.float32, **TINY)
    ids = torch.randint(3, 512, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model.to(torch.bfloat16).float()(ids)
        got = loaded(ids)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())

    state = {k: v for k, v in model.state_dict().items() if k != "blocks.1.ffn.fc2.weight"}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"models_t5_umt5-xxl-enc-bf16\.pth.*blocks\.1\.ffn\.fc2\.weight"):
        load_t5_encoder(path, **TINY)


def test_missing_tokenizer_names_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="umt5-xxl"):
        load_tokenizer(tmp_path / "Wan2.1-Fun-V1.1-1.3B-InP" / "google" / "umt5-xxl")


@pytest.mark.gpu
def test_t5_on_cuda_fp32_and_bf16():
    from wan.golden import GoldenCase

    case = GoldenCase.load(CASES / "t5")
    ref = case.reference()["out_b"].double()
    model = fill_state_dict(WanT5Encoder(**case.meta["constructor"])).eval().cuda()
    ids, mask = case.inputs["ids_b"].cuda(), case.inputs["mask_b"].cuda()
    with torch.no_grad():
        out32 = model(ids, attention_mask=mask).double().cpu()
        out16 = torch.nn.Module.to(model, torch.bfloat16)(ids, attention_mask=mask)
    assert (out32 - ref).norm() / ref.norm() < 1e-4
    assert out16.dtype == torch.bfloat16 and (out16.double().cpu() - ref).norm() / ref.norm() < 6e-2
