"""Reading checkpoint files and loading them strictly, with errors that name the file.

Every weight file of the released models goes through ``load_state_dict_file``: ``.safetensors``
through safetensors, ``.pt``/``.pth``/``.bin`` through ``torch.load(weights_only=True)`` (no
arbitrary pickles). ``load_into`` loads strictly by default and, on mismatch, raises one error
that lists the missing and unexpected keys and says which file was read.

``check_only()`` runs any loader without reading weights: files give meta tensors (headers and
pickled metadata only) and ``load_into`` stops the loader with ``WeightsMatch`` once keys and shapes
are checked, so a wrong file fails in a second instead of after 14 GB were read.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch

from wan.errors import DOWNLOAD_HINTS, CheckpointError, download_hint  # noqa: F401  (re-exported: their old home)


class WeightsMatch(Exception):
    """Raised by ``load_into`` under ``check_only()``: the keys and shapes match; nothing was loaded."""


_CHECK_ONLY: ContextVar[bool] = ContextVar("check_only", default=False)


@contextmanager
def check_only() -> Iterator[None]:
    """Within: weight files are read as meta tensors and ``load_into`` raises ``WeightsMatch`` after
    its checks. Wrap the loader call in ``torch.device("meta")`` too, so no model is allocated."""
    token = _CHECK_ONLY.set(True)
    try:
        yield
    finally:
        _CHECK_ONLY.reset(token)


def checking_only() -> bool:
    """Whether a ``check_only()`` block is running: loaders keep quiet about what they would load."""
    return _CHECK_ONLY.get()


def require_file(path: str | os.PathLike, what: str = "checkpoint file") -> Path:
    """Return ``path`` as a Path, or raise FileNotFoundError naming it and its download command."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}; {download_hint(path)}")
    return path


def load_state_dict_file(path: str | os.PathLike, unwrap: Iterable[str] = ("state_dict",)) -> dict[str, torch.Tensor]:
    """Read a weight file into a flat ``{key: tensor}`` dict on the CPU.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True, mmap=True)``. A top-level wrapper key listed in ``unwrap``
    (the training scripts' ``{"state_dict": ...}``) is removed.
    """
    path = require_file(path)
    device = "meta" if _CHECK_ONLY.get() else "cpu"  # meta: keys and shapes only, no weight is read
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            if device == "meta":  # from the header; the dtype does not matter to the checks
                with safe_open(str(path), "pt") as f:
                    state = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
            else:
                state = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location=device, weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
                state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a class or a call in the pickle
        raise CheckpointError(
            f"{path}: refused: not a plain tensor checkpoint (it pickles Python objects, which could run code when loaded: "
            f"{str(exc).splitlines()[-1]}); use the released file: {download_hint(path)}"
        ) from None
    except Exception as exc:  # truncated download, wrong format
        raise CheckpointError(f"could not read {path}: {exc}. The file may be truncated; {download_hint(path)}") from exc
    for key in unwrap:
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: refused: not a plain tensor checkpoint (it holds a {type(state).__name__}, not a dict of tensors)")
    stray = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if stray is not None:
        raise CheckpointError(
            f"{path}: refused: not a plain tensor checkpoint (entry {stray!r} is a {type(state[stray]).__name__}, not a tensor)"
        )
    return dict(state)


def load_state_dict_files(paths: Iterable[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """Merge several weight files (sharded safetensors); a key present twice is an error."""
    merged: dict[str, torch.Tensor] = {}
    for path in paths:
        part = load_state_dict_file(path)
        twice = merged.keys() & part.keys()
        if twice:
            raise CheckpointError(f"{path} repeats {len(twice)} keys already read, e.g. {sorted(twice)[:3]}")
        merged.update(part)
    return merged


def _listing(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}{f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''}"


def load_into(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    strict: bool = True,
    allow_missing: Iterable[str] = (),
    assign: bool = False,
) -> tuple[list[str], list[str]]:
    """Load ``state`` into ``module`` and check it.

    Shapes must always match. With ``strict``, a missing key not matched by a prefix in
    ``allow_missing``, or any unexpected key, raises CheckpointError naming ``source`` (the file
    read) and the keys. Tensors are cast to each parameter's dtype. Returns (missing, unexpected).
    """
    own = module.state_dict()
    bad_shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad_shapes:
        raise CheckpointError(f"{source}: {len(bad_shapes)} tensors have the wrong shape: {'; '.join(bad_shapes[:10])}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    allowed = tuple(allow_missing)
    hard_missing = [k for k in missing if not k.startswith(allowed)] if allowed else missing
    if strict and (hard_missing or unexpected):
        msg = [f"{source} does not match {type(module).__name__}:"]
        if hard_missing:
            msg.append(f"{len(hard_missing)} missing keys: {_listing(hard_missing)}")
        if unexpected:
            msg.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
        raise CheckpointError(" ".join(msg))
    if _CHECK_ONLY.get():
        raise WeightsMatch(source)
    state = {k: v.to(own[k].dtype) if own[k].is_floating_point() else v for k, v in state.items() if k in own}
    module.load_state_dict(state, strict=False, assign=assign)
    return missing, unexpected
