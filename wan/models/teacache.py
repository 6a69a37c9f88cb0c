"""TeaCache (Liu et al., 2024, arXiv:2411.19108) for the sliding-window pipeline, kept per window.

The DiT's block loop is skipped when the timestep embedding barely moved since the last step: the
blocks' output is then approximated by the input plus the residual (output - input) of the last
step whose blocks ran. "Barely moved" is the accumulated, polynomially rescaled relative L1
change of the modulated input ``e0`` [B, 6, D]; while it stays below the threshold, steps are
skipped; once it crosses it, the blocks run and the sum restarts.

Unlike the original (one state for the whole model, whose counter counts DiT calls), the state
here is one ``WindowCache`` per sliding window, and the step comes from the timestep: a window's
skipped call reuses ITS OWN residual, warm-up and "always compute the last step" count steps, and
windows may be computed in any order (or on different ranks). ``threshold <= 0`` never skips,
so the output equals the uncached run bit for bit.

Use::

    cache = enable_teacache(pipe, threshold=0.1, num_skip_start_steps=5, offload=False)
    pipe(...)                 # the pipeline opens cache.window(index, t) around each DiT call
    cache.decisions           # [(step, window, computed)], for inspection and tests
    disable_teacache(pipe)

Entry point: the instance's ``run_blocks`` (the model's one block-loop seam) is shadowed by
``TeaCache.run_blocks`` while attached; outside a ``window`` scope it calls straight through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

# The original's 1.3B polynomial (highest degree first). Its selector returns it for every model
# name (an always-true ``or`` chain), so this is what every StableAvatar run with TeaCache used.
WAN_1_3B_COEFFICIENTS = (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02)


@dataclass
class WindowCache:
    """TeaCache state of one sliding window."""

    previous_modulated: torch.Tensor | None = None  # e0 of the window's last DiT call [B, 6, D]
    residual: torch.Tensor | None = None  # blocks' output - input at the last computed step [B, L, D]
    accumulated: float = 0.0  # rescaled relative-L1 change since the last computed step
    last_step: int | None = None  # step of the last DiT call


@dataclass(frozen=True)
class CacheDecision:
    step: int
    window: int
    computed: bool  # False: the blocks were skipped and the cached residual added


@dataclass
class TeaCache:
    """Per-window TeaCache. ``num_skip_start_steps`` first steps and the last step always compute."""

    threshold: float
    num_skip_start_steps: int = 5
    offload: bool = False  # keep the residuals on the CPU (saves [3, L, D] per window on the GPU)
    coefficients: Sequence[float] = WAN_1_3B_COEFFICIENTS
    windows: dict[int, WindowCache] = field(default_factory=dict)
    decisions: list[CacheDecision] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_skip_start_steps < 0:
            raise ValueError(f"num_skip_start_steps must be >= 0, got {self.num_skip_start_steps}")
        self.rescale = np.poly1d(self.coefficients)
        self._timesteps: list[float] = []
        self._scope: tuple[int, int] | None = None  # (window, step) of the DiT call in progress

    # -- lifecycle ---------------------------------------------------------------------------

    def begin(self, timesteps: torch.Tensor | Sequence[float]) -> None:
        """Start a generation with this timestep schedule; forgets every window's state."""
        self._timesteps = [float(t) for t in timesteps]
        self.windows.clear()
        self.decisions.clear()

    @property
    def num_steps(self) -> int:
        return len(self._timesteps)

    def step_of(self, t: torch.Tensor | float) -> int:
        try:
            return self._timesteps.index(float(t))
        except ValueError:
            raise RuntimeError(f"timestep {float(t)} is not in the schedule TeaCache.begin() was given") from None

    @contextmanager
    def window(self, index: int, t: torch.Tensor | float) -> Iterator[None]:
        """Scope of one window's DiT call at timestep ``t``."""
        self._scope = (int(index), self.step_of(t))
        try:
            yield
        finally:
            self._scope = None

    # -- the decision ------------------------------------------------------------------------

    def should_compute(self, state: WindowCache, step: int, modulated: torch.Tensor) -> bool:
        """Update ``state`` with this step's ``modulated`` input; True when the blocks must run."""
        forced = (
            self.threshold <= 0
            or step < self.num_skip_start_steps
            or step == self.num_steps - 1
            or state.residual is None
            or state.last_step != step - 1  # first visit, or a resumed run: no usable history
        )
        if forced:
            compute = True
        else:
            prev = state.previous_modulated.to(modulated.device, torch.float32)
            rel_l1 = ((modulated.float() - prev).abs().mean() / prev.abs().mean()).item()
            state.accumulated += float(self.rescale(rel_l1))
            compute = state.accumulated >= self.threshold
        if compute:
            state.accumulated = 0.0
        state.previous_modulated = modulated.detach()
        state.last_step = step
        return compute

    def run_blocks(self, blocks: Callable[..., torch.Tensor], x: torch.Tensor, **block_kwargs) -> torch.Tensor:
        """x [B, L, D] -> blocks(x) [B, L, D], or x + the window's cached residual."""
        if self._scope is None:
            return blocks(x, **block_kwargs)
        index, step = self._scope
        state = self.windows.setdefault(index, WindowCache())
        compute = self.should_compute(state, step, block_kwargs["e0"])
        self.decisions.append(CacheDecision(step, index, compute))
        if not compute:
            return x + state.residual.to(x.device)
        out = blocks(x, **block_kwargs)
        residual = out - x
        state.residual = residual.to("cpu") if self.offload else residual
        return out


def enable_teacache(pipe, threshold: float, num_skip_start_steps: int = 5, offload: bool = False) -> TeaCache:
    """Attach a per-window ``TeaCache`` to ``pipe`` (its DiT's block loop) and return it."""
    disable_teacache(pipe)
    cache = TeaCache(threshold=threshold, num_skip_start_steps=num_skip_start_steps, offload=offload)
    transformer = pipe.transformer
    plain = type(transformer).run_blocks.__get__(transformer)

    def run_blocks(x: torch.Tensor, **block_kwargs) -> torch.Tensor:
        return cache.run_blocks(plain, x, **block_kwargs)

    transformer.run_blocks = run_blocks  # instance attribute: shadows the class method until disabled
    pipe.teacache = cache
    return cache


def disable_teacache(pipe) -> None:
    """Remove the TeaCache from ``pipe`` (no-op without one)."""
    transformer = pipe.transformer
    if "run_blocks" in vars(transformer):
        del transformer.run_blocks
    pipe.teacache = None
