"""Deterministic weights from a state_dict key and shape (the golden cases' recipe).

The golden outputs in ``tests/data/cases`` were recorded from the original code with every
floating state_dict entry set by this rule, so a module with the original key names, filled
here, must reproduce them:

* a ``torch.randn`` of the entry's shape, seeded with ``crc32(key)``;
* rank >= 2: divided by ``sqrt(prod(shape[1:]))`` (fan-in scaling);
* rank 1 whose key ends in ``weight`` or ``gamma``: ``1 + 0.1 * randn`` (norm gains);
* any other rank-1 or rank-0 entry: ``0.02 * randn`` (biases).
"""

from __future__ import annotations

import math
import zlib

import torch


def recipe_tensor(key: str, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The float32 recipe value of state_dict entry ``key`` with ``shape``."""
    shape = tuple(int(s) for s in shape)
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if len(shape) >= 2:
        return noise / math.sqrt(math.prod(shape[1:]))
    if len(shape) == 1 and key.endswith(("weight", "gamma")):
        return 1.0 + 0.1 * noise
    return 0.02 * noise


@torch.no_grad()
def fill_state_dict(module: torch.nn.Module, prefix: str = "") -> torch.nn.Module:
    """Overwrite every floating state_dict entry of ``module`` in place by the recipe.

    ``prefix`` is prepended to each key before seeding, for a submodule that must carry the
    values it would have inside a bigger model (``vocal_projector.`` for the audio adapter).
    """
    for key, tensor in module.state_dict().items():
        if tensor.is_floating_point():
            tensor.copy_(recipe_tensor(prefix + key, tensor.shape).to(tensor.dtype))
    return module
