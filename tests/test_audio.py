"""Audio loading (16 kHz mono, named errors) and wav2vec features against the pipeline golden case."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import CASES
from wan.audio import Wav2VecFeatureExtractor, load_audio, wav2vec_num_tokens
from wan.models.loading import CheckpointError
from wan.testing.golden_encoders import recipe_wav2vec
from wan.testing.recipe import recipe_tensor

PIPELINE = CASES / "pipeline"


@pytest.fixture(scope="module")
def case_extractor() -> Wav2VecFeatureExtractor:
    """The pipeline case's processor files and its tiny recipe-filled Wav2Vec2Model."""
    return Wav2VecFeatureExtractor(PIPELINE / "wav2vec", model=recipe_wav2vec(PIPELINE / "wav2vec"))


def _write_wav(path, data: np.ndarray, rate: int, **kwargs) -> None:
    import soundfile as sf  # imported here so the GPU-only test collects where soundfile is absent

    sf.write(path, data, rate, **kwargs)


def _tone(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.sin(2 * np.pi * freq * t).astype(np.float32)


def _peak_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[spectrum.argmax()])


def test_load_audio_stereo_44k_to_16k_mono(tmp_path):
    tone = _tone(44100, 1.0)
    path = tmp_path / "stereo.wav"
    _write_wav(path, np.stack([0.6 * tone, 0.2 * tone], axis=1), 44100)
    samples = load_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1 and samples.size == 16000
    assert abs(_peak_hz(samples) - 440.0) <= 1.0
    # channels are averaged: amplitude (0.6 + 0.2) / 2
    assert abs(np.abs(samples[1000:-1000]).max() - 0.4) < 0.01


def test_load_audio_8k_int16(tmp_path):
    path = tmp_path / "low.wav"
    _write_wav(path, (_tone(8000, 0.5, 300.0) * 20000).astype(np.int16), 8000, subtype="PCM_16")
    samples = load_audio(path)
    assert samples.size == 8000 and abs(_peak_hz(samples) - 300.0) <= 2.0


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.wav"):
        load_audio(tmp_path / "nothere.wav")
    silent = tmp_path / "silent.wav"
    _write_wav(silent, np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match=r"silent\.wav is silent"):
        load_audio(silent)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    with pytest.raises(ValueError, match=r"broken\.wav"):
        load_audio(broken)


@pytest.mark.parametrize("window", [0, 3])
def test_wav2vec_features_match_pipeline_case(case_extractor, window):
    """Reproduce wav2vec_input_s0_w{k} / wav2vec_hidden_s0_w{k} from the case's audio and window ranges."""
    meta = json.loads((PIPELINE / "case.json").read_text())
    (spec,) = [w for w in meta["windows"] if w["step"] == 0 and w["window"] == window]
    start, end = spec["audio_sample_range"]
    audio = load_file(str(PIPELINE / "inputs.safetensors"))["audio_16k"].numpy()
    ref = load_file(str(PIPELINE / "outputs.safetensors"))

    values = case_extractor.input_values(audio[start:end])
    torch.testing.assert_close(values, ref[f"wav2vec_input_s0_w{window}"], rtol=0, atol=1e-6)
    hidden = case_extractor(audio[start:end])
    want = ref[f"wav2vec_hidden_s0_w{window}"]
    assert hidden.shape == want.shape == (1, spec["wav2vec_tokens"], 768)
    assert hidden.dtype == torch.float32
    err = (hidden.double() - want.double())
    assert err.abs().max() < 5e-5 and err.norm() / want.double().norm() < 1e-5
    assert wav2vec_num_tokens(end - start) == spec["wav2vec_tokens"]


def test_recipe_uses_the_recorded_parametrization_names():
    """The recipe seeds by key; the case was recorded with transformers 4.51's weight-norm names."""
    model = recipe_wav2vec(PIPELINE / "wav2vec")
    state = model.state_dict()
    for part, legacy in (("original0", "weight_g"), ("original1", "weight_v")):
        recorded = f"encoder.pos_conv_embed.conv.parametrizations.weight.{part}"
        key = recorded if recorded in state else f"encoder.pos_conv_embed.conv.{legacy}"
        assert torch.equal(state[key], recipe_tensor(recorded, state[key].shape))


def test_window_cache(case_extractor):
    audio = load_file(str(PIPELINE / "inputs.safetensors"))["audio_16k"].numpy()
    first = case_extractor.window(audio, 0, 6400)
    assert case_extractor.window(audio, 0, 6400) is first
    torch.testing.assert_close(first, case_extractor(audio[:6400]), rtol=0, atol=0)
    other = audio.copy() * 0.5 + 0.01
    assert case_extractor.window(other, 0, 6400) is not first  # a new track empties the cache


def test_short_window_raises(case_extractor):
    with pytest.raises(ValueError, match="too short"):
        case_extractor(np.ones(100, dtype=np.float32))


def test_folder_without_weights_names_what_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match=r"model\.safetensors or pytorch_model\.bin"):
        Wav2VecFeatureExtractor(PIPELINE / "wav2vec")
    with pytest.raises(FileNotFoundError, match="wav2vec2-base-960h.*hf download"):
        Wav2VecFeatureExtractor(tmp_path / "wav2vec2-base-960h")


def test_load_from_saved_folder(tmp_path, case_extractor):
    folder = tmp_path / "wav2vec2-base-960h"
    case_extractor.model.save_pretrained(folder)
    case_extractor.processor.save_pretrained(folder)
    loaded = Wav2VecFeatureExtractor(folder)
    audio = _tone(16000, 0.5) * 0.3
    torch.testing.assert_close(loaded(audio), case_extractor(audio), rtol=0, atol=0)


@pytest.mark.gpu
def test_wav2vec_on_cuda_matches_pipeline_case():
    extractor = Wav2VecFeatureExtractor(PIPELINE / "wav2vec", device="cuda", model=recipe_wav2vec(PIPELINE / "wav2vec"))
    audio = load_file(str(PIPELINE / "inputs.safetensors"))["audio_16k"].numpy()
    want = load_file(str(PIPELINE / "outputs.safetensors"))["wav2vec_hidden_s0_w0"].double()
    got = extractor.window(audio, 0, 12800)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert (got.double().cpu() - want).norm() / want.norm() < 1e-4
