"""``--fsdp_dit``: shard the DiT's weights over the ranks of one sequence-parallel group.

As the original (``FULL_SHARD``, one unit per DiT block, the rest in the root unit), written with
PyTorch's ``fully_shard`` (FSDP2): the model stays the same object (diffusers' pipeline keeps
working with it) and its forward gathers one block's weights at a time, freeing them after use. Each
rank then holds ``1/group_size`` of the weights plus one block's full weights at a time.

FSDP all-gathers are collectives: every rank of the group must run the same DiT calls in the same
order. That holds inside a sequence-parallel group (its ranks share every call) and never across
window-parallel groups, so the sharding group is the sequence-parallel group.

No mixed-precision policy: the weights already have the compute dtype, and input casting would
round the timesteps (fp32 on purpose) to bf16.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def shard_dit(model: torch.nn.Module, group: dist.ProcessGroup | None, device: torch.device) -> torch.nn.Module:
    """Shard ``model`` (a ``WanAvatarTransformer3DModel`` on ``device``) over ``group`` in place; returns it.

    One FSDP unit per entry of ``model.blocks``, then the root unit (embeddings, adapter, head).
    """
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    group = group if group is not None else dist.group.WORLD
    mesh = DeviceMesh.from_group(group, device_type=device.type)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


def local_parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters this rank stores (its shards under FSDP)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total
