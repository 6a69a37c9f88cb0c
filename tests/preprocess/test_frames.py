"""A short video of real faces: frames -> masks -> path list -> the training dataset reads it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from wan.data.dataset import TalkingVideoDataset, sorted_frames
from wan.preprocess.common import run_ffmpeg
from wan.preprocess.frames import extract_frames, prepare_videos, write_path_lists
from wan.preprocess.lip_masks import extract_masks

from .conftest import REPO, VIDEO_FPS, VIDEO_FRAMES, VIDEO_SIZE, read_wav


def test_video_to_training_list(mediapipe_env, talking_video, tmp_path):
    root = tmp_path / "talking_face_data"
    (clip,) = prepare_videos([talking_video], root / "square" / "speech", progress=False)
    assert clip.name == "00001"
    frames = sorted_frames(clip / "images")
    assert len(frames) == VIDEO_FRAMES and frames[0] == "frame_0.png" and frames[-1] == f"frame_{VIDEO_FRAMES - 1}.png"
    assert Image.open(clip / "images" / "frame_0.png").size == VIDEO_SIZE
    assert read_wav(clip / "audio.wav")[1] == 16000 and (clip / "sub_clip.mp4").stat().st_size == talking_video.stat().st_size
    assert write_path_lists(root) == {}  # no masks yet: the clip is not listed

    counts = extract_masks([clip], ("lip", "face"), progress=False)
    assert counts["written"] == len(frames) and counts["no_face"] == 0
    lips = [np.array(Image.open(clip / "lip_masks" / f)) for f in frames]
    assert all(m.shape == VIDEO_SIZE[::-1] and m.any() for m in lips)

    lists = write_path_lists(root)
    assert lists == {"square": [str(clip.resolve())]}
    assert (root / "video_square_path.txt").read_text().splitlines() == [str(clip.resolve())]
    # Re-running is a no-op that keeps the numbering; a second video gets 00002.
    assert prepare_videos([talking_video], root / "square" / "speech", progress=False) == [clip]

    ds = TalkingVideoDataset(root / "video_square_path.txt", width=64, height=64, n_sample_frames=9)
    item = ds[(0, 1)]
    assert item["pixel_values"].shape == (9, 3, 64, 64) and item["text_prompt"] == "The protagonist is talking"
    assert 0 < item["tgt_lip_masks"].mean() < item["tgt_face_masks"].mean() < 1
    assert item["vocal_input_values"].shape == (int(round(9 / VIDEO_FPS * 16000)),)


def test_frames_step_is_atomic_and_skips_done_folders(talking_video, tmp_path, monkeypatch):
    from wan.preprocess import frames as frames_mod

    images = tmp_path / "clip" / "images"

    def failing_ffmpeg(args, what):
        (tmp_path / "clip" / f".images.tmp-{__import__('os').getpid()}" / "frame_0.png").write_bytes(b"partial")
        raise RuntimeError("ffmpeg died")

    monkeypatch.setattr(frames_mod, "run_ffmpeg", failing_ffmpeg)
    with pytest.raises(RuntimeError):
        extract_frames(talking_video, images)
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == []  # no images/, no temp folder
    monkeypatch.undo()
    extract_frames(talking_video, images)
    n = len(list(images.iterdir()))
    (images / "frame_0.png").unlink()
    extract_frames(talking_video, images)  # an existing images/ is kept as it is
    assert len(list(images.iterdir())) == n - 1


def test_cli_from_videos_dir(talking_video, silent_video, tmp_path):
    videos = tmp_path / "raw"
    videos.mkdir()
    (videos / "a.mp4").symlink_to(talking_video)
    root = tmp_path / "data"
    cmd = [sys.executable, "-m", "wan.preprocess.frames", f"--videos_dir={videos}", f"--data_root={root}", "--bucket=rec", "--category=singing"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert (root / "rec" / "singing" / "00001" / "images" / f"frame_{VIDEO_FRAMES - 1}.png").is_file()
    (videos / "b.mp4").symlink_to(silent_video)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "b.mp4 has no audio stream" in proc.stderr


def test_videos_dir_goes_on_past_a_broken_video_and_reports_it(talking_video, tmp_path, capsys):
    """The first of three videos is broken: the other two become clips 00001 and 00002, the broken one is named
    on stderr and in failed_frames.jsonl, and the exit status is 1. --strict stops at it (nothing done)."""
    from wan.preprocess.frames import FAILURES_FILE, main

    videos = tmp_path / "raw"
    videos.mkdir()
    (videos / "a_broken.mp4").write_text("These are my notes about the video.\n" * 50)
    small = ["-i", str(talking_video), "-vf", "scale=64:64", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "copy"]
    run_ffmpeg([*small, str(videos / "b.mp4")], "making a small test video")
    shutil.copyfile(videos / "b.mp4", videos / "c.mp4")
    argv = [f"--videos_dir={videos}", "--bucket=rec", "--category=speech"]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, f"--data_root={tmp_path / 'data'}"])
    out, err = capsys.readouterr()
    category = tmp_path / "data" / "rec" / "speech"
    assert exit_.value.code == 1 and "2 of 3 video(s) prepared" in out
    assert "1 file(s) failed" in err and "a_broken.mp4 (frames): " in err and "is not a media file" in err
    assert [(category / c / "source.txt").read_text().strip() for c in ("00001", "00002")] == [str(videos / "b.mp4"), str(videos / "c.mp4")]
    assert len(sorted_frames(category / "00002" / "images")) == VIDEO_FRAMES
    (failure,) = [json.loads(line) for line in (category / FAILURES_FILE).read_text().splitlines()]
    assert failure["file"] == str(videos / "a_broken.mp4") and "is not a media file" in failure["reason"]

    with pytest.raises(SystemExit) as exit_:
        main([*argv, f"--data_root={tmp_path / 'strict'}", "--strict"])
    assert exit_.value.code == 1 and "a_broken.mp4 is not a media file" in capsys.readouterr().err
    assert list((tmp_path / "strict" / "rec" / "speech").iterdir()) == []

    (videos / "a_broken.mp4").unlink()  # fixed: a rerun succeeds and removes the stale report
    main([*argv, f"--data_root={tmp_path / 'data'}"])
    assert not (category / FAILURES_FILE).exists()


def test_clips_are_brought_to_the_training_frame_rate(talking_video, tmp_path):
    """A 30 fps video becomes a 25 fps clip (frames and sub_clip.mp4 agree, the dataset reads 25); --fps 0 keeps 30."""
    from wan.data.dataset import clip_fps
    from wan.preprocess.common import run_ffmpeg
    from wan.preprocess.frames import prepare_clip, video_fps

    video30 = tmp_path / "talk30.mp4"
    run_ffmpeg(["-i", str(talking_video), "-vf", "fps=30", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "copy", str(video30)], "making a 30 fps video")
    assert video_fps(video30) == 30 and video_fps(talking_video) == VIDEO_FPS
    seconds = VIDEO_FRAMES / VIDEO_FPS

    clip = prepare_clip(video30, tmp_path / "c25")  # default: the generation rate, 25 fps
    frames = sorted_frames(clip / "images")
    assert len(frames) == round(seconds * 25) and frames[-1] == f"frame_{len(frames) - 1}.png"
    assert video_fps(clip / "sub_clip.mp4") == 25 and clip_fps(clip, len(frames), seconds) == 25
    audio, rate, _ = read_wav(clip / "audio.wav")
    assert abs(len(audio) / rate - seconds) < 0.1  # the sound is not resampled in time

    native = prepare_clip(video30, tmp_path / "c30", fps=0)
    assert len(sorted_frames(native / "images")) == round(seconds * 30)
    assert (native / "sub_clip.mp4").read_bytes() == video30.read_bytes()  # already mp4 at its own rate: copied

    same = prepare_clip(talking_video, tmp_path / "same", fps=25)  # a 25 fps mp4 is copied, not re-encoded
    assert (same / "sub_clip.mp4").read_bytes() == talking_video.read_bytes()
    assert len(sorted_frames(same / "images")) == VIDEO_FRAMES
