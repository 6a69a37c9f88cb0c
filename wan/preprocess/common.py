"""Small helpers shared by the preprocessing tools: atomic outputs and the bundled ffmpeg."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; move it onto ``final`` only if the block succeeds.

    The temp name keeps the suffix (ffmpeg and OpenCV pick the format from it) and starts with a dot,
    so a crash leaves at most a hidden ``.name.tmp-<pid>.ext`` file, never a half-written ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def ffmpeg_exe() -> str:
    """The ffmpeg binary that imageio-ffmpeg ships (no system ffmpeg needed)."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - it is a hard requirement
        raise RuntimeError("imageio-ffmpeg is not installed; run: pip install imageio-ffmpeg==0.8.1") from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], what: str) -> None:
    """Run the bundled ffmpeg quietly; on failure raise with the last lines of its log."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"ffmpeg failed while {what}:\n{tail}")


def probe_streams(path: str | os.PathLike) -> tuple[int, int]:
    """(number of video streams, number of audio streams) of a media file; ValueError if unreadable."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with av.open(str(path)) as container:
            return len(container.streams.video), len(container.streams.audio)
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable audio/video file ({exc}); check the file or re-download it") from exc
