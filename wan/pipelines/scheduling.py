"""The flow-matching sampler of the original, on diffusers' ``FlowMatchEulerDiscreteScheduler``.

The original builds diffusers 0.30.1's ``FlowMatchEulerDiscreteScheduler`` from the
``scheduler_kwargs`` of ``wan_civitai.yaml`` (``shift=5``, 1000 training steps, no dynamic
shifting) and calls ``set_timesteps(n, mu=1)`` (``mu`` is ignored without dynamic shifting).
That ``set_timesteps`` spaces ``n`` timesteps linearly between the ALREADY shifted
``sigma_max`` (1.0) and ``sigma_min`` (``shift(1/1000)`` = 0.00498), in float64, and shifts them
again, ``sigma -> shift*sigma / (1 + (shift-1)*sigma)``; the timesteps are ``1000 * sigma``. So
3 steps give ``t = 1000, 834.71, 24.41`` instead of ending near ``shift(0)``.

diffusers 0.42's default ``set_timesteps`` path (no ``sigmas=``) still does exactly this, in the
same float64 arithmetic, so the scheduler is used unmodified; ``original_sigmas`` writes the
formula out and the tests hold the two equal. Passing ``sigmas=`` would NOT be equivalent: 0.42
casts custom sigmas to float32 before shifting them.

Per window: the original sets ``scheduler._step_index = None`` before every window, so each
window's ``step`` looks ``t`` up in ``timesteps`` again (strictly decreasing, so the match is
unique) and uses ``sigma[i] -> sigma[i+1]`` of the current step ``i``; without the reset the
second window of a step would use the next step's sigmas. ``step`` itself is one Euler step,
``x.float() + (sigma[i+1] - sigma[i]) * eps`` returned in ``eps``'s dtype; with a bf16 ``eps``
(the GPU run) torch's promotion rules compute the increment ``dt * eps`` in bf16, only the sum is
float32.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

# wan_civitai.yaml's scheduler_kwargs, the only ones the released inference uses.
ORIGINAL_SCHEDULER_KWARGS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 5.0,
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def build_scheduler(scheduler_kwargs: Mapping[str, Any] | None = None) -> FlowMatchEulerDiscreteScheduler:
    """``FlowMatchEulerDiscreteScheduler`` configured as the original.

    Args:
        scheduler_kwargs: the yaml's ``scheduler_kwargs`` (or None for ``ORIGINAL_SCHEDULER_KWARGS``).
            Keys the constructor does not take (``scheduler_subpath``) are dropped, as the original's
            ``filter_kwargs`` does. ``use_dynamic_shifting=True`` is refused: the original passes
            ``mu=1``, which would then change the schedule, and no released config sets it.
    """
    kwargs = dict(ORIGINAL_SCHEDULER_KWARGS if scheduler_kwargs is None else scheduler_kwargs)
    accepted = set(inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    if kwargs.get("use_dynamic_shifting", False):
        raise ValueError("scheduler_kwargs.use_dynamic_shifting=true is not supported (the released config has false)")
    return FlowMatchEulerDiscreteScheduler(**kwargs)


def set_timesteps(
    scheduler: FlowMatchEulerDiscreteScheduler, num_inference_steps: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Set the original's schedule on ``scheduler`` and return its timesteps ``[num_inference_steps]``.

    ``scheduler.sigmas`` then holds ``num_inference_steps + 1`` values ending with 0.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler.timesteps


def original_sigmas(num_inference_steps: int, shift: float = 5.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The original's sigmas written out (diffusers 0.30.1), float32 ``[num_inference_steps + 1]``.

    Timesteps are ``num_train_timesteps * sigmas[:-1]``.
    """

    def shifted(sigma: np.ndarray | float) -> np.ndarray | float:
        return shift * sigma / (1 + (shift - 1) * sigma)

    # The constructor's table: float32 sigmas 1, 0.999, ..., 0.001, shifted once (float32).
    train = torch.from_numpy(np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy())
    train = shifted(train / num_train_timesteps)
    sigma_max, sigma_min = train[0].item(), train[-1].item()
    # set_timesteps: float64 linspace between the shifted ends, shifted again.
    sigmas = shifted(
        np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_inference_steps) / num_train_timesteps
    )
    sigmas = torch.from_numpy(sigmas).to(torch.float32)
    return torch.cat([sigmas, torch.zeros(1)])


def step_window(
    scheduler: FlowMatchEulerDiscreteScheduler, noise_pred: torch.Tensor, timestep: torch.Tensor, window_latents: torch.Tensor
) -> torch.Tensor:
    """One Euler step of one window at timestep ``t``: ``x + (sigma_next - sigma) * eps`` (see module doc).

    Args:
        noise_pred: ``[B, C, f, h, w]`` guided prediction; its dtype is the result's dtype.
        timestep: an element of ``scheduler.timesteps``.
        window_latents: ``[B, C, f, h, w]`` the window's current latents (upcast to float32 inside).

    Resets the step index first, as the original does before every window, so every window of one
    denoising step uses the same ``sigma -> sigma_next``.
    """
    scheduler._step_index = None  # diffusers has no public reset; the original does exactly this
    return scheduler.step(noise_pred, timestep, window_latents, return_dict=False)[0]
