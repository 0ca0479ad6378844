"""A real local Ray head (``ray start --head``) for Ray Jobs tests, and a smoke test on it.

Reusable: ``from tests.helpers.ray_head import RayHead, start_ray_head``. The head is private to
the test: its own HOME, RAY_TMPDIR and ``--temp-dir``, free ports, everything bound to
127.0.0.1, and token authentication on with a freshly generated token (Ray 2.60 enables token
auth whenever ``~/.ray/auth_token`` exists and ``RAY_AUTH_MODE`` is unset, so the mode is set
explicitly rather than left to whatever a previous run wrote).

Example (a Ray Jobs end-to-end test; the head copies ``os.environ`` when it starts, so start it
inside the ``s3_server`` fixture and every job sees the S3 endpoint and credentials)::

    from tests.helpers.ray_head import start_ray_head

    def test_pretrain_job(s3_server, mlflow_server):
        with start_ray_head(extra_env={"MLFLOW_TRACKING_URI": mlflow_server.uri}) as head:
            subprocess.run(["bash", "jobs/submit.sh", "--submission-id", "pre1", "--no-wait", "--",
                            "python", "jobs/pretrain.py", features_uri, "--out", run_uri],
                           cwd=REPO, env=head.job_env, check=True)
            assert head.wait("pre1", timeout=600) == "SUCCEEDED", head.logs("pre1")

Teardown stops only this head: ``ray stop`` kills every Ray process on the machine (it matches
by process name), which on a shared machine would also kill other sessions' clusters, including
the session ``ray_cluster`` fixture. So the head runs as ``ray start --head --block`` and is
stopped by signalling that process, then any of its descendants still alive are killed by PID.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(n: int, lo: int = 20000, hi: int = 32000) -> int:
    """First port of ``n`` consecutive free ports (Ray's worker port range). Below Linux's
    ephemeral range (32768+), so that no port the kernel hands out later (``free_port``, any
    client socket) can fall inside the block."""
    for _ in range(200):
        base = random.randrange(lo, hi - n)
        if all(_port_free(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no block of {n} free ports found")


@dataclass
class RayHead:
    """A running ``ray start --head`` process and what is needed to talk to it."""

    root: Path
    gcs_port: int
    dashboard_port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    startup_s: float = 0.0
    pids: set[int] = field(default_factory=set)

    @property
    def address(self) -> str:
        """The Jobs API address, as ``ray job submit --address`` wants it."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def job_env(self) -> dict[str, str]:
        """Environment for CLI tools that read RAY_ADDRESS (``jobs/submit.sh``, ``ray job …``)."""
        return dict(self.env, RAY_ADDRESS=self.address)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def ray(self, args: Sequence[str], timeout: float = 120, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the ``ray`` CLI with this head's environment (token included)."""
        res = subprocess.run([RAY, *args], env=env or self.env, capture_output=True, text=True,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def submit(self, entrypoint: Sequence[str], working_dir: str | Path,
               runtime_env: dict | None = None, submission_id: str | None = None,
               timeout: float = 120) -> str:
        """``ray job submit --no-wait``; returns the submission id."""
        sid = submission_id or f"test-{secrets.token_hex(4)}"
        args = ["job", "submit", "--address", self.address, "--submission-id", sid,
                "--working-dir", str(working_dir), "--no-wait"]
        if runtime_env:
            args += ["--runtime-env-json", json.dumps(runtime_env)]
        self.ray([*args, "--", *entrypoint], timeout=timeout)
        return sid

    def api(self, path: str, timeout: float = 10) -> dict:
        """GET a Jobs REST endpoint with this head's token."""
        req = urllib.request.Request(f"{self.address}{path}", headers=auth_headers(self.env))
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read().decode())

    def status(self, sid: str) -> str:
        return str(self.api(f"/api/jobs/{sid}")["status"])

    def wait(self, sid: str, timeout: float = 300, poll: float = 0.5) -> str:
        """Poll until the job is SUCCEEDED / FAILED / STOPPED; returns that status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status(sid)
            if st in TERMINAL:
                return st
            time.sleep(poll)
        raise TimeoutError(f"job {sid} not finished after {timeout}s; logs:\n{self.logs(sid)}")

    def logs(self, sid: str) -> str:
        return str(self.api(f"/api/jobs/{sid}/logs").get("logs", ""))

    def stop(self, grace_s: float = 20) -> None:
        """Stop this head only: SIGTERM to ``ray start --block``, then its leftovers by PID."""
        try:
            root = psutil.Process(self.proc.pid)
            self.pids |= {p.pid for p in root.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        left = []
        for pid in self.pids:
            try:
                left.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        for p in left:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(left, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)


def _private_env(root: Path, auth: str, extra_env: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_TMPDIR"))}
    home, tmp = root / "home", root / "tmp"
    home.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    # Only ~/.ray must be private: keep model caches (Hugging Face, torch) where they are.
    real_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    env.setdefault("XDG_CACHE_HOME", str(real_cache))
    env.setdefault("HF_HOME", str(real_cache / "huggingface"))
    env.update(
        HOME=str(home),
        RAY_TMPDIR=str(tmp),
        TMPDIR=str(tmp),
        RAY_AUTH_MODE=auth,
        RAY_USAGE_STATS_ENABLED="0",
        # Ray rewrites --node-ip-address=127.0.0.1 to the routable address (and then listens on
        # every interface) unless in its single-node mode, as conclugen.runtime.start_local_ray.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        # The job entrypoint runs `python` through a shell on the head: make it this venv's.
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    if auth == "token":
        token_path = home / ".ray" / "auth_token"
        token_path.parent.mkdir(parents=True, exist_ok=True)
        token_path.write_text(secrets.token_hex(32))
        token_path.chmod(0o600)
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    env.update(extra_env or {})
    return env


@contextmanager
def start_ray_head(num_cpus: int = 2, object_store_bytes: int = 300_000_000, auth: str = "token",
                   extra_env: dict[str, str] | None = None, startup_timeout: float = 120) -> Iterator[RayHead]:
    """Start a private ``ray start --head`` on 127.0.0.1; stop it (and only it) on exit.

    ``auth``: "token" (a fresh token in the private HOME, passed to every CLI call) or
    "disabled". ``extra_env`` reaches the head and hence every job (e.g. S3 endpoint and
    credentials of a local SeaweedFS, MLFLOW_TRACKING_URI of a local ``mlflow server``).
    """
    # Short path: Ray's unix sockets live under --temp-dir and must stay < 108 chars.
    root = Path(tempfile.mkdtemp(prefix="rayh-", dir="/tmp"))
    env = _private_env(root, auth, extra_env)
    wbase = free_port_block(40)
    ports: list[int] = []
    while len(ports) < 9:  # distinct: the kernel may hand out a port again once it is released
        p = free_port()
        if p not in ports and not wbase <= p < wbase + 40:
            ports.append(p)
    gcs, dash, agent_http, agent_grpc, client, runtime_env, metrics, node_manager, object_manager = ports
    cmd = [
        RAY, "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--ray-client-server-port={client}", f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}", f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        f"--min-worker-port={wbase}", f"--max-worker-port={wbase + 39}",
        f"--num-cpus={num_cpus}", f"--object-store-memory={object_store_bytes}",
        f"--temp-dir={root / 'tmp'}", "--disable-usage-stats",
    ]
    log_path = root / "ray-start.log"
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                start_new_session=True)
    head = RayHead(root=root, gcs_port=gcs, dashboard_port=dash, env=env, proc=proc, log_path=log_path)
    try:
        _wait_ready(head, startup_timeout)
        head.startup_s = time.monotonic() - t0
        yield head
    finally:
        head.stop()
        shutil.rmtree(root, ignore_errors=True)


def auth_headers(env: dict[str, str]) -> dict[str, str]:
    token_path = env.get("RAY_AUTH_TOKEN_PATH")
    if env.get("RAY_AUTH_MODE") == "token" and token_path:
        return {"Authorization": "Bearer " + Path(token_path).read_text().strip()}
    return {}


def _wait_ready(head: RayHead, timeout: float) -> None:
    """Until the Jobs API answers an authenticated request (the dashboard comes up last)."""
    headers = auth_headers(head.env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.proc.poll() is not None:
            raise RuntimeError(f"ray start exited ({head.proc.returncode}):\n{head.log_path.read_text()}")
        try:
            req = urllib.request.Request(f"{head.address}/api/jobs/", headers=headers)
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Ray head not ready after {timeout}s:\n{head.log_path.read_text()}")
