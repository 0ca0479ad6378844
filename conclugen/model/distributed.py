"""Collectives used by the losses and k-means; each one is the identity when not distributed.

``gather_with_grad`` is our own autograd function rather than
``torch.distributed.nn.functional.all_gather``: that helper warns that it is deprecated in
torch 2.13, returns a tuple of per-rank tensors, and requires equal sizes. Ours concatenates,
accepts unequal first dimensions (it exchanges the sizes and pads, because gloo's all_gather
needs equal shapes), and its backward is explicit and tested: the gradient of the gathered
tensor is summed over ranks (all_reduce) and each rank keeps the rows it owns, so the owner
receives the gradient that every rank's loss sends to its rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum ``x`` over ranks, in place, and return it (no autograd: done under ``no_grad``).
    The identity when not distributed."""
    if is_distributed():
        with torch.no_grad():
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def broadcast_(x: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``x`` on every rank with rank ``src``'s value (in place); identity when not
    distributed."""
    if is_distributed():
        with torch.no_grad():
            dist.broadcast(x, src=src)
    return x


def gather_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """The first-dimension size of every rank, in rank order ([n] when not distributed)."""
    if not is_distributed():
        return [n]
    _, ws = world()
    mine = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(mine) for _ in range(ws)]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def all_gather_nograd(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenation over ranks along dim 0, without gradient (sizes may differ)."""
    if not is_distributed():
        return x
    if sizes is None:
        sizes = gather_sizes(x.shape[0], x.device)
    m = max(sizes)
    xp = x.detach()
    if xp.shape[0] < m:
        pad = xp.new_zeros((m - xp.shape[0], *xp.shape[1:]))
        xp = torch.cat([xp, pad])
    parts = [torch.empty_like(xp) for _ in sizes]
    dist.all_gather(parts, xp.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], rank: int) -> Tensor:  # type: ignore[override]
        ctx.sizes = sizes
        ctx.rank = rank
        return all_gather_nograd(x, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        # Every rank's loss may depend on every row; the owner's gradient is the sum over ranks.
        # all_reduce (not reduce_scatter) because gloo supports it for any sizes.
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return g[start : start + ctx.sizes[ctx.rank]], None, None


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' ``x`` concatenated along dim 0 in rank order; gradients flow back to the rank
    that owns each row (summed over every rank's use of it). Identity when not distributed."""
    return gather_with_grad_offset(x)[0]


def gather_with_grad_offset(x: Tensor) -> tuple[Tensor, int]:
    """``gather_with_grad`` plus the index of this rank's first row in the result."""
    if not is_distributed():
        return x, 0
    rank, _ = world()
    sizes = gather_sizes(x.shape[0], x.device)
    return _GatherWithGrad.apply(x, sizes, rank), sum(sizes[:rank])
