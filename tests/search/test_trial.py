"""The trial's own pieces (conclugen/search/trial.py) that run without Ray Tune: its process
records and the wait for those processes to exit."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("alive", [False, True])
def test_processes_alive(alive: bool) -> None:
    """(pid, start time) pairs: alive until they exit; a pid reused by another process is not ours."""
    import psutil

    from conclugen.search.trial import processes_alive

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        started = psutil.Process(proc.pid).create_time()
        if not alive:
            proc.kill()
            proc.wait()
        assert processes_alive([(proc.pid, started)], timeout_s=0.2 if alive else 30) == int(alive)
        assert processes_alive([(proc.pid, started + 100.0)], timeout_s=30) == 0  # a reused pid
    finally:
        proc.kill()
        proc.wait()
