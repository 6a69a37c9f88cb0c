"""Pure helpers of the web app: sizes, seeds, upload checks and safe paths. No gradio, no torch."""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import uuid
from datetime import datetime
from pathlib import Path

SIZE_MULTIPLE = 16  # VAE stride 8 x DiT patch 2
MIN_SIZE, MAX_SIZE = 64, 2048  # the sliders' range
TARGET_AREA = 512 * 512  # "adjust size to image" keeps the aspect ratio at about this many pixels
MAX_SEED = 2**31 - 1

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus", ".webm")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


class AppError(ValueError):
    """A problem the user can fix; its message is shown in the page as is."""


def adjust_size_to_image(image_width: int, image_height: int, target_area: int = TARGET_AREA) -> tuple[int, int]:
    """(width, height) with the image's aspect ratio and about ``target_area`` pixels.

    As the original's "adjust size to image": scale both sides by sqrt(target_area / area) and floor
    them to multiples of 16; here also clamped to the sliders' range [64, 2048].
    """
    if image_width <= 0 or image_height <= 0:
        raise AppError(f"image size {image_width}x{image_height} is not valid")
    scale = math.sqrt(target_area / (image_width * image_height))
    return tuple(  # type: ignore[return-value]
        int(min(MAX_SIZE, max(MIN_SIZE, side * scale // SIZE_MULTIPLE * SIZE_MULTIPLE))) for side in (image_width, image_height)
    )


def snap_size(value: float) -> int:
    """A slider value as a valid side: the nearest multiple of 16 inside [64, 2048]."""
    return int(min(MAX_SIZE, max(MIN_SIZE, round(float(value) / SIZE_MULTIPLE) * SIZE_MULTIPLE)))


def resolve_seed(seed: float | int | str | None, rng: random.Random | None = None) -> int:
    """The seed to use: the given one (a whole number in [0, 2^31-1]), or a random one for -1/empty."""
    if seed is None or (isinstance(seed, str) and not seed.strip()):
        seed = -1
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise AppError(f"seed {seed!r} is not a number; use a whole number, or -1 for a random seed") from None
    if not value.is_integer():
        raise AppError(f"seed {seed} must be a whole number (or -1 for a random seed)")
    value = int(value)
    if value < 0:
        return (rng or random).randint(0, MAX_SEED)
    if value > MAX_SEED:
        raise AppError(f"seed {value} is too large: at most {MAX_SEED}")
    return value


def clip_length_ok(clip_length: int) -> bool:
    """Frames per window must be 4k+1 (the VAE packs 4 frames into one latent frame)."""
    return clip_length >= 1 and (clip_length - 1) % 4 == 0


def safe_extension(filename: str | os.PathLike, allowed: tuple[str, ...]) -> str:
    """The lower-case extension of an uploaded name if it is one of ``allowed``, else an AppError."""
    suffix = Path(str(filename)).suffix.lower()
    if suffix not in allowed:
        shown = Path(str(filename)).name[:80]
        raise AppError(f"{shown!r}: unsupported file type {suffix or '(none)'}; use one of {', '.join(allowed)}")
    return suffix


def staged_path(folder: str | os.PathLike, stem: str, filename: str | os.PathLike, allowed: tuple[str, ...]) -> Path:
    """Where an upload is copied: ``folder/<stem><ext>``. Only the (whitelisted) extension of the
    uploaded name is used, so no uploaded name can reach a path outside ``folder``."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", stem):
        raise ValueError(f"internal stem {stem!r} must be a short [A-Za-z0-9_-] name")
    folder = Path(folder).resolve()
    target = (folder / f"{stem}{safe_extension(filename, allowed)}").resolve()
    if target.parent != folder:  # cannot happen with the checks above; kept as the invariant
        raise AppError("upload path escapes the app's folder")
    return target


def check_upload_size(path: str | os.PathLike, max_mb: float) -> int:
    """Size in bytes of an uploaded file; AppError if it is missing, empty or above ``max_mb``."""
    path = Path(path)
    if not path.is_file():
        raise AppError(f"uploaded file {path.name!r} is gone; upload it again")
    size = path.stat().st_size
    if size == 0:
        raise AppError(f"uploaded file {path.name!r} is empty")
    if size > max_mb * 1024 * 1024:
        raise AppError(f"uploaded file is {size / 2**20:.1f} MB, above the limit of {max_mb:g} MB (--max_upload_mb)")
    return size


def check_duration(seconds: float, max_seconds: float, what: str = "audio") -> None:
    """AppError if a media duration is not positive or above ``max_seconds``."""
    if not seconds > 0:
        raise AppError(f"the {what} has no duration; upload a file with sound")
    if seconds > max_seconds:
        raise AppError(f"the {what} lasts {seconds:.1f} s, above the limit of {max_seconds:g} s (--max_duration_s); cut it first")


def stage_upload(src: str | os.PathLike, folder: str | os.PathLike, stem: str, allowed: tuple[str, ...], max_mb: float) -> Path:
    """Check an upload (type by extension, size) and copy it to ``folder/<stem><ext>``."""
    if not src:
        raise AppError("no file uploaded")
    target = staged_path(folder, stem, src, allowed)
    check_upload_size(src, max_mb)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    return target


def new_request_dir(root: str | os.PathLike, now: datetime | None = None) -> Path:
    """A fresh folder ``root/<YYYYmmdd_HHMMSS>_<8 hex>`` for one request (never reused)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    folder = Path(root) / f"{stamp}_{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


REQUEST_DIR = re.compile(r"\d{8}_\d{6}_[0-9a-f]{8}")
SESSION_DIR = re.compile(r"session_\d{8}_\d{6}_\d+")


def new_session_dir(root: str | os.PathLike, now: datetime | None = None) -> Path:
    """This app process's folder ``root/session_<YYYYmmdd_HHMMSS>_<pid>``: the only one it serves."""
    folder = Path(root) / f"session_{(now or datetime.now()).strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def prune_results(root: str | os.PathLike, keep: int, spare: tuple[Path, ...] = ()) -> list[Path]:
    """Keep the ``keep`` most recent request folders under ``root`` (directly in it or in its
    session folders) and remove the others, then the session folders left empty; ``spare`` is never
    removed. ``keep <= 0`` keeps everything. Returns what was removed."""
    root = Path(root)
    if keep <= 0 or not root.is_dir():
        return []
    sessions = [p for p in root.iterdir() if p.is_dir() and SESSION_DIR.fullmatch(p.name)]
    requests = [p for folder in (root, *sessions) for p in folder.iterdir() if p.is_dir() and REQUEST_DIR.fullmatch(p.name)]
    requests.sort(key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
    spared = {p.resolve() for p in spare}
    removed = [p for p in requests[keep:] if p.resolve() not in spared]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    for session in sessions:
        if session.resolve() not in spared and not any(session.iterdir()):
            session.rmdir()
            removed.append(session)
    return removed


def media_duration(path: str | os.PathLike) -> float:
    """Duration in seconds of the audio/video streams of a file (PyAV, from the headers).
    AppError if FFmpeg cannot open it or it has neither audio nor video."""
    import av

    name = Path(path).name
    try:
        with av.open(str(path)) as container:
            streams = [s for s in container.streams if s.type in ("audio", "video")]
            if not streams:
                raise AppError(f"cannot read {name!r}: no audio or video in it")
            if container.duration:
                return container.duration / av.time_base
            return max((float(s.duration * s.time_base) for s in streams if s.duration and s.time_base), default=0.0)
    except av.error.FFmpegError as err:
        raise AppError(f"cannot read {name!r}: {err}") from None
