"""Checks ``inference.py`` runs before any model loads, for what would otherwise fail late.

Each raises ``ValueError`` with the message the user sees (``validate()`` turns it into an exit-2
error): an output folder that cannot take the video (a file, not writable, a full disk), audio that
decodes to silence. ``warn_upscale`` only warns. Costs: one audio decode (about 0.1 s per minute of
audio) and a probe file.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger("wan.inference")

# Bytes per pixel of an h264 frame at the writer's crf 18, a generous bound (talking heads at
# 512x512 take about 0.05), plus room for the muxed AAC and the mp4 index.
MP4_BYTES_PER_PIXEL = 0.25
MP4_OVERHEAD_BYTES = 16 << 20
LATENT_BYTES_PER_PIXEL = 16 * 4 / (8 * 8 * 4)  # resume state: 16 float32 channels per 8x8 pixels per 4 frames
MAX_UPSCALE = 4.0  # above this the reference is mostly interpolation


def check_audio(path: str | os.PathLike) -> int:
    """Decode the driving audio once (as the pipeline will): the number of video frames it gives.

    Raises ValueError for audio that cannot be decoded, is empty or silent."""
    from wan.audio import load_audio
    from wan.pipelines.sliding_window import num_latent_frames

    return 1 + 4 * (num_latent_frames(len(load_audio(path))) - 1)  # the VAE turns T latent frames into 1 + 4 (T - 1)


def output_bytes(num_frames: int, width: int, height: int, save_intermediate: bool = False, save_every: int = 0) -> int:
    """Disk space the run needs in ``--output_dir``: the mp4 (twice with ``--save_intermediate``; the
    temporary file and the result never coexist) and, when saving, the resume state."""
    video = int(num_frames * width * height * MP4_BYTES_PER_PIXEL) + MP4_OVERHEAD_BYTES
    state = int(num_frames * width * height * LATENT_BYTES_PER_PIXEL) if save_every > 0 else 0
    return video * (2 if save_intermediate else 1) + state


def check_output_dir(output_dir: str | os.PathLike, need_bytes: int) -> Path:
    """Create ``output_dir``, write and delete a probe file in it, and compare its free space with
    ``need_bytes``. Raises ValueError naming the folder and the fix."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {out} is a file, not a folder: pass a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-probe"):
            pass
    except OSError as err:
        raise ValueError(f"--output_dir {out} cannot be written ({err.strerror or err}): pick a folder you can write to") from None
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise ValueError(
            f"--output_dir {out}: {free / 2**20:.0f} MiB free, the video needs about {need_bytes / 2**20:.0f} MiB: free some space or pick another disk"
        )
    return out


def warn_upscale(image_size: tuple[int, int], width: int, height: int, path: str | os.PathLike) -> float:
    """Warn when the reference is stretched more than ``MAX_UPSCALE`` times on a side; the factor."""
    factor = max(width / image_size[0], height / image_size[1])
    if factor > MAX_UPSCALE:
        logger.warning(
            "reference image %s is %dx%d and is upscaled %.0fx to %dx%d: the video will look blurry; use an image of at least %dx%d",
            path, *image_size, factor, width, height, round(width / MAX_UPSCALE), round(height / MAX_UPSCALE),
        )  # fmt: skip
    return factor
