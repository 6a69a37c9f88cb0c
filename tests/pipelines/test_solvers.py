"""Solvers in the sliding-window loop (wan.pipelines.solvers): configuration, one state per window,
what the blend means for a multistep history, and accuracy against a many-step reference."""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from wan.pipelines import sliding_window as sw
from wan.pipelines.scheduling import build_scheduler, set_timesteps
from wan.pipelines.solvers import WindowSolver, build_solver


def test_euler_at_the_yaml_shift_is_the_original_scheduler():
    base = build_scheduler()
    assert build_solver("euler", base) is base and build_solver("euler", base, 5.0) is base
    shifted = build_solver("euler", base, 3.0)
    assert shifted is not base and shifted.config.shift == 3.0


@pytest.mark.parametrize("name, cls", [("unipc", UniPCMultistepScheduler), ("dpm++", DPMSolverMultistepScheduler)])
def test_multistep_solvers_are_configured_for_flow_matching(name, cls):
    solver = build_solver(name, build_scheduler(), 3.0)
    assert isinstance(solver, cls)
    c = solver.config
    assert (c.prediction_type, c.use_flow_sigmas, c.flow_shift, c.solver_order) == ("flow_prediction", True, 3.0, 2)
    assert name != "dpm++" or c.algorithm_type == "dpmsolver++"
    set_timesteps(solver, 10)
    assert solver.sigmas[0] > 0.99 and solver.sigmas[-1] == 0 and len(solver.timesteps) == 10


def test_bad_solver_or_shift_is_a_clear_error():
    with pytest.raises(ValueError, match="sample_solver must be one of"):
        build_solver("heun", build_scheduler())
    with pytest.raises(ValueError, match="sample_shift must be > 0"):
        build_solver("unipc", build_scheduler(), 0.0)


def _toy_velocity(x: torch.Tensor, t: torch.Tensor, window: sw.Window) -> torch.Tensor:
    """A smooth, nonlinear velocity that differs per window (so overlapping windows disagree)."""
    k = window.index + 1
    return torch.tanh(0.7 * k * x + 0.3 * x.roll(1, dims=1)) - 0.4 * x + 1e-3 * t.double() / k


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
def test_per_window_states_equal_one_solver_on_blended_outputs(name):
    """The loop's definition (module doc of wan.pipelines.solvers): each window keeps its own,
    unblended history, and the stepped windows are blended. From step 1 on this must equal ONE
    solver stepping the whole video from the same latents with the windows' model outputs blended
    with the same weights (history included). A solver shared by the windows or a history reset at
    every step breaks the equality."""
    steps, overlap = 8, 3
    windows = sw.window_schedule(11, 5, overlap, num_audio_samples=11 * 4 * 640)
    assert len(windows) == 4
    weights = sw.overlap_weights(overlap, "uniform", dtype=torch.float64)
    scheduler = build_solver(name, build_scheduler())
    timesteps = set_timesteps(scheduler, steps)
    per_window = WindowSolver(scheduler, len(windows))
    whole = build_solver(name, build_scheduler())
    set_timesteps(whole, steps)
    latents = torch.randn(1, 4, 11, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i, t in enumerate(timesteps):
        outputs = [_toy_velocity(latents[:, :, w.latent_slice], t, w) for w in windows]
        # The pipeline's loop: per-window step, then blend (overwrite at step 0), no bf16 rounding.
        stepped = torch.zeros_like(latents)
        for w, v in zip(windows, outputs):
            sw.merge_window(stepped, per_window.step(w.index, v, t, latents[:, :, w.latent_slice]), w, weights, blend=i != 0, round_to=None)
        # One solver for the whole video, fed the blended outputs.
        blended = torch.zeros_like(latents)
        for w, v in zip(windows, outputs):
            sw.merge_window(blended, v, w, weights, blend=True, round_to=None)
        reference = whole.step(blended, t, latents, return_dict=False)[0]
        if i > 0:  # step 0 overwrites instead of blending (the original's rule)
            torch.testing.assert_close(stepped, reference, rtol=1e-12, atol=1e-12, msg=f"step {i}")
        latents = stepped
    assert torch.isfinite(latents).all()
