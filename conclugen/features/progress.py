"""Extraction progress: clips done / total, clips/s and an ETA, as a live bar on a terminal and
as a line every ``interval_s`` (30 s) otherwise.

Whoever finishes clips calls ``handle.counter.add.remote(n)`` (a zero-CPU actor: any Ray worker or
the driver can report, and every timestamp comes from one clock, the actor's, in seconds since
it started). A driver thread polls the counter about once a second and draws the bar (tty) or
calls ``say`` with a line (logs, CI: quieter than Ray Data's own 10 s progress log, which
:func:`quiet_ray_data` turns off). ``handle.stop()`` prints a final line and returns the
completions ``[(seconds since start, clips finished so far), ...]``, one per ``add``.

The rate shown (and the ETA = remaining clips / rate) is the *recent* rate: clips finished in
the last ``RATE_WINDOW_S`` (60 s) of the actor's clock divided by that span, measured from the
last completion at or before the window's start — or, while the run is younger than the window,
from the first completion, so worker / model start-up before the first output does not drag the
estimate down. Until two completions exist there is no rate and the ETA shows ``--``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import ray

log = logging.getLogger(__name__)

RATE_WINDOW_S = 60.0
BAR_WIDTH = 20


@ray.remote(num_cpus=0)
class ProgressCounter:
    """Clips finished so far, with the time of every ``add`` on this actor's clock."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._done = 0
        self._events: list[tuple[float, int]] = []

    def add(self, n: int) -> None:
        self._done += int(n)
        self._events.append((time.monotonic() - self._t0, self._done))

    def snapshot(self, since: int = 0) -> dict[str, Any]:
        """``{"t": now, "done": clips, "events": completions[since:]}`` (``since``: how many
        completions the caller already holds, so a poll moves only the new ones)."""
        return {"t": time.monotonic() - self._t0, "done": self._done, "events": self._events[since:]}


# ------------------------------------------------------------------------------ pure helpers


def recent_rate(events: list[tuple[float, int]], t_now: float, window_s: float = RATE_WINDOW_S) -> float | None:
    """Clips/s over the last ``window_s`` (see the module docstring); None without a rate yet."""
    if len(events) < 2:
        return None
    ref = events[0]
    for ev in events:  # the last completion at or before the window's start
        if ev[0] <= t_now - window_s:
            ref = ev
        else:
            break
    span = t_now - ref[0]
    return (events[-1][1] - ref[1]) / span if span > 0 else None


def format_duration(seconds: float) -> str:
    """``45s``, ``20m25s``, ``3h07m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def progress_line(done: int, total: int, rate: float | None) -> str:
    """``extract [#####               ] 1200/5000 clips  3.1 clips/s  ETA 20m25s``."""
    frac = min(1.0, done / total) if total > 0 else 1.0
    fill = int(frac * BAR_WIDTH)
    left = max(0, total - done)
    if rate is None:
        speed, eta = "-- clips/s", "--"
    else:
        speed = f"{rate:.1f} clips/s"
        eta = format_duration(left / rate) if rate > 0 else ("0s" if left == 0 else "--")
    return f"extract [{'#' * fill}{' ' * (BAR_WIDTH - fill)}] {done}/{total} clips  {speed}  ETA {eta}"


def final_line(done: int, total: int, t_end: float) -> str:
    """``extract done: 5000/5000 clips in 26m10s (3.2 clips/s)``: the overall rate, start-up included."""
    rate = done / t_end if t_end > 0 else 0.0
    return f"extract done: {done}/{total} clips in {format_duration(t_end)} ({rate:.1f} clips/s)"


# ------------------------------------------------------------------------------ the reporter


@dataclass
class ProgressReporter:
    """Draws progress from snapshots (``fetch(since)`` → the counter's snapshot). All timing comes
    from the snapshots' clock, so a test drives it with a fake ``fetch`` and no sleeps."""

    fetch: Callable[[int], dict[str, Any]]
    total: int
    say: Callable[[str], None]
    interval_s: float = 30.0
    tty: bool = False
    stream: TextIO | None = None
    events: list[tuple[float, int]] = field(default_factory=list)
    t_now: float = 0.0
    done: int = 0
    _last_said: float = 0.0

    def poll(self) -> str:
        """Fetch the counter once; redraw the bar (tty) or ``say`` a line when ``interval_s`` has
        passed since the last one. Returns the current line."""
        snap = self.fetch(len(self.events))
        self.events += [(float(t), int(n)) for t, n in snap["events"]]
        self.t_now, self.done = float(snap["t"]), int(snap["done"])
        line = progress_line(self.done, self.total, recent_rate(self.events, self.t_now))
        if self.tty:
            self._draw("\r" + line + "\x1b[K")
        elif self.t_now - self._last_said >= self.interval_s:
            self._last_said = self.t_now
            self.say(line)
        return line

    def finish(self) -> str:
        line = final_line(self.done, self.total, self.t_now)
        if self.tty:
            self._draw("\r" + line + "\x1b[K\n")
        else:
            self.say(line)
        return line

    def _draw(self, text: str) -> None:
        out = self.stream or sys.stderr
        out.write(text)
        out.flush()


@dataclass(frozen=True)
class CounterRef:
    """A :class:`ProgressHandle` as it arrives in a Ray worker (a handle pickles to this): the
    ``counter`` only, since the reporter thread belongs to the driver."""

    counter: Any


class ProgressHandle:
    """What :func:`start_progress` returns: ``counter`` (the actor to ``add.remote(n)`` to) and
    ``stop()``."""

    def __reduce__(self) -> tuple[type, tuple[Any]]:
        return CounterRef, (self.counter,)

    def __init__(self, counter: Any, reporter: ProgressReporter, poll_s: float = 1.0) -> None:
        self.counter = counter
        self.reporter = reporter
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._result: list[tuple[float, int]] | None = None
        self._thread = threading.Thread(target=self._run, name="extract-progress", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        with self._lock:
            self.reporter.poll()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self._poll()
            except Exception as e:  # a lost counter must not take the extraction down
                log.warning("extraction progress stopped: %s", e)
                return

    def stop(self) -> list[tuple[float, int]]:
        """Stop polling, take a last snapshot, print the final line and return the completions
        (seconds since start, clips finished); a second call returns the same list silently."""
        if self._result is not None:
            return self._result
        self._stop.set()
        self._thread.join()
        try:
            self._poll()
        except Exception as e:
            log.warning("extraction progress: last snapshot failed: %s", e)
        self.reporter.finish()
        self._result = list(self.reporter.events)
        if self.counter is not None:
            ray.kill(self.counter)
        return self._result


def start_progress(total: int, say: Callable[[str], None], interval_s: float = 30.0,
                   tty: bool | None = None, *, poll_s: float = 1.0, stream: TextIO | None = None) -> ProgressHandle:
    """Start the counter actor (Ray must be running) and the driver thread that shows progress
    over ``total`` clips: a bar on ``stream`` (stderr) when ``tty`` (None: stderr is a terminal),
    else a ``say(line)`` every ``interval_s`` seconds."""
    counter = ProgressCounter.remote()
    tty = (stream or sys.stderr).isatty() if tty is None else tty
    reporter = ProgressReporter(fetch=lambda since: ray.get(counter.snapshot.remote(since)), total=total,
                                say=say, interval_s=interval_s, tty=tty, stream=stream)
    return ProgressHandle(counter, reporter, poll_s=poll_s)


def quiet_ray_data(ctx: Any) -> None:
    """Turn off Ray Data's own progress for ``ctx`` (a ``ray.data.DataContext``): in Ray 2.60
    ``enable_progress_bars = False`` selects the no-op progress manager
    (``ray.data._internal.progress.get_progress_manager``), which silences both the tqdm / rich bars
    on a terminal and the non-tty log lines every ``RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL`` (10) s.
    The one-time "Progress bars disabled" warning that choice logs is consumed here, since
    :func:`start_progress` shows the progress instead."""
    from ray.util.debug import log_once

    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    log_once("ray_data_progress_manager_disabled")  # the key Ray Data 2.60 warns under, once
