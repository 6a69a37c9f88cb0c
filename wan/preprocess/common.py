"""Small helpers shared by the preprocessing tools: atomic outputs, the bundled ffmpeg, skip-and-report."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

# What one bad input raises (unreadable or truncated file, no stream, ffmpeg or OpenCV failing on it).
# Anything else is a bug or an interrupt and stops the run whatever the mode.
INPUT_ERRORS = (OSError, ValueError, RuntimeError)
# ffmpeg demuxers that accept plain text (a .txt file opens as "tty" ANSI art): not media to us.
TEXT_DEMUXERS = frozenset({"tty"})


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
            counts = len(container.streams.video), len(container.streams.audio)
            text = container.format.name in TEXT_DEMUXERS
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a media file ffmpeg can read ({exc}); check the file or re-download it") from exc
    if text or counts == (0, 0):
        kind = "ffmpeg reads it as text" if text else "it holds no video or audio stream"
        raise ValueError(f"{path} is not a media file ({kind}); pass a video or audio file")
    return counts


class Failures(list):
    """The inputs a batch step could not process, each ``{"file", "step", "reason"}``, so the rest goes on.

    ``with failures.guard(path, step): ...`` records an input error raised in the block and carries on
    after it; with ``strict`` it re-raises instead (stop at the first bad file). ``write`` saves the list
    as JSON lines for the user.
    """

    def __init__(self, strict: bool = False) -> None:
        super().__init__()
        self.strict = strict

    @contextlib.contextmanager
    def guard(self, path: str | os.PathLike, step: str) -> Iterator[None]:
        try:
            yield
        except INPUT_ERRORS as exc:
            if self.strict:
                raise
            self.append({"file": str(path), "step": step, "reason": str(exc)})
            logger.warning("skipped %s (%s): %s", path, step, exc)

    def write(self, path: str | os.PathLike) -> Path | None:
        """Write the failures to ``path`` (JSON lines, atomically) and return it; with none, remove a
        file left by an earlier run (it would describe files that are fine now) and return None."""
        path = Path(path)
        if not self:
            path.unlink(missing_ok=True)
            return None
        with atomic_output(path) as tmp:
            tmp.write_text("".join(json.dumps(f) + "\n" for f in self))
        return path

    def report(self, log: Path | None = None) -> str:
        """A summary line and one line per failure, for stderr."""
        where = f"; the reasons are also in {log}" if log else ""
        lines = [f"{len(self)} file(s) failed and were skipped{where} (--strict stops at the first):"]
        return "\n  ".join(lines + [f"{f['file']} ({f['step']}): {f['reason']}" for f in self])
