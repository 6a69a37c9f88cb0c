"""Sampling solvers for the sliding-window loop: the original's Euler step, or diffusers' UniPC / DPM++.

``--sample_solver euler`` (the default) is the original's sampler, unchanged: diffusers'
``FlowMatchEulerDiscreteScheduler`` with the yaml's shift, one scheduler shared by every window
(``scheduling.step_window`` resets its step index before each window). ``unipc`` and ``dpm++`` are
diffusers' ``UniPCMultistepScheduler`` and ``DPMSolverMultistepScheduler`` (``dpmsolver++``) set up
for flow matching as diffusers' Wan2.1 pipelines are: ``prediction_type="flow_prediction"``,
``use_flow_sigmas=True``, ``flow_shift=shift``, second order. Their schedules are diffusers' own
(sigmas shifted once, from 1 to 0), not the original's twice-shifted Euler schedule, and their
timesteps are integers (diffusers truncates ``1000 * sigma``), as in Wan2.1's ``generate.py``.

One solver state per window. A multistep solver keeps a history: the last model outputs (as
x0 predictions) and, for UniPC's corrector, the sample it stepped last. Each window is its own
trajectory, so each window gets its own copy of the scheduler (``WindowSolver``), as TeaCache keeps
one cache per window.

What the blend does to that history: nothing. After a window is stepped, the loop blends its first
``overlap`` frames with the previous window's values (and the next window later overwrites its last
frames); the window's history keeps its own, unblended model outputs. This is the consistent
choice, not a shortcut: every window reads the same latents (the previous step's), and every solver
update is linear in the sample and the history with coefficients that depend only on the step. So
blending the stepped windows with weights ``w`` equals stepping the whole video once with one solver
fed the model outputs blended with the same ``w``: the blend already blends the histories, and
rewriting a window's history with blended outputs would blend them twice.

The equality holds from step 1 on. At step 0 the loop overwrites instead of blending (the
original's rule, kept for every solver), so the equivalent whole-video solver holds step 0's outputs
blended with the later steps' weights while the latents were made by overwriting. Blending from
step 0 instead would make the equality exact at every step; on the tiny test pipeline it changed the
solvers' errors by less than 0.1%, so the original's rule stays. A test holds the two paths equal
(``tests/pipelines/test_solvers.py``).

Resuming (``--resume``) restarts the history: the first resumed step of a multistep solver is first
order, so the result is close to, not identical with, an uninterrupted run (Euler resumes exactly).
"""

from __future__ import annotations

import copy

import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from wan.pipelines.scheduling import step_window

SOLVERS: tuple[str, ...] = ("euler", "unipc", "dpm++")
SOLVER_ORDER = 2  # diffusers' and Wan2.1's setting for guided sampling


def build_solver(name: str, base: FlowMatchEulerDiscreteScheduler, shift: float | None = None) -> SchedulerMixin:
    """The scheduler for ``--sample_solver name`` and ``--sample_shift shift``.

    Args:
        name: one of ``SOLVERS``.
        base: the pipeline's Euler scheduler (built from the yaml's ``scheduler_kwargs``).
        shift: the flow shift; None keeps ``base``'s (the yaml's 5.0).

    ``euler`` with the base's shift returns ``base`` itself, so the default path is the original's.
    """
    if name not in SOLVERS:
        raise ValueError(f"sample_solver must be one of {SOLVERS}, got {name!r}")
    base_shift = float(base.config.shift)
    shift = base_shift if shift is None else float(shift)
    if shift <= 0:
        raise ValueError(f"sample_shift must be > 0, got {shift}")
    if name == "euler":
        return base if shift == base_shift else FlowMatchEulerDiscreteScheduler.from_config(base.config, shift=shift)
    flow = {
        "num_train_timesteps": base.config.num_train_timesteps,
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": shift,
        "solver_order": SOLVER_ORDER,
    }
    if name == "unipc":
        return UniPCMultistepScheduler(**flow)
    return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **flow)


class WindowSolver:
    """Steps the windows of the sliding-window loop, one solver state per window (see module doc).

    Args:
        scheduler: from ``build_solver``, after ``set_timesteps``.
        num_windows: windows of the schedule.
        start_step: the first step that will run (``> 0`` when resuming); multistep states start
            there with an empty history.
    """

    def __init__(self, scheduler: SchedulerMixin, num_windows: int, start_step: int = 0):
        self.scheduler = scheduler
        self.multistep = not isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
        self.states: list[SchedulerMixin] = []
        if self.multistep:
            scheduler.set_begin_index(start_step)  # no timestep lookup: integer timesteps may repeat
            self.states = [copy.deepcopy(scheduler) for _ in range(num_windows)]

    def step(self, window_index: int, model_output: torch.Tensor, timestep: torch.Tensor, window_latents: torch.Tensor) -> torch.Tensor:
        """Window ``window_index``'s latents ``[B, C, f, h, w]`` one step on from ``timestep``.

        Euler: the original's step (result in ``model_output``'s dtype). Multistep: computed and
        returned in float32 at least (bf16 inputs are upcast; the history is kept in that precision).
        """
        if not self.multistep:
            return step_window(self.scheduler, model_output, timestep, window_latents)
        dtype = torch.promote_types(model_output.dtype, torch.float32)
        return self.states[window_index].step(model_output.to(dtype), timestep, window_latents.to(dtype), return_dict=False)[0]
