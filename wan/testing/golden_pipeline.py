"""Golden runner for the end-to-end pipeline cases (``pipeline``, ``pipeline_log``).

Everything is built from ``case.json`` and the inputs alone (no side files needed): tiny umT5 with
recipe weights on the stored token ids, the real-architecture VAE, the reduced DiT and CLIP, a tiny
wav2vec2 from the recorded config, the scheduler as configured by the original. Intermediates are
recorded by observing calls (a forward hook on the DiT, a wrapper around ``scheduler.step``, the
step callback); nothing changes a value.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from wan.golden import GoldenCase
from wan.pipelines.pipeline_stableavatar import StableAvatarPipeline
from wan.pipelines.scheduling import build_scheduler
from wan.testing.golden_dit import build_dit
from wan.testing.golden_encoders import clip_config_from_case, recipe_filled, recipe_wav2vec
from wan.testing.recipe import fill_state_dict, recipe_tensor


def _wav2vec(config: dict):
    """The case's tiny wav2vec2 (recipe weights) behind the pipeline's feature extractor."""
    from transformers import Wav2Vec2FeatureExtractor

    from wan.audio import Wav2VecFeatureExtractor

    processor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False)
    return Wav2VecFeatureExtractor(model=recipe_wav2vec(config), processor=processor)


def build_case_pipeline(case: GoldenCase) -> StableAvatarPipeline:
    from wan.models.clip import CLIPVisionEncoder
    from wan.models.t5 import WanT5Encoder
    from wan.models.vae import WanVAE

    comps = case.meta["components"]
    text_encoder = fill_state_dict(WanT5Encoder(**comps["text_encoder"]["constructor"]).float()).eval()
    clip_case = {"constructor": {k: v for k, v in comps["clip_image_encoder"]["factory_overrides"].items()}}
    clip = recipe_filled(lambda: CLIPVisionEncoder(**clip_config_from_case(clip_case)))
    vae = WanVAE().float()
    vae.load_state_dict({k: recipe_tensor(vae.wan_key(k), v.shape) for k, v in vae.state_dict().items()})
    return StableAvatarPipeline(
        tokenizer=None,
        text_encoder=text_encoder,
        vae=vae.eval(),
        transformer=build_dit(comps["transformer"]["constructor"]),
        clip_image_encoder=clip,
        scheduler=build_scheduler(comps["scheduler"]["kwargs"]),
        wav2vec=_wav2vec(comps["wav2vec"]["config"]),
    )


def run_pipeline(case: GoldenCase) -> dict[str, torch.Tensor]:
    pipe = build_case_pipeline(case)
    args, x = case.meta["call"]["args"], case.inputs
    embeds = []
    for name in ("neg", "pos"):
        ids, mask = x[f"token_ids_{name}"], x[f"token_mask_{name}"]
        embeds.append(pipe.text_encoder(ids, attention_mask=mask)[0, : int(mask.sum())])

    out: dict[str, torch.Tensor] = {}
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    original_step = pipe.scheduler.step

    def observed_step(model_output, timestep, sample, **kw):
        result = original_step(model_output, timestep, sample, **kw)
        steps.append((model_output, result[0]))
        return result

    pipe.scheduler.step = observed_step

    def first_dit_call(_module, _args, kwargs, output):
        if "dit_out_s0_w0" not in out:
            out.update(dit_in_x_s0_w0=kwargs["x"], dit_out_s0_w0=output, timestep_s0=kwargs["t"], y=kwargs["y"][:1])
            out["clip_context_first16"] = kwargs["clip_fea"][:1, :16]
            out["prompt_embeds_neg_first64ch"] = kwargs["context"][0][:, :64]
            out["prompt_embeds_pos_first64ch"] = kwargs["context"][2][:, :64]

    hook = pipe.transformer.register_forward_hook(first_dit_call, with_kwargs=True)

    def per_step(_pipe, i, _t, latents):
        out[f"latents_after_step{i}"] = latents.float().clone()

    image = Image.fromarray(x["reference_image_hwc_uint8"].numpy().astype(np.uint8))
    try:
        result = pipe(
            image=image,
            audio=x["audio_16k"].numpy(),
            prompt_embeds=embeds,
            height=args["height"],
            width=args["width"],
            num_inference_steps=args["num_inference_steps"],
            text_guide_scale=args["text_guide_scale"],
            audio_guide_scale=args["audio_guide_scale"],
            clip_length=args["clip_length"],
            overlap_window_length=args["overlap_window_length"],
            overlapping_weight_scheme=args["overlapping_weight_scheme"],
            fps=args["fps"],
            latents=x["latents"],
            output_type="pt",
            callback_on_step_end=per_step,
        )
    finally:
        hook.remove()
        del pipe.scheduler.step

    windows = len(steps) // args["num_inference_steps"]
    for n, (guided, stepped) in enumerate(steps):
        out[f"guided_noise_pred_s{n // windows}_w{n % windows}"] = guided
        out[f"scheduler_out_s{n // windows}_w{n % windows}"] = stepped
    from wan.pipelines.sliding_window import overlap_weights

    overlap = args["overlap_window_length"]
    out.update(
        final_latents=result.latents,
        videos=result.videos,
        timesteps=pipe.scheduler.timesteps.float(),
        sigmas=pipe.scheduler.sigmas.float(),
        overlap_window_weight=overlap_weights(overlap, args["overlapping_weight_scheme"]).view(1, 1, overlap, 1, 1),
    )
    expected = set(case.meta["tensors"]["outputs"])
    return {k: v for k, v in out.items() if k in expected}
