"""Window (and CFG-row) parallelism: the DiT calls of one denoising step, spread over groups of ranks.

At a given step every sliding window reads only the previous step's latents, so its DiT call is
independent of the others until the sequential step-and-blend (``StableAvatarPipeline.__call__``).
The ranks form ``num_groups`` groups of ``group_size`` consecutive ranks (a group is one
sequence-parallel group, or a single GPU). Each step:

1. ``schedule`` deals out the work: whole windows (3 CFG rows, one DiT call) round-robin, as many
   rounds as every group can take; the windows left over are cut into single CFG rows when that
   finishes sooner (e.g. 5 windows on 4 GPUs: 4 whole windows, then the 5th as 3 rows on 3 GPUs).
2. Every group computes its items; the group's first rank broadcasts each result to all ranks.
3. Every rank then has every window's guided velocity, bit for bit what its owner computed, and
   runs the cheap step/blend itself, so all ranks keep identical latents without further exchange.

The maths is the single-GPU maths: a whole window is the same DiT call; a row item is the same call
restricted to one row (``forward(rows=...)``; the 1.3B adapter still reads the last row's audio and
gives row 0 zeros), and the rows are combined with the same ``combine_guidance``.
Every rank must hold the same latents: use the same seed on every rank (``inference.py`` does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from wan.pipelines.sliding_window import combine_guidance

CFG_ROWS = 3  # rows of one window's DiT call: (no audio, negative text), (audio, negative text), (audio, prompt)


@dataclass(frozen=True)
class WorkItem:
    """One DiT call of a step: window ``window`` (position in the schedule), on group ``group``;
    ``rows`` None = all CFG rows (output: the guided velocity), else those rows only (output: raw rows)."""

    window: int
    group: int
    rows: tuple[int, ...] | None = None


def schedule(num_windows: int, num_groups: int, split_rows: bool = True) -> list[WorkItem]:
    """Deal ``num_windows`` windows out to ``num_groups`` groups, whole windows first.

    With ``split_rows`` the remainder (``num_windows % num_groups`` windows) is cut into single CFG
    rows when that takes fewer row-rounds (``ceil(3 * rem / groups) < 3``); otherwise it stays whole.
    """
    if num_windows < 0 or num_groups < 1:
        raise ValueError(f"need num_windows >= 0 and num_groups >= 1, got {num_windows}, {num_groups}")
    full_rounds, rem = divmod(num_windows, num_groups)
    whole = num_windows if not (split_rows and rem and math.ceil(CFG_ROWS * rem / num_groups) < CFG_ROWS) else full_rounds * num_groups
    items = [WorkItem(w, w % num_groups) for w in range(whole)]
    row_items = [(w, r) for w in range(whole, num_windows) for r in range(CFG_ROWS)]
    items += [WorkItem(w, k % num_groups, (r,)) for k, (w, r) in enumerate(row_items)]
    return items


def rounds(items: Sequence[WorkItem], num_groups: int) -> float:
    """Time of a step in units of one whole-window DiT call (a row costs a third): the busiest group's load."""
    load = [0.0] * num_groups
    for item in items:
        load[item.group] += 1.0 if item.rows is None else len(item.rows) / CFG_ROWS
    return max(load, default=0.0)


class WindowParallel:
    """Runs ``StableAvatarPipeline.predict_windows`` over ``num_groups`` groups of ``group_size`` ranks.

    Args:
        group_size: ranks per group (the sequence-parallel degree; 1 = one GPU per group).
        split_rows: cut left-over windows into CFG rows (see ``schedule``); False = windows only.
        ranks, group: the global ranks that make this video and their process group (default: all
            ranks, the default group); ``--batch_file`` gives each set of ranks its own videos.
    """

    def __init__(self, group_size: int = 1, split_rows: bool = True, ranks: Sequence[int] | None = None, group: dist.ProcessGroup | None = None):
        if not dist.is_initialized():
            raise RuntimeError("window parallelism needs torch.distributed: launch with torchrun")
        self.ranks = list(range(dist.get_world_size()) if ranks is None else ranks)
        self.process_group = group
        self.world, self.rank = len(self.ranks), self.ranks.index(dist.get_rank())
        if self.world % group_size:
            raise ValueError(f"group size {group_size} must divide the number of processes ({self.world})")
        self.group_size, self.num_groups = group_size, self.world // group_size
        self.group = self.rank // group_size
        self.split_rows = split_rows

    def __repr__(self) -> str:
        return f"WindowParallel(groups={self.num_groups}, group_size={self.group_size}, split_rows={self.split_rows})"

    def predict_windows(self, pipe, latents_all: torch.Tensor, t: torch.Tensor, windows: list, cond, progress: Callable[[], object] | None = None) -> list[torch.Tensor]:
        """Guided velocities [1, 16, f, H/8, W/8] of every window, on every rank."""
        items = schedule(len(windows), self.num_groups, self.split_rows)
        results: dict[int, torch.Tensor] = {}
        # 1. This group's DiT calls (sequence-parallel collectives inside stay within the group).
        for i, item in enumerate(items):
            if item.group != self.group:
                continue
            window = windows[item.window]
            latents = latents_all[:, :, window.latent_slice]
            if item.rows is None:
                results[i] = pipe.denoise_window(latents, t, window, cond).contiguous()
            else:
                results[i] = pipe.window_noise(latents, t, window, cond, rows=item.rows).contiguous()
        # 2. Every result to every rank, from its group's first rank. Receivers learn the dtype once.
        if self.num_groups > 1:
            dtypes: list[str | None] = [None] * self.world
            dist.all_gather_object(dtypes, str(next(iter(results.values())).dtype).removeprefix("torch.") if results else None, group=self.process_group)
            dtype = getattr(torch, next(d for d in dtypes if d is not None))
            pending = []
            for i, item in enumerate(items):
                if i not in results:
                    rows = 1 if item.rows is None else len(item.rows)
                    shape = (rows, latents_all.shape[1], windows[item.window].num_frames, *latents_all.shape[3:])
                    results[i] = torch.empty(shape, dtype=dtype, device=latents_all.device)
                src = self.ranks[item.group * self.group_size]  # a global rank, as torch.distributed wants
                pending.append(dist.broadcast(results[i], src=src, group=self.process_group, async_op=True))
            for work in pending:
                work.wait()
        # 3. Whole windows as they are; row items reassembled in row order and guided.
        guided: dict[int, torch.Tensor] = {}
        rows_of: dict[int, dict[int, torch.Tensor]] = {}
        for i, item in enumerate(items):
            if item.rows is None:
                guided[item.window] = results[i]
            else:
                for j, r in enumerate(item.rows):
                    rows_of.setdefault(item.window, {})[r] = results[i][j : j + 1]
        for w, rows in rows_of.items():
            noise = torch.cat([rows[r] for r in range(CFG_ROWS)])
            guided[w] = combine_guidance(noise, audio_scale=cond.audio_guide_scale, text_scale=cond.text_guide_scale)
        out = []
        for w in range(len(windows)):
            out.append(guided[w])
            if progress is not None:
                progress()
        return out
