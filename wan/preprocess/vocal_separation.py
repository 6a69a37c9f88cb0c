"""Vocal separation with an MDX-Net ONNX model (Kim_Vocal_2), run directly with onnxruntime, offline.

    python vocal_seperator.py --audio_separator_model_file=checkpoints/Kim_Vocal_2.onnx \
        --audio_file_path=song.wav --saved_vocal_path=song_vocal.wav

The original called the ``audio-separator`` package (which pulls torchvision and fetches model lists from the
network). This module does the same maths (audio-separator 0.47.1 ``MDXSeparator.demix``, UVR MDX-Net):

1. load at 44.1 kHz stereo (mono is duplicated) and scale down to a 0.9 peak;
2. pad ``trim = n_fft // 2`` zeros in front, cut into chunks of ``hop * (dim_t - 1)`` samples every
   ``(1 - overlap) * chunk`` samples;
3. per chunk: STFT (periodic Hann, ``n_fft``, ``hop``, centred) -> ``[1, 4, dim_f, dim_t]`` as
   (L.re, L.im, R.re, R.im) keeping the lowest ``dim_f`` bins, bins 0-2 zeroed -> ONNX model -> inverse STFT
   (bins above ``dim_f`` zero);
4. Hann-weighted overlap-add, divide by the summed weights, drop the padding, undo the gain of step 1;
5. write a 16-bit stereo wav at 44.1 kHz, scaled down to a 0.9 peak if louder (the library's output rule).

The instrumental stem (optional) is ``mix - compensate * vocals``, as audio-separator computes it.

One deliberate difference, in level only: audio-separator 0.47.1 multiplies the separated stem by the input's
peak (``source = demix(mix) * peak``), so a song peaking at 0.5 gives vocals at half their level in the mix. Step 4
here keeps the vocals at the level they have in the input instead. A one-off comparison with the library on the
same (random, non-trivial) ONNX model agreed to 68-76 dB SNR once that scalar is taken out;
``test_matches_audio_separator`` repeats it where audio-separator is importable.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import atomic_output

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MDXParams:
    """The numbers of one MDX-Net model (UVR's model_data entry) and of the chunked inference."""

    n_fft: int = 7680  # STFT size (mdx_n_fft_scale_set)
    dim_f: int = 3072  # frequency bins the model sees (mdx_dim_f_set)
    dim_t: int = 256  # STFT frames per chunk, 2**mdx_dim_t_set
    hop: int = 1024  # STFT hop; also audio-separator's hop_length default
    compensate: float = 1.009  # vocal gain used when subtracting the vocals from the mix
    sample_rate: int = 44100  # the rate the model was trained at
    overlap: float = 0.25  # audio-separator's default overlap between chunks
    peak: float = 0.9  # input/output peak limit (audio-separator's normalization_threshold)

    @property
    def trim(self) -> int:
        return self.n_fft // 2

    @property
    def chunk(self) -> int:
        return self.hop * (self.dim_t - 1)


KIM_VOCAL_2 = MDXParams()


class MDXNet:
    """An MDX-Net ONNX session plus the STFT around it. ``demix(mix [2, N]) -> [2, N]``."""

    def __init__(self, model_file: str | os.PathLike, params: MDXParams = KIM_VOCAL_2, threads: int | None = None):
        import onnxruntime as ort

        model_file = Path(model_file)
        if not model_file.is_file():
            raise FileNotFoundError(
                f"{model_file} not found; download Kim_Vocal_2.onnx (see docs/data_preparation.md) and pass it as --audio_separator_model_file"
            )
        self.params = params
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(model_file), sess_options=options, providers=ort.get_available_providers())
        except Exception as exc:
            raise ValueError(f"{model_file} is not a loadable ONNX model ({exc}); re-download it") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        want = [4, params.dim_f, params.dim_t]
        got = list(inp.shape[1:])
        if len(got) != 3 or any(isinstance(g, int) and g != w for g, w in zip(got, want, strict=True)):
            raise ValueError(f"{model_file} takes input {inp.shape}, but these MDX parameters need [B, {', '.join(map(str, want))}]; is it an MDX-Net vocal model?")

    # -- spectrogram <-> audio (the layout UVR models were trained on) --------------------------------------
    def _stft(self, wave: np.ndarray) -> np.ndarray:
        """[2, chunk] audio -> [4, dim_f, dim_t] (L.re, L.im, R.re, R.im)."""
        import torch

        p = self.params
        spec = torch.stft(torch.from_numpy(wave), p.n_fft, p.hop, window=torch.hann_window(p.n_fft), center=True, return_complex=True)
        spec = torch.view_as_real(spec).permute(0, 3, 1, 2).reshape(4, -1, spec.shape[-1])  # [2 ch * (re, im), F, T]
        return spec[:, : p.dim_f].numpy()

    def _istft(self, spec: np.ndarray) -> np.ndarray:
        """[4, dim_f, dim_t] -> [2, chunk] audio; bins above dim_f are zero."""
        import torch

        p = self.params
        full = np.zeros((4, p.n_fft // 2 + 1, spec.shape[-1]), dtype=np.float32)
        full[:, : p.dim_f] = spec
        ri = torch.from_numpy(full).reshape(2, 2, full.shape[1], full.shape[2]).permute(0, 2, 3, 1).contiguous()
        return torch.istft(torch.view_as_complex(ri), p.n_fft, p.hop, window=torch.hann_window(p.n_fft), center=True).numpy()

    def _run_chunk(self, wave: np.ndarray) -> np.ndarray:
        spec = self._stft(wave)
        spec[:, :3] = 0  # UVR drops the lowest three bins (DC rumble)
        pred = self.session.run(None, {self.input_name: spec[None].astype(np.float32)})[0][0]
        return self._istft(pred)

    def demix(self, mix: np.ndarray, progress: bool = True) -> np.ndarray:
        """The vocal stem of a [2, N] float mix (peak <= 1), same shape."""
        from tqdm import tqdm

        p = self.params
        n = mix.shape[-1]
        gen = p.chunk - 2 * p.trim  # samples each chunk contributes away from its edges
        pad = gen + p.trim - n % gen
        mixture = np.concatenate([np.zeros((2, p.trim), np.float32), mix.astype(np.float32), np.zeros((2, pad), np.float32)], axis=1)
        total = mixture.shape[-1]
        step = int((1 - p.overlap) * p.chunk)
        result = np.zeros((2, total), np.float32)
        weight = np.zeros(total, np.float32)
        for start in tqdm(range(0, total, step), desc="separating vocals", unit="chunk", disable=not progress):
            end = min(start + p.chunk, total)
            part = np.zeros((2, p.chunk), np.float32)
            part[:, : end - start] = mixture[:, start:end]
            window = np.hanning(end - start).astype(np.float32) if p.overlap else np.ones(end - start, np.float32)
            result[:, start:end] += self._run_chunk(part)[:, : end - start] * window
            weight[start:end] += window
        out = np.divide(result, weight, out=np.zeros_like(result), where=weight > 0)  # weight is 0 only at the padded ends
        return out[:, p.trim : p.trim + n]


def load_stereo(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """[2, N] float32 at ``sample_rate`` (mono duplicated, extra channels dropped)."""
    import librosa

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass an existing audio file as --audio_file_path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa's audioread fallback warning; the error below is clearer
            audio, _ = librosa.load(str(path), sr=sample_rate, mono=False)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable audio file ({exc}); convert it to wav first (audio_extractor.py for videos)") from exc
    audio = np.atleast_2d(audio)
    if audio.shape[-1] == 0:
        raise ValueError(f"{path} holds no audio samples")
    if audio.shape[0] == 1:
        audio = np.concatenate([audio, audio])
    return np.ascontiguousarray(audio[:2], dtype=np.float32)


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int, peak: float) -> Path:
    """Write [2, N] audio as 16-bit PCM, scaled down to ``peak`` if louder; atomic."""
    import soundfile as sf

    path = Path(path)
    top = float(np.abs(audio).max())
    if top > peak:
        audio = audio * (peak / top)
    with atomic_output(path) as tmp:
        sf.write(str(tmp), audio.T, sample_rate, subtype="PCM_16", format="WAV")
    return path


def separate_vocals(
    model_file: str | os.PathLike,
    audio_path: str | os.PathLike,
    out_path: str | os.PathLike,
    instrumental_path: str | os.PathLike | None = None,
    params: MDXParams = KIM_VOCAL_2,
    progress: bool = True,
) -> Path:
    """Write the vocals of ``audio_path`` to ``out_path`` (44.1 kHz stereo 16-bit wav); returns ``out_path``."""
    model = MDXNet(model_file, params)
    mix = load_stereo(audio_path, params.sample_rate)
    top = float(np.abs(mix).max())
    gain = params.peak / top if top > params.peak else 1.0
    vocals = model.demix(mix * gain, progress=progress) / gain
    out = write_wav(out_path, vocals, params.sample_rate, params.peak)
    if instrumental_path is not None:
        write_wav(instrumental_path, mix - params.compensate * vocals, params.sample_rate, params.peak)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Extract the vocals of a song with an MDX-Net ONNX model (Kim_Vocal_2), offline.")
    parser.add_argument("--audio_separator_model_file", type=str, required=True, help="MDX-Net .onnx file, e.g. checkpoints/Kim_Vocal_2.onnx")
    parser.add_argument("--audio_file_path", type=str, required=True, help="input audio (wav, mp3, flac, ...)")
    parser.add_argument(
        "--saved_vocal_path", type=str, default=None, help="output .wav (default: vocal.wav next to the input, where the original always wrote it)"
    )
    parser.add_argument("--saved_instrumental_path", type=str, default=None, help="also write the accompaniment (mix minus vocals) here")
    args = parser.parse_args(argv)
    out = args.saved_vocal_path or os.path.join(os.path.dirname(os.path.abspath(args.audio_file_path)), "vocal.wav")
    try:
        path = separate_vocals(args.audio_separator_model_file, args.audio_file_path, out, args.saved_instrumental_path)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(1, f"error: {exc}\n")
    print(f"vocals saved to {path}")


if __name__ == "__main__":
    main()
