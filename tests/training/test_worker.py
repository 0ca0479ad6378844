"""The worker's between-epoch state: resume from a checkpoint payload, early stopping."""

from __future__ import annotations

import math

from conclugen.training.worker import Progress


def test_progress_from_payload_and_early_stopping():
    assert Progress.from_payload(None) == Progress(0, math.inf, 0, False)
    p = Progress.from_payload({"epoch": 4, "best": 1.5, "bad_epochs": 1})
    assert p == Progress(start_epoch=5, best=1.5, bad_epochs=1, stopped_early=False)
    p.update(1.2, patience=2)
    assert (p.best, p.bad_epochs, p.stopped_early) == (1.2, 0, False)
    p.update(1.3, patience=2)
    assert not p.stopped_early
    p.update(1.2, patience=2)  # not below the best: a second bad epoch
    assert (p.best, p.bad_epochs, p.stopped_early) == (1.2, 2, True)
