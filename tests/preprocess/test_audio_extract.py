"""audio_extractor.py: video with sound -> 16 kHz mono 16-bit wav; silent / broken videos fail cleanly."""

from __future__ import annotations

import subprocess
import sys

import librosa
import numpy as np
import pytest

from wan.preprocess.audio_extract import extract_audio

from .conftest import REPO, read_wav


def test_extracts_16k_mono_pcm_matching_the_speech(talking_video, speech_wav, tmp_path):
    out = extract_audio(talking_video, tmp_path / "a.wav")
    audio, rate, subtype = read_wav(out)
    assert (rate, audio.shape[1], subtype) == (16000, 1, "PCM_16")
    # The video is cut to 2 s (-shortest), the speech is longer: 2 s of audio, within one aac frame.
    assert abs(len(audio) / rate - 2.0) < 0.1
    # Same content as the source speech (aac round trip + resampling): high correlation of the envelopes.
    ref, _ = librosa.load(speech_wav, sr=16000)
    n = min(len(ref), len(audio)) - 2000
    env = lambda x: np.convolve(np.abs(x[:n]), np.ones(400) / 400, mode="valid")  # noqa: E731
    lag = int(np.argmax(np.correlate(env(audio[:, 0])[:8000], env(ref)[:4000], mode="valid")))  # aac priming delay
    a, r = env(audio[lag:, 0]), env(ref)
    m = min(len(a), len(r))
    assert np.corrcoef(a[:m], r[:m])[0, 1] > 0.9


def test_video_without_audio_fails_and_writes_nothing(silent_video, tmp_path):
    out = tmp_path / "x.wav"
    with pytest.raises(ValueError, match="no audio stream"):
        extract_audio(silent_video, out)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    with pytest.raises(ValueError, match="bad.mp4"):
        extract_audio(bad, tmp_path / "x.wav")
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        extract_audio(tmp_path / "nope.mp4", tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()


def test_a_text_file_is_not_a_media_file(tmp_path):
    """ffmpeg opens a long enough .txt as "tty" text art (a video stream): say what it is, not "no audio stream"."""
    notes = tmp_path / "notes.txt"
    notes.write_text("These are my notes about the video.\n" * 50)
    with pytest.raises(ValueError, match=r"notes\.txt is not a media file \(ffmpeg reads it as text\)"):
        extract_audio(notes, tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()


def test_cli_with_original_flags(talking_video, silent_video, tmp_path):
    out = tmp_path / "cli.wav"
    cmd = [sys.executable, str(REPO / "audio_extractor.py"), f"--video_path={talking_video}", f"--saved_audio_path={out}"]
    subprocess.run(cmd, check=True, capture_output=True)
    assert read_wav(out)[1] == 16000
    cmd = [sys.executable, str(REPO / "audio_extractor.py"), "--video_path", str(silent_video), "--saved_audio_path", str(tmp_path / "s.wav")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1 and "no audio stream" in proc.stderr and "silent.mp4" in proc.stderr
    assert not (tmp_path / "s.wav").exists()
