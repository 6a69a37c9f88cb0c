"""CLIP image encoder: release key set, strict loading that drops the text tower, preprocessing, goldens."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import assert_golden, key_map
from wan.models.clip import CLIP_DROPPED_PREFIXES, CLIP_PRESETS, CLIPVisionEncoder, clip_visual_state, load_clip_image_encoder
from wan.models.loading import CheckpointError
from wan.testing.recipe import fill_state_dict

TINY = dict(image_size=28, patch_size=14, dim=32, mlp_ratio=4, num_heads=2, num_layers=3, out_dim=16)


def _tiny() -> CLIPVisionEncoder:
    return fill_state_dict(CLIPVisionEncoder(**TINY)).eval()


def _release_file_state(model: CLIPVisionEncoder) -> dict[str, torch.Tensor]:
    """What the released .pth looks like for ``model``: no 'model.' prefix, plus text tower and log_scale."""
    state = {k.removeprefix("model."): v.clone() for k, v in model.state_dict().items()}
    state["textual.token_embedding.weight"] = torch.randn(10, 8)
    state["textual.blocks.0.attn.q.weight"] = torch.randn(8, 8)
    state["log_scale"] = torch.tensor(2.6592)
    return state


def test_visual_keys_and_shapes_match_release():
    with torch.device("meta"):
        model = CLIPVisionEncoder(**CLIP_PRESETS["xlm-roberta-large-vit-huge-14"])
    release = key_map("clip_xlm_roberta_vit_h_14")
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    visual = {k: shape for k, (shape, _) in release.items() if k.startswith("model.visual.")}
    assert got == visual
    # everything else in the release file is exactly what the loader drops
    rest = {k.removeprefix("model.") for k in release if not k.startswith("model.visual.")}
    assert rest and all(k.startswith(CLIP_DROPPED_PREFIXES) for k in rest)
    assert clip_visual_state({k.removeprefix("model."): torch.empty(0) for k in release}, "f").keys() == visual.keys()


def test_golden_clip_small():
    assert_golden("clip_small")


@pytest.mark.slow
def test_golden_clip_full_size():
    """Real ViT-H/14 (632M visual parameters, ~3.7 GB peak), ~25 s on 2 cores."""
    assert_golden("clip")


def test_load_drops_text_tower_and_is_strict_about_visual(tmp_path):
    model = _tiny()
    path = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    torch.save(_release_file_state(model), path)
    loaded = load_clip_image_encoder(path, **TINY)
    assert set(loaded.state_dict()) == set(model.state_dict())
    image = torch.rand(3, 1, 40, 36) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded([image]), model([image]), rtol=0, atol=0)

    # keys already carrying the wrapper's 'model.' prefix load too
    torch.save({"model." + k: v for k, v in _release_file_state(model).items()}, path)
    load_clip_image_encoder(path, **TINY)

    state = _release_file_state(model)
    del state["visual.transformer.2.mlp.2.bias"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"vit-huge-14\.pth.*model\.visual\.transformer\.2\.mlp\.2\.bias"):
        load_clip_image_encoder(path, **TINY)

    state = _release_file_state(model)
    state["vision_proj.weight"] = torch.zeros(2, 2)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="vision_proj.weight"):
        load_clip_image_encoder(path, **TINY)


def test_preprocess_list_and_batch_agree():
    model = _tiny()
    images = torch.rand(2, 3, 30, 50) * 2 - 1
    with torch.no_grad():
        batch = model(images)
        listed = model([u[:, None] for u in images])  # the pipeline's [3, 1, H, W] items
    assert batch.shape == (2, 1 + (28 // 14) ** 2, 32)
    torch.testing.assert_close(listed, batch, rtol=0, atol=0)
    # [-1, 1] -> [0, 1] -> CLIP Normalize, at the model's image size
    pre = model.preprocess(torch.zeros(1, 3, 28, 28))
    want = (0.5 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(pre[0, :, 5, 7], want)


def test_penultimate_block_output():
    """The output is the token sequence before the last block, without post_norm."""
    model = _tiny()
    image = torch.rand(1, 3, 28, 28) * 2 - 1
    with torch.no_grad():
        x = model.preprocess(image)
        vit = model.visual
        tokens = torch.cat([vit.cls_embedding, vit.patch_embedding(x).flatten(2).transpose(1, 2)], dim=1)
        tokens = vit.pre_norm(tokens + vit.pos_embedding)
        for block in vit.transformer[:-1]:
            tokens = block(tokens)
        torch.testing.assert_close(model(image), tokens, rtol=0, atol=0)


def test_bf16_image_into_fp32_tower():
    model = _tiny()
    image = (torch.rand(1, 3, 28, 28) * 2 - 1).to(torch.bfloat16)
    with torch.no_grad():
        out = model(image)
    assert out.dtype == torch.float32


@pytest.mark.gpu
def test_clip_small_on_cuda():
    """float32 tower on the GPU, fed a float32 and (as the original pipeline does) a bf16 image."""
    from tests.conftest import CASES
    from wan.golden import GoldenCase
    from wan.testing.golden_encoders import clip_config, recipe_filled

    case = GoldenCase.load(CASES / "clip_small")
    ref = case.reference()["out"].double()
    model = recipe_filled(lambda: CLIPVisionEncoder(**clip_config(case.meta["constructor"]))).cuda()
    image = case.inputs["image"].cuda()
    with torch.no_grad():
        out32 = model([image]).double().cpu()
        out16 = model([image.to(torch.bfloat16)])
    assert out16.dtype == torch.float32
    assert (out32 - ref).norm() / ref.norm() < 2e-3  # cuDNN may run the patch conv in TF32
    assert (out16.double().cpu() - ref).norm() / ref.norm() < 3e-2
