"""A deterministic host-memory meter for tests: peak bytes of live tensor storage.

RSS is noisy (allocator caches, library loads); this counts the storage of every tensor an
operation creates inside the block for as long as a Python tensor still refers to it.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """``with LiveTensorBytes() as meter: ...`` then ``meter.peak`` (bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[tuple[int, int], int] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: tuple[int, int]) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.current -= key[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = (storage.data_ptr(), storage.nbytes())
                if key not in self.refs:
                    self.refs[key] = 0
                    self.current += key[1]
                self.refs[key] += 1
                weakref.finalize(t, self._release, key)
        self.peak = max(self.peak, self.current)
        return out
