"""Raw videos -> training clip folders -> path lists (the layout wan/data/dataset.py reads).

One video:
    python -m wan.preprocess.frames --video raw/talk.mp4 --clip_dir talking_face_data/rec/speech/00001
Every video of a folder, numbered 00001, 00002, ... under a bucket/category, masks included, lists refreshed:
    python -m wan.preprocess.frames --videos_dir raw/ --data_root talking_face_data --bucket rec --category speech --masks
Only the lists (after adding clips by hand):
    python -m wan.preprocess.frames --data_root talking_face_data --lists_only

A folder of videos goes on past a broken one: each video (and, with --masks, each frame) that fails is skipped,
listed with its reason on stderr and in ``<data_root>/<bucket>/<category>/failed_frames.jsonl``, and the exit status
is 1 at the end; ``--strict`` stops at the first failure instead.

A clip folder gets ``sub_clip.mp4`` (the video at the training frame rate: the dataset reads its fps),
``audio.wav`` (16 kHz mono, audio_extractor) and ``images/frame_<i>.png`` from ``frame_0`` on (the README's
``ffmpeg -i video -q:v 1 -start_number 0 images/frame_%d.png``). Frames are taken at ``--fps`` (25 by default, the
rate StableAvatar generates at, so one frame spans 640 audio samples in training as in inference): a 25 fps video
is copied as it is, any other is resampled by ffmpeg's fps filter, the same way for sub_clip.mp4 and images/ so
their frame counts agree. ``--fps 0`` keeps every video's own rate (the README's command). Every output appears
atomically (the frames are decoded into a hidden folder that is renamed to images/), so re-running resumes after
an interruption.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from wan.constants import DEFAULT_FPS

from .audio_extract import extract_audio
from .common import Failures, atomic_output, probe_streams, run_ffmpeg

BUCKETS = ("square", "rec", "vec")
CATEGORIES = ("speech", "singing", "dancing")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
SOURCE_FILE = "source.txt"  # which raw video a clip folder was made from (keeps numbering stable on re-runs)
FAILURES_FILE = "failed_frames.jsonl"  # in the category folder: the videos/frames a --videos_dir run skipped


def video_fps(video: str | os.PathLike) -> float:
    """Average frame rate of the first video stream (0.0 when the container does not say)."""
    import av

    with av.open(str(video)) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else 0.0


def _resample_filter(video: Path, fps: float | None) -> list[str]:
    """ffmpeg arguments that bring ``video`` to ``fps`` frames per second; none when it already runs at that rate."""
    if not fps:
        return []
    source = video_fps(video)
    if source and abs(source - fps) < 1e-3:
        return []
    return ["-vf", f"fps={fps:g}"]


def extract_frames(video: str | os.PathLike, images_dir: str | os.PathLike, fps: float | None = None) -> Path:
    """Decode ``video`` to ``images_dir/frame_<i>.png`` (i from 0), resampled to ``fps`` if given; skipped if images_dir exists."""
    video, images_dir = Path(video), Path(images_dir)
    if images_dir.is_dir() and any(images_dir.iterdir()):
        return images_dir
    n_video, _ = probe_streams(video)
    if n_video == 0:
        raise ValueError(f"{video} has no video stream")
    tmp = images_dir.with_name(f".{images_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        args = ["-i", str(video), "-map", "0:v:0", *_resample_filter(video, fps), "-q:v", "1", "-start_number", "0", str(tmp / "frame_%d.png")]
        run_ffmpeg(args, f"extracting the frames of {video}")
        if images_dir.exists():
            images_dir.rmdir()  # an empty leftover
        os.replace(tmp, images_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return images_dir


def prepare_clip(video: str | os.PathLike, clip_dir: str | os.PathLike, fps: float | None = DEFAULT_FPS) -> Path:
    """Make ``clip_dir`` (sub_clip.mp4, audio.wav, images/) from one raw video at ``fps`` (None or 0: the video's own
    rate); finished parts are kept."""
    video, clip_dir = Path(video), Path(clip_dir)
    n_video, n_audio = probe_streams(video)
    if n_video == 0:
        raise ValueError(f"{video} has no video stream; pass a video file")
    if n_audio == 0:
        raise ValueError(f"{video} has no audio stream; training clips need their sound (audio.wav)")
    clip_dir.mkdir(parents=True, exist_ok=True)
    (clip_dir / SOURCE_FILE).write_text(str(video.resolve()) + "\n")
    if not (clip_dir / "sub_clip.mp4").is_file():
        resample = _resample_filter(video, fps)
        with atomic_output(clip_dir / "sub_clip.mp4") as tmp:
            if video.suffix.lower() == ".mp4" and not resample:
                shutil.copyfile(video, tmp)
            else:
                args = ["-i", str(video), *resample, "-c:v", "libx264", "-crf", "16", "-pix_fmt", "yuv420p", "-c:a", "aac", str(tmp)]
                run_ffmpeg(args, f"converting {video} to mp4" + (f" at {fps:g} fps" if resample else ""))
    if not (clip_dir / "audio.wav").is_file():
        extract_audio(video, clip_dir / "audio.wav")
    extract_frames(video, clip_dir / "images", fps)
    return clip_dir


def prepare_videos(
    videos: Sequence[str | os.PathLike],
    category_dir: str | os.PathLike,
    progress: bool = True,
    fps: float | None = DEFAULT_FPS,
    failures: Failures | None = None,
) -> list[Path]:
    """One clip folder per video under ``category_dir``; a video already prepared keeps its number, new ones get the next free numbers.

    Returns the clips made. A video that fails is recorded in ``failures`` and skipped (None: its error is raised).
    """
    failures = Failures(strict=True) if failures is None else failures
    category_dir = Path(category_dir)
    category_dir.mkdir(parents=True, exist_ok=True)
    known: dict[str, Path] = {}
    for source in category_dir.glob(f"[0-9][0-9][0-9][0-9][0-9]/{SOURCE_FILE}"):
        known[source.read_text().strip()] = source.parent
    used = {int(p.name) for p in category_dir.iterdir() if p.name.isdigit() and len(p.name) == 5}
    next_idx = max(used, default=0) + 1
    clips = []
    for video in tqdm([Path(v) for v in videos], desc="videos -> clip folders", unit="video", disable=not progress):
        clip = known.get(str(video.resolve()))
        new = clip is None
        if new:
            clip = category_dir / f"{next_idx:05d}"
        with failures.guard(video, "frames"):
            clips.append(prepare_clip(video, clip, fps))
        if new and clip.exists():  # a video rejected before its folder was made leaves no gap in the numbers
            next_idx += 1
    return clips


def is_complete_clip(clip: Path) -> bool:
    """Everything the dataset needs is there: audio.wav and one face and one lip mask per frame."""
    images = clip / "images"
    if not (images.is_dir() and (clip / "audio.wav").is_file()):
        return False
    names = [n for n in os.listdir(images) if n.endswith((".png", ".jpg")) and not n.startswith(".")]
    return bool(names) and all((clip / d / n).is_file() for d in ("face_masks", "lip_masks") for n in names)


def write_path_lists(data_root: str | os.PathLike) -> dict[str, list[str]]:
    """(Re)write ``video_<bucket>_path.txt`` under ``data_root``: the absolute path of every complete clip folder
    ``<bucket>/<speech|singing|dancing>/<5 digits>``, one per line. Buckets without clips get no file."""
    root = Path(data_root).resolve()
    lists: dict[str, list[str]] = {}
    for bucket in BUCKETS:
        clips = [
            str(clip)
            for category in CATEGORIES
            for clip in sorted((root / bucket / category).glob("[0-9][0-9][0-9][0-9][0-9]"))
            if is_complete_clip(clip)
        ]
        if clips:
            with atomic_output(root / f"video_{bucket}_path.txt") as tmp:
                tmp.write_text("\n".join(clips) + "\n")
            lists[bucket] = clips
    return lists


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Raw videos -> training clip folders (sub_clip.mp4, audio.wav, images/, masks) -> path lists.")
    parser.add_argument("--video", type=str, help="one raw video (with --clip_dir)")
    parser.add_argument("--clip_dir", type=str, help="the clip folder to make from --video")
    parser.add_argument("--videos_dir", type=str, help="a folder of raw videos (with --data_root, --bucket, --category)")
    parser.add_argument("--data_root", type=str, help="dataset root, e.g. talking_face_data")
    parser.add_argument("--bucket", choices=BUCKETS, help="square 512x512, rec 832x480 (landscape), vec 480x832 (portrait)")
    parser.add_argument("--category", choices=CATEGORIES, help="picks the training prompt")
    parser.add_argument(
        "--fps", type=float, default=DEFAULT_FPS, help=f"frame rate of the clips (default {DEFAULT_FPS}, the generation rate); 0 keeps each video's own"
    )
    parser.add_argument("--masks", action="store_true", help="also write face_masks/ and lip_masks/ (MediaPipe, one pass)")
    parser.add_argument("--lists_only", action="store_true", help="only rewrite video_<bucket>_path.txt under --data_root")
    parser.add_argument("--strict", action="store_true", help="stop at the first video or frame that fails (default: skip it, report it, exit 1 at the end)")
    args = parser.parse_args(argv)
    if args.fps < 0:
        parser.error(f"--fps must be positive (or 0 to keep each video's rate), got {args.fps}")
    failures = Failures(strict=args.strict or bool(args.video))  # one video: nothing to go on with
    failures_log = None
    try:
        clips: list[Path] = []
        if args.video:
            if not args.clip_dir:
                parser.error("--video needs --clip_dir")
            clips = [prepare_clip(args.video, args.clip_dir, args.fps)]
        elif args.videos_dir and not args.lists_only:
            if not (args.data_root and args.bucket and args.category):
                parser.error("--videos_dir needs --data_root, --bucket and --category")
            videos = sorted(p for p in Path(args.videos_dir).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not videos:
                parser.exit(1, f"error: no video ({', '.join(VIDEO_SUFFIXES)}) in {args.videos_dir}\n")
            category_dir = Path(args.data_root) / args.bucket / args.category
            clips = prepare_videos(videos, category_dir, fps=args.fps, failures=failures)
            failures_log = category_dir / FAILURES_FILE
            print(f"{len(clips)} of {len(videos)} video(s) prepared under {category_dir}")
        elif not args.lists_only:
            parser.error("give --video/--clip_dir, --videos_dir/--data_root/--bucket/--category, or --data_root --lists_only")
        if args.masks and clips:
            from .lip_masks import extract_masks

            extract_masks(clips, ("lip", "face"), failures=failures)
        if args.data_root:
            if not Path(args.data_root).is_dir():
                raise FileNotFoundError(f"--data_root {args.data_root} is not a folder; pass the dataset root, e.g. talking_face_data")
            lists = write_path_lists(args.data_root)
            for bucket, listed in lists.items():
                print(f"{Path(args.data_root) / f'video_{bucket}_path.txt'}: {len(listed)} clip(s)")
            if not lists:
                print(
                    f"no complete clip under {args.data_root} yet (a clip needs audio.wav and a face and a lip mask per frame): "
                    "run lip_mask_extractor.py --face_masks (or add --masks here), then --lists_only"
                )
    except (OSError, ValueError, RuntimeError) as exc:
        parser.exit(1, f"error: {exc}\n")
    for clip in clips:
        print(f"prepared {clip}")
    if failures_log is not None:
        failures.write(failures_log)
    if failures:
        parser.exit(1, f"error: {failures.report(failures_log)}\n")


if __name__ == "__main__":
    main()
