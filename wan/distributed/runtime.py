"""Several processes (torchrun) working on one video: which rank does what, set up once at load time.

The ``W`` ranks are ``W / (ulysses * ring)`` groups of ``ulysses * ring`` consecutive ranks.

* Inside a group the ranks share every DiT call through sequence parallelism (xfuser's USP):
  ``--ulysses_degree`` / ``--ring_degree``, as the original.
* Across groups the windows of a step (and, for left-over windows, their CFG rows) are dealt out:
  ``window_parallel``. No communication inside the DiT, one broadcast per window and step.
* ``--fsdp_dit`` shards the DiT's weights inside each group (``fsdp``).

The default (``--ulysses_degree 1 --ring_degree 1`` under ``torchrun --nproc_per_node W``) is
pure window/CFG-row parallelism: ``W`` groups of one GPU. ``docs/multi_gpu.md`` explains the choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from diffusers.utils import logging

from wan.distributed.sequence_parallel import SequenceParallel, enable_sequence_parallel, setup_sequence_parallel
from wan.distributed.window_parallel import WindowParallel

logger = logging.get_logger(__name__)


def launched_world_size() -> int:
    """Processes started by torchrun (``WORLD_SIZE``), 1 without it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group(device: str | torch.device | None = None) -> torch.device:
    """Join torchrun's process group (NCCL on GPUs, gloo on the CPU); returns this rank's device.

    ``device`` None: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda was asked for but CUDA is not available")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "RANK" not in os.environ:
            raise RuntimeError("several processes need torchrun: torchrun --nproc_per_node=N inference.py ...")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return device


@dataclass
class ParallelRuntime:
    """What this rank does. ``sp``: its sequence-parallel group (None when groups are single ranks);
    ``windows``: the window/CFG-row executor (None with a single group per video); ``job_size``: the
    consecutive ranks that make one video together (``world`` unless ``--batch_file`` shares videos out)."""

    device: torch.device
    rank: int
    world: int
    ulysses: int
    ring: int
    sp: SequenceParallel | None
    windows: WindowParallel | None
    job_size: int = 0  # 0: world

    def __post_init__(self):
        self.job_size = self.job_size or self.world

    @property
    def group_size(self) -> int:
        return self.ulysses * self.ring

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def job_group(self) -> int:
        """Index of this rank's video-making group (0 when all ranks make one video)."""
        return self.rank // self.job_size

    @property
    def writes(self) -> bool:
        """Whether this rank writes its group's videos (the group's first rank)."""
        return self.rank % self.job_size == 0

    def describe(self) -> str:
        groups = self.job_size // self.group_size
        how = [f"{self.world // self.job_size} groups making their own videos"] if self.job_size < self.world else []
        if groups > 1:
            how.append(f"{groups} window/CFG-row groups")
        if self.group_size > 1:
            how.append(f"sequence parallel x{self.group_size} (ulysses {self.ulysses} x ring {self.ring})")
        return f"{self.world} processes: " + " of ".join(how)

    def attach(self, pipe, fsdp_dit: bool = False) -> None:
        """Wire a loaded pipeline (models already placed on ``device``) into this layout."""
        if self.sp is not None:
            enable_sequence_parallel(pipe.transformer, self.sp)
        if fsdp_dit:
            if self.sp is None:
                raise ValueError(
                    "--fsdp_dit shards the DiT inside a sequence-parallel group (its ranks run the same calls); "
                    "set --ulysses_degree/--ring_degree > 1"
                )
            from wan.distributed.fsdp import shard_dit

            shard_dit(pipe.transformer, self.sp.group, self.device)
        pipe.parallel = self.windows
        if not self.writes:  # one progress bar per video, its writer's
            pipe.set_progress_bar_config(disable=True)


def setup_parallel(
    ulysses_degree: int = 1, ring_degree: int = 1, device: str | torch.device | None = None, split_rows: bool = True, ranks_per_job: int | None = None
) -> ParallelRuntime:
    """Initialise torch.distributed and the groups for ``ulysses_degree * ring_degree`` ranks per DiT call.

    ``ranks_per_job``: consecutive ranks that make one video (None: all); a multiple of the degree,
    dividing the number of processes. Raises ValueError when the numbers do not divide.
    """
    if ulysses_degree < 1 or ring_degree < 1:
        raise ValueError(f"--ulysses_degree ({ulysses_degree}) and --ring_degree ({ring_degree}) must be >= 1")
    degree = ulysses_degree * ring_degree
    world = launched_world_size()
    if world % degree:
        raise ValueError(f"--ulysses_degree x --ring_degree = {degree} must divide the number of processes ({world}); torchrun --nproc_per_node={degree}")
    job_size = ranks_per_job or world
    if job_size % degree or world % job_size:
        raise ValueError(
            f"{job_size} processes per video must be a multiple of --ulysses_degree x --ring_degree = {degree} "
            f"and divide the number of processes ({world})"
        )
    device = init_process_group(device)
    world, rank = dist.get_world_size(), dist.get_rank()
    sp = setup_sequence_parallel(ulysses_degree, ring_degree, device, int(os.environ.get("LOCAL_RANK", "0"))) if degree > 1 else None
    windows = None
    if job_size > degree:  # several groups per video: its windows are dealt out among them
        job_ranks = [list(range(g * job_size, (g + 1) * job_size)) for g in range(world // job_size)]
        groups = [dist.new_group(r) for r in job_ranks] if job_size < world else [None]  # every rank creates every group
        windows = WindowParallel(group_size=degree, split_rows=split_rows, ranks=job_ranks[rank // job_size], group=groups[rank // job_size])
    runtime = ParallelRuntime(device, rank, world, ulysses_degree, ring_degree, sp, windows, job_size)
    if runtime.is_main:
        logger.info(runtime.describe())
    return runtime
