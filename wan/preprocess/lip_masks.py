"""Per-frame lip and face masks from MediaPipe face-mesh landmarks, for the training folders.

    python lip_mask_extractor.py --folder_root=talking_face_data/rec/singing --start=1 --end=500
    python face_mask_extractor.py --folder_root=talking_face_data/rec/singing --start=1 --end=500
    python face_mask_extractor.py --image_folder=talking_face_data/rec/singing/00001/images   # StableAnimator's flag

For every frame ``<clip>/images/<name>`` the tools write ``<clip>/lip_masks/<name>`` and/or
``<clip>/face_masks/<name>``: single-channel 8-bit PNG data, 0 or 255, the frame's size, under the frame's file
name (so the dataset finds it). Lip mask (as the original lip_mask_extractor.py): the outer-lip polygons of every
face, upper ``LIP_UPPER`` and lower ``LIP_LOWER`` landmark rings, each closed corner to corner and filled.
Face mask: the filled bounding rectangle of every face's 468 landmarks (StableAnimator's face masks are detector
boxes; the mesh box spans forehead to chin and cheek to cheek). A frame without a face gets an empty mask and a
warning (``--no_face_fill`` gives the face mask StableAnimator's whole-frame fallback instead).

Runs resume: frames whose masks exist are skipped; each mask appears atomically (temp file + os.replace), so an
interrupted run never leaves a half-written mask. A frame that cannot be read (or a clip without images/) is
skipped and reported, on stderr and in ``<folder_root>/failed_masks.jsonl``, and the tools exit 1 at the end; its
clip stays incomplete (not listed for training) until the frame is fixed and the tool rerun. ``--strict`` stops
at the first such frame instead. ``--end`` is inclusive, as the original README describes it
(its code stopped one folder early).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .common import Failures, atomic_output
from .landmarks import Detection, FaceLandmarker

logger = logging.getLogger(__name__)

LIP_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)  # outer upper lip, mouth corner 61 -> corner 291
LIP_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)  # outer lower lip, same corners
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_DIRS = {"lip": "lip_masks", "face": "face_masks"}
CLIP_NAME = re.compile(r"^\d{5}$")
FAILURES_FILE = "failed_masks.jsonl"  # in --folder_root: the frames a run skipped, with the reason


# -- geometry (pure functions of landmarks) -------------------------------------------------------------------
def _pixels(face: Sequence[Sequence[float]], ids: Iterable[int], height: int, width: int) -> np.ndarray:
    """Landmark ids -> int32 pixel polygon, truncating like the original (int(x * W), int(y * H))."""
    return np.array([[int(face[i][0] * width), int(face[i][1] * height)] for i in ids], dtype=np.int32)


def lip_mask(faces: Sequence, height: int, width: int) -> np.ndarray:
    """[H, W] uint8, 255 inside the outer lips of every face."""
    mask = np.zeros((height, width), np.uint8)
    for face in faces:
        cv2.fillPoly(mask, [_pixels(face, LIP_UPPER, height, width)], 255)
        cv2.fillPoly(mask, [_pixels(face, LIP_LOWER, height, width)], 255)
    return mask


def face_mask(faces: Sequence, height: int, width: int) -> np.ndarray:
    """[H, W] uint8, 255 inside the landmark bounding box of every face (clipped to the frame)."""
    mask = np.zeros((height, width), np.uint8)
    for face in faces:
        pts = np.asarray(face, dtype=np.float64)[:, :2] * (width, height)
        x0, y0 = np.floor(pts.min(0)).astype(int).clip(0, (width - 1, height - 1))
        x1, y1 = np.ceil(pts.max(0)).astype(int).clip(0, (width - 1, height - 1))
        mask[y0 : y1 + 1, x0 : x1 + 1] = 255
    return mask


def write_mask(path: Path, mask: np.ndarray) -> None:
    """PNG data under ``path`` (whatever its suffix: a frame_0.jpg frame gets a PNG-encoded frame_0.jpg mask), atomically."""
    ok, data = cv2.imencode(".png", mask)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the mask for {path}")
    with atomic_output(path) as tmp:
        tmp.write_bytes(data.tobytes())


# -- folders ------------------------------------------------------------------------------------------------
def frame_names(images_dir: Path) -> list[str]:
    """Frame files in ``images_dir`` (png/jpg, hidden files ignored), in name order."""
    return sorted(n for n in os.listdir(images_dir) if n.lower().endswith(FRAME_SUFFIXES) and not n.startswith("."))


def clip_folders(folder_root: str | os.PathLike, start: int | None = None, end: int | None = None) -> list[Path]:
    """Clip folders to process: ``folder_root`` itself if it has images/, else its 5-digit sub-folders in [start, end]."""
    root = Path(folder_root)
    if not root.is_dir():
        raise FileNotFoundError(f"--folder_root {root} is not a folder; pass a category folder such as talking_face_data/rec/speech")
    if (root / "images").is_dir():
        return [root]
    if start is None and end is None:
        return sorted(p for p in root.iterdir() if CLIP_NAME.match(p.name) and p.is_dir())
    lo, hi = start if start is not None else 0, end if end is not None else 99999
    clips = []
    for idx in range(lo, hi + 1):
        clip = root / str(idx).zfill(5)
        if (clip / "images").is_dir():
            clips.append(clip)
        elif clip.exists():
            logger.warning("%s has no images/ folder; skipped (extract frames first, see docs/data_preparation.md)", clip)
    return clips


def _clean_stale_temps(folder: Path) -> None:
    """Remove temp files left by a run that was killed mid-write (they are hidden and never read)."""
    for stale in folder.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)


def extract_masks(
    clips: Sequence[str | os.PathLike],
    kinds: Sequence[str] = ("lip",),
    no_face_fill: bool = False,
    landmarker: FaceLandmarker | None = None,
    progress: bool = True,
    failures: Failures | None = None,
) -> dict[str, int]:
    """Write the missing ``kinds`` masks ("lip", "face") of every frame of every clip.

    Returns counts: ``written`` frames, ``skipped`` (all masks already there), ``no_face`` frames. A clip
    without images/ or a frame that cannot be read is recorded in ``failures`` and skipped (None: its error
    is raised).
    """
    failures = Failures(strict=True) if failures is None else failures
    unknown = set(kinds) - set(MASK_DIRS)
    if unknown:
        raise ValueError(f"unknown mask kinds {sorted(unknown)}; choose from {sorted(MASK_DIRS)}")
    todo: list[tuple[Path, str]] = []  # (clip, frame name) still missing a mask
    skipped = 0
    for clip in map(Path, clips):
        images = clip / "images"
        with failures.guard(images, "masks"):
            if not images.is_dir():
                raise FileNotFoundError(f"{images} does not exist; extract the frames first (python -m wan.preprocess.frames)")
            for kind in kinds:
                (clip / MASK_DIRS[kind]).mkdir(exist_ok=True)
                _clean_stale_temps(clip / MASK_DIRS[kind])
            for name in frame_names(images):
                if all((clip / MASK_DIRS[k] / name).exists() for k in kinds):
                    skipped += 1
                else:
                    todo.append((clip, name))
    counts = {"written": 0, "skipped": skipped, "no_face": 0}
    if not todo:
        return counts
    owner = landmarker is None
    landmarker = landmarker or FaceLandmarker()
    try:
        bar = tqdm(total=len(todo), desc="face landmarks -> masks", unit="frame", disable=not progress)
        for (clip, name), det in zip(todo, landmarker.detect(clip / "images" / name for clip, name in todo), strict=True):
            with failures.guard(clip / "images" / name, "masks"):
                _write_frame_masks(clip, name, det, kinds, no_face_fill)
                counts["written"] += 1
                counts["no_face"] += not det.faces
            bar.update()
        bar.close()
    finally:
        if owner:
            landmarker.close()
    return counts


def _write_frame_masks(clip: Path, name: str, det: Detection, kinds: Sequence[str], no_face_fill: bool) -> None:
    if det.error:
        raise ValueError(f"{det.path}: {det.error}; remove or re-extract this frame")
    if not det.faces:
        logger.warning("no face detected in %s; writing empty %s mask(s)", det.path, "/".join(kinds))
    for kind in kinds:
        out = clip / MASK_DIRS[kind] / name
        if out.exists():
            continue
        if kind == "lip":
            mask = lip_mask(det.faces, det.height, det.width)
        elif det.faces or not no_face_fill:
            mask = face_mask(det.faces, det.height, det.width)
        else:
            mask = np.full((det.height, det.width), 255, np.uint8)
        write_mask(out, mask)


# -- command lines ------------------------------------------------------------------------------------------
def _parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--folder_root", type=str, default=None, help="category folder (e.g. talking_face_data/rec/speech) or one clip folder")
    parser.add_argument("--start", type=int, default=None, help="first clip number (00001 = 1); default: every 5-digit clip folder")
    parser.add_argument("--end", type=int, default=None, help="last clip number, inclusive (--start=1 --end=500 covers 00001..00500)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--strict", action="store_true", help="stop at the first frame that fails (default: skip it, report it, exit 1 at the end)")
    return parser


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, kinds: Sequence[str], no_face_fill: bool = False, clips=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    failures = Failures(strict=args.strict)
    try:
        if clips is None:
            if not args.folder_root:
                parser.error("--folder_root is required")
            clips = clip_folders(args.folder_root, args.start, args.end)
        if not clips:
            parser.exit(1, f"error: no clip folder with images/ under {args.folder_root} for --start={args.start} --end={args.end}\n")
        counts = extract_masks(clips, kinds, no_face_fill=no_face_fill, progress=not args.quiet, failures=failures)
    except (OSError, ValueError, RuntimeError) as exc:
        parser.exit(1, f"error: {exc}\n")
    print(f"{len(clips)} clip(s): {counts['written']} frame(s) written, {counts['skipped']} already done, {counts['no_face']} without a face")
    log = failures.write(Path(args.folder_root or clips[0]) / FAILURES_FILE)
    if failures:
        parser.exit(1, f"error: {failures.report(log)}\n")


def lip_main(argv: list[str] | None = None) -> None:
    parser = _parser("Lip masks (outer-lip polygons from MediaPipe face mesh) for every frame of the clip folders.")
    parser.add_argument("--face_masks", action="store_true", help="also write face_masks/ in the same pass (one landmark run for both)")
    args = parser.parse_args(argv)
    _run(args, parser, ("lip", "face") if args.face_masks else ("lip",))


def face_main(argv: list[str] | None = None) -> None:
    parser = _parser("Face masks (filled face boxes from MediaPipe face mesh) for every frame of the clip folders.")
    parser.add_argument("--image_folder", type=str, default=None, help="one clip's images/ folder (StableAnimator's flag); masks go to the sibling face_masks/")
    parser.add_argument("--no_face_fill", action="store_true", help="frames without a face get an all-255 mask (StableAnimator) instead of an empty one")
    args = parser.parse_args(argv)
    clips = None
    if args.image_folder:
        images = Path(args.image_folder)
        if images.name != "images" or not images.is_dir():
            parser.exit(1, f"error: --image_folder {images} must be an existing <clip>/images folder\n")
        clips = [images.parent]
    _run(args, parser, ("face",), no_face_fill=args.no_face_fill, clips=clips)


main = lip_main  # lip_mask_extractor.py's entry point
