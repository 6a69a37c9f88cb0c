"""inference.py end to end on a CPU: tiny checkpoint folder, real photo, 2 s of real speech, mp4 with sound."""

from __future__ import annotations

import subprocess
import sys

import av
import pytest

from tests.conftest import EXAMPLES, REPO


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def speech_2s(tmp_path_factory):
    import soundfile as sf

    from wan.audio import load_audio

    path = tmp_path_factory.mktemp("audio") / "speech_2s.wav"
    sf.write(path, load_audio(EXAMPLES / "case-2" / "audio.wav")[:32000], 16000)
    return path


def test_inference_py_writes_mp4_with_audio(tiny_folder, speech_2s, tmp_path):
    out_dir = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "inference.py"), *(f"--{k}={v}" for k, v in tiny_folder.items()),
           f"--validation_reference_path={EXAMPLES / 'case-1' / 'reference.png'}", f"--validation_driven_audio_path={speech_2s}",
           f"--output_dir={out_dir}", "--width=64", "--height=64", "--clip_sample_n_frames=33", "--overlap_window_length=4",
           "--sample_steps=2", "--device=cpu", "--seed=7", "--save_intermediate"]  # fmt: skip
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # 2 s = 50 frames -> 13 latent frames -> windows [0, 9) and [5, 13): 2 windows; 1 + 4*12 = 49 frames.
    assert "2 windows" in run.stderr
    video = out_dir / "video_with_audio.mp4"
    with av.open(str(video)) as container:
        vstream, astream = container.streams.video[0], container.streams.audio[0]
        frames = sum(1 for _ in container.decode(vstream))
        assert (vstream.codec_context.name, vstream.width, vstream.height) == ("h264", 64, 64)
        assert astream.codec_context.name == "aac"
    assert frames == 49
    with av.open(str(video)) as container:
        audio_seconds = sum(f.samples for f in container.decode(audio=0)) / container.streams.audio[0].rate
    assert abs(audio_seconds - 49 / 25) < 0.05
    assert (out_dir / "video_without_audio.mp4").is_file() and (out_dir / "cropped_audio.wav").is_file()
    assert not list(out_dir.glob(".*")), "temporary files left behind"
