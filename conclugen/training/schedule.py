"""The reference's learning-rate schedule, stepped once per epoch (see docs/method.md, Pretraining).

``warmup_epochs`` of linear warm-up (LinearLR: factor ``start_factor`` → 1), then cosine annealing
with warm restarts (cycle lengths ``t0 · t_mult^i``, floor ``eta_min``) whose peak learning rate is
multiplied by ``decay`` at each restart: cycle ``i`` starts at ``lr · decay^i``.
"""

from __future__ import annotations

import math

import torch

from conclugen.config import TrainConfig


def lr_at(
    epoch: int,
    base_lr: float,
    warmup_epochs: int = 5,
    start_factor: float = 0.1,
    t0: int = 20,
    t_mult: int = 2,
    eta_min: float = 1e-6,
    decay: float = 0.75,
) -> float:
    """Learning rate used during ``epoch`` (0-based)."""
    if epoch < 0:
        raise ValueError("epoch must be >= 0")
    if epoch < warmup_epochs:
        return base_lr * (start_factor + (1.0 - start_factor) * epoch / warmup_epochs)
    t = epoch - warmup_epochs
    cycle, length = 0, t0
    while t >= length:  # walk the cycles: t0, t0·m, t0·m², …
        t -= length
        cycle += 1
        length *= t_mult
    peak = base_lr * decay**cycle
    # eta_min caps at the peak so a decayed peak below the floor does not invert the cosine.
    low = min(eta_min, peak)
    return low + (peak - low) * (1.0 + math.cos(math.pi * t / length)) / 2.0


def lr_for(epoch: int, cfg: TrainConfig) -> float:
    return lr_at(
        epoch,
        cfg.lr,
        cfg.warmup_epochs,
        cfg.warmup_start_factor,
        cfg.restart_t0,
        cfg.restart_t_mult,
        cfg.eta_min,
        cfg.restart_decay,
    )


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over :func:`lr_for` (its state_dict is just the epoch counter, so it checkpoints
    and resumes exactly). Call ``.step()`` once at the end of each epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_for(e, cfg) / cfg.lr)
