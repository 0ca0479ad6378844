"""Extraction progress: the rate / ETA arithmetic, the bar and the periodic line (a fake counter,
driven on its own clock), and the real counter actor on the session cluster."""

from __future__ import annotations

import io
from typing import Any

import pytest

from conclugen.features.progress import (
    ProgressHandle,
    ProgressReporter,
    format_duration,
    progress_line,
    quiet_ray_data,
    recent_rate,
    start_progress,
)


class FakeCounter:
    """What the actor's snapshot returns, with a clock the test sets."""

    def __init__(self) -> None:
        self.t, self.events = 0.0, []

    def add(self, t: float, n: int) -> None:
        done = (self.events[-1][1] if self.events else 0) + n
        self.events.append((t, done))

    def fetch(self, since: int) -> dict[str, Any]:
        return {"t": self.t, "done": self.events[-1][1] if self.events else 0, "events": self.events[since:]}


def test_recent_rate_young_run_counts_from_the_first_completion() -> None:
    # start-up of 14 s, then 8 clips every 2 s: rate 4/s, not diluted by the start-up
    ev = [(14.0, 8), (16.0, 16), (18.0, 24)]
    assert recent_rate(ev, 18.0) == pytest.approx((24 - 8) / (18.0 - 14.0))
    assert recent_rate(ev[:1], 20.0) is None
    assert recent_rate([], 20.0) is None


def test_recent_rate_uses_the_last_window() -> None:
    # slow at first (1 clip/s up to t=100), then 5 clips/s; window 60 s at t=200
    ev = [(float(t), t) for t in range(1, 101)] + [(100.0 + k, 100 + 5 * k) for k in range(1, 101)]
    ref_t, ref_n = 140.0, 100 + 5 * 40  # last completion at or before 200 - 60
    assert recent_rate(ev, 200.0, window_s=60.0) == pytest.approx((600 - ref_n) / (200.0 - ref_t))
    # a stall lowers the rate: no completions for 30 s after the last one
    assert recent_rate(ev, 230.0, window_s=60.0) == pytest.approx((600 - (100 + 5 * 70)) / (230.0 - 170.0))


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 45.4, 60, 1225, 3600, 11250)] == \
        ["0s", "45s", "1m00s", "20m25s", "1h00m", "3h07m"]


def test_progress_line() -> None:
    assert progress_line(1200, 5000, 3.1) == "extract [####                ] 1200/5000 clips  3.1 clips/s  ETA 20m26s"  # 3800 / 3.1 s
    assert progress_line(0, 10, None) == "extract [                    ] 0/10 clips  -- clips/s  ETA --"
    assert progress_line(10, 10, 2.0).endswith("10/10 clips  2.0 clips/s  ETA 0s")
    assert "[" + "#" * 20 + "]" in progress_line(10, 10, 2.0)


def test_line_every_interval_when_not_a_tty() -> None:
    c, said, stream = FakeCounter(), [], io.StringIO()
    r = ProgressReporter(fetch=c.fetch, total=40, say=said.append, interval_s=30.0, tty=False, stream=stream)
    for t in range(1, 91):  # polled every second of the counter's clock; 1 clip/s from t=10
        c.t = float(t)
        if t >= 10 and t < 50:
            c.add(c.t, 1)
        r.poll()
    assert len(said) == 3  # at t = 30, 60, 90
    assert said[0].startswith("extract [") and " 21/40 clips  1.0 clips/s  ETA 19s" in said[0]
    assert " 40/40 clips" in said[1]
    assert stream.getvalue() == ""  # nothing drawn
    r.finish()
    assert said[-1] == "extract done: 40/40 clips in 1m30s (0.4 clips/s)"
    assert r.events == c.events


def test_bar_redrawn_on_a_tty() -> None:
    c, said, stream = FakeCounter(), [], io.StringIO()
    r = ProgressReporter(fetch=c.fetch, total=4, say=said.append, tty=True, stream=stream)
    for t in (1.0, 2.0, 3.0):
        c.t = t
        c.add(t, 2 if t < 3 else 0)
        r.poll()
    r.finish()
    out = stream.getvalue()
    assert said == []
    assert out.count("\r") == 4 and out.endswith("extract done: 4/4 clips in 3s (1.3 clips/s)\x1b[K\n")
    assert "\rextract [##########          ] 2/4 clips  -- clips/s  ETA --\x1b[K" in out


def test_handle_stop_is_idempotent_and_returns_the_completions() -> None:
    c, said = FakeCounter(), []
    c.add(1.5, 3)
    c.add(2.5, 2)
    c.t = 3.0
    r = ProgressReporter(fetch=c.fetch, total=5, say=said.append, tty=False)
    h = ProgressHandle(None, r, poll_s=3600.0)  # the thread never polls: stop() takes the snapshot
    assert h.stop() == [(1.5, 3), (2.5, 5)]
    assert h.stop() == [(1.5, 3), (2.5, 5)]
    assert said == ["extract done: 5/5 clips in 3s (1.7 clips/s)"]


def test_quiet_ray_data_turns_off_both_progress_outputs() -> None:
    import copy

    from ray.data import DataContext

    ctx = copy.copy(DataContext.get_current())  # the real class: a renamed knob fails here
    assert ctx.enable_progress_bars or ctx.enable_operator_progress_bars  # defaults show progress
    quiet_ray_data(ctx)
    assert not ctx.enable_progress_bars and not ctx.enable_operator_progress_bars


def test_real_counter_actor(ray_cluster: None) -> None:
    import ray

    said: list[str] = []
    h = start_progress(total=8, say=said.append, interval_s=0.0, tty=False, poll_s=0.05)

    @ray.remote(num_cpus=0)
    def finish_some(counter: Any, n: int) -> None:  # a Ray worker reporting, as a pipeline stage would
        ray.get(counter.add.remote(n))

    @ray.remote(num_cpus=0)
    def via_handle(handle: Any, n: int) -> None:  # the whole handle passed to a worker: its counter works
        ray.get(handle.counter.add.remote(n))

    ray.get(h.counter.add.remote(3))
    ray.get(finish_some.remote(h.counter, 4))
    ray.get(via_handle.remote(h, 1))
    done = h.stop()
    assert [n for _, n in done] == [3, 7, 8]
    assert 0.0 <= done[0][0] <= done[1][0] <= done[2][0]
    assert said[-1].startswith("extract done: 8/8 clips in ")
    assert h.stop() == done and said.count(said[-1]) == 1
