"""The learning-rate schedule: warm-up, then cosine restarts with a decayed peak; resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conclugen.config import load_config
from conclugen.training.schedule import lr_at, lr_for, make_scheduler
from tests.helpers.configs import TINY


def tiny_cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY, f"workdir={tmp_path / 'work'}", *extra])


def _expected_lr(e: int, base=2e-5, warm=5, start=0.1, t0=20, eta=1e-6, decay=0.75) -> float:
    """docs/method.md (Pretraining) written out independently: LinearLR warm-up, then SGDR with
    T_mult=2 in closed form (cycle i starts at t0·(2^i − 1)), peak decayed by ``decay`` per restart."""
    if e < warm:
        return base * (start + (1 - start) * e / warm)
    t = e - warm
    i = int(np.floor(np.log2(t / t0 + 1)))
    t_cur, t_i = t - t0 * (2**i - 1), t0 * 2**i
    peak = base * decay**i
    return eta + (peak - eta) * (1 + np.cos(np.pi * t_cur / t_i)) / 2


def test_lr_schedule_values():
    for e in range(0, 200):
        assert lr_at(e, 2e-5) == pytest.approx(_expected_lr(e), rel=1e-9, abs=1e-15), e
    # Landmarks: warm-up start, the peak, the floor before a restart, decayed peaks after.
    assert lr_at(0, 2e-5) == pytest.approx(2e-6)
    assert lr_at(5, 2e-5) == pytest.approx(2e-5)
    assert lr_at(24, 2e-5) < 1.2e-6
    assert lr_at(25, 2e-5) == pytest.approx(2e-5 * 0.75)
    assert lr_at(65, 2e-5) == pytest.approx(2e-5 * 0.75**2)
    assert lr_at(145, 2e-5) == pytest.approx(2e-5 * 0.75**3)


def test_scheduler_drives_optimizer_and_resumes(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.lr=2e-5", "train.warmup_epochs=5")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.train.lr)
    sched = make_scheduler(opt, cfg.train)
    seen = []
    for _ in range(30):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([_expected_lr(e) for e in range(30)], rel=1e-9)
    # A fresh optimizer + scheduler restored from state continue at the same epoch.
    opt2 = torch.optim.AdamW([p], lr=cfg.train.lr)
    sched2 = make_scheduler(opt2, cfg.train)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(_expected_lr(30))
    assert lr_for(30, cfg.train) == pytest.approx(_expected_lr(30))
