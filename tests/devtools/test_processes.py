"""Server processes: free ports, a failed start's error names its log and hides secrets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conclugen.devtools.processes import ServiceError, free_ports, launch, spawn


def test_free_ports_distinct() -> None:
    ports = free_ports(12)
    assert len(set(ports)) == 12


def test_failed_start_shows_the_log_without_secrets(tmp_path: Path) -> None:
    secret = "s3cr3t-generated-key"
    log = tmp_path / "srv.log"

    class Srv:
        def __init__(self) -> None:
            code = f"print('starting with {secret}'); raise SystemExit(3)"
            self.process = spawn([sys.executable, "-c", code], {}, log, tmp_path)
            self.log_path = log

        def stop(self) -> None:
            self.process.wait(10)

    with pytest.raises(ServiceError) as err:
        launch("fake server", lambda: (Srv(), lambda: False), tries=2, timeout=30, poll=0.05, detach=True,
               secrets=(secret,))
    msg = str(err.value)
    assert msg.startswith("fake server exited; log ") and str(log) in msg
    assert "starting with <hidden>" in msg and secret not in msg
    assert log.read_text().count("starting with") == 2  # an exit is retried (a port race), twice here
