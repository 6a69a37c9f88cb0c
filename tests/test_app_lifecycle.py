"""app.py's life around the page: it says at start what is missing, serves only this session's
results, keeps the last N, and cleans up its temporary folder on SIGTERM as on Ctrl+C."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest

from tests.conftest import EXAMPLES, REPO
from wan.app.helpers import new_request_dir, new_session_dir, prune_results

pytest.importorskip("gradio")
import app  # noqa: E402

EARLIER = datetime(2020, 1, 1)  # another session of the app, started before this one


class FakeDemo:
    """Stands in for the gr.Blocks page: records how it was launched."""

    def __init__(self, service):
        self.service = service
        self.launched: dict = {}

    def queue(self, **kwargs):
        return self

    def launch(self, **kwargs):
        self.launched = kwargs


@pytest.fixture
def fake_page(monkeypatch, tmp_path):
    made = []

    def build(service, language="English"):
        made.append(FakeDemo(service))
        return made[-1]

    monkeypatch.setattr(app, "build_demo", build)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    return made


def test_missing_checkpoints_are_said_once_at_start(fake_page, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("STABLEAVATAR_CHECKPOINTS", str(tmp_path / "empty"))
    with caplog.at_level(logging.WARNING, logger="wan.app"):
        assert app.main(["--output_dir", str(tmp_path / "out")]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "checkpoints" in r.getMessage()]
    assert len(warnings) == 1
    assert "generation will fail" in warnings[0] and "hf download" in warnings[0]


def test_complete_checkpoints_say_nothing(fake_page, tmp_path, monkeypatch, caplog):
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    write_tiny_checkpoints(tmp_path / "ckpt")
    monkeypatch.setenv("STABLEAVATAR_CHECKPOINTS", str(tmp_path / "ckpt"))
    with caplog.at_level(logging.WARNING, logger="wan.app"):
        assert app.main(["--output_dir", str(tmp_path / "out")]) == 0
    assert "generation will fail" not in caplog.text


def test_page_serves_only_this_sessions_results(fake_page, tmp_path):
    out = tmp_path / "out"
    earlier = new_request_dir(new_session_dir(out, now=EARLIER))  # another run's result
    (earlier / "video_with_audio.mp4").write_bytes(b"older")
    assert app.main(["--output_dir", str(out), "--keep_results", "5"]) == 0
    demo = fake_page[0]
    session = demo.service.output_root
    assert demo.launched["allowed_paths"] == [str(session)]
    assert session.parent == out.resolve() and session != earlier.parent
    assert not earlier.resolve().is_relative_to(session)
    assert (demo.service.keep_results, demo.service.results_root) == (5, out.resolve())
    assert not session.exists(), "a session without results leaves no folder"


def test_keep_results_prunes_old_request_folders(tmp_path):
    """The newest N request folders stay, from any session; an emptied old session folder goes."""
    old_session, current = new_session_dir(tmp_path, now=EARLIER), new_session_dir(tmp_path)
    folders = []
    for i, session in enumerate([old_session, old_session, current, current]):
        folders.append(new_request_dir(session))
        os.utime(folders[-1], (1000 + i, 1000 + i))  # oldest first
    assert prune_results(tmp_path, keep=0) == [] and prune_results(tmp_path, keep=4) == []
    assert prune_results(tmp_path, keep=3) == [folders[0]]
    assert prune_results(tmp_path, keep=1) == [folders[2], folders[1], old_session]
    assert [p.exists() for p in folders] == [False, False, False, True] and current.is_dir()
    assert prune_results(tmp_path, keep=1, spare=(folders[3], current)) == []


def test_keep_results_through_the_service(tmp_path, monkeypatch):
    from wan.app.config import CheckpointConfig
    from wan.app.service import AvatarService, GenerateRequest, GenerateResult, Limits, PipelineCache

    results = tmp_path / "outputs"
    older = new_request_dir(new_session_dir(results, now=EARLIER))
    os.utime(older, (1000, 1000))
    session = new_session_dir(results)
    paths = CheckpointConfig(tmp_path, None, tmp_path, tmp_path)
    service = AvatarService(PipelineCache(paths), session, tmp_path / "tmp", Limits(), tmp_path / "v.onnx", keep_results=2, results_root=results)

    def fake_generate(self, req, out, tmp, *args):
        (out / "video_with_audio.mp4").write_bytes(b"x")
        return GenerateResult(out / "video_with_audio.mp4", 1, "ok")

    monkeypatch.setattr(AvatarService, "_generate", fake_generate)
    request = GenerateRequest(image=str(EXAMPLES / "case-2" / "reference.png"), audio=str(EXAMPLES / "case-2" / "audio.wav"))
    videos = []
    for _ in range(3):
        videos.append(service.generate(request).video)
        time.sleep(0.02)
    assert [v.exists() for v in videos] == [False, True, True]
    assert not older.exists() and not older.parent.exists(), "the old session's folder went with its last result"
    assert session.is_dir()


def test_sigterm_removes_the_temp_folder(tmp_path):
    """The temporary upload folder app.py makes is removed when it is stopped with SIGTERM."""
    code = (
        "import sys, time, app\n"
        "class Demo:\n"
        "    def queue(self, **k): return self\n"
        "    def launch(self, **k):\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(120)\n"
        "app.build_demo = lambda service, language: Demo()\n"
        f"sys.exit(app.main(['--output_dir', {str(tmp_path / 'out')!r}]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    env.update(TMPDIR=str(tmp_path), STABLEAVATAR_CHECKPOINTS=str(tmp_path / "none"))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
        made = list(tmp_path.glob("stableavatar-app-*"))
        assert len(made) == 1 and made[0].is_dir()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not made[0].exists(), "the temporary folder was left behind"
