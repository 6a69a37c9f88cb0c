"""Named model sizes. 1.3B and 14B are configs of one class (WanAvatarTransformer3DModel)."""

from __future__ import annotations

# Fields shared by every released StableAvatar DiT (Wan2.1 i2v backbone).
_COMMON = dict(
    model_type="i2v",
    patch_size=(1, 2, 2),
    text_len=512,
    in_dim=36,  # 16 noisy latents + 4 mask + 16 reference-image latents
    freq_dim=256,
    text_dim=4096,
    out_dim=16,
    window_size=(-1, -1),
    qk_norm=True,
    cross_attn_norm=True,
    eps=1e-6,
    audio_in_dim=768,
    audio_adapter_layers=2,
    audio_adapter_heads=8,
    clip_dim=1280,  # CLIP ViT-H/14 token width
)

TRANSFORMER_PRESETS: dict[str, dict] = {
    # Wan2.1-Fun-V1.1-1.3B-InP + StableAvatar audio adapter (transformer3d-square.pt / -rec-vec.pt).
    "1.3B": dict(
        _COMMON,
        dim=1536,
        ffn_dim=8960,
        num_heads=12,
        num_layers=30,
        audio_proj_dim=1536,
        audio_proj_hidden_dim=None,  # one Linear+LN projection: keys proj_model.proj / proj_model.norm
        audio_cfg_last_row=True,  # CFG batch: adapter runs on the last row, rows get [0, v, v]
    ),
    # Wan2.1-I2V-14B-480P + adapter (train_14B.py).
    "14B": dict(
        _COMMON,
        dim=5120,
        ffn_dim=13824,
        num_heads=40,
        num_layers=40,
        audio_proj_dim=5120,
        audio_proj_hidden_dim=2048,  # two stages: proj_model.proj_1/norm_1/proj_2/norm_2
        audio_cfg_last_row=False,  # the 14B file runs the adapter on every row
    ),
}


def transformer_config(preset: str, **overrides) -> dict:
    """The constructor kwargs of a preset, with ``overrides`` applied (e.g. ``num_layers=2``)."""
    if preset not in TRANSFORMER_PRESETS:
        raise ValueError(f"unknown transformer preset {preset!r}; choose from {sorted(TRANSFORMER_PRESETS)}")
    unknown = set(overrides) - set(TRANSFORMER_PRESETS[preset])
    if unknown:
        raise ValueError(f"unknown transformer config fields {sorted(unknown)}")
    return {**TRANSFORMER_PRESETS[preset], **overrides}
