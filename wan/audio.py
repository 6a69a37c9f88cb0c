"""Driving audio: loading at 16 kHz mono and wav2vec 2.0 features per sliding window.

As in the original: the audio is read with ``librosa.load(path, sr=16000)`` (mono, librosa's
default resampler, float32). Each sliding window's raw samples go through ``Wav2Vec2Processor``
(which normalises THAT window to zero mean / unit variance) and then ``Wav2Vec2Model``; the
pipeline uses ``last_hidden_state`` [1, N, 768] (~50 tokens per second, 320 samples per token).
The model stays float32 on every device and runs outside autocast.

The windows' audio does not change between denoising steps, so ``Wav2VecFeatureExtractor.window``
caches the features per sample range; ``__call__`` always recomputes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from wan.constants import WAV2VEC_SAMPLE_RATE
from wan.errors import CheckpointError, download_hint

# Peak amplitude below which audio counts as silent (-80 dBFS, about 3 LSBs of 16-bit PCM).
SILENCE_PEAK = 1e-4
# Files that make a wav2vec2 folder usable: the model config, one processor config (transformers 5's
# save_pretrained writes processor_config.json, the hub folder has preprocessor_config.json), weights.
WAV2VEC_CONFIG = "config.json"
WAV2VEC_PROCESSOR_CONFIGS = ("preprocessor_config.json", "processor_config.json")
WAV2VEC_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def load_audio(path: str | os.PathLike, sample_rate: int = WAV2VEC_SAMPLE_RATE) -> np.ndarray:
    """Read any audio file librosa can decode as mono float32 at ``sample_rate`` -> [num_samples].

    Channels are averaged, any input rate is resampled. Raises FileNotFoundError if ``path`` is
    missing, ValueError naming the file if it cannot be decoded, is empty, or is silent.
    """
    import librosa

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        samples, _ = librosa.load(str(path), sr=sample_rate, mono=True)
    except Exception as exc:  # soundfile/audioread errors differ by backend and format
        raise ValueError(
            f"could not decode audio file {path}: {exc}. For a video, extract its audio first: python audio_extractor.py --video_path {path} --saved_audio_path audio.wav"
        ) from exc
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if samples.size == 0:
        raise ValueError(f"audio file {path} holds no samples")
    if not np.isfinite(samples).all():
        raise ValueError(f"audio file {path} holds NaN or infinite samples")
    peak = float(np.abs(samples).max())
    if peak < SILENCE_PEAK:
        raise ValueError(f"audio file {path} is silent (peak amplitude {peak:.2g} < {SILENCE_PEAK:g}); the avatar needs speech to follow")
    return samples


def wav2vec_num_tokens(num_samples: int, kernels=(10, 3, 3, 3, 3, 2, 2), strides=(5, 2, 2, 2, 2, 2, 2)) -> int:
    """Tokens wav2vec2's conv stack makes from ``num_samples`` (``floor((n - k) / s) + 1`` per layer)."""
    n = num_samples
    for k, s in zip(kernels, strides, strict=True):
        n = (n - k) // s + 1
    return max(n, 0)


def _check_wav2vec_dir(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"wav2vec2 folder not found: {path}; {download_hint(path)}")
    missing = [] if (path / WAV2VEC_CONFIG).is_file() else [WAV2VEC_CONFIG]
    for alternatives in (WAV2VEC_PROCESSOR_CONFIGS, WAV2VEC_WEIGHTS):
        if not any((path / name).is_file() for name in alternatives):
            missing.append(" or ".join(alternatives))
    if missing:
        raise CheckpointError(f"wav2vec2 folder {path} lacks {', '.join(missing)}; {download_hint(path)}")


class Wav2VecFeatureExtractor:
    """``Wav2Vec2Processor`` + ``Wav2Vec2Model`` from one folder (``wav2vec2-base-960h``).

    ``extractor(samples)`` -> ``last_hidden_state`` [1, N, 768] float32, for one window of raw
    16 kHz samples (normalised here, per call, by the processor as in the original).

    ``model``/``processor`` may be passed instead of a folder (tests, or a folder without weights
    whose model is built from its config).
    """

    def __init__(
        self,
        path_or_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        *,
        model: torch.nn.Module | None = None,
        processor=None,
    ):
        from transformers import Wav2Vec2Model, Wav2Vec2Processor

        if path_or_dir is None and (model is None or processor is None):
            raise ValueError("Wav2VecFeatureExtractor needs a wav2vec2 folder, or both model= and processor=")
        if path_or_dir is not None:
            path = Path(path_or_dir)
            if model is None:
                _check_wav2vec_dir(path)
            elif not path.is_dir():
                raise FileNotFoundError(f"wav2vec2 folder not found: {path}; {download_hint(path)}")
            if processor is None:
                processor = Wav2Vec2Processor.from_pretrained(str(path))
            if model is None:
                # the 960h checkpoint is a CTC model; its lm_head is dropped here, as in the original
                model = Wav2Vec2Model.from_pretrained(str(path))
        self.processor = processor
        self.model = model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
        self.sampling_rate = int(getattr(processor, "feature_extractor", processor).sampling_rate)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self._cached_audio: np.ndarray | None = None  # the track the cache belongs to

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Wav2VecFeatureExtractor:
        self.model.to(device)
        self.clear_cache()
        return self

    def input_values(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw samples [S] -> the processor's per-window normalised input [1, S] float32."""
        if isinstance(samples, torch.Tensor):
            samples = samples.detach().float().cpu().numpy()
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size < 400:  # the conv stack's receptive field
            raise ValueError(f"audio window of {samples.size} samples is too short for wav2vec2 (needs >= 400)")
        return self.processor(samples, sampling_rate=self.sampling_rate, return_tensors="pt").input_values.float()

    @torch.no_grad()
    def __call__(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw 16 kHz samples of one window [S] -> last_hidden_state [1, N, 768] float32 on the model's device."""
        values = self.input_values(samples).to(self.device)
        return self.model(values).last_hidden_state

    def window(self, audio: np.ndarray, start: int, end: int) -> torch.Tensor:
        """Features of ``audio[start:end]``, cached by (start, end): every denoising step reuses them.

        The cache belongs to one track (the same ``audio`` object); another array empties it.
        """
        if audio is not self._cached_audio:
            self.clear_cache()
            self._cached_audio = audio
        key = (int(start), int(end))
        if key not in self._cache:
            self._cache[key] = self(audio[start:end])
        return self._cache[key]

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cached_audio = None
