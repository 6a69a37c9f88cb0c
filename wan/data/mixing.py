"""MixedAspectLoader: seeded interleaving of the resolution buckets, sharded over processes.

The original builds, each epoch, a list with one entry per batch of every bucket's loader
(``[0] * len(rec) + [1] * len(vec)``), shuffles it and pulls the next batch of the named bucket.
Here the whole epoch plan is a pure function of ``(seed, epoch)``:

1. every bucket's clip indices are permuted and cut into *global* batches of
   ``batch_size * world_size`` (the last one wraps around to the start, so every process gets a
   full batch, as accelerate's ``even_batches`` does);
2. the list of (bucket, global batch) steps is shuffled;
3. process ``r`` takes items ``[r * batch_size, (r + 1) * batch_size)`` of each global batch.

So the plan needs no data to compute: resuming at step k of an epoch just starts the plan at k,
and 1 process with batch 2 reads exactly the items that 2 processes with batch 1 read together.
Each item also gets its own seed (window start), derived from the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence): stable across processes and Python runs."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class Step:
    bucket: int  # index into the loader's datasets
    keys: tuple[tuple[int, int], ...]  # (clip index, item seed) for the whole global batch


class _Keyed(Dataset):
    """Routes ``(bucket, index, item_seed)`` to the right bucket dataset."""

    def __init__(self, datasets: list[Dataset]):
        self.datasets = datasets

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        bucket, idx, seed = key
        item = self.datasets[bucket][(idx, seed)]
        item["bucket"] = bucket
        return item


class MixedAspectLoader:
    """Per-process batches of interleaved buckets with a resumable, process-count-independent plan."""

    def __init__(
        self,
        datasets: list[Dataset],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ):
        if not datasets or any(len(d) == 0 for d in datasets):
            raise ValueError("every bucket needs at least one clip")
        self.datasets, self.batch_size, self.seed = datasets, batch_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.global_batch = batch_size * world_size

    def __len__(self) -> int:
        """Optimizer steps (global batches) per epoch."""
        return sum(-(-len(d) // self.global_batch) for d in self.datasets)

    def plan(self, epoch: int) -> list[Step]:
        """The epoch's global batches, in training order."""
        steps: list[Step] = []
        for b, dataset in enumerate(self.datasets):
            n = len(dataset)
            order = np.random.default_rng(derive_seed(self.seed, epoch, b)).permutation(n)
            for first in range(0, n, self.global_batch):
                positions = [(first + j) % n for j in range(self.global_batch)]
                keys = tuple((int(order[p]), derive_seed(self.seed, epoch, b, first + j)) for j, p in enumerate(positions))
                steps.append(Step(b, keys))
        shuffle = np.random.default_rng(derive_seed(self.seed, epoch, 0x5EED)).permutation(len(steps))
        return [steps[i] for i in shuffle]

    def local_keys(self, step: Step) -> list[tuple[int, int, int]]:
        mine = step.keys[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return [(step.bucket, idx, seed) for idx, seed in mine]

    def iterate(self, epoch: int, start: int = 0) -> Iterator[dict]:
        """This process's batches of ``epoch`` from step ``start`` on (workers load ahead)."""
        batches = [self.local_keys(s) for s in self.plan(epoch)[start:]]
        loader = DataLoader(
            _Keyed(self.datasets),
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=False,
        )
        yield from loader


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep strings as lists."""
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
