"""Sliding-window bookkeeping of the long-video sampler: pure functions, no models.

A video of any length is denoised as overlapping windows of ``frames_per_window`` latent frames
(one DiT call each). At every denoising step the windows are visited left to right; each window is
stepped by the scheduler, its first ``overlap`` frames are blended with what the previous window
wrote for the same frames (from step 1 on), and the result is written into the step's prediction.

Vocabulary (numbers for the released setting, ``clip_length=81``, 10 s of audio at 16 kHz):

* audio samples ``M = 160000``; video frames ``total_frames = M // 640 = 250`` (640 samples per frame
  at 16 kHz / 25 fps);
* latent frames ``T = (total_frames - 1) // 4 + 1 = 63``; the decoder returns ``1 + 4 (T - 1) = 249``
  video frames;
* ``frames_per_window = (clip_length - 1) // 4 + 1 = 21``; with ``overlap = 5`` the windows are
  ``[0,21) [16,37) [32,53) [48,63)``; the last may be shorter and always ends at ``T``;
* window ``[s, e)`` hears audio samples ``[s*4*640, e*4*640)``; the last window hears ``[s*4*640, M)``.

Where the original never finishes or produces nothing, this module defines what happens instead:

* ``T < frames_per_window`` (audio under 81 frames, ~3.24 s): the original's loop never runs and it
  decodes all-zero latents. Here: one short window ``[0, T)`` with all of the audio.
* ``T == frames_per_window`` (81-84 frames): the original loops forever on its first window. Here: that
  one window, which is also the last (audio to the end).
* ``overlap >= frames_per_window`` (the original never advances) or ``overlap < 0``: ``ValueError``.
* ``overlap == 1``: the original divides by zero ('uniform') or gets NaN ('log'). Here: weight 0.5.
* fewer than 640 samples (not one video frame): ``ValueError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from wan.constants import AUDIO_SAMPLES_PER_FRAME, PATCH_SIZE, VAE_STRIDE

BlendScheme = Literal["uniform", "log"]
BLEND_SCHEMES: tuple[str, ...] = ("uniform", "log")
TEMPORAL_STRIDE = VAE_STRIDE[0]  # video frames per latent frame (after the first)


# ---------------------------------------------------------------------------------------------
# Frame arithmetic
# ---------------------------------------------------------------------------------------------


def frames_per_window(clip_length: int) -> int:
    """Latent frames in one window for ``clip_length`` video frames (81 -> 21)."""
    if clip_length < 1:
        raise ValueError(f"clip_length must be >= 1, got {clip_length}")
    return (clip_length - 1) // TEMPORAL_STRIDE + 1


def num_video_frames(num_audio_samples: int, samples_per_frame: int = AUDIO_SAMPLES_PER_FRAME) -> int:
    """Whole video frames covered by the audio: ``M // samples_per_frame`` (the original's ``int(M / 640)``)."""
    return int(num_audio_samples) // int(samples_per_frame)


def num_latent_frames(num_audio_samples: int, samples_per_frame: int = AUDIO_SAMPLES_PER_FRAME) -> int:
    """Latent frames of the whole video: ``(total_frames - 1) // 4 + 1``.

    Raises ``ValueError`` when the audio is shorter than one video frame.
    """
    total = num_video_frames(num_audio_samples, samples_per_frame)
    if total < 1:
        raise ValueError(
            f"the driving audio has {num_audio_samples} samples, fewer than one video frame "
            f"({samples_per_frame} samples); use a longer audio file"
        )
    return (total - 1) // TEMPORAL_STRIDE + 1


def num_decoded_frames(latent_frames: int) -> int:
    """Video frames the VAE decodes from ``latent_frames`` latents: ``1 + 4 (T - 1)``."""
    return 1 + TEMPORAL_STRIDE * (latent_frames - 1)


def window_seq_len(clip_length: int, height: int, width: int) -> int:
    """DiT token budget per window, the same for every window (the short last one is padded):
    ``frames_per_window * (height/16) * (width/16)`` (21*32*32 = 21504 at 512x512)."""
    lat_h, lat_w = height // VAE_STRIDE[1], width // VAE_STRIDE[2]
    return math.ceil(lat_h * lat_w / (PATCH_SIZE[1] * PATCH_SIZE[2]) * frames_per_window(clip_length))


# ---------------------------------------------------------------------------------------------
# The window schedule
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One window of the sliding schedule (identical at every denoising step).

    Attributes:
        index: position in the schedule, 0-based.
        start, end: latent frames ``[start, end)`` of the whole video.
        audio_start, audio_end: audio samples ``[audio_start, audio_end)`` fed to wav2vec for this window.
        blend_frames: leading frames blended with the previous window's values (``overlap`` for every
            window after the first, 0 for the first). Blending happens only from step 1 on.
        is_last: this window ends at the last latent frame.
    """

    index: int
    start: int
    end: int
    audio_start: int
    audio_end: int
    blend_frames: int
    is_last: bool

    @property
    def num_frames(self) -> int:
        return self.end - self.start

    @property
    def latent_slice(self) -> slice:
        return slice(self.start, self.end)

    @property
    def audio_slice(self) -> slice:
        return slice(self.audio_start, self.audio_end)


def validate_overlap(overlap: int, window_frames: int) -> None:
    """``0 <= overlap < window_frames`` or ``ValueError`` (the original never advances otherwise)."""
    if overlap < 0 or overlap >= window_frames:
        raise ValueError(
            f"overlap_window_length={overlap} must be between 0 and frames per window - 1 = {window_frames - 1} "
            f"(frames per window = (clip_sample_n_frames - 1) // 4 + 1 = {window_frames}); "
            "lower --overlap_window_length or raise --clip_sample_n_frames"
        )


def window_schedule(
    latent_frames: int,
    window_frames: int,
    overlap: int,
    num_audio_samples: int,
    samples_per_frame: int = AUDIO_SAMPLES_PER_FRAME,
) -> list[Window]:
    """The windows the original visits at every step, plus a defined answer where it has none.

    Args:
        latent_frames: ``T``, latent frames of the whole video (``num_latent_frames``).
        window_frames: latent frames per window (``frames_per_window(clip_length)``).
        overlap: latent frames shared by consecutive windows (``--overlap_window_length``).
        num_audio_samples: ``M``, length of the driving audio at 16 kHz.
        samples_per_frame: audio samples per video frame (``sr // fps`` = 640).

    The start advances by ``window_frames - overlap``; a window that would reach or pass ``T`` is cut
    to end at ``T`` and is the last one. Non-last windows hear ``4 * frames * samples_per_frame``
    samples from ``start * 4 * samples_per_frame``; the last hears everything to the end of the audio.
    """
    if latent_frames < 1:
        raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
    validate_overlap(overlap, window_frames)
    samples_per_latent = TEMPORAL_STRIDE * samples_per_frame
    if num_audio_samples < (latent_frames - 1) * samples_per_latent + 1:
        raise ValueError(f"{num_audio_samples} audio samples cannot drive {latent_frames} latent frames")

    windows: list[Window] = []
    start = 0
    end = min(window_frames, latent_frames)
    while True:
        last = end == latent_frames
        audio_start = start * samples_per_latent
        audio_end = num_audio_samples if last else audio_start + (end - start) * samples_per_latent
        windows.append(
            Window(
                index=len(windows),
                start=start,
                end=end,
                audio_start=audio_start,
                audio_end=audio_end,
                blend_frames=overlap if start != 0 else 0,
                is_last=last,
            )
        )
        if last:
            return windows
        start += window_frames - overlap
        end = min(start + window_frames, latent_frames)


def schedule_for_audio(
    num_audio_samples: int, clip_length: int, overlap: int, samples_per_frame: int = AUDIO_SAMPLES_PER_FRAME
) -> list[Window]:
    """``window_schedule`` from the audio length and clip length, as the pipeline needs it."""
    latent_frames = num_latent_frames(num_audio_samples, samples_per_frame)
    return window_schedule(latent_frames, frames_per_window(clip_length), overlap, num_audio_samples, samples_per_frame)


# ---------------------------------------------------------------------------------------------
# Overlap blending
# ---------------------------------------------------------------------------------------------


def overlap_weights(overlap: int, scheme: BlendScheme = "uniform", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weights of the NEW window on the ``overlap`` shared frames, ``[overlap]`` in ``dtype``; the previous
    window's values get ``1 - w``. Both schemes run from 0 (all previous) to 1 (all new).

    * ``uniform``: ``w_j = j / (overlap - 1)`` (O=5: 0, .25, .5, .75, 1), Python floats rounded once
      to ``dtype``, as the original stores them into a tensor of the latents' dtype.
    * ``log``: ``u = linspace(0, 1, O)``, ``w = log1p(u (e - 1))`` min-max normalised
      (O=5: 0, .3574, .6201, .8280, 1), computed in float32 torch as the original does, then cast.
    * ``overlap == 1``: ``[0.5]`` for both (the original fails there); ``overlap == 0``: empty.

    Pass the latents' dtype (bf16 on GPU) so the values are rounded exactly as the original's.
    """
    if scheme not in BLEND_SCHEMES:
        raise ValueError(f"overlapping_weight_scheme must be one of {BLEND_SCHEMES}, got {scheme!r}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if overlap <= 1:
        return torch.full((overlap,), 0.5, dtype=dtype)
    if scheme == "uniform":
        return torch.tensor([j / (overlap - 1) for j in range(overlap)], dtype=torch.float64).to(dtype)
    ramp = torch.log1p(torch.linspace(0, 1, overlap, dtype=torch.float32) * (torch.exp(torch.tensor(1.0)) - 1))
    return ((ramp - ramp.min()) / (ramp.max() - ramp.min())).to(dtype)


def merge_window(
    prediction: torch.Tensor,
    window_latents: torch.Tensor,
    window: Window,
    weights: torch.Tensor,
    blend: bool,
    round_to: torch.dtype | None = torch.bfloat16,
) -> torch.Tensor:
    """Blend a stepped window into the step's prediction and write it there, in place.

    Args:
        prediction: ``[B, C, T, h, w]`` the step's output so far (previous windows already written).
        window_latents: ``[B, C, f, h, w]`` the scheduler's output for this window, ``f = window.num_frames``.
        window: the window.
        weights: ``[overlap]`` from ``overlap_weights``.
        blend: False at denoising step 0, where windows simply overwrite (the original's ``i != 0``).
        round_to: the original rounds every window to bf16 before writing it (also in float32 runs);
            ``None`` skips that rounding.

    Returns the (blended, rounded) window latents that were written.

    The first ``window.blend_frames`` frames become ``w * new + (1 - w) * prediction[start + j]``; those
    prediction frames are what the previous window wrote in this same step.
    """
    if window_latents.shape[2] != window.num_frames:
        raise ValueError(f"window {window.index} has {window.num_frames} frames, got latents {tuple(window_latents.shape)}")
    out = window_latents
    n = window.blend_frames
    if blend and n > 0:
        w = weights.to(device=out.device, dtype=out.dtype).view(1, 1, n, 1, 1)
        out = out.clone()
        previous = prediction[:, :, window.start : window.start + n]
        out[:, :, :n] = out[:, :, :n] * w + previous * (1 - w)
    if round_to is not None:
        out = out.to(round_to)
    prediction[:, :, window.latent_slice] = out
    return out


# ---------------------------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------------------------


def combine_guidance(noise_pred: torch.Tensor, audio_scale: float, text_scale: float) -> torch.Tensor:
    """Three-way text/audio guidance of the CFG batch.

    Args:
        noise_pred: ``[3B, C, f, h, w]`` DiT outputs of rows (negative text, zero audio),
            (negative text, audio), (positive text, audio), stacked in that order.
        audio_scale: ``--sample_audio_guide_scale``; text_scale: ``--sample_text_guide_scale``.

    Returns ``[B, C, f, h, w]`` = ``r0 + audio_scale (r1 - r0) + text_scale (r2 - r1)``.
    """
    if noise_pred.shape[0] % 3 != 0:
        raise ValueError(f"guidance needs a batch of 3 rows per sample, got {noise_pred.shape[0]}")
    uncond, audio_only, cond = noise_pred.chunk(3)
    return uncond + audio_scale * (audio_only - uncond) + text_scale * (cond - audio_only)
