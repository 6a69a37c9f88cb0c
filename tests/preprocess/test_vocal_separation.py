"""vocal_seperator.py: STFT -> ONNX -> iSTFT with tiny ONNX models the test builds, on speech over a music bed."""

from __future__ import annotations

import subprocess
import sys

import librosa
import numpy as np
import onnx
import pytest
import soundfile as sf
from onnx import TensorProto, helper, numpy_helper

from wan.preprocess.vocal_separation import KIM_VOCAL_2, MDXNet, separate_vocals

from .conftest import REPO, read_wav

SR = KIM_VOCAL_2.sample_rate
SECONDS = 9.0  # 3 overlapping chunks of 5.9 s: exercises the overlap-add and the padded last chunk


def _save(graph_nodes, path, initializers=()):
    shape = ["B", 4, KIM_VOCAL_2.dim_f, KIM_VOCAL_2.dim_t]
    graph = helper.make_graph(
        graph_nodes,
        "tiny_mdx",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def gated_model(path, bias: float):
    """output = x * sigmoid(conv1x1(x)); zero weights make the gate the constant sigmoid(bias)."""
    w = numpy_helper.from_array(np.zeros((4, 4, 1, 1), np.float32), "w")
    b = numpy_helper.from_array(np.full(4, bias, np.float32), "b")
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["z"]), helper.make_node("Sigmoid", ["z"], ["g"]), helper.make_node("Mul", ["input", "g"], ["output"])]
    return _save(nodes, path, [w, b])


def swap_model(path):
    """Swaps the left (channels 0, 1) and right (2, 3) spectrograms: checks the (L.re, L.im, R.re, R.im) layout."""
    idx = numpy_helper.from_array(np.array([2, 3, 0, 1], np.int64), "idx")
    return _save([helper.make_node("Gather", ["input", "idx"], ["output"], axis=1)], path, [idx])


@pytest.fixture(scope="module")
def stereo_mix(speech_wav, tmp_path_factory):
    """Left: espeak-ng speech (repeated to 9 s); right: a music bed of chords; written as a 44.1 kHz wav."""
    speech, _ = librosa.load(speech_wav, sr=SR)
    n = int(SECONDS * SR)
    left = np.resize(speech, n)
    t = np.arange(n) / SR
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6, 440.0)) / 4
    right = 0.5 * chord * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))  # 2 Hz "beat" envelope
    mix = np.stack([0.8 * left / np.abs(left).max(), right])
    # MDX drops everything under ~17 Hz (bins 0-2) by design; espeak's speech has a DC offset, so take the
    # sub-40 Hz part out of the test mix to compare the rest exactly.
    spec = np.fft.rfft(mix, axis=1)
    spec[:, np.fft.rfftfreq(n, 1 / SR) < 40] = 0
    mix = np.fft.irfft(spec, n, axis=1).astype(np.float32)
    path = tmp_path_factory.mktemp("mix") / "mix.wav"
    sf.write(path, mix.T, SR, subtype="FLOAT")
    return path, mix


def snr_db(ref, est):
    return 10 * np.log10(np.sum(ref**2) / np.sum((ref - est) ** 2))


def test_identity_model_returns_the_mix(stereo_mix, tmp_path):
    # sigmoid(30) == 1.0 in float32: the gate passes everything, so the vocal stem must be the mix itself,
    # except what MDX drops on purpose: bins 0-2 (< 17 Hz) and above dim_f (> 17.6 kHz), absent from this mix.
    path, mix = stereo_mix
    out = separate_vocals(gated_model(tmp_path / "id.onnx", 30.0), path, tmp_path / "vocal.wav", progress=False)
    audio, rate, subtype = read_wav(out)
    assert (rate, audio.shape, subtype) == (SR, (mix.shape[1], 2), "PCM_16")
    assert snr_db(mix, audio.T) > 40  # 16-bit output quantisation and the band limits only
    assert not list(tmp_path.glob(".*tmp*"))


def test_gain_model_scales_and_instrumental_is_the_rest(stereo_mix, tmp_path):
    path, mix = stereo_mix
    gain = 0.25  # sigmoid(log(1/3))
    vocal, inst = tmp_path / "v.wav", tmp_path / "i.wav"
    separate_vocals(gated_model(tmp_path / "g.onnx", float(np.log(1 / 3))), path, vocal, instrumental_path=inst, progress=False)
    v, _, _ = read_wav(vocal)
    i, _, _ = read_wav(inst)
    assert snr_db(gain * mix, v.T) > 35
    assert snr_db((1 - KIM_VOCAL_2.compensate * gain) * mix, i.T) > 35


def test_channel_layout_matches_uvr(stereo_mix, tmp_path):
    path, mix = stereo_mix
    out = separate_vocals(swap_model(tmp_path / "s.onnx"), path, tmp_path / "v.wav", progress=False)
    audio, _, _ = read_wav(out)
    assert snr_db(mix[::-1], audio.T) > 40  # left came back as the music, right as the speech


def test_mono_input_and_other_rate(speech_wav, tmp_path):
    # espeak-ng writes 22.05 kHz mono: the output is 44.1 kHz stereo of the same duration.
    out = separate_vocals(gated_model(tmp_path / "id.onnx", 30.0), speech_wav, tmp_path / "v.wav", progress=False)
    audio, rate, _ = read_wav(out)
    assert rate == SR and audio.shape[1] == 2
    assert abs(len(audio) / SR - sf.info(str(speech_wav)).duration) < 1e-3
    np.testing.assert_allclose(audio[:, 0], audio[:, 1])


def test_clear_errors(stereo_mix, tmp_path):
    path, _ = stereo_mix
    with pytest.raises(FileNotFoundError, match="Kim_Vocal_2"):
        MDXNet(tmp_path / "Kim_Vocal_2.onnx")
    bad = tmp_path / "bad.onnx"
    helper_model = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 2048, 256])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 2048, 256])]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    helper_model.ir_version = 8
    onnx.save(helper_model, bad)
    with pytest.raises(ValueError, match="bad.onnx.*3072"):
        MDXNet(bad)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        separate_vocals(gated_model(tmp_path / "id.onnx", 30.0), tmp_path / "missing.wav", tmp_path / "v.wav")
    assert not (tmp_path / "v.wav").exists()


def test_cli_with_original_flags(stereo_mix, tmp_path):
    path, _ = stereo_mix
    model = gated_model(tmp_path / "Kim_Vocal_2.onnx", 30.0)
    out = tmp_path / "out" / "vocal_only.wav"
    cmd = [sys.executable, str(REPO / "vocal_seperator.py"), f"--audio_separator_model_file={model}", f"--audio_file_path={path}", f"--saved_vocal_path={out}"]
    subprocess.run(cmd, check=True, capture_output=True)
    assert read_wav(out)[1] == SR


def random_conv_model(path, seed: int = 0):
    """A non-trivial mask: output = x * sigmoid(conv3x3(x)) with random weights, mixing all four channels."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.5, 4).astype(np.float32), "b")
    conv = helper.make_node("Conv", ["input", "w", "b"], ["z"], pads=[1, 1, 1, 1])
    return _save([conv, helper.make_node("Sigmoid", ["z"], ["g"]), helper.make_node("Mul", ["input", "g"], ["output"])], path, [w, b])


# Runs audio-separator offline: its three model-data JSON files (which it downloads unless present) keyed by the model's MD5,
# a torchvision stub (onnx2torch imports it; the ONNX path never calls it) and the bundled ffmpeg on PATH.
_LIBRARY_RUN = """
import hashlib, json, sys, types
def _unavailable(*args, **kwargs):
    raise RuntimeError("torchvision stub")
if "torchvision" not in sys.modules:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        ops.roi_align = ops.nms = ops.box_convert = _unavailable
        tv.ops = ops
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops})
from audio_separator.separator import Separator
model_dir, model_name, mix, out_dir = sys.argv[1:5]
md5 = hashlib.md5(open(f"{model_dir}/{model_name}", "rb").read()).hexdigest()
keys = ["vr_download_list", "mdx_download_list", "mdx_download_vip_list", "demucs_download_list",
        "mdx23c_download_list", "mdx23c_download_vip_list", "roformer_download_list"]
lists = {k: {} for k in keys}
lists["mdx_download_list"]["MDX-Net Model: test"] = model_name
json.dump(lists, open(f"{model_dir}/download_checks.json", "w"))
json.dump({md5: {"compensate": 1.009, "mdx_dim_f_set": 3072, "mdx_dim_t_set": 8, "mdx_n_fft_scale_set": 7680, "primary_stem": "Vocals"}},
          open(f"{model_dir}/mdx_model_data.json", "w"))
json.dump({}, open(f"{model_dir}/vr_model_data.json", "w"))
sep = Separator(model_file_dir=model_dir, output_dir=out_dir, output_single_stem="Vocals")
sep.load_model(model_name)
print(sep.separate(mix)[0])
"""


def test_matches_audio_separator(stereo_mix, tmp_path):
    """Same separation as the package the original called, up to its output level (see the module docstring)."""
    import importlib.metadata
    import importlib.util
    import os

    import imageio_ffmpeg

    if importlib.util.find_spec("audio_separator") is None:
        pytest.skip(
            "audio-separator is an optional reference here, not a dependency; to run this comparison: "
            "pip install --no-deps audio-separator==0.47.1 onnx2torch-py313==1.6.0 beartype==0.18.5 diffq==0.2.4 julius==0.2.8 "
            "ml_collections==1.1.0 absl-py pydub==0.25.1 resampy==0.4.3 rotary-embedding-torch==0.6.5 samplerate==0.1.0 six requests pyyaml "
            "(--no-deps keeps its torchvision out)"
        )
    path, mix = stereo_mix
    models = tmp_path / "models"
    models.mkdir()
    model = random_conv_model(models / "Tiny.onnx")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ffmpeg").symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-c", _LIBRARY_RUN, str(models), model.name, str(path), str(tmp_path / "lib")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, _, _ = read_wav(tmp_path / "lib" / proc.stdout.strip().splitlines()[-1])
    ours, _, _ = read_wav(separate_vocals(model, path, tmp_path / "ours.wav", progress=False))
    assert ref.shape == ours.shape
    scale = float((ref * ours).sum() / (ours * ours).sum())
    assert snr_db(ref, scale * ours) > 55  # identical up to a scalar and 16-bit rounding
    if importlib.metadata.version("audio-separator") == "0.47.1":
        assert scale == pytest.approx(np.abs(mix).max(), rel=2e-3)  # the library scales the stem by the input's peak
