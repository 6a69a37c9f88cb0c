"""Compile once per machine: the cache folder's handling, and a second process compiling from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wan.runtime import compile_cache as cc

REPO = Path(__file__).resolve().parents[2]


def test_default_folder_env_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(cc.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cc.default_compile_cache_dir() == tmp_path / "xdg" / "stableavatar" / "torch_compile"
    monkeypatch.setenv(cc.ENV_VAR, str(tmp_path / "mine"))
    assert cc.default_compile_cache_dir() == tmp_path / "mine"


def test_folder_is_created_and_unwritable_one_is_named(tmp_path):
    made = cc.check_compile_cache_dir(tmp_path / "a" / "b")
    assert made.is_dir() and not list(made.iterdir())  # the write probe leaves nothing behind
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"compile cache folder .*file/sub is not writable.*--compile_cache_dir"):
        cc.check_compile_cache_dir(blocker / "sub")


def test_configure_points_inductor_at_the_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    path = cc.configure_compile_cache(tmp_path / "c")
    from torch._inductor.runtime.cache_dir_utils import cache_dir, triton_cache_dir

    assert cache_dir() == str(path) and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(path)
    if "TRITON_CACHE_DIR" not in os.environ:
        assert triton_cache_dir(0).startswith(str(path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")


PROGRAM = """
import json, sys
from wan.runtime.compile_cache import configure_compile_cache
configure_compile_cache(sys.argv[1])
import torch
from torch._dynamo.utils import counters
lin = torch.nn.Linear(16, 16)
f = torch.compile(lambda x: torch.nn.functional.gelu(lin(x)) * 2)
f(torch.randn(4, 16))
print(json.dumps(dict(counters["inductor"])))
"""


@pytest.mark.slow
def test_second_process_compiles_from_the_cache(tmp_path):
    """Two fresh interpreters: the first fills the folder (a miss), the second hits it."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE")}
    env["PYTHONPATH"] = str(REPO)
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path / "cache")], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert runs[0].get("fxgraph_cache_miss", 0) >= 1 and runs[0].get("fxgraph_cache_hit", 0) == 0
    assert runs[1].get("fxgraph_cache_hit", 0) >= 1 and runs[1].get("fxgraph_cache_miss", 0) == 0
    assert (tmp_path / "cache" / "fxgraph").is_dir()
