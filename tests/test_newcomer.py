"""What a new user runs first works as written: download commands, the docs' commands and paths,
inference.sh, --help, the tiny folder's printed command, and no phase that stays silent."""

from __future__ import annotations

import fnmatch
import logging
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
import soundfile as sf
import torch

from tests.conftest import REPO
from wan.cli import inference as cli

TEXT_SUFFIXES = {".py", ".md", ".sh", ".txt", ".toml", ".yaml", ".yml", ".cfg"}
SKIPPED_DIRS = {".git", "__pycache__", "data", "outputs", "output_infer", "checkpoints_tiny"}
DOCS = [REPO / "README.md", REPO / "checkpoints" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


def repo_text_files() -> list[Path]:
    files = []
    for path in REPO.rglob("*"):
        parts = path.relative_to(REPO).parts
        if any(p in SKIPPED_DIRS or p.startswith(".venv") for p in parts[:-1]) or path.suffix not in TEXT_SUFFIXES:
            continue
        if path.is_file():
            files.append(path)
    assert len(files) > 100, "the scan missed the repository"
    return files


@pytest.mark.parametrize("needle", ["huggingface" + "-cli", "huggingface_hub" + "[cli]", "DEPS" + ".md"])
def test_no_removed_cli_and_no_file_outside_the_repo(needle):
    """huggingface_hub 1.0 removed the old CLI (and its extra); the dependency notes live outside the repository."""
    hits = [f"{p.relative_to(REPO)}:{i}" for p in repo_text_files() for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if needle in line]
    assert not hits, f"{needle} in {hits}"


def test_download_hints_use_hf_download():
    from wan.models.loading import DOWNLOAD_HINTS

    assert all(cmd.startswith("hf download ") for cmd in DOWNLOAD_HINTS.values())
    assert "hf download FrancisRing/StableAvatar --local-dir ./checkpoints" in (REPO / "checkpoints" / "README.md").read_text()


BARE_PYTHON = re.compile(r"(?<![\w/.-])python (?=(-m |[\w/]+\.py))")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_run_python_from_the_venv(doc):
    """A bare ``python`` is the system interpreter, without the packages."""
    bare = [line for line in doc.read_text().splitlines() if BARE_PYTHON.search(line)]
    assert not bare, bare


def test_readme_layout_lists_every_entry_point():
    readme = (REPO / "README.md").read_text()
    listed = readme.split("## Layout", 1)[1].split("\n## ", 1)[0].split()  # names and globs (train_*.py)
    entry_points = sorted(p.name for p in REPO.glob("*.py"))
    assert "face_mask_extractor.py" in entry_points
    assert [name for name in entry_points if not any(fnmatch.fnmatch(name, word) for word in listed)] == []


def test_example_paths_in_docs_exist_and_match_inference_sh():
    for doc in [*DOCS, REPO / "inference.sh", REPO / "multiple_gpu_inference.sh"]:
        for path in re.findall(r"examples/case-\d+/[\w.]+", doc.read_text()):
            assert (REPO / path).is_file(), f"{doc.name} names {path}, which does not exist"
    script = (REPO / "inference.sh").read_text()
    assert "REFERENCE:-examples/case-1/reference.png" in script and "AUDIO:-examples/case-2/audio.wav" in script
    for doc in (REPO / "README.md", REPO / "docs" / "inference.md"):
        for line in doc.read_text().splitlines():
            if line.startswith("bash inference.sh") and "case-1" in line:
                assert "case-2" in line, f"{doc.name}: {line!r} hides that the audio is case-2's"


def test_inference_sh_checks_checkpoints_before_installing(tmp_path):
    """Without checkpoints it stops at once, before setup_env.sh installs anything."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup_env.sh").write_text("touch installed\n")
    (tmp_path / "inference.sh").write_text((REPO / "inference.sh").read_text())
    run = subprocess.run(["bash", "inference.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "missing checkpoints" in run.stderr and "hf download" in run.stderr
    assert not (tmp_path / "installed").exists(), "setup_env.sh ran before the checkpoint check"


def test_help_shows_each_default_once():
    text = cli.build_parser().format_help()
    blocks = re.split(r"\n  (?=--)", text)
    twice = [block.split()[0] for block in blocks if len(re.findall(r"default:", block)) > 1]
    assert twice == []
    assert "(default: None)" not in text
    assert "(default: 512)" in text  # real defaults are still shown


def test_tiny_checkpoints_prints_a_quick_command(tiny_folder, tmp_path, monkeypatch, capsys):
    """The printed command: the venv's python, 64x64, 2 steps, 3 s of speech, on the CPU; and it validates."""
    from wan.testing import tiny_checkpoints

    monkeypatch.setattr(tiny_checkpoints, "write_tiny_checkpoints", lambda root: tiny_folder)  # written once per module
    tiny_checkpoints.main([str(tmp_path)])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("run"))
    words = shlex.split(line.split(": ", 1)[1])
    assert words[:2] == [".venv/bin/python", "inference.py"]
    args = cli.parse_args(words[2:])
    assert (args.width, args.height, args.sample_steps, args.device) == (64, 64, 2, "cpu")
    assert sf.info(args.validation_driven_audio_path).duration == pytest.approx(3.0)
    args.output_dir = str(tmp_path / "out")
    args.validation_reference_path = str(REPO / args.validation_reference_path)
    cli.validate(args)


# ---------------------------------------------------------------------------------------------
# no silent phase
# ---------------------------------------------------------------------------------------------


def test_loading_and_reference_encode_say_so(tiny_folder, caplog):
    from tests.pipelines.test_pipeline import _reference, _speech
    from wan.pipelines import load_pipeline

    with caplog.at_level(logging.INFO):
        pipe = load_pipeline(*tiny_folder.values(), device="cpu")
        pipe(image=str(_reference()), audio=_speech(1.0), height=32, width=32, num_inference_steps=1, clip_length=17,
             overlap_window_length=2, output_type="latent")  # fmt: skip
    said = caplog.text
    for phase in ("loading umT5", "loading the VAE", "loading CLIP", "loading the DiT", "loading wav2vec2", "encoding the prompt",
                  "encoding the reference image"):  # fmt: skip
        assert phase in said, phase


def test_writing_video_bar_knows_the_total(tmp_path, monkeypatch):
    """run() gives write_video the frame count (1 + 4 (T - 1) for T latent frames), so its bar has a total and an ETA."""
    import wan.utils.video_io as video_io
    from tests.test_inference_cli import FakePipeline

    class WithLatents(FakePipeline):
        def __call__(self, **kwargs):
            out = super().__call__(**kwargs)
            out.latents = torch.zeros(1, 16, 7, 4, 4)  # 7 latent frames -> 25 video frames
            return out

    totals = []
    real = video_io.write_video

    def recording(*a, total_frames=None, **k):
        totals.append(total_frames)
        return real(*a, total_frames=total_frames, **k)

    monkeypatch.setattr(video_io, "write_video", recording)
    monkeypatch.setitem(sys.modules, "wan.pipelines", types.SimpleNamespace(load_pipeline=lambda path, **k: WithLatents()))
    monkeypatch.setattr(cli, "validate", lambda args: None)
    argv = ["--pretrained_model_name_or_path=m", f"--validation_reference_path={REPO / 'examples/case-2/reference.png'}",
            f"--validation_driven_audio_path={REPO / 'examples/case-2/audio.wav'}", f"--output_dir={tmp_path}", "--width=32",
            "--height=32", "--save_every=0", "--transformer_path=t", "--pretrained_wav2vec_path=w", "--config_path=c"]  # fmt: skip
    assert cli.main(argv) == 0
    assert totals == [25]


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_base_only_warning_is_said_once(tiny_folder, tmp_path, monkeypatch, caplog, batch):
    """Without --transformer_path the 'base DiT alone' warning appears once per run: the weight check before
    loading (which runs the DiT loader on the meta device) stays quiet, the real load says it."""
    import json

    from wan.cli import generation

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(generation, "generate", lambda pipe, args, video, resume, writer: None)  # everything up to the sampling
    reference, audio = REPO / "examples/case-2/reference.png", REPO / "examples/case-2/audio.wav"
    argv = [f"--{k}={v}" for k, v in tiny_folder.items() if k != "transformer_path"]
    argv += [f"--output_dir={tmp_path / 'out'}", "--width=32", "--height=32", "--clip_sample_n_frames=17", "--overlap_window_length=3",
             "--sample_steps=1", "--device=cpu"]  # fmt: skip
    if batch:
        (tmp_path / "jobs.jsonl").write_text(json.dumps({"reference": str(reference), "audio": str(audio), "output_name": "one"}) + "\n")
        argv.append(f"--batch_file={tmp_path / 'jobs.jsonl'}")
    else:
        argv += [f"--validation_reference_path={reference}", f"--validation_driven_audio_path={audio}"]
    with caplog.at_level(logging.INFO):
        assert cli.main(argv) == 0
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "No --transformer_path" in r.getMessage()]
    assert len(said) == 1, said
    assert "loading the DiT" in caplog.text  # the pipeline was loaded, so the one warning is the loader's
