"""Face landmarks from MediaPipe 0.10.21, run in its own environment as a subprocess.

mediapipe 0.10.21 (the last release with the bundled legacy FaceMesh) needs numpy<2 and protobuf<5, which the
main environment cannot have. So the landmark step runs ``mediapipe_worker.py`` with another interpreter,
found in this order:

1. ``$MEDIAPIPE_PYTHON``: any python that can ``import mediapipe``;
2. the current interpreter, if it has mediapipe <= 0.10.21 (a single-env install pinned to
   ``numpy<2 protobuf<5 sentencepiece==0.2.0 mediapipe==0.10.21``);
3. ``$MEDIAPIPE_VENV/bin/python`` (default ``<repo>/.venv-mp``), created on first use by
   ``scripts/setup_mediapipe_env.sh`` (about 30 s and 1 GB, once).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("mediapipe_worker.py")
SETUP_SCRIPT = REPO / "scripts" / "setup_mediapipe_env.sh"


class MediapipeUnavailable(RuntimeError):
    """No interpreter on this machine can run mediapipe 0.10.21 (it has wheels for CPython 3.9-3.12 only)."""


@dataclass
class Detection:
    """Landmarks of one image: ``faces`` is a list of [468, 2] arrays of normalised (x, y)."""

    path: str
    height: int
    width: int
    faces: list
    error: str | None = None


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _has_legacy_mediapipe() -> bool:
    """This interpreter has a mediapipe with the bundled FaceMesh (0.10.21 or older; later releases dropped it)."""
    if importlib.util.find_spec("mediapipe") is None:
        return False
    try:
        version = tuple(int(part) for part in importlib.metadata.version("mediapipe").split(".")[:3])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return version <= (0, 10, 21)


def mediapipe_python(create: bool = True) -> str:
    """The interpreter that runs the worker; builds .venv-mp on first use (see the module docstring)."""
    explicit = os.environ.get("MEDIAPIPE_PYTHON")
    if explicit:
        if not Path(explicit).exists():
            raise FileNotFoundError(f"MEDIAPIPE_PYTHON={explicit} does not exist; point it at a python with mediapipe==0.10.21")
        return explicit
    if _has_legacy_mediapipe():
        return sys.executable
    venv = Path(os.environ.get("MEDIAPIPE_VENV", REPO / ".venv-mp"))
    python = _venv_python(venv)
    stamp = venv / ".installed-mediapipe-0.10.21"
    if python.exists() and stamp.exists():
        return str(python)
    if not create:
        raise FileNotFoundError(f"no mediapipe environment at {venv}; run: bash scripts/setup_mediapipe_env.sh")
    if not SETUP_SCRIPT.is_file():
        raise FileNotFoundError(
            f"no mediapipe environment at {venv} and no {SETUP_SCRIPT} to make one; create it with: "
            f'python3.11 -m venv {venv} && {venv}/bin/pip install "mediapipe==0.10.21" "numpy<2" "protobuf<5" && touch {stamp}'
        )
    print(f"[landmarks] creating the mediapipe environment {venv} (once, about 30 s)", file=sys.stderr)
    proc = subprocess.run(["bash", str(SETUP_SCRIPT)], env={**os.environ, "MEDIAPIPE_VENV": str(venv)}, capture_output=True, text=True)
    if proc.returncode == 3:
        raise MediapipeUnavailable(proc.stderr.strip())
    if proc.returncode != 0 or not python.exists():
        raise RuntimeError(f"{SETUP_SCRIPT} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return str(python)


class FaceLandmarker:
    """A running worker process. Use as a context manager; ``detect(paths)`` streams one Detection per path.

    Results arrive in input order while later images are still being processed, so callers can write
    each mask as soon as its landmarks are known (an interrupted run keeps everything finished so far).
    """

    def __init__(self, python: str | None = None):
        self.python = python or mediapipe_python()
        self._stderr = tempfile.TemporaryFile(mode="w+")  # MediaPipe's logging; shown only if the worker dies
        env = {**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONNOUSERSITE": "1"}
        env.pop("PYTHONPATH", None)  # the main env's packages (numpy 2) must not leak into the worker
        self.proc = subprocess.Popen(
            [self.python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1, env=env
        )
        self._unread = 0  # answers still due for an earlier detect() whose caller stopped early
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"the mediapipe worker did not start: {ready}")

    def _worker_log(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-2000:]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"the mediapipe worker ({self.python}) exited with code {self.proc.returncode}:\n{self._worker_log()}")
        return json.loads(line)

    def detect(self, paths: Iterable[str | os.PathLike]) -> Iterator[Detection]:
        paths = [str(Path(p).resolve()) for p in paths]
        while self._unread:  # a previous detect() was abandoned mid-way: skip its remaining answers
            self._read()
            self._unread -= 1
        self._unread = len(paths)

        def feed() -> None:  # a thread, so a long list never blocks on a full pipe while we read answers
            try:
                for p in paths:
                    self.proc.stdin.write(p + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # the worker died; _read reports it with its log

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        for expected in paths:
            reply = self._read()
            self._unread -= 1
            if reply["path"] != expected:
                raise RuntimeError(f"mediapipe worker answered for {reply['path']}, expected {expected}")
            if "error" in reply:
                yield Detection(expected, 0, 0, [], reply["error"])
            else:
                h, w = reply["size"]
                yield Detection(expected, h, w, reply["faces"])
        writer.join()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
