"""Lip and face masks from MediaPipe landmarks on real faces (astronaut + examples/case-*/reference.png).

The first run builds .venv-mp with scripts/setup_mediapipe_env.sh (about 30 s, once; reused afterwards).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import color, data, feature, transform

from wan.preprocess import lip_masks
from wan.preprocess.landmarks import FaceLandmarker
from wan.preprocess.lip_masks import extract_masks

from .conftest import REPO, face_photos

PHOTOS = face_photos()


@pytest.fixture(scope="module")
def landmarker(mediapipe_env):
    with FaceLandmarker(mediapipe_env) as lm:
        yield lm


@pytest.fixture(scope="module")
def faces_clip(tmp_path_factory, landmarker):
    """A clip folder whose frames are the real photos plus one photo without a face (coffee), masks extracted."""
    clip = tmp_path_factory.mktemp("faces") / "00001"
    (clip / "images").mkdir(parents=True)
    for i, (_, rgb) in enumerate(PHOTOS):
        Image.fromarray(rgb).save(clip / "images" / f"frame_{i}.png")
    Image.fromarray(data.coffee()).save(clip / "images" / f"frame_{len(PHOTOS)}.png")
    counts = extract_masks([clip], ("lip", "face"), landmarker=landmarker, progress=False)
    return clip, counts


def _mask(path: Path) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "L", f"{path} must be single-channel 8-bit"
    return np.array(img)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


@pytest.mark.parametrize("i", range(len(PHOTOS)), ids=[n for n, _ in PHOTOS])
def test_lip_mask_lies_on_the_mouth(faces_clip, i):
    clip, _ = faces_clip
    h, w = PHOTOS[i][1].shape[:2]
    lip, face = _mask(clip / "lip_masks" / f"frame_{i}.png"), _mask(clip / "face_masks" / f"frame_{i}.png")
    assert lip.shape == face.shape == (h, w)
    assert set(np.unique(lip)) == {0, 255} and set(np.unique(face)) == {0, 255}
    y0, y1, x0, x1 = _box(face)
    fh, fw = y1 - y0, x1 - x0
    # The face mask is one filled rectangle (the landmark box).
    assert (face[y0:y1, x0:x1] == 255).all() and (face > 0).sum() == fh * fw
    # The mouth: its centre at 60-95 % of the face box's height (lower third, with room for a wide-open mouth
    # and a box that starts at the mesh's forehead point) and in the box's middle 60 % across (turned heads);
    # every lip pixel in the box's lower half.
    ys, xs = np.nonzero(lip)
    rel_y, rel_x = (ys.mean() - y0) / fh, (xs.mean() - x0) / fw
    assert 0.6 <= rel_y <= 0.95 and 0.2 <= rel_x <= 0.8, (rel_y, rel_x)
    ly0, ly1, lx0, lx1 = _box(lip)
    assert y0 + fh / 2 <= ly0 and ly1 <= y1 and x0 <= lx0 and lx1 <= x1, ((ly0, ly1, lx0, lx1), (y0, y1, x0, x1))
    # A mouth is 1-12 % of the face box (closed lips about 2 %, a wide-open mouth about 8 %).
    assert 0.01 < (lip > 0).sum() / (fh * fw) < 0.12


def test_face_mask_covers_an_independent_face_detection(faces_clip):
    """skimage's bundled LBP frontal-face cascade gives a face box from another method; our face mask covers most of it."""
    clip, _ = faces_clip
    cascade = feature.Cascade(data.lbp_frontal_face_cascade_filename())
    checked = 0
    for i, (name, rgb) in enumerate(PHOTOS):
        face = _mask(clip / "face_masks" / f"frame_{i}.png") > 0
        s = 512 / max(rgb.shape[:2])
        gray = transform.rescale(color.rgb2gray(rgb), s, anti_aliasing=True)
        boxes = cascade.detect_multi_scale(gray, scale_factor=1.2, step_ratio=1, min_size=(40, 40), max_size=(500, 500))
        best = None
        for b in boxes:  # the cascade box overlapping our face most (it also fires on background texture)
            r0, c0 = int(b["r"] / s), int(b["c"] / s)
            r1, c1 = int((b["r"] + b["height"]) / s), int((b["c"] + b["width"]) / s)
            inter = face[r0:r1, c0:c1].sum()
            iou = inter / ((r1 - r0) * (c1 - c0) + face.sum() - inter)
            if iou > 0.4 and (best is None or iou > best[0]):
                best = (iou, face[r0:r1, c0:c1].mean(), name)
        if best:
            checked += 1
            assert best[1] > 0.6, f"{name}: face mask covers only {best[1]:.0%} of the cascade's face box"
    assert checked >= 3, "the cascade must confirm at least three of the photos"


def test_frame_without_face_gives_empty_masks_and_a_warning(faces_clip, landmarker, tmp_path, caplog):
    clip, counts = faces_clip
    n = len(PHOTOS)
    assert counts == {"written": n + 1, "skipped": 0, "no_face": 1}
    assert not _mask(clip / "lip_masks" / f"frame_{n}.png").any() and not _mask(clip / "face_masks" / f"frame_{n}.png").any()
    # The warning names the frame; --no_face_fill gives StableAnimator's whole-frame face mask instead.
    one = tmp_path / "00002"
    (one / "images").mkdir(parents=True)
    Image.fromarray(data.coffee()).save(one / "images" / "frame_0.png")
    with caplog.at_level(logging.WARNING):
        extract_masks([one], ("lip", "face"), no_face_fill=True, landmarker=landmarker, progress=False)
    assert "no face detected" in caplog.text and "frame_0.png" in caplog.text
    assert (_mask(one / "face_masks" / "frame_0.png") == 255).all() and not _mask(one / "lip_masks" / "frame_0.png").any()


def test_unreadable_frame_names_the_file(landmarker, tmp_path):
    clip = tmp_path / "00001"
    (clip / "images").mkdir(parents=True)
    (clip / "images" / "frame_0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="frame_0.png"):
        extract_masks([clip], ("lip",), landmarker=landmarker, progress=False)
    assert list((clip / "lip_masks").iterdir()) == []


def test_a_corrupt_frame_is_skipped_and_reported_the_rest_is_masked(mediapipe_env, tmp_path, capsys):
    """lip_mask_extractor.py on a clip whose frame_1 is corrupt: frames 0 and 2 get masks, frame_1 is named on
    stderr and in failed_masks.jsonl, exit status 1; --strict stops at frame_1 (frame_2 not written)."""
    clip = _clip_of_photos(tmp_path / "lenient", 3)
    (clip / "images" / "frame_1.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit) as exit_:
        lip_masks.lip_main([f"--folder_root={clip.parent}", "--quiet"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 1 and "1 clip(s): 2 frame(s) written" in out
    assert "1 file(s) failed" in err and "frame_1.png (masks): " in err
    assert sorted(p.name for p in (clip / "lip_masks").iterdir()) == ["frame_0.png", "frame_2.png"]
    (failure,) = [json.loads(line) for line in (clip.parent / lip_masks.FAILURES_FILE).read_text().splitlines()]
    assert failure["file"] == str(clip / "images" / "frame_1.png") and failure["step"] == "masks"

    strict = _clip_of_photos(tmp_path / "strict", 3)
    (strict / "images" / "frame_1.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit) as exit_:
        lip_masks.lip_main([f"--folder_root={strict.parent}", "--quiet", "--strict"])
    assert exit_.value.code == 1 and "frame_1.png" in capsys.readouterr().err
    assert sorted(p.name for p in (strict / "lip_masks").iterdir()) == ["frame_0.png"]


def _clip_of_photos(root: Path, k: int) -> Path:
    clip = root / "00001"
    (clip / "images").mkdir(parents=True)
    for i, (_, rgb) in enumerate(PHOTOS[:k]):
        Image.fromarray(rgb).resize((256, 256)).save(clip / "images" / f"frame_{i}.png")
    return clip


def test_existing_masks_are_skipped(landmarker, tmp_path):
    clip = _clip_of_photos(tmp_path, 3)
    (clip / "lip_masks").mkdir()
    sentinel = np.full((256, 256), 7, np.uint8)
    Image.fromarray(sentinel).save(clip / "lip_masks" / "frame_1.png")
    counts = extract_masks([clip], ("lip",), landmarker=landmarker, progress=False)
    assert counts == {"written": 2, "skipped": 1, "no_face": 0}
    assert (_mask(clip / "lip_masks" / "frame_1.png") == sentinel).all()  # untouched

    class NoLandmarker:
        def detect(self, paths):
            raise AssertionError("nothing is left to do: no landmark run expected")

    assert extract_masks([clip], ("lip",), landmarker=NoLandmarker(), progress=False)["skipped"] == 3


def test_crash_mid_write_leaves_no_partial_mask_and_resume_finishes(landmarker, tmp_path, monkeypatch):
    clip = _clip_of_photos(tmp_path, 4)
    real_write_bytes = Path.write_bytes
    calls = {"n": 0}

    def flaky_write_bytes(self, payload):
        calls["n"] += 1
        if calls["n"] == 3:  # the third mask: half the bytes reach the disk, then the process "dies"
            real_write_bytes(self, payload[: len(payload) // 2])
            raise KeyboardInterrupt("simulated crash mid-write")
        return real_write_bytes(self, payload)

    monkeypatch.setattr(Path, "write_bytes", flaky_write_bytes)
    with pytest.raises(KeyboardInterrupt):
        extract_masks([clip], ("lip",), landmarker=landmarker, progress=False)
    monkeypatch.undo()
    written = sorted(p.name for p in (clip / "lip_masks").iterdir())
    assert written == ["frame_0.png", "frame_1.png"]  # no temp file, no truncated frame_2.png
    for name in written:
        assert _mask(clip / "lip_masks" / name).shape == (256, 256)
    # A hard kill (no cleanup at all) can leave a hidden temp file: the next run removes it.
    (clip / "lip_masks" / ".frame_2.tmp-99999.png").write_bytes(b"\x89PNG half")
    counts = extract_masks([clip], ("lip",), landmarker=landmarker, progress=False)
    assert counts == {"written": 2, "skipped": 2, "no_face": 0}
    assert sorted(p.name for p in (clip / "lip_masks").iterdir()) == [f"frame_{i}.png" for i in range(4)]


def test_lip_mask_extractor_cli_original_flags(mediapipe_env, tmp_path):
    root = tmp_path / "rec" / "singing"
    for idx in (1, 2):
        clip = root / f"{idx:05d}" / "images"
        clip.mkdir(parents=True)
        Image.fromarray(PHOTOS[0][1]).save(clip / "frame_0.png")
    (root / "00003").mkdir()  # no images/: skipped with a warning
    cmd = [sys.executable, str(REPO / "lip_mask_extractor.py"), f"--folder_root={root}", "--start=1", "--end=2", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "2 clip(s): 2 frame(s) written" in proc.stdout  # --end is inclusive
    assert _mask(root / "00002" / "lip_masks" / "frame_0.png").any() and not (root / "00001" / "face_masks").exists()
    face = [sys.executable, str(REPO / "face_mask_extractor.py"), f"--image_folder={root / '00001' / 'images'}", "--quiet"]
    subprocess.run(face, check=True, capture_output=True)
    assert _mask(root / "00001" / "face_masks" / "frame_0.png").any()
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert "0 frame(s) written, 2 already done" in again.stdout


def test_geometry_matches_the_original_polygons():
    """lip_mask fills the two outer-lip rings exactly as cv2.fillPoly on the truncated pixel coordinates."""
    import cv2

    rng = np.random.default_rng(0)
    face = rng.uniform(0.2, 0.8, size=(468, 2))
    h, w = 120, 160
    ref = np.zeros((h, w), np.uint8)
    for ring in (lip_masks.LIP_UPPER, lip_masks.LIP_LOWER):
        cv2.fillPoly(ref, [np.array([[int(face[i][0] * w), int(face[i][1] * h)] for i in ring], np.int32)], 255)
    np.testing.assert_array_equal(lip_masks.lip_mask([face], h, w), ref)
    box = lip_masks.face_mask([face], h, w)
    ys, xs = np.nonzero(box)
    assert xs.min() == int(np.floor(face[:, 0].min() * w)) and ys.max() == int(np.ceil(face[:, 1].max() * h))


@pytest.mark.parametrize(("installed", "usable"), [(None, False), ("0.10.21", True), ("0.10.14", True), ("0.10.30", False), ("1.0.0", False)])
def test_main_env_mediapipe_used_only_with_the_legacy_face_mesh(monkeypatch, installed, usable):
    """A newer mediapipe in the main environment (no solutions.face_mesh) must not be picked over .venv-mp."""
    import importlib.metadata
    import importlib.util

    from wan.preprocess import landmarks

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (object() if installed else None) if name == "mediapipe" else real_find_spec(name, *a))
    monkeypatch.setattr(importlib.metadata, "version", lambda name: installed)
    assert landmarks._has_legacy_mediapipe() is usable
