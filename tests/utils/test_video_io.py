"""mp4 writing with the driving audio muxed in, and reading the reference image."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import CASES, EXAMPLES
from wan.utils.video_io import (
    CROPPED_AUDIO,
    VIDEO_WITHOUT_AUDIO,
    decoded_to_uint8,
    image_to_tensor,
    load_reference_image,
    write_video,
)

SPEECH = EXAMPLES / "case-2" / "audio.wav"  # real speech, 16 kHz stereo, 40 s


def flat_chunks(sizes: list[int], h: int = 64, w: int = 96):
    """Chunks of flat frames whose grey level encodes the frame index (5 levels apart)."""
    index = 0
    for n in sizes:
        chunk = np.empty((n, h, w, 3), dtype=np.uint8)
        for j in range(n):
            chunk[j] = (index * 5) % 250
            index += 1
        yield chunk


def probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        info = {"streams": [(s.type, s.codec_context.name) for s in c.streams]}
        if c.streams.video:
            v = c.streams.video[0]
            info.update(pix_fmt=v.codec_context.pix_fmt, rate=v.average_rate, video_seconds=float(v.duration * v.time_base))
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            info.update(frames=np.stack(frames))
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            info.update(audio_rate=a.codec_context.sample_rate, audio_seconds=float(a.duration * a.time_base))
            info.update(audio_samples=sum(f.samples for f in c.decode(audio=0)))
    return info


def test_two_seconds_with_real_speech(tmp_path):
    out = tmp_path / "sub" / "video.mp4"
    result = write_video(out, flat_chunks([1, 4, 20, 25]), audio_path=SPEECH, progress=False)
    assert result.path == out and result.num_frames == 50 and result.duration == 2.0
    assert result.audio_rate == 16000 and result.audio_samples == 32000
    info = probe(out)
    assert info["streams"] == [("video", "h264"), ("audio", "aac")]
    assert info["pix_fmt"] == "yuv420p" and info["rate"] == 25
    assert info["frames"].shape == (50, 64, 96, 3)
    assert info["video_seconds"] == pytest.approx(2.0, abs=1e-6)
    assert info["audio_rate"] == 16000
    assert info["audio_seconds"] == pytest.approx(2.0, abs=0.01)  # cut to the video, not 40 s
    assert abs(info["audio_samples"] - 32000) <= 1024  # AAC codes whole 1024-sample frames
    expected = np.array([(i * 5) % 250 for i in range(50)], dtype=np.float32)
    got = info["frames"].reshape(50, -1).astype(np.float32).mean(axis=1)
    assert np.abs(got - expected).max() < 3  # the frames come back in order, nearly lossless
    assert sorted(p.name for p in out.parent.iterdir()) == ["video.mp4"]  # no temp file left


def test_audio_track_carries_the_speech(tmp_path):
    """The muxed AAC decodes to (nearly) the first 2 s of the file, not silence."""
    out = tmp_path / "v.mp4"
    write_video(out, flat_chunks([50]), audio_path=SPEECH, progress=False)
    with av.open(str(out)) as c:
        decoded = np.concatenate([f.to_ndarray().reshape(2, -1) for f in c.decode(audio=0)], axis=1)
    ref, rate = sf.read(str(SPEECH), dtype="float32", frames=40000, always_2d=True)
    ref = ref.T
    # align (AAC priming may shift by up to one frame) and compare energies and correlation
    n = 30000
    best = max(float(np.corrcoef(decoded[0, lag : lag + n], ref[0, :n])[0, 1]) for lag in range(0, min(2048, decoded.shape[1] - n)))
    assert np.sqrt((ref[:, :n] ** 2).mean()) > 0.01  # the example is not silent
    assert best > 0.95


def test_save_intermediate_writes_original_side_files(tmp_path):
    out = tmp_path / "video_with_audio.mp4"
    result = write_video(out, flat_chunks([10, 15]), audio_path=SPEECH, save_intermediate=True, progress=False)
    silent, wav = tmp_path / VIDEO_WITHOUT_AUDIO, tmp_path / CROPPED_AUDIO
    assert result.extra == {"video_without_audio": silent, "cropped_audio": wav}
    info = probe(silent)
    assert info["streams"] == [("video", "h264")] and info["frames"].shape[0] == 25
    cropped, rate = sf.read(str(wav), dtype="int16", always_2d=True)
    ref, _ = sf.read(str(SPEECH), dtype="int16", frames=20000, always_2d=True)
    assert rate == 16000 and cropped.shape == (16000, 2)  # 25 frames at 25 fps = 1 s
    assert np.array_equal(cropped, ref[:16000])  # exact PCM, cut to the video


def test_silent_video_without_audio(tmp_path):
    out = tmp_path / "silent.mp4"
    result = write_video(out, iter([torch.zeros(3, 32, 32, 3, dtype=torch.uint8)]), progress=False)
    assert result.audio_samples == 0 and probe(out)["streams"] == [("video", "h264")]


def test_failure_midway_leaves_nothing(tmp_path):
    def broken():
        yield np.zeros((5, 32, 32, 3), np.uint8)
        raise RuntimeError("decoder crashed")

    with pytest.raises(RuntimeError, match="decoder crashed"):
        write_video(tmp_path / "v.mp4", broken(), audio_path=SPEECH, save_intermediate=True, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "chunk,match",
    [
        (np.zeros((2, 32, 32, 3), np.float32), "uint8"),
        (np.zeros((32, 32, 3), np.uint8), "uint8"),
        (torch.zeros(1, 3, 2, 32, 32), "decoded_to_uint8"),
        (np.zeros((2, 33, 32, 3), np.uint8), "even"),
    ],
)
def test_bad_chunks_raise(tmp_path, chunk, match):
    with pytest.raises(ValueError, match=match):
        write_video(tmp_path / "v.mp4", iter([chunk]), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="mp4"):
        write_video(tmp_path / "v.avi", iter([]), progress=False)
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "v.mp4", iter([]), progress=False)
    mixed = iter([np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1, 16, 32, 3), np.uint8)])
    with pytest.raises(ValueError, match="all chunks must be 32x32"):
        write_video(tmp_path / "v.mp4", mixed, progress=False)
    with pytest.raises(ValueError, match="audio_path"):
        write_video(tmp_path / "v.mp4", flat_chunks([1]), save_intermediate=True, progress=False)
    bad_audio = tmp_path / "noise.wav"
    bad_audio.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="noise.wav"):
        write_video(tmp_path / "v.mp4", flat_chunks([1]), audio_path=bad_audio, progress=False)


def test_memory_stays_flat_for_long_videos(tmp_path):
    """30 s of 128x128 video (37 MB of frames) in 1 s chunks, with audio and the side files: the
    Python-side peak stays around a few chunks, so the writer keeps no video in memory."""
    chunk_frames, chunks = 25, 30
    ramp = np.add.outer(np.arange(128), np.arange(128))[None, :, :, None] + np.arange(chunk_frames)[:, None, None, None]
    template = np.broadcast_to(ramp % 256, (chunk_frames, 128, 128, 3)).astype(np.uint8)

    def frames():
        for k in range(chunks):
            yield template + np.uint8(k)  # one new 1.2 MB chunk per second of video

    tracemalloc.start()
    try:
        result = write_video(tmp_path / "long.mp4", frames(), audio_path=SPEECH, save_intermediate=True, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = template.nbytes * chunks
    assert result.num_frames == 750 and result.duration == 30.0
    assert peak < 4 * template.nbytes, f"peak {peak / 1e6:.1f} MB while writing {total / 1e6:.1f} MB of frames"


def test_decoded_to_uint8_truncates_like_the_original():
    x = torch.tensor([-1.0, -2.0, 0.0, 1.0, 3.0, 0.999]).view(1, 1, 6, 1, 1).repeat(1, 3, 1, 1, 1)
    got = decoded_to_uint8(x)
    assert got.shape == (6, 1, 1, 3) and got.dtype == np.uint8
    assert got[:, 0, 0, 0].tolist() == [0, 0, 127, 255, 255, 254]  # 127.5 -> 127, 254.87 -> 254
    with pytest.raises(ValueError, match="batch"):
        decoded_to_uint8(torch.zeros(2, 3, 1, 4, 4))


# ---------------------------------------------------------------------------------------------
# Reference image
# ---------------------------------------------------------------------------------------------


def test_reference_image_equals_golden_input():
    img = load_reference_image(CASES / "pipeline" / "reference.png", 64, 64)
    ref = load_file(str(CASES / "pipeline" / "inputs.safetensors"))["reference_image_hwc_uint8"]
    assert np.array_equal(np.array(img), ref.numpy())
    t = image_to_tensor(img)
    assert t.shape == (3, 64, 64) and t.dtype == torch.float32
    assert torch.equal(t, (ref.permute(2, 0, 1) / 255 - 0.5) * 2)


def test_reference_image_resize_is_bicubic_without_aspect(tmp_path):
    src = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 70, 3), dtype=np.uint8))
    src.save(tmp_path / "r.png")
    img = load_reference_image(tmp_path / "r.png", 48, 32)
    assert img.size == (48, 32) and img.mode == "RGB"
    assert np.array_equal(np.array(img), np.array(src.resize((48, 32), Image.Resampling.BICUBIC)))
    assert not np.array_equal(np.array(img), np.array(src.resize((48, 32), Image.Resampling.BILINEAR)))


def test_reference_image_modes(tmp_path, caplog):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:8, ..., 3] = 0  # top half transparent
    rgba[8:, ..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with caplog.at_level("WARNING"):
        img = np.array(load_reference_image(tmp_path / "a.png", 16, 16))
    assert (img == (10, 20, 30)).all()  # alpha dropped, stored colour kept (not white)
    assert "transparent" in caplog.text

    Image.fromarray(np.full((16, 16), 77, np.uint8), "L").save(tmp_path / "g.png")
    assert (np.array(load_reference_image(tmp_path / "g.png", 16, 16)) == 77).all()

    pal = Image.fromarray(np.full((16, 16, 3), (200, 100, 50), np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(tmp_path / "p.png")
    assert (np.array(load_reference_image(tmp_path / "p.png", 16, 16)) == (200, 100, 50)).all()


def test_reference_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_reference_image(tmp_path / "missing.png", 16, 16)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="broken.png"):
        load_reference_image(tmp_path / "broken.png", 16, 16)
