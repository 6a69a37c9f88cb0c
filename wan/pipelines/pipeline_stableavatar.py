"""StableAvatarPipeline: reference image + audio (+ prompt) -> talking video of any length.

The original's long-video sampler (``WanI2VTalkingInferenceLongPipeline``), step for step:

1. Prompt and negative prompt through umT5 (trimmed to their token counts); the CFG batch is
   ``[negative, negative, positive]``.
2. The reference image, resized to width x height: CLIP tokens [257, 1280] (x3 rows) and the VAE
   latents of ``[reference, zeros x (clip_length - 1)]`` with a mask marking latent frame 0 ->
   ``y [3, 20, frames_per_window, H/8, W/8]``, the same for EVERY window.
3. Initial noise ``[1, 16, T, H/8, W/8]`` for the whole video (T from the audio length).
4. For every denoising step, the windows left to right (``sliding_window.window_schedule``): the
   window's latents and the wav2vec features of its audio go through the DiT as 3 rows (no audio /
   negative text, audio / negative text, audio / positive text), the rows are combined with the
   text and audio guidance scales, the window takes one solver step (the original's Euler step by
   default; ``wan.pipelines.solvers``), its first ``overlap`` frames
   are blended with what the previous window wrote (from step 1 on), and it is rounded to bf16
   and written (the original's hard-coded rounding, kept: it shapes the numbers).
5. The VAE decodes the latents; ``output_type="stream"`` yields the frames chunk by chunk so a
   video of any length is written with constant memory.

The wav2vec features of a window do not depend on the step, so they are computed once per window
(the original recomputes them every step; the numbers are identical).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput, logging

from wan.audio import load_audio
from wan.constants import AUDIO_SAMPLES_PER_FRAME, DEFAULT_FPS, LATENT_CHANNELS, NEGATIVE_PROMPT, VAE_STRIDE, WAV2VEC_SAMPLE_RATE
from wan.models.t5 import encode_prompts
from wan.pipelines.scheduling import set_timesteps
from wan.pipelines.sliding_window import (
    BLEND_SCHEMES,
    Window,
    combine_guidance,
    frames_per_window,
    merge_window,
    num_latent_frames,
    overlap_weights,
    validate_overlap,
    window_schedule,
    window_seq_len,
)
from wan.pipelines.solvers import WindowSolver, build_solver
from wan.utils.video_io import image_to_tensor, load_reference_image

logger = logging.get_logger(__name__)


@dataclass
class StableAvatarPipelineOutput(BaseOutput):
    """``videos``: [1, 3, T, H, W] float in [0, 1] (``output_type="pt"``/``"np"``), an iterator of
    ``[1, 3, t, H, W]`` chunks in [-1, 1] (``"stream"``), or None (``"latent"``).
    ``latents``: the final latents [1, 16, T_lat, H/8, W/8] (float32)."""

    videos: torch.Tensor | np.ndarray | Iterator[torch.Tensor] | None
    latents: torch.Tensor
    windows: list[Window] | None = None  # the sliding-window schedule that was used


@dataclass
class WindowConditions:
    """What every window's DiT call shares within one generation."""

    context: list[torch.Tensor]  # [negative, negative, positive] umT5 embeddings [L_i, 4096]
    clip_context: torch.Tensor  # [3, 257, 1280]
    y: torch.Tensor  # [3, 20, frames_per_window, H/8, W/8]
    audio_features: dict[int, torch.Tensor]  # window index -> wav2vec last_hidden_state [1, N, 768]
    seq_len: int
    clip_length: int
    text_guide_scale: float
    audio_guide_scale: float
    weight_dtype: torch.dtype
    true_length_last_window: bool = False  # see __call__'s last_window_true_length


# Called after every denoising step with (pipeline, step_index, timestep, latents_all).
StepCallback = Callable[["StableAvatarPipeline", int, torch.Tensor, torch.Tensor], None]


class StableAvatarPipeline(DiffusionPipeline):
    """The StableAvatar long-video pipeline (diffusers ``DiffusionPipeline``).

    Components: ``tokenizer`` (umT5), ``text_encoder`` (``WanT5Encoder``), ``vae`` (Wan VAE),
    ``transformer`` (``WanAvatarTransformer3DModel``), ``clip_image_encoder``
    (``CLIPVisionEncoder``), ``scheduler`` (``FlowMatchEulerDiscreteScheduler`` configured as the
    original, see ``scheduling.build_scheduler``), ``wav2vec`` (``Wav2VecFeatureExtractor``).
    Load the released files with ``wan.pipelines.load_pipeline`` (it knows their layout; this module
    does not import it, so the loader depends on the pipeline and not the other way round).
    """

    model_cpu_offload_seq = "text_encoder->clip_image_encoder->vae->transformer->vae"
    _optional_components: list[str] = []
    teacache = None  # a wan.models.teacache.TeaCache when enabled (enable_teacache)
    parallel = None  # a wan.distributed.WindowParallel when several processes share the work (torchrun)
    # The original rounds every written window to bf16, in float32 runs too (kept: it shapes the
    # numbers). None skips it: float32 studies of the solvers, whose errors it would otherwise floor.
    latent_rounding: torch.dtype | None = torch.bfloat16

    def __init__(self, tokenizer, text_encoder, vae, transformer, clip_image_encoder, scheduler, wav2vec):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            clip_image_encoder=clip_image_encoder,
            scheduler=scheduler,
            wav2vec=wav2vec,
        )

    # -- inputs --------------------------------------------------------------------------------

    @staticmethod
    def check_inputs(height: int, width: int, clip_length: int, overlap_window_length: int, overlapping_weight_scheme: str) -> None:
        """Errors a user can fix, raised before any model runs."""
        if height % 16 or width % 16 or height <= 0 or width <= 0:
            raise ValueError(f"width and height must be positive multiples of 16, got {width}x{height}")
        if clip_length < 5 or (clip_length - 1) % 4:
            raise ValueError(f"clip_sample_n_frames must be 4k+1 and >= 5 (e.g. 81), got {clip_length}")
        validate_overlap(overlap_window_length, frames_per_window(clip_length))
        if overlapping_weight_scheme not in BLEND_SCHEMES:
            raise ValueError(f"overlapping_weight_scheme must be one of {BLEND_SCHEMES}, got {overlapping_weight_scheme!r}")

    def encode_prompt(self, prompt: str, negative_prompt: str, device: torch.device) -> list[torch.Tensor]:
        """The CFG context list ``[negative, negative, positive]`` of trimmed umT5 embeddings."""
        neg, pos = encode_prompts(self.text_encoder, self.tokenizer, [negative_prompt, prompt], device=device)
        return [neg, neg, pos]

    def encode_reference(self, image, height: int, width: int, clip_length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference image (path or PIL) -> (CLIP tokens [3, 257, 1280], y [3, 20, frames_per_window, H/8, W/8])."""
        if not hasattr(image, "convert"):
            image = load_reference_image(image, width, height)
        elif image.size != (width, height):
            image = image.convert("RGB").resize((width, height))
        pixels = image_to_tensor(image).to(device)  # [3, H, W] in [-1, 1]
        clip_dtype = next(self.clip_image_encoder.parameters()).dtype
        clip_context = self.clip_image_encoder([pixels.to(dtype)[:, None]]).to(clip_dtype)
        # The clip: reference frame then (clip_length - 1) zero (mid-grey) frames, encoded once.
        vae_dtype = next(self.vae.parameters()).dtype
        clip = torch.zeros(1, 3, clip_length, height, width, device=device, dtype=vae_dtype)
        clip[:, :, 0] = pixels.to(vae_dtype)
        ref_latents = self.vae.encode(clip)  # [1, 16, fpw, H/8, W/8], normalised mean
        fpw, lat_h, lat_w = ref_latents.shape[2:]
        # Mask: 1 for video frame 0, 0 after; frame 0 counted 4 times so each latent frame gets 4 channels.
        mask = torch.zeros(1, 4, fpw, lat_h, lat_w, device=device)
        mask[:, :, 0] = 1
        y = torch.cat([mask, ref_latents.float()], dim=1).to(dtype)
        return clip_context.repeat(3, 1, 1), y.repeat(3, 1, 1, 1, 1)

    def prepare_latents(self, latent_frames: int, height: int, width: int, dtype: torch.dtype, device: torch.device, generator, latents) -> torch.Tensor:
        shape = (1, LATENT_CHANNELS, latent_frames, height // VAE_STRIDE[1], width // VAE_STRIDE[2])
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape} for this audio and size, got {tuple(latents.shape)}")
            return latents.to(device=device, dtype=dtype)
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    # -- one window ----------------------------------------------------------------------------

    def denoise_window(self, latents: torch.Tensor, t: torch.Tensor, window: Window, cond: WindowConditions) -> torch.Tensor:
        """Guided velocity [1, 16, f, H/8, W/8] for one window's latents [1, 16, f, H/8, W/8]."""
        return combine_guidance(self.window_noise(latents, t, window, cond), audio_scale=cond.audio_guide_scale, text_scale=cond.text_guide_scale)

    def window_noise(
        self, latents: torch.Tensor, t: torch.Tensor, window: Window, cond: WindowConditions, rows: Sequence[int] | None = None
    ) -> torch.Tensor:
        """The DiT's CFG rows [3, 16, f, H/8, W/8] (no audio, audio, audio + text) for one window,
        or only ``rows`` of them ([len(rows), ...]; CFG-row parallelism)."""
        f = window.num_frames
        seq_len, clip_length = cond.seq_len, cond.clip_length
        if cond.true_length_last_window and f < frames_per_window(clip_length):
            # Not the original: the short last window runs at its own length (no padding tokens,
            # f audio slots spread over its own audio) instead of padded to a full window.
            seq_len, clip_length = seq_len // frames_per_window(clip_length) * f, 4 * (f - 1) + 1
        device = latents.device
        audio = cond.audio_features[window.index].to(device)
        vocal = torch.cat([torch.zeros_like(audio), audio, audio])
        # TeaCache keeps one state per window: it is told which window (and step) this call is.
        cache_scope = self.teacache.window(window.index, t) if self.teacache is not None else contextlib.nullcontext()
        with cache_scope, torch.autocast(device_type=device.type, dtype=cond.weight_dtype, enabled=device.type == "cuda"):
            noise_pred = self.transformer(
                x=latents.repeat(3, 1, 1, 1, 1),
                t=t.expand(3),
                context=cond.context,
                seq_len=seq_len,
                clip_fea=cond.clip_context,
                y=cond.y[:, :, :f],
                vocal_embeddings=vocal,
                is_clip_level_modeling=False,
                video_sample_n_frames=clip_length,
                rows=rows,
            )
        return noise_pred

    def predict_windows(
        self, latents_all: torch.Tensor, t: torch.Tensor, windows: list[Window], cond: WindowConditions, progress: Callable[[], object] | None = None
    ) -> list[torch.Tensor]:
        """Guided velocities of every window at timestep ``t``, from the previous step's latents."""
        if self.parallel is not None:  # windows (and CFG rows) spread over the ranks, gathered on every rank
            return self.parallel.predict_windows(self, latents_all, t, windows, cond, progress)
        out = []
        for window in windows:
            out.append(self.denoise_window(latents_all[:, :, window.latent_slice], t, window, cond))
            if progress is not None:
                progress()
        return out

    # -- __call__ ------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image,
        audio: str | os.PathLike | np.ndarray,
        prompt: str = "",
        negative_prompt: str = NEGATIVE_PROMPT,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 50,
        text_guide_scale: float = 3.0,
        audio_guide_scale: float = 5.0,
        clip_length: int = 81,
        overlap_window_length: int = 5,
        overlapping_weight_scheme: str = "uniform",
        fps: int = DEFAULT_FPS,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        callback_on_step_end: StepCallback | None = None,
        start_step: int = 0,
        end_step: int | None = None,
        last_window_true_length: bool = False,
        prompt_embeds: list[torch.Tensor] | None = None,
        sample_solver: str = "euler",
        sample_shift: float | None = None,
    ) -> StableAvatarPipelineOutput:
        """
        image: reference image path or PIL image (resized to width x height, no crop).
        audio: path to the driving audio (any rate/channels -> 16 kHz mono) or 16 kHz float samples.
        clip_length: video frames per window (4k+1); overlap_window_length: latent frames shared.
        fps: video frames per second; the model was trained at 25 (640 audio samples per frame).
        latents: initial noise [1, 16, T, H/8, W/8] (else drawn from ``generator``); with
            ``start_step > 0`` the latents of an interrupted run after that many steps (resume).
        output_type: "pt" | "np" (whole video in [0, 1]), "stream" (iterator of decoded chunks),
            "latent" (no decode).
        callback_on_step_end: called after every step with (pipe, step, t, latents_all).
        last_window_true_length: run the shorter last window at its true length instead of padding
            it to a full window (the original pads). Less work on that window and its audio slots
            line up with its own frames; NOT the original's numbers for the last window's frames.
        end_step: stop after this many steps of the ``num_inference_steps`` schedule (benchmarks,
            debugging; the result is then a partially denoised video).
        prompt_embeds: precomputed ``[negative, positive]`` umT5 embeddings ([L_i, 4096] each,
            trimmed), instead of ``prompt``/``negative_prompt``.
        sample_solver: "euler" (the original's step), "unipc" or "dpm++" (diffusers' multistep
            solvers for flow matching, one state per window; see ``wan.pipelines.solvers``).
        sample_shift: the flow shift of the schedule; None: the scheduler's (the yaml's 5.0).
        """
        self.check_inputs(height, width, clip_length, overlap_window_length, overlapping_weight_scheme)
        if output_type not in ("pt", "np", "stream", "latent"):
            raise ValueError(f"output_type must be 'pt', 'np', 'stream' or 'latent', got {output_type!r}")
        scheduler = build_solver(sample_solver, self.scheduler, sample_shift)
        samples = load_audio(audio) if not isinstance(audio, np.ndarray) else np.asarray(audio, dtype=np.float32)
        samples_per_frame = int(WAV2VEC_SAMPLE_RATE / fps) if fps else AUDIO_SAMPLES_PER_FRAME
        if fps != DEFAULT_FPS:
            logger.warning(f"fps={fps}: the model was trained at {DEFAULT_FPS} fps; audio is mapped at {samples_per_frame} samples per frame")
        latent_frames = num_latent_frames(len(samples), samples_per_frame)
        windows = window_schedule(latent_frames, frames_per_window(clip_length), overlap_window_length, len(samples), samples_per_frame)
        device = self._execution_device
        weight_dtype = next(self.text_encoder.parameters()).dtype

        # 1-3. Conditions and initial noise.
        if prompt_embeds is not None:
            neg, pos = (e.to(device=device, dtype=weight_dtype) for e in prompt_embeds)
            context = [neg, neg, pos]
        else:
            logger.info("encoding the prompt (umT5)")
            context = self.encode_prompt(prompt, negative_prompt, device)
        logger.info(f"encoding the reference image (CLIP, then the VAE over a {clip_length}-frame clip)")
        clip_context, y = self.encode_reference(image, height, width, clip_length, device, weight_dtype)
        latents_all = self.prepare_latents(latent_frames, height, width, weight_dtype, device, generator, latents)
        timesteps = set_timesteps(scheduler, num_inference_steps, device=device)
        solver = WindowSolver(scheduler, len(windows), start_step)
        if self.teacache is not None:
            self.teacache.begin(timesteps)
        seq_len = window_seq_len(clip_length, height, width)
        weights = overlap_weights(overlap_window_length, overlapping_weight_scheme, dtype=latents_all.dtype)
        features = {w.index: self.wav2vec.window(samples, w.audio_start, w.audio_end) for w in windows}

        # 4. Denoising: every step visits every window, left to right.
        if start_step:
            logger.info(f"resuming at step {start_step} of {num_inference_steps}")
        cond = WindowConditions(
            context, clip_context, y, features, seq_len, clip_length, text_guide_scale, audio_guide_scale, weight_dtype, last_window_true_length
        )
        with self.progress_bar(total=((end_step or num_inference_steps) - start_step) * len(windows)) as bar:
            for i, t in enumerate(timesteps):
                if i < start_step:
                    continue
                if end_step is not None and i >= end_step:
                    break
                bar.set_postfix_str(f"step {i + 1}/{num_inference_steps}, {len(windows)} windows")
                # (a) The DiT calls: each window reads only the previous step's latents, so they are
                #     independent (the seam for window-parallel multi-GPU runs).
                guided = self.predict_windows(latents_all, t, windows, cond, progress=bar.update)
                # (b) Left to right: solver step (each window its own state), blend with what the
                #     previous window wrote, bf16 round.
                prediction = torch.zeros_like(latents_all)
                for window, velocity in zip(windows, guided, strict=True):
                    stepped = solver.step(window.index, velocity, t, latents_all[:, :, window.latent_slice])
                    merge_window(prediction, stepped, window, weights, blend=i != 0, round_to=self.latent_rounding)
                latents_all = prediction
                if callback_on_step_end is not None:
                    callback_on_step_end(self, i, t, latents_all)

        final = latents_all.float()
        vae_dtype = next(self.vae.parameters()).dtype  # float32 as the original, or bf16 (--vae_dtype)
        self.maybe_free_model_hooks()
        if output_type == "latent":
            return StableAvatarPipelineOutput(videos=None, latents=final, windows=windows)
        if output_type == "stream":
            return StableAvatarPipelineOutput(videos=self.vae.stream_decode(final.to(vae_dtype)), latents=final, windows=windows)
        video = (self.vae.decode(final.to(vae_dtype)).float().cpu() / 2 + 0.5).clamp(0, 1)
        return StableAvatarPipelineOutput(videos=video.numpy() if output_type == "np" else video, latents=final, windows=windows)

    @staticmethod
    def num_output_frames(num_audio_samples: int, fps: int = DEFAULT_FPS) -> int:
        """Video frames the pipeline produces for this much 16 kHz audio: ``1 + 4 (T - 1)``."""
        latent = num_latent_frames(num_audio_samples, int(WAV2VEC_SAMPLE_RATE / fps))
        return 1 + 4 * (latent - 1)
