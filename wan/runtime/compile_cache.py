"""Compile once per machine: PyTorch's on-disk compile caches in one persistent, documented folder.

``torch.compile`` already keeps what it builds on disk (inductor's FX-graph cache, the AOTAutograd
cache, the Triton kernels and autotuning results), but by default under
``/tmp/torchinductor_<user>``, which a reboot or a container restart empties. We point all of it
(``TORCHINDUCTOR_CACHE_DIR``; Triton's kernels go in its ``triton/`` subfolder) at

    --compile_cache_dir, else $STABLEAVATAR_COMPILE_CACHE, else $XDG_CACHE_HOME/stableavatar/torch_compile
    (~/.cache/stableavatar/torch_compile)

and make sure both caches are on. The first ``--compile`` run on a machine pays the compilation
(about 26 s for the 1.3B at 480x832 on an H200); later runs in fresh processes only re-trace the
Python and load the compiled kernels from there (BENCHMARKS.md has the measured times). The cache
is keyed by PyTorch on the graph, the torch/Triton versions and the GPU, so a stale entry is never
used; deleting the folder is always safe.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ENV_VAR = "STABLEAVATAR_COMPILE_CACHE"


def default_compile_cache_dir() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "stableavatar" / "torch_compile"


def check_compile_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder the caches will use, created and write-probed. ValueError (naming the folder and
    the fix) where it cannot be written: checked before any model loads."""
    path = Path(cache_dir).expanduser() if cache_dir else default_compile_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe"):
            pass
    except OSError as exc:
        raise ValueError(
            f"compile cache folder {path} is not writable ({exc.strerror or exc}); "
            f"pass --compile_cache_dir to a writable folder, or set {ENV_VAR}"
        ) from exc
    return path.resolve()


def configure_compile_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """Send every on-disk cache of ``torch.compile`` to one persistent folder; returns it.
    Call before the first compiled call (the caches read the location when they are used)."""
    path = check_compile_cache_dir(cache_dir)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    # Triton's kernels follow into <path>/triton/ unless the user set TRITON_CACHE_DIR.
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return path
