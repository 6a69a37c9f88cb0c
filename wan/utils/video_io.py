"""Video and image I/O of the inference: the mp4 with its audio track, and the reference image.

Frames contract of ``write_video``: an ITERATOR of chunks, each ``uint8 [T, H, W, 3]`` RGB (numpy or
torch), ``T >= 1`` and the same ``H, W`` throughout. Decoder output (``[B, 3, T, H, W]`` floats in
[-1, 1]) becomes such a chunk with ``decoded_to_uint8``. Chunks are encoded as they arrive and the
audio is decoded as needed, so memory stays flat whatever the video length.

The mp4 is h264 (libx264, yuv420p, ``crf`` 18), ``fps`` 25, with the driving audio encoded as AAC at
its own sample rate and cut to the video's duration (the ``ffmpeg ... -shortest`` step of the
original README, done in the same pass). Everything goes to a hidden temporary name next to the
target and is renamed only when complete; an error removes the temporary file.

With ``save_intermediate=True`` the folder of ``path`` also gets what the original's
``inference.py`` wrote, ``video_without_audio.mp4``, and what its unused ``save_video_ffmpeg`` would
have written, ``cropped_audio.wav`` (the audio cut to the video's duration, 16-bit PCM at the audio's
own rate and channels).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from wan.constants import DEFAULT_FPS

if TYPE_CHECKING:  # annotations only: PyAV itself is imported on use, inside the functions
    import av

VIDEO_WITHOUT_AUDIO = "video_without_audio.mp4"
CROPPED_AUDIO = "cropped_audio.wav"
DEFAULT_CRF = 18  # x264 constant-rate factor: visually near-lossless at these sizes

Chunk = np.ndarray | torch.Tensor
logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------


def decoded_to_uint8(video: torch.Tensor) -> np.ndarray:
    """Decoder output ``[1, 3, T, H, W]`` (or ``[3, T, H, W]``) in [-1, 1] -> ``uint8 [T, H, W, 3]``.

    As the original: ``(x / 2 + 0.5).clamp(0, 1) * 255`` truncated to uint8 (no rounding).
    """
    if video.dim() == 5:
        if video.shape[0] != 1:
            raise ValueError(f"expected one video, got a batch of {video.shape[0]}")
        video = video[0]
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected [1, 3, T, H, W] or [3, T, H, W] frames, got {tuple(video.shape)}")
    x = (video.detach().float().cpu() / 2 + 0.5).clamp(0, 1)
    return (x.permute(1, 2, 3, 0) * 255).numpy().astype(np.uint8)


def _as_frames(chunk: Chunk) -> np.ndarray:
    """Check one chunk against the contract; returns ``uint8 [T, H, W, 3]`` numpy."""
    if isinstance(chunk, torch.Tensor):
        chunk = chunk.detach().cpu().numpy()
    if not isinstance(chunk, np.ndarray) or chunk.dtype != np.uint8 or chunk.ndim != 4 or chunk.shape[-1] != 3:
        got = f"{type(chunk).__name__} {getattr(chunk, 'dtype', '')} {tuple(getattr(chunk, 'shape', ()))}"
        raise ValueError(f"video chunks must be uint8 [T, H, W, 3] (use decoded_to_uint8 for decoder output), got {got}")
    return chunk


# ---------------------------------------------------------------------------------------------
# Audio: decoded lazily, cut to a sample budget
# ---------------------------------------------------------------------------------------------


class _AudioSource:
    """Float32 planar samples ``[C, n]`` of an audio file at its own rate (mono stays mono, more than
    two channels are mixed down to stereo), handed out on demand."""

    def __init__(self, path: Path):
        import av

        try:
            self._container = av.open(str(path))
            stream = self._container.streams.audio[0]
        except (av.error.FFmpegError, IndexError) as err:
            raise ValueError(f"cannot read audio from {path}: {err}") from err
        self.rate = stream.codec_context.sample_rate
        self.layout = "mono" if stream.codec_context.channels == 1 else "stereo"
        self.channels = 1 if self.layout == "mono" else 2
        self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
        self._frames = self._decode()
        self._pending = np.zeros((self.channels, 0), dtype=np.float32)
        self.delivered = 0

    def _decode(self) -> Iterator[np.ndarray]:
        for frame in self._container.decode(audio=0):
            for out in self._resampler.resample(frame):
                yield out.to_ndarray().reshape(self.channels, -1)
        for out in self._resampler.resample(None):
            yield out.to_ndarray().reshape(self.channels, -1)

    def take_until(self, total: int) -> np.ndarray:
        """The next samples, so that ``total`` samples have been delivered in all (fewer at end of file)."""
        want = total - self.delivered
        while self._pending.shape[1] < want:
            block = next(self._frames, None)
            if block is None:
                break
            self._pending = np.concatenate([self._pending, block], axis=1)
        out, self._pending = self._pending[:, : max(want, 0)], self._pending[:, max(want, 0) :]
        self.delivered += out.shape[1]
        return out

    def close(self) -> None:
        self._container.close()


def _temp_name(final: Path, pid: int | str) -> Path:
    return final.with_name(f".{final.stem}.tmp{pid}{final.suffix}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed ``write_video`` left for ``path`` (and for its
    ``save_intermediate`` siblings): those whose writing process is gone. Returns what was removed."""
    path = Path(path)
    removed = []
    for final in (path, path.with_name(VIDEO_WITHOUT_AUDIO), path.with_name(CROPPED_AUDIO)):
        for tmp in final.parent.glob(_temp_name(final, "*").name):
            pid = tmp.name[len(f".{final.stem}.tmp") : -len(final.suffix)]
            if pid.isdigit() and not _process_alive(int(pid)):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    if removed:
        logger.info("removed %d temporary file(s) of an interrupted write: %s", len(removed), ", ".join(p.name for p in removed))
    return removed


@dataclass
class _Output:
    """One container being written under a temporary name."""

    final: Path
    tmp: Path
    container: av.container.OutputContainer
    video: av.VideoStream | None = None
    audio: av.AudioStream | None = None
    audio_pts: int = 0

    @classmethod
    def open(cls, final: Path, fmt: str, options: dict[str, str] | None = None) -> _Output:
        import av

        tmp = _temp_name(final, os.getpid())
        return cls(final, tmp, av.open(str(tmp), mode="w", format=fmt, options=options or {}))

    def add_video(self, fps: int, width: int, height: int, crf: int) -> None:
        self.video = self.container.add_stream("libx264", rate=fps, options={"crf": str(crf)})
        self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"

    def add_audio(self, codec: str, rate: int, layout: str) -> None:
        self.audio = self.container.add_stream(codec, rate=rate, layout=layout)

    def encode_frames(self, frames: list[av.VideoFrame]) -> None:
        for frame in frames:
            self.container.mux(self.video.encode(frame))

    def encode_audio(self, samples: np.ndarray, rate: int, layout: str) -> None:
        if samples.shape[1] == 0:
            return
        import av

        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, self.audio_pts, Fraction(1, rate)
        self.audio_pts += samples.shape[1]
        self.container.mux(self.audio.encode(frame))

    def finish(self) -> None:
        for stream in (self.video, self.audio):
            if stream is not None:
                self.container.mux(stream.encode(None))
        self.container.close()
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # the error being raised matters more than a failing close
            pass
        self.tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------------------------


@dataclass
class WrittenVideo:
    """What ``write_video`` produced."""

    path: Path
    num_frames: int
    fps: int
    audio_samples: int = 0  # samples per channel muxed (0 without audio)
    audio_rate: int = 0
    extra: dict[str, Path] = field(default_factory=dict)  # "video_without_audio", "cropped_audio"

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def write_video(
    path: str | os.PathLike,
    chunks: Iterable[Chunk],
    *,
    fps: int = DEFAULT_FPS,
    audio_path: str | os.PathLike | None = None,
    save_intermediate: bool = False,
    crf: int = DEFAULT_CRF,
    total_frames: int | None = None,
    progress: bool = True,
) -> WrittenVideo:
    """Encode ``chunks`` (uint8 ``[T, H, W, 3]`` each) into the mp4 ``path``, muxing ``audio_path``.

    Args:
        path: the mp4 to write; its folder is created. Written atomically (temp name + rename).
        chunks: iterator of frame chunks, consumed once, never held in full.
        fps: frame rate of the video (the model's is 25).
        audio_path: driving audio (any format FFmpeg reads); ``None`` writes a silent video.
        save_intermediate: also write ``video_without_audio.mp4`` and ``cropped_audio.wav`` (needs
            ``audio_path``) next to ``path``.
        crf: x264 quality (lower is better, 18 is near-lossless).
        total_frames: expected frame count, only for the progress bar.
    """
    import av  # PyAV, imported on use: the rest of this module (and the pipeline) needs no FFmpeg

    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"output video must be an .mp4 file, got {path}")
    if save_intermediate and audio_path is None:
        raise ValueError("save_intermediate needs audio_path (cropped_audio.wav is cut from it)")
    path.parent.mkdir(parents=True, exist_ok=True)

    source = _AudioSource(Path(audio_path)) if audio_path is not None else None
    main = _Output.open(path, "mp4", {"movflags": "+faststart"})
    outputs = [main]
    silent = wav = None
    if save_intermediate:
        silent = _Output.open(path.parent / VIDEO_WITHOUT_AUDIO, "mp4", {"movflags": "+faststart"})
        wav = _Output.open(path.parent / CROPPED_AUDIO, "wav")
        outputs += [silent, wav]

    num_frames = 0
    size: tuple[int, int] | None = None
    bar = tqdm(total=total_frames, unit="frame", desc="writing video", disable=not progress)
    try:
        for chunk in chunks:
            frames = _as_frames(chunk)
            if size is None:
                size = (frames.shape[1], frames.shape[2])
                if size[0] % 2 or size[1] % 2:
                    raise ValueError(f"frame size {size[1]}x{size[0]} must be even for yuv420p")
                for out in (main, silent):
                    if out is not None:
                        out.add_video(fps, width=size[1], height=size[0], crf=crf)
                if source is not None:  # after the video, so the video is stream 0
                    main.add_audio("aac", source.rate, source.layout)
                    if wav is not None:
                        wav.add_audio("pcm_s16le", source.rate, source.layout)
            elif frames.shape[1:3] != size:
                raise ValueError(f"all chunks must be {size[1]}x{size[0]}, got {frames.shape[2]}x{frames.shape[1]}")
            av_frames = [av.VideoFrame.from_ndarray(f, format="rgb24") for f in frames]
            for out in (main, silent):
                if out is not None:
                    out.encode_frames(av_frames)
            num_frames += len(frames)
            bar.update(len(frames))
            if source is not None:  # keep the audio level with the video written so far
                _mux_audio(source, num_frames * source.rate // fps, main, wav)
        if num_frames == 0:
            raise ValueError(f"no frames were given for {path}")
        audio_samples = 0
        if source is not None:
            budget = round(num_frames * source.rate / fps)
            _mux_audio(source, budget, main, wav)
            audio_samples = source.delivered
        for out in outputs:
            out.finish()
    except BaseException:
        for out in outputs:
            out.abort()
        raise
    finally:
        bar.close()
        if source is not None:
            source.close()

    result = WrittenVideo(path, num_frames, fps, audio_samples, source.rate if source else 0)
    if save_intermediate:
        result.extra = {"video_without_audio": silent.final, "cropped_audio": wav.final}
    return result


def _mux_audio(source: _AudioSource, total: int, *outputs: _Output | None) -> None:
    samples = source.take_until(total)
    for out in outputs:
        if out is not None:
            out.encode_audio(samples, source.rate, source.layout)


# ---------------------------------------------------------------------------------------------
# The reference image
# ---------------------------------------------------------------------------------------------


def load_reference_image(path: str | os.PathLike, width: int, height: int) -> Image.Image:
    """The reference image as the original reads it: ``Image.open(path).convert("RGB").resize((width, height))``.

    * Any mode PIL opens (RGBA, LA, grayscale, palette, CMYK) becomes RGB with PIL's ``convert``.
      Alpha is DROPPED, not composited: transparent pixels show whatever colour they store (often
      black). A warning is logged when the image has transparent pixels; flatten it yourself if you
      want a particular background.
    * Resized to exactly ``width x height`` with bicubic filtering (PIL's default for RGB), aspect
      ratio NOT preserved, no crop; no EXIF rotation is applied.
    * A missing or unreadable file raises ``FileNotFoundError`` / ``ValueError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference image not found: {path} (pass an existing file to --validation_reference_path)")
    try:
        with Image.open(path) as img:
            img.load()
            if _has_transparency(img):
                logger.warning(
                    "reference image %s has transparent pixels; alpha is dropped as in the original "
                    "(transparent areas keep their stored colour)",
                    path,
                )
            rgb = img.convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read reference image {path}: {err}") from err
    return rgb.resize((width, height), Image.Resampling.BICUBIC)


def _has_transparency(img: Image.Image) -> bool:
    if img.mode in ("RGBA", "LA", "PA"):
        return img.getchannel("A").getextrema()[0] < 255
    return "transparency" in img.info


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 ``[3, H, W]`` in [-1, 1] as the original: ``(x / 255 - 0.5) * 2``."""
    x = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float()
    return (x / 255 - 0.5) * 2
