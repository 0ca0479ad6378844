"""A real ``mlflow server`` for development and tests: sqlite backend, artifacts served from its
data directory, bound to 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conclugen.devtools import processes
from conclugen.devtools.processes import HOST, ServiceError


@dataclass
class MlflowServer:
    """A running ``mlflow server`` (sqlite backend, artifacts served from ``data_dir``)."""

    uri: str
    data_dir: Path
    pid: int
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    log_path: Path | None = field(default=None, repr=False)

    def stop(self) -> None:
        processes.kill_group(self.process, self.pid)
        processes.unregister(self)


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback only
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def server_env() -> dict[str, str]:
    """The environment for an MLflow server process of ours: no telemetry, no job runner."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "true")
    # The job runner (GenAI scorers) starts ~8 extra processes; tracking does not need it.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def start_mlflow(data_dir: str | Path, *, port: int | None = None, timeout: float = 60,
                 detach: bool = False) -> MlflowServer:
    """Start ``mlflow server`` on loopback with data in ``data_dir``; returns once /health is OK."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "artifacts").mkdir(exist_ok=True)

    def attempt() -> tuple[MlflowServer, Callable[[], bool]]:
        p = port if port is not None else processes.free_ports(1)[0]
        if port is not None and not processes.port_free(p):
            raise ServiceError(f"MLflow port {p} on {HOST} is in use")
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(p),
               "--workers", "1",  # 2 cores here; one worker serves tests and a local UI
               "--backend-store-uri", f"sqlite:///{data_dir / 'mlflow.db'}",
               "--artifacts-destination", str(data_dir / "artifacts")]
        log_path = data_dir / "mlflow.log"
        proc = processes.spawn(cmd, server_env(), log_path, data_dir)
        uri = f"http://{HOST}:{p}"
        server = MlflowServer(uri=uri, data_dir=data_dir, pid=proc.pid, process=proc, log_path=log_path)
        return server, lambda: http_ok(f"{uri}/health")

    return processes.launch("mlflow server", attempt, tries=1 if port is not None else 3, timeout=timeout,
                            poll=0.3, detach=detach)
