"""Pure helpers of the web app: sizes, seeds, upload names and limits, flags and checkpoint paths."""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path

import pytest

from wan.app.config import CHECKPOINTS_ENV, DEFAULT_YAML, REPO_ROOT, parse_args, resolve_checkpoints
from wan.app.helpers import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    MAX_SEED,
    AppError,
    adjust_size_to_image,
    check_duration,
    check_upload_size,
    clip_length_ok,
    new_request_dir,
    resolve_seed,
    snap_size,
    stage_upload,
    staged_path,
)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ((512, 512), (512, 512)),
        ((1024, 1024), (512, 512)),
        ((1920, 1080), (672, 384)),  # 16:9 at ~512^2: 682.7 -> 672, 384.0 -> 384
        ((720, 1280), (384, 672)),
        ((100, 10000), (64, 2048)),  # clamped to the sliders' range
    ],
)
def test_adjust_size_to_image_keeps_aspect_at_512_area(image, expected):
    w, h = adjust_size_to_image(*image)
    assert (w % 16, h % 16) == (0, 0)
    assert (w, h) == expected


def test_adjust_size_matches_original_formula():
    # the original: ratio = sqrt(w*h / 512^2); side / ratio // 16 * 16
    for w, h in [(640, 480), (1080, 1920), (333, 777), (2000, 1500)]:
        ratio = ((w * h) / (512 * 512)) ** 0.5
        assert adjust_size_to_image(w, h) == (int(w / ratio // 16 * 16), int(h / ratio // 16 * 16))


def test_adjust_size_rejects_empty_image():
    with pytest.raises(AppError):
        adjust_size_to_image(0, 10)


@pytest.mark.parametrize(("value", "expected"), [(64, 64), (70, 64), (73, 80), (10, 64), (5000, 2048), (512.0, 512)])
def test_snap_size(value, expected):
    assert snap_size(value) == expected


def test_resolve_seed():
    assert resolve_seed(7) == 7 and resolve_seed(7.0) == 7 and resolve_seed("42") == 42 and resolve_seed(0) == 0
    rng = random.Random(0)
    drawn = {resolve_seed(-1, rng) for _ in range(5)} | {resolve_seed(None, rng), resolve_seed("", rng)}
    assert all(0 <= s <= MAX_SEED for s in drawn) and len(drawn) > 1
    for bad in ("abc", 1.5, MAX_SEED + 1):
        with pytest.raises(AppError):
            resolve_seed(bad)


def test_clip_length_ok():
    assert clip_length_ok(81) and clip_length_ok(17) and clip_length_ok(1)
    assert not clip_length_ok(80) and not clip_length_ok(0)


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd.png", "/etc/cron.d/x.png", "..\\..\\win.png", "a/b/../../../c.PNG", "ok.png", "x.png\x00.sh".replace("\x00", "")],
)
def test_staged_path_never_leaves_the_folder(tmp_path, name):
    if not name.lower().endswith(".png"):
        with pytest.raises(AppError):
            staged_path(tmp_path, "reference", name, IMAGE_EXTENSIONS)
        return
    target = staged_path(tmp_path, "reference", name, IMAGE_EXTENSIONS)
    assert target == tmp_path.resolve() / "reference.png"


@pytest.mark.parametrize("name", ["evil.sh", "noext", "audio.wav.exe", ".png.", "x.png.sh"])
def test_staged_path_rejects_other_types(tmp_path, name):
    with pytest.raises(AppError, match="unsupported file type"):
        staged_path(tmp_path, "reference", name, IMAGE_EXTENSIONS)


def test_staged_path_rejects_bad_internal_stem(tmp_path):
    with pytest.raises(ValueError):
        staged_path(tmp_path, "../x", "a.png", IMAGE_EXTENSIONS)


def test_stage_upload_copies_under_fixed_name(tmp_path):
    src = tmp_path / "up" / "..weird name (1).WAV"
    src.parent.mkdir()
    src.write_bytes(b"RIFF" + b"\0" * 100)
    staged = stage_upload(src, tmp_path / "req", "audio", AUDIO_EXTENSIONS, max_mb=1)
    assert staged == (tmp_path / "req" / "audio.wav").resolve() and staged.read_bytes() == src.read_bytes()


def test_upload_size_limit(tmp_path):
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (2 * 1024 * 1024 + 1))
    with pytest.raises(AppError, match="above the limit of 2 MB"):
        check_upload_size(big, max_mb=2)
    assert check_upload_size(big, max_mb=3) == 2 * 1024 * 1024 + 1
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AppError, match="empty"):
        check_upload_size(empty, max_mb=3)
    with pytest.raises(AppError, match="gone"):
        check_upload_size(tmp_path / "missing.wav", max_mb=3)
    with pytest.raises(AppError, match="no file"):
        stage_upload(None, tmp_path, "audio", AUDIO_EXTENSIONS, 1)


def test_duration_limit():
    check_duration(10.0, 300)
    with pytest.raises(AppError, match="above the limit of 300 s"):
        check_duration(301.0, 300)
    with pytest.raises(AppError, match="no duration"):
        check_duration(0.0, 300)


def test_media_duration_of_real_audio():
    from wan.app.helpers import media_duration

    assert media_duration(REPO_ROOT / "examples" / "case-2" / "audio.wav") == pytest.approx(40.124, abs=0.01)
    with pytest.raises(AppError, match="cannot read"):
        media_duration(REPO_ROOT / "pyproject.toml")


def test_new_request_dir_is_fresh(tmp_path):
    now = datetime(2025, 1, 2, 3, 4, 5)
    a, b = new_request_dir(tmp_path, now), new_request_dir(tmp_path, now)
    assert a != b and a.is_dir() and b.is_dir() and a.parent == tmp_path
    assert a.name.startswith("20250102_030405_")


def test_flags_defaults_and_limits():
    args = parse_args([])
    assert (args.server_name, args.server_port, args.share, args.mcp_server) == ("127.0.0.1", 7891, False, False)
    assert args.vocal_separator_model == str(Path("checkpoints") / "Kim_Vocal_2.onnx")
    assert args.max_upload_mb > 0 and args.max_duration_s > 0
    with pytest.raises(SystemExit):
        parse_args(["--max_upload_mb", "0"])


def test_checkpoints_from_flags_env_and_default(tmp_path):
    default = resolve_checkpoints(parse_args([]), environ={})
    assert default.pretrained_model_name_or_path == REPO_ROOT / "checkpoints" / "Wan2.1-Fun-V1.1-1.3B-InP"
    assert default.transformer_path == REPO_ROOT / "checkpoints" / "StableAvatar-1.3B" / "transformer3d-square.pt"
    assert default.pretrained_wav2vec_path == REPO_ROOT / "checkpoints" / "wav2vec2-base-960h"
    assert default.config_path == DEFAULT_YAML

    (tmp_path / "wan_civitai_tiny.yaml").write_text("{}")
    env = resolve_checkpoints(parse_args([]), environ={CHECKPOINTS_ENV: str(tmp_path)})
    assert env.pretrained_model_name_or_path == tmp_path / "Wan2.1-Fun-V1.1-1.3B-InP"
    assert env.config_path == tmp_path / "wan_civitai_tiny.yaml"

    flags = resolve_checkpoints(
        parse_args(["--pretrained_model_name_or_path", "/m", "--transformer_path", "/t.pt", "--config_path", "/c.yaml"]),
        environ={CHECKPOINTS_ENV: str(tmp_path)},
    )
    assert (flags.pretrained_model_name_or_path, flags.transformer_path, flags.config_path) == (Path("/m"), Path("/t.pt"), Path("/c.yaml"))
    assert flags.pretrained_wav2vec_path == tmp_path / "wav2vec2-base-960h"
