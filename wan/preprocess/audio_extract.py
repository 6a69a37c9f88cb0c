"""Audio extraction: the sound track of a video as a 16 kHz mono 16-bit PCM wav.

    python audio_extractor.py --video_path=talk.mp4 --saved_audio_path=talk.wav

The original wrote moviepy's 44.1 kHz with the source's channels; everything downstream (inference and the
training dataset) reads audio at 16 kHz mono, so we write that directly with the ffmpeg imageio-ffmpeg ships.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from wan.constants import WAV2VEC_SAMPLE_RATE

from .common import atomic_output, probe_streams, run_ffmpeg


def extract_audio(video_path: str | os.PathLike, out_wav: str | os.PathLike, sample_rate: int = WAV2VEC_SAMPLE_RATE) -> Path:
    """Write the first audio stream of ``video_path`` to ``out_wav`` (mono, ``sample_rate`` Hz, pcm_s16le).

    Raises FileNotFoundError / ValueError naming the file when it is missing, unreadable or has no sound;
    nothing is written in that case (the wav appears atomically, only when ffmpeg succeeded).
    """
    video_path, out_wav = Path(video_path), Path(out_wav)
    _, n_audio = probe_streams(video_path)
    if n_audio == 0:
        raise ValueError(f"{video_path} has no audio stream; use a video with sound, or pass the audio file to inference directly")
    if out_wav.suffix.lower() != ".wav":
        raise ValueError(f"--saved_audio_path {out_wav} must end in .wav (the tool writes 16-bit PCM wav)")
    with atomic_output(out_wav) as tmp:
        args = ["-i", str(video_path), "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(sample_rate), "-c:a", "pcm_s16le", str(tmp)]
        run_ffmpeg(args, f"extracting the audio of {video_path}")
    return out_wav


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Extract the audio of a video as a 16 kHz mono wav.")
    parser.add_argument("--video_path", type=str, required=True, help="input video with a sound track (mp4, mov, mkv, ...)")
    parser.add_argument("--saved_audio_path", type=str, required=True, help="output .wav path")
    args = parser.parse_args(argv)
    try:
        out = extract_audio(args.video_path, args.saved_audio_path)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        parser.exit(1, f"error: {exc}\n")
    print(f"audio saved to {out}")


if __name__ == "__main__":
    main()
