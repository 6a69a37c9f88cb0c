"""Golden-case runners for the encoders (T5, CLIP) and the recipe-filled wav2vec of the pipeline case.

``run_t5`` / ``run_clip`` are registered in ``wan.golden.RUNNERS`` under the original class names
``WanT5EncoderModel`` and ``CLIPModel``; each returns every output key of its case.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from wan.golden import GoldenCase
from wan.testing.recipe import fill_state_dict, recipe_tensor

# case.json constructor names of the original CLIP factory -> our CLIPVisionEncoder config names.
_CLIP_FACTORY_TO_CONFIG = {"vision_layers": "num_layers", "vision_dim": "dim", "vision_heads": "num_heads", "image_size": "image_size", "patch_size": "patch_size"}


def recipe_filled(factory, prefix: str = "") -> torch.nn.Module:
    """Build ``factory()`` on the meta device and give it the recipe weights directly.

    Same values as constructing normally and calling ``fill_state_dict``, without first running
    the default initialisers (which, for the 632M-parameter CLIP tower, cost as much as the forward).
    """
    with torch.device("meta"):
        module = factory()
    state = {k: recipe_tensor(prefix + k, v.shape) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype) for k, v in module.state_dict().items()}
    module.load_state_dict(state, assign=True)
    return module.eval()


def run_t5(case: GoldenCase) -> dict[str, torch.Tensor]:
    """Tiny umT5 encoder on two padded batches, plus block 0's bucket table and position bias."""
    from wan.models.t5 import WanT5Encoder

    ctor = dict(case.meta["constructor"])
    model = fill_state_dict(WanT5Encoder(**ctor).float()).eval()
    x = case.inputs
    rel = model.blocks[0].pos_embedding
    return {
        "out_a": model(x["ids_a"], attention_mask=x["mask_a"]),
        "out_b": model(x["ids_b"], attention_mask=x["mask_b"]),
        "rel_bucket_for_rel_pos_minus200_to_200": rel.relative_position_bucket(torch.arange(-200, 201)[None])[0],
        "block0_pos_bias_16x16": rel(16, 16),
    }


def clip_config(factory_overrides: dict | None) -> dict:
    """Our CLIPVisionEncoder kwargs for the original factory's overrides (text-tower ones are ignored:
    that tower is not part of our module)."""
    return {_CLIP_FACTORY_TO_CONFIG[k]: v for k, v in (factory_overrides or {}).items() if k in _CLIP_FACTORY_TO_CONFIG}


def clip_config_from_case(meta: dict) -> dict:
    """``clip_config`` of a case's ``constructor`` (``"CLIPModel()"`` for full size, or the overrides dict)."""
    ctor = meta["constructor"]
    return clip_config(ctor if isinstance(ctor, dict) else None)


def run_clip(case: GoldenCase) -> dict[str, torch.Tensor]:
    """CLIP visual tower as the pipeline calls it: a list with one [3, 1, H, W] image in [-1, 1]."""
    from wan.models.clip import CLIPVisionEncoder

    config = clip_config_from_case(case.meta)
    model = recipe_filled(lambda: CLIPVisionEncoder(**config))
    try:
        out = model([case.inputs["image"]])
    finally:
        del model  # the full-size tower is 2.5 GB in float32
    return {"out": out}


def recipe_wav2vec(config: str | os.PathLike | dict) -> torch.nn.Module:
    """A ``Wav2Vec2Model`` (config folder, or the config as a dict) with recipe weights.

    The pipeline case was recorded with transformers 4.51, whose weight-normed positional conv registers
    ``encoder.pos_conv_embed.conv.parametrizations.weight.original0/original1``. The recipe seeds
    on key names, so those names are used here even if the installed transformers names the two
    tensors ``weight_g``/``weight_v`` instead.
    """
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(**config) if isinstance(config, dict) else Wav2Vec2Config.from_pretrained(str(config))
    model = Wav2Vec2Model(config).float()
    legacy = {"encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
              "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1"}  # fmt: skip
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(recipe_tensor(legacy.get(key, key), tensor.shape))
    return model.eval()


def pipeline_case_windows(case_dir: str | os.PathLike) -> list[dict]:
    """The pipeline case's ``windows`` list (step, window, audio_sample_range, ...)."""
    return json.loads((Path(case_dir) / "case.json").read_text())["windows"]
