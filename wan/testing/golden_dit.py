"""Golden runners for the DiT cases (dit_1b*, dit_14b) and the standalone audio adapter case."""

from __future__ import annotations

import torch

from wan.configs import transformer_config
from wan.golden import GoldenCase
from wan.models.audio_adapter import AudioAdapter
from wan.models.transformer import WanAvatarTransformer3DModel
from wan.testing.recipe import fill_state_dict


def build_dit(constructor: dict) -> WanAvatarTransformer3DModel:
    """Our model for an original constructor dict (dim selects the 1.3B or 14B preset)."""
    preset = "14B" if constructor["dim"] == 5120 else "1.3B"
    fields = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_len", "freq_dim", "text_dim", "eps")
    config = transformer_config(preset, **{k: constructor[k] for k in fields}, audio_proj_dim=constructor["dim"])
    model = WanAvatarTransformer3DModel(**config).float()
    return fill_state_dict(model).eval()


def _first(t: torch.Tensor, n: int) -> torch.Tensor:
    return t[:, :n]


def run_dit(case: GoldenCase) -> dict[str, torch.Tensor]:
    model = build_dit(case.meta["constructor"])
    kwargs = case.call_kwargs()
    if "clip_fea" in kwargs and kwargs["clip_fea"].shape[0] == 1:
        kwargs["clip_fea"] = kwargs["clip_fea"].repeat(kwargs["x"].shape[0], 1, 1)

    # Intermediates are captured by observing calls (forward hooks, one wrapped method); the
    # model code has no test-only branches.
    seen: dict[str, object] = {}

    def output_hook(name):
        return lambda _m, _args, out: seen.setdefault(name, out)

    handles = [
        model.text_embedding.register_forward_hook(output_hook("text_context")),
        model.img_emb.register_forward_hook(output_hook("img_context")),
        model.vocal_projector.register_forward_hook(output_hook("vocal_projector")),
        model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.setdefault("block0_in", args[0])),
        model.blocks[0].register_forward_hook(output_hook("block0_out")),
        model.blocks[-1].register_forward_hook(output_hook("head_in")),
    ]
    time_embeddings = model.time_embeddings

    def observed_time_embeddings(t, dtype):
        e, e0 = time_embeddings(t, dtype)
        seen.setdefault("e", e)
        seen.setdefault("e0", e0)
        return e, e0

    model.time_embeddings = observed_time_embeddings
    try:
        out = model(**kwargs)
    finally:
        for h in handles:
            h.remove()
        del model.time_embeddings

    vocal, lens = seen["vocal_projector"]
    result = {
        "out": out,
        "e": seen["e"],
        "e0": seen["e0"],
        "text_context_first16": _first(seen["text_context"], 16),
        "img_context_first4": _first(seen["img_context"], 4),
        "vocal_context": vocal,
        "vocal_context_first64ch": vocal[..., :64],
        "vocal_context_lens": lens.repeat(3) if (model.config.audio_cfg_last_row and out.shape[0] > 1) else lens,
        "block0_in_first16": _first(seen["block0_in"], 16),
        "block0_out": seen["block0_out"],
        "block0_out_first16": _first(seen["block0_out"], 16),
        "block0_out_first64ch": seen["block0_out"][..., :64],
        "head_in_first16": _first(seen["head_in"], 16),
    }
    expected = set(case.meta["tensors"]["outputs"])
    return {k: v for k, v in result.items() if k in expected}


def run_audio_adapter(case: GoldenCase) -> dict[str, torch.Tensor]:
    c = case.meta["constructor"]
    adapter = AudioAdapter(audio_in_dim=c["audio_in_dim"], dim=c["audio_proj_dim"], context_dim=c["dit_dim"]).float()
    fill_state_dict(adapter).eval()
    kw = case.call_kwargs()
    tokens, lens = adapter(kw["vocal_embeddings"], kw["latents"], kw["e0"], kw["e"], kw["video_sample_n_frames"])
    return {"context_tokens": tokens, "vocal_context_lens": lens}
