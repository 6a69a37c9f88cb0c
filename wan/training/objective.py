"""The training objective, as pure functions of tensors and seeds.

Flow matching on the shift-5 sigma table of the 1000-step FlowMatchEulerDiscreteScheduler:
``x_t = (1 - sigma) * x0 + sigma * noise``, target velocity ``noise - x0``. The loss is an MSE
weighted by the face and lip masks (one of three weightings per step), plus the original's
"motion sub-loss" on differences between adjacent *channels* (its name says motion; its code
differences dim 1 of [B, C, F, H, W], and that is what is reproduced).

Randomness is explicit: per-step draws (shared by all processes, like the original's identically
seeded global RNGs) come from ``seed, step``; per-sample draws (noise, timestep, VAE posterior
sample, CLIP dropout) from ``seed, step, global sample index``. Any process layout with the same
global batch therefore trains on the same numbers, and a resumed run continues the same stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wan.data.mixing import derive_seed

# The three loss weightings and where the per-step uniform draw r switches between them.
FACE_LIP_BOOST_BELOW = 0.4  # r < 0.4: mse * (1 + face + lip)
FACE_ONLY_BELOW = 0.5  # 0.4 <= r < 0.5: mse * face; r >= 0.5: mse * lip
_STEP_STREAM, _SAMPLE_STREAM = 1, 2


# ---------------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------------


def step_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    """CPU generator for the draws every process shares at batch ``position`` of ``epoch``."""
    return torch.Generator().manual_seed(derive_seed(seed, _STEP_STREAM, epoch, position))


def sample_generator(seed: int, epoch: int, position: int, sample: int) -> torch.Generator:
    """CPU generator for global sample ``sample`` of that batch (posterior, CLIP dropout, timestep, noise)."""
    return torch.Generator().manual_seed(derive_seed(seed, _SAMPLE_STREAM, epoch, position, sample))


@dataclass(frozen=True)
class StepDraws:
    drop_audio: bool  # zero the wav2vec features (p = audio_dropout)
    clip_level: bool  # whole-clip audio attention (p = clip_level_prob)
    loss_r: float  # picks the mask weighting (see FACE_LIP_BOOST_BELOW)


def draw_step(generator: torch.Generator, audio_dropout: float, clip_level_prob: float) -> StepDraws:
    u = torch.rand(3, generator=generator).tolist()
    return StepDraws(u[0] < audio_dropout, u[1] < clip_level_prob, u[2])


# ---------------------------------------------------------------------------------------------
# Timesteps and noising
# ---------------------------------------------------------------------------------------------


def sigma_table(num_train_timesteps: int = 1000, shift: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, sigmas), both [num_train_timesteps], of the scheduler's initial table:
    ``sigma_i = shift * s / (1 + (shift - 1) * s)``, ``s = (N - i) / N``, ``t_i = N * sigma_i``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    return sched.timesteps.clone(), sched.sigmas.clone()


def timestep_stratum(sample: int, global_batch: int, num_idx: int) -> tuple[int, int]:
    """Index range ``[lo, hi)`` of the original's DiscreteSampling(uniform_sampling=True).

    The global batch is split into ``groups`` strata: the smallest ``i`` dividing the batch with
    ``num_idx % (batch / i) == 0`` gives ``groups = batch / i``, each ``i`` consecutive samples
    sharing one of ``groups`` equal index ranges. With batch 1 per process (every launcher) the
    samples are the processes, exactly the original's per-rank strata (4 GPUs -> 4 x 250).
    """
    i = 1
    while global_batch % i or num_idx % (global_batch // i):
        i += 1
    groups = global_batch // i
    width = num_idx // groups
    g = sample // i
    return g * width, (g + 1) * width


def sample_index(
    generator: torch.Generator,
    sample: int,
    global_batch: int,
    num_idx: int,
    uniform_sampling: bool,
    weighting_scheme: str = "none",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
) -> int:
    """One timestep index in ``[0, num_idx)`` for one sample."""
    if uniform_sampling:
        lo, hi = timestep_stratum(sample, global_batch, num_idx)
        return int(torch.randint(lo, hi, (1,), generator=generator))
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(weighting_scheme, 1, logit_mean, logit_std, mode_scale, generator=generator)
    return min(int(u.item() * num_idx), num_idx - 1)


def add_noise(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """latents, noise [B, C, F, H, W]; sigmas [B] -> (noisy latents, velocity target)."""
    s = sigmas.to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    return (1 - s) * latents + s * noise, noise - latents


def loss_weighting(weighting_scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """SD3-style per-sample weights [B, 1, 1, 1, 1] (all ones for "none", the launchers' choice)."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    return compute_loss_weighting_for_sd3(weighting_scheme, sigmas.float().view(-1, 1, 1, 1, 1))


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------


def mask_weighted_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    face: torch.Tensor,
    lip: torch.Tensor,
    loss_r: float,
    weighting: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of the squared error [B, C, F, H, W] weighted by face/lip masks [B, 1, F, H, W]:
    ``1 + face + lip`` if r < 0.4, ``face`` if r < 0.5, else ``lip`` (in float32)."""
    mse = (pred.float() - target.float()) ** 2
    if loss_r < FACE_LIP_BOOST_BELOW:
        mse = mse * (1 + face.float() + lip.float())
    elif loss_r < FACE_ONLY_BELOW:
        mse = mse * face.float()
    else:
        mse = mse * lip.float()
    if weighting is not None:
        mse = mse * weighting.float()
    return mse.mean()


def channel_difference_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The original's "motion sub-loss": MSE between differences of adjacent channels (dim 1)."""
    dp = pred[:, 1:].float() - pred[:, :-1].float()
    dt = target[:, 1:].float() - target[:, :-1].float()
    return F.mse_loss(dp, dt)


def stableavatar_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    face: torch.Tensor,
    lip: torch.Tensor,
    loss_r: float,
    weighting: torch.Tensor | None = None,
    motion_sub_loss_ratio: float | None = None,
) -> torch.Tensor:
    """Weighted MSE, blended with the channel-difference loss when a ratio is given."""
    loss = mask_weighted_mse(pred, target, face, lip, loss_r, weighting)
    if motion_sub_loss_ratio is not None and pred.shape[1] > 2:
        loss = loss * (1 - motion_sub_loss_ratio) + channel_difference_loss(pred, target) * motion_sub_loss_ratio
    return loss


# ---------------------------------------------------------------------------------------------
# Gradient clipping schedule (non-DeepSpeed path)
# ---------------------------------------------------------------------------------------------


def clip_threshold(step: int, total_norm: float, max_grad_norm: float, initial_ratio: float, decay_steps: int) -> float:
    """The clip value of the 1B scripts.

    It decays linearly from ``initial_ratio * max_grad_norm`` to ``max_grad_norm`` over
    ``decay_steps``; after that, a gradient more than 5x the threshold is clipped harder, to
    ``threshold / min(norm / threshold, 10)``.
    """
    start = max_grad_norm * initial_ratio
    threshold = max_grad_norm if step >= decay_steps else start + (max_grad_norm - start) * step / decay_steps
    ratio = total_norm / threshold
    if step > decay_steps and ratio > 5:
        return threshold / min(ratio, 10.0)
    return threshold


def seq_len_for(latent_size: tuple[int, int, int], patch_size: tuple[int, int, int]) -> int:
    """DiT token count of a latent [*, f, h, w]: ceil(h * w / (ph * pw) * f)."""
    f, h, w = latent_size
    return math.ceil(h * w / (patch_size[1] * patch_size[2]) * f)
