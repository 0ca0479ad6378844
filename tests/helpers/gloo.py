"""Multi-process gloo tests without Ray: spawn ``nprocs`` ranks of ``worker(rank, port, out)`` on
loopback; each rank saves its results as ``out/rank{r}.pt``, which come back in rank order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from tests.helpers.ray_head import free_port


def spawn_ranks(worker: Callable[[int, int, str], None], out: Path, nprocs: int = 2) -> list[dict[str, Any]]:
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=nprocs, join=True)
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(nprocs)]
