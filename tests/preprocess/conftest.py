"""Real test media for the preprocessing tools: espeak-ng speech, a music bed, and a short video of real faces."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from wan.preprocess.common import run_ffmpeg

REPO = Path(__file__).resolve().parents[2]
FACE_PHOTOS = sorted((REPO / "examples").glob("case-*/reference.png"))
VIDEO_SIZE = (512, 512)  # W, H of the test video (a "square" bucket clip)
VIDEO_FPS = 25
VIDEO_FRAMES = 50  # 2 s


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # [512, 512, 3] uint8 RGB, a real face


def face_photos() -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8) for every real face photo the tests use."""
    photos = [("astronaut", astronaut())]
    photos += [(p.parent.name, np.array(Image.open(p).convert("RGB"))) for p in FACE_PHOTOS]
    return photos


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """About 2 s of real synthetic speech (espeak-ng), 22.05 kHz mono."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng); the speech fixture needs it")
    out = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(out), "Hello there, this is a talking avatar test."], check=True)
    return out


@pytest.fixture(scope="session")
def talking_video(tmp_path_factory, speech_wav) -> Path:
    """A 2 s, 25 fps, 512x512 mp4 of real face photos (1/2 s each) with the speech as its sound track."""
    d = tmp_path_factory.mktemp("video")
    frames = d / "frames"
    frames.mkdir()
    photos = [Image.fromarray(rgb).resize(VIDEO_SIZE) for _, rgb in face_photos()[:4]]
    for i in range(VIDEO_FRAMES):
        photos[i * len(photos) // VIDEO_FRAMES].save(frames / f"{i:04d}.png")
    out = d / "talk.mp4"
    run_ffmpeg(
        ["-framerate", str(VIDEO_FPS), "-i", str(frames / "%04d.png"), "-i", str(speech_wav), "-c:v", "libx264", "-pix_fmt", "yuv420p",
         "-crf", "18", "-c:a", "aac", "-shortest", str(out)],
        "making the test video",
    )
    return out


@pytest.fixture(scope="session")
def silent_video(tmp_path_factory) -> Path:
    """A 1 s mp4 with no audio stream."""
    d = tmp_path_factory.mktemp("silent")
    Image.fromarray(astronaut()).save(d / "a.png")
    out = d / "silent.mp4"
    run_ffmpeg(["-loop", "1", "-framerate", "25", "-t", "1", "-i", str(d / "a.png"), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out)], "making a silent video")
    return out


def read_wav(path: Path) -> tuple[np.ndarray, int, str]:
    info = sf.info(str(path))
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return audio, rate, info.subtype


@pytest.fixture(scope="session")
def mediapipe_env() -> str:
    """The mediapipe interpreter (.venv-mp is built on first use); skipped only where no Python 3.9-3.12 exists."""
    from wan.preprocess.landmarks import MediapipeUnavailable, mediapipe_python

    try:
        return mediapipe_python()
    except MediapipeUnavailable as exc:
        pytest.skip(f"mediapipe 0.10.21 cannot be installed here: {exc}")
