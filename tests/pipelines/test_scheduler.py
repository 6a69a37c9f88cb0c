"""The sampler schedule equals the original's (diffusers 0.30.1, shift applied twice) and the per-window step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import CASES
from wan.pipelines.scheduling import ORIGINAL_SCHEDULER_KWARGS, build_scheduler, original_sigmas, set_timesteps, step_window


def reference_0301(num_steps: int, shift: float = 5.0, n_train: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """diffusers 0.30.1 FlowMatchEulerDiscreteScheduler(shift).set_timesteps(num_steps), written out in
    plain numpy independently of the module under test. Returns float32 (timesteps, sigmas)."""
    table = np.arange(n_train, 0, -1, dtype=np.float32) / np.float32(n_train)  # 1.0 ... 0.001
    table = (np.float32(shift) * table / (np.float32(1) + np.float32(shift - 1) * table)).astype(np.float32)
    hi, lo = float(table[0]) * n_train, float(table[-1]) * n_train
    t = np.array([hi + (lo - hi) * k / (num_steps - 1) for k in range(num_steps)]) if num_steps > 1 else np.array([hi])
    s = t / n_train
    s = shift * s / (1 + (shift - 1) * s)
    s32 = s.astype(np.float32)
    return (s32 * np.float32(n_train)).astype(np.float32), np.append(s32, np.float32(0))


def test_three_steps_equal_golden():
    ref = load_file(str(CASES / "pipeline" / "outputs.safetensors"))
    scheduler = build_scheduler()
    timesteps = set_timesteps(scheduler, 3)
    assert torch.equal(timesteps, ref["timesteps"])
    assert torch.equal(scheduler.sigmas, ref["sigmas"])
    assert torch.allclose(timesteps, torch.tensor([1000.0, 834.71, 24.41]), atol=0.01)
    ref_log = load_file(str(CASES / "pipeline_log" / "outputs.safetensors"))
    assert torch.equal(timesteps, ref_log["timesteps"])


@pytest.mark.parametrize("steps", [1, 2, 10, 25, 50, 100])
def test_schedule_equals_0301_formula(steps):
    scheduler = build_scheduler()
    timesteps = set_timesteps(scheduler, steps)
    ref_t, ref_s = reference_0301(steps)
    # float32 precision: the two compute in float64 in a different order, so allow one float32 ulp
    np.testing.assert_allclose(timesteps.numpy(), ref_t, rtol=2**-23, atol=0)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), ref_s, rtol=2**-23, atol=0)
    assert torch.equal(original_sigmas(steps), scheduler.sigmas)
    assert torch.equal(timesteps, original_sigmas(steps)[:-1] * 1000)


def test_double_shift_is_visible():
    """The last sigma is shift(shift(1/1000)), not shift(1/1000) and not 0."""
    scheduler = build_scheduler()
    set_timesteps(scheduler, 50)
    once = 5 * 0.001 / (1 + 4 * 0.001)
    twice = 5 * once / (1 + 4 * once)
    assert scheduler.sigmas[-2].item() == pytest.approx(twice, rel=1e-6)
    assert scheduler.sigmas[0].item() == 1.0 and scheduler.sigmas[-1].item() == 0.0


def test_yaml_kwargs_are_filtered():
    scheduler = build_scheduler({**ORIGINAL_SCHEDULER_KWARGS, "scheduler_subpath": None})
    assert scheduler.config.shift == 5.0
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        build_scheduler({**ORIGINAL_SCHEDULER_KWARGS, "use_dynamic_shifting": True})
    with pytest.raises(ValueError, match="num_inference_steps"):
        set_timesteps(scheduler, 0)


def test_every_window_of_a_step_uses_that_steps_sigmas():
    scheduler = build_scheduler()
    timesteps = set_timesteps(scheduler, 4)
    sigmas = scheduler.sigmas
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 5, 4, 4, generator=g)
    eps = torch.randn(1, 16, 5, 4, 4, generator=g)
    for i, t in enumerate(timesteps):
        for _window in range(3):  # three windows at the same step
            out = step_window(scheduler, eps, t, x)
            expected = x + (sigmas[i + 1] - sigmas[i]) * eps
            assert torch.equal(out, expected)
            assert scheduler.step_index == i + 1
    # without the reset, a second call at the same t would use the next step's sigmas
    scheduler._step_index = None
    first = scheduler.step(eps, timesteps[0], x, return_dict=False)[0]
    second = scheduler.step(eps, timesteps[0], x, return_dict=False)[0]
    assert not torch.equal(first, second)


def test_step_in_bf16_rounds_the_increment_then_adds_in_float32():
    """With a bf16 prediction, torch's type promotion (a 0-dim float32 sigma difference times a bf16
    tensor stays bf16) computes ``dt * eps`` in bf16; the sum with the float32-upcast sample is float32
    and the result is cast back to bf16. This is what the original does on GPU."""
    scheduler = build_scheduler()
    timesteps = set_timesteps(scheduler, 3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 8, 8, generator=g).to(torch.bfloat16)
    eps = torch.randn(1, 4, 8, 8, 8, generator=g).to(torch.bfloat16)
    out = step_window(scheduler, eps, timesteps[1], x)
    assert out.dtype == torch.bfloat16
    increment = (scheduler.sigmas[2] - scheduler.sigmas[1]) * eps
    assert increment.dtype == torch.bfloat16
    expected = (x.float() + increment.float()).to(torch.bfloat16)
    assert torch.equal(out, expected)
    all_float32 = (x.float() + (scheduler.sigmas[2] - scheduler.sigmas[1]) * eps.float()).to(torch.bfloat16)
    assert not torch.equal(out, all_float32)  # the bf16 increment is observable
    assert torch.equal(out, expected)
