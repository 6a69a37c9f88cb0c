"""Sequence parallelism of the DiT: xDiT's USP (Ulysses all-to-all x ring attention) over a group of ranks.

The model keeps two visible seams (``WanAvatarTransformer3DModel.forward``): after the patch
embedding and the audio adapter, which see the whole sequence on every rank, ``shard`` keeps this
rank's chunk of the tokens; after the last block ``gather`` puts the sequence back together for the
head. In between, every block runs on the chunk:

* self-attention uses the ``"usp"`` backend registered here: ``xFuserLongContextAttention`` from
  xfuser on GPUs (flash-attn, or PyTorch's flash kernel when flash-attn is absent), yunchang's
  ``LongContextAttention`` with PyTorch's math kernel on the CPU (Ulysses only: yunchang's CPU ring
  kernel returns no log-sum-exp, so its result is wrong);
* RoPE is sliced at the chunk's global offset (padding tokens stay unrotated, as on one GPU);
* the audio cross-attention groups the chunk's tokens by the frame each one belongs to
  (``frame_segments``), so every token hears its own frame's audio, as on one GPU. The original
  regrouped the chunk as if it were the whole sequence (PIPELINE.md quirk 10);
* text/image cross-attention and the FFN are per token: nothing to exchange.

Token chunk ``r`` of the (padded) sequence belongs to rank ``r`` of the sequence-parallel group; the
attention is not causal, so the order in which the ranks hold the keys does not matter.

One difference from one GPU remains where it cannot be avoided: when ``seq_len`` is not a multiple
of the group size, zero tokens are appended (the original did the same) and, because neither
xfuser nor yunchang takes a key mask, they are attended. For 480x832 and 512x512 windows seq_len is a
multiple of 2, 4 and 8, so this never happens there; a warning says when it does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from diffusers.utils import logging

from wan.models.attention import register_backend

logger = logging.get_logger(__name__)

XFUSER_INSTALL = "pip install xfuser==0.7.0 (and flash-attn for the fastest kernels; see requirements.txt)"

FrameSegments = tuple[tuple[int, int, int], ...]


def frame_segments(start: int, stop: int, tokens_per_frame: int, frames: int) -> FrameSegments:
    """Runs of the global tokens ``[start, stop)`` that belong to one latent frame.

    Returns ``((lo, hi, frame), ...)`` with ``lo``/``hi`` relative to ``start``. Token ``i`` belongs to
    frame ``i // tokens_per_frame``; tokens past ``frames * tokens_per_frame`` (sequence-parallel
    padding, which one GPU does not have) are counted in the last frame.
    """
    if stop <= start:
        return ()
    out = []
    first, last = min(start // tokens_per_frame, frames - 1), min((stop - 1) // tokens_per_frame, frames - 1)
    for f in range(first, last + 1):
        lo = max(start, f * tokens_per_frame)
        hi = stop if f == frames - 1 else min(stop, (f + 1) * tokens_per_frame)
        out.append((lo - start, hi - start, f))
    return tuple(out)


@dataclass
class SequenceParallel:
    """This rank's place in one sequence-parallel group and the two seams of the DiT.

    Attributes:
        group: the process group of the ``ulysses * ring`` ranks that share one DiT call.
        rank, world: this rank's index in ``group`` and the group's size.
        ulysses, ring: the two factors of ``world`` (heads are split ``ulysses`` ways).
    """

    group: dist.ProcessGroup | None
    rank: int
    world: int
    ulysses: int
    ring: int
    _warned: set[int] = field(default_factory=set, repr=False)

    def padded_len(self, seq_len: int) -> int:
        """``seq_len`` rounded up to a multiple of the group size."""
        return math.ceil(seq_len / self.world) * self.world

    def shard(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], frames: int
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], FrameSegments]:
        """Keep this rank's chunk of the tokens.

        x: [B, seq_len, D] (seq_len a multiple of ``frames``); rope: cos/sin [S, 1, d/2] of the S real
        tokens. Returns (x chunk [B, L, D] with L = padded_len(seq_len) / world, its cos/sin
        [<=L, 1, d/2], its frame segments).
        """
        seq_len = x.shape[1]
        total = self.padded_len(seq_len)
        if total != seq_len:
            if seq_len not in self._warned:
                self._warned.add(seq_len)
                logger.warning(
                    f"seq_len {seq_len} is not a multiple of the sequence-parallel degree {self.world}: {total - seq_len} zero "
                    "tokens are added and attended (as in the original), so results differ slightly from one GPU"
                )
            x = torch.cat([x, x.new_zeros(x.shape[0], total - seq_len, x.shape[2])], dim=1)
        chunk = total // self.world
        lo, hi = self.rank * chunk, (self.rank + 1) * chunk
        cos, sin = rope
        real = cos.shape[0]
        rope_local = (cos[min(lo, real) : min(hi, real)], sin[min(lo, real) : min(hi, real)])
        return x[:, lo:hi].contiguous(), rope_local, frame_segments(lo, hi, seq_len // frames, frames)

    def gather(self, x: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Chunks [B, L, D] of every rank -> the sequence [B, seq_len, D] (padding dropped), on every rank."""
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)[:, :seq_len]


# ---------------------------------------------------------------------------------------------
# Setting up the groups and the "usp" attention backend
# ---------------------------------------------------------------------------------------------


def _npu_only(*_args, **_kwargs):
    raise RuntimeError("yunchang.ring.utils.update_npu_out is Ascend NPU ring attention, which this yunchang release does not ship")


def patch_yunchang_for_xfuser() -> bool:
    """Let xfuser 0.6/0.7 build its ring attention with a released yunchang (0.6.4 and older).

    xfuser's ``long_ctx_attention.ring`` package imports ``update_npu_out`` from
    ``yunchang.ring.utils`` for its Ascend NPU kernel; no yunchang on PyPI defines it, so
    ``xFuserLongContextAttention()`` failed with an ImportError on the first real 2-GPU run
    (H200 x2, 2026-11-29). The name is only used on NPUs: where it is missing, a stand-in that
    raises if ever called is put in its place. Returns whether the stand-in was installed."""
    import yunchang.ring.utils as ring_utils

    if hasattr(ring_utils, "update_npu_out"):
        return False
    ring_utils.update_npu_out = _npu_only
    return True


def _import_xfuser():
    try:
        patch_yunchang_for_xfuser()
        import xfuser.core.distributed as xdist
        from xfuser.core.long_ctx_attention import xFuserLongContextAttention
    except Exception as exc:  # ImportError, or xfuser's own errors when CUDA is missing
        raise ImportError(f"sequence parallelism on GPUs runs through xfuser, which did not import ({exc}): {XFUSER_INSTALL}") from exc
    return xdist, xFuserLongContextAttention


def _xfuser_attention(ulysses: int, ring: int, local_rank: int) -> tuple[Callable[..., torch.Tensor], dist.ProcessGroup]:
    """xfuser's groups (consecutive ranks form one sequence-parallel group) and its USP attention."""
    xdist, xFuserLongContextAttention = _import_xfuser()
    world, sp = dist.get_world_size(), ulysses * ring
    xdist.init_distributed_environment(rank=dist.get_rank(), world_size=world, local_rank=local_rank, backend="nccl")
    xdist.initialize_model_parallel(data_parallel_degree=world // sp, sequence_parallel_degree=sp, ring_degree=ring, ulysses_degree=ulysses)
    try:
        import flash_attn  # noqa: F401

        layer = xFuserLongContextAttention()  # flash-attn 2 inside
    except ImportError:
        from yunchang.kernels import AttnType

        layer = xFuserLongContextAttention(attn_type=AttnType.TORCH_FLASH)  # PyTorch's flash kernel, returns the LSE ring needs
        logger.info("flash-attn is not installed: USP attention uses PyTorch's flash SDPA kernel")

    @torch.compiler.disable  # collectives: a graph break under --compile (compile_blocks)
    def usp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **_lens) -> torch.Tensor:
        # The kernels take half precision; q/k arrive in the compute dtype (bf16 at inference).
        half = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        out = layer(None, query=q.to(half), key=k.to(half), value=v.to(half), softmax_scale=q.shape[-1] ** -0.5)
        return out.to(q.dtype)

    return usp, xdist.get_sp_group().device_group


def _yunchang_attention(ulysses: int, ring: int) -> tuple[Callable[..., torch.Tensor], dist.ProcessGroup]:
    """yunchang's Ulysses attention with PyTorch's math kernel (the CPU path; gloo)."""
    if ring > 1:
        raise RuntimeError(
            f"--ring_degree {ring} needs CUDA GPUs: yunchang's CPU ring attention is wrong (its math kernel returns no "
            "log-sum-exp). On the CPU use --ulysses_degree only."
        )
    try:
        from yunchang import LongContextAttention, set_seq_parallel_pg
        from yunchang.kernels import AttnType
    except ImportError as exc:
        raise ImportError("sequence parallelism on the CPU uses yunchang: pip install yunchang==0.6.4") from exc
    rank, world, sp = dist.get_rank(), dist.get_world_size(), ulysses * ring
    set_seq_parallel_pg(ulysses, ring, rank, world)
    layer = LongContextAttention(attn_type=AttnType.TORCH_MATH)
    mine = None
    for g in range(world // sp):  # every rank creates every group, in the same order
        group = dist.new_group(list(range(g * sp, (g + 1) * sp)))
        if g == rank // sp:
            mine = group

    @torch.compiler.disable  # collectives: a graph break under --compile (compile_blocks)
    def usp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **_lens) -> torch.Tensor:
        return layer(q, k, v, softmax_scale=q.shape[-1] ** -0.5).to(q.dtype)

    return usp, mine


def setup_sequence_parallel(ulysses: int, ring: int, device: torch.device, local_rank: int = 0) -> SequenceParallel:
    """Create the sequence-parallel groups of ``ulysses * ring`` consecutive ranks and install the
    ``"usp"`` attention backend. ``torch.distributed`` must be initialised; its world size must be
    a multiple of ``ulysses * ring`` (the other factor spreads windows, see ``window_parallel``)."""
    if not dist.is_initialized():
        raise RuntimeError("sequence parallelism needs torch.distributed: launch with torchrun (wan.distributed.init_process_group)")
    if ulysses < 1 or ring < 1:
        raise ValueError(f"ulysses ({ulysses}) and ring ({ring}) degrees must be >= 1")
    world, sp = dist.get_world_size(), ulysses * ring
    if world % sp:
        raise ValueError(f"ulysses x ring = {sp} must divide the number of processes ({world})")
    if device.type == "cuda":
        usp, group = _xfuser_attention(ulysses, ring, local_rank)
    else:
        usp, group = _yunchang_attention(ulysses, ring)
    register_backend("usp", usp)
    return SequenceParallel(group=group, rank=dist.get_rank() % sp, world=sp, ulysses=ulysses, ring=ring)


def enable_sequence_parallel(model: torch.nn.Module, sp: SequenceParallel) -> None:
    """Make ``model`` (a ``WanAvatarTransformer3DModel``) run its blocks on this rank's chunk: its
    self-attention layers use the ``"usp"`` backend, the forward shards and gathers with ``sp``."""
    heads = model.config.num_heads
    if heads % sp.ulysses:
        raise ValueError(f"--ulysses_degree {sp.ulysses} must divide the DiT's {heads} attention heads")
    model.sequence_parallel = sp
    for block in model.blocks:
        block.self_attn.attn_backend = "usp"


def disable_sequence_parallel(model: torch.nn.Module) -> None:
    model.sequence_parallel = None
    for block in model.blocks:
        block.self_attn.attn_backend = None
