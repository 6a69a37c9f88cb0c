"""TeaCache kept per window: decisions, residuals, threshold 0 == uncached, any window order."""

from __future__ import annotations

import pytest
import torch

from tests.runtime.conftest import generate
from wan.models.teacache import CacheDecision, TeaCache, disable_teacache, enable_teacache

STEPS = 5


@pytest.fixture(scope="module")
def pipe(make_pipe):
    return make_pipe()


@pytest.fixture(scope="module")
def uncached(pipe):
    return generate(pipe, steps=STEPS)


def record_calls(cache: TeaCache) -> list[dict]:
    """Wrap ``cache.run_blocks`` to keep (window, step, x, out, computed) of every DiT call."""
    calls, inner = [], cache.run_blocks

    def spy(blocks, x, **kwargs):
        out = inner(blocks, x, **kwargs)
        window, step = cache._scope
        calls.append(dict(window=window, step=step, x=x, out=out, computed=cache.decisions[-1].computed))
        return out

    cache.run_blocks = spy
    return calls


def test_threshold_zero_skips_nothing_and_is_bit_exact(pipe, uncached):
    cache = enable_teacache(pipe, threshold=0.0, num_skip_start_steps=0)
    try:
        out = generate(pipe, steps=STEPS)
    finally:
        disable_teacache(pipe)
    assert torch.equal(out.latents, uncached.latents)
    windows = len(out.windows)
    assert windows >= 2
    assert sorted((d.step, d.window) for d in cache.decisions) == [(s, w) for s in range(STEPS) for w in range(windows)]
    assert all(d.computed for d in cache.decisions)


def test_each_window_skips_with_its_own_residual(pipe, uncached):
    # A huge threshold skips every step that is not forced: step 0 and 1 (warm-up), and the last.
    cache = enable_teacache(pipe, threshold=1e9, num_skip_start_steps=2)
    calls = record_calls(cache)
    try:
        out = generate(pipe, steps=STEPS)
    finally:
        disable_teacache(pipe)
    windows = len(out.windows)
    expected = [CacheDecision(s, w, s in (0, 1, STEPS - 1)) for s in range(STEPS) for w in range(windows)]
    assert cache.decisions == expected  # counted in steps per window, not in DiT calls
    residual = {}
    for call in calls:
        if call["computed"]:
            residual[call["window"]] = call["out"] - call["x"]
            continue
        own = residual[call["window"]]
        assert torch.equal(call["out"], call["x"] + own)
        for other, r in residual.items():  # never another window's residual
            if other != call["window"]:
                assert not torch.equal(call["out"], call["x"] + r)
    assert not torch.equal(out.latents, uncached.latents)  # skipping changed the result


def test_window_order_does_not_matter(pipe, monkeypatch):
    """Windows computed right to left (as a window-parallel run may) give the same video."""
    enable_teacache(pipe, threshold=1e9, num_skip_start_steps=1)
    try:
        forward = generate(pipe, steps=STEPS).latents
        plain = type(pipe).predict_windows

        def reversed_order(self, latents_all, t, windows, cond, progress=None):
            return plain(self, latents_all, t, windows[::-1], cond, progress)[::-1]

        monkeypatch.setattr(type(pipe), "predict_windows", reversed_order)
        backward = generate(pipe, steps=STEPS).latents
    finally:
        disable_teacache(pipe)
    assert torch.equal(forward, backward)


def test_real_threshold_decisions_are_per_window_and_offload_changes_nothing(pipe):
    results = []
    for offload in (False, True):
        cache = enable_teacache(pipe, threshold=0.2, num_skip_start_steps=1, offload=offload)
        try:
            results.append((generate(pipe, steps=STEPS).latents, list(cache.decisions)))
        finally:
            disable_teacache(pipe)
        if offload:
            assert all(s.residual.device.type == "cpu" for s in cache.windows.values())
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    assert len(results[0][1]) == STEPS * len(cache.windows)


def test_disable_restores_the_plain_block_loop(pipe):
    enable_teacache(pipe, threshold=0.1)
    assert "run_blocks" in vars(pipe.transformer)
    disable_teacache(pipe)
    assert "run_blocks" not in vars(pipe.transformer) and pipe.teacache is None


def test_timestep_outside_the_schedule_is_an_error():
    cache = TeaCache(threshold=0.1)
    cache.begin(torch.tensor([999.0, 500.0]))
    with pytest.raises(RuntimeError, match="not in the schedule"), cache.window(0, torch.tensor(10.0)):
        pass
