"""Ray lifetime: the local cluster the project starts listens on loopback only; entry points own
start and stop; library code refuses to run without Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conclugen import runtime
from conclugen.config import load_config
from tests.helpers.sockets import listening, not_loopback, ray_processes

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_local_cluster_listens_on_loopback_only(ray_cluster: None) -> None:
    """The session cluster is started by runtime.start_local_ray: every socket of every process
    of it (GCS, raylet, object manager, workers, agents, metrics) is bound to loopback."""
    import ray

    @ray.remote
    def pid() -> int:
        return os.getpid()

    worker_pids = set(ray.get([pid.remote() for _ in range(2)]))
    assert ray.util.get_node_ip_address() == runtime.LOOPBACK
    assert ray.get_runtime_context().gcs_address.startswith(f"{runtime.LOOPBACK}:")
    procs = ray_processes(psutil.Process())
    names = {p.name() for p in procs if p.is_running()}
    assert {"gcs_server", "raylet"} <= names and worker_pids <= {p.pid for p in procs}
    addrs = listening(procs)
    assert {n for n, _, _ in addrs} >= {"gcs_server", "raylet"}  # the check saw their sockets
    assert not not_loopback(addrs), not_loopback(addrs)
    # The single-node switch was only held while the cluster started.
    from ray._private import ray_constants

    assert ray_constants.ENABLE_RAY_CLUSTER is True
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ


@pytest.mark.ray
def test_ensure_ray_reuses_a_running_cluster(ray_cluster: None) -> None:
    import ray

    cfg = load_config()
    assert runtime.ensure_ray(cfg) is False  # already connected: the caller must not stop it
    with runtime.ray_session(cfg):
        pass
    assert ray.is_initialized()
    runtime.require_ray("this test")  # does not raise


@pytest.mark.ray
def test_the_local_cluster_is_this_machine_and_the_core_count_is_this_processs(ray_cluster: None) -> None:
    # the test session's cluster is start_local_ray's: one node, the driver's own
    assert runtime.cluster_is_this_machine() is True
    if hasattr(os, "sched_getaffinity"):
        assert runtime.machine_cores() == len(os.sched_getaffinity(0))
    assert 1 <= runtime.machine_cores() <= (os.cpu_count() or 1)


@pytest.mark.slow
def test_ensure_ray_in_a_fresh_process_binds_loopback_and_library_code_needs_it(tmp_path: Path) -> None:
    """The entry-point path in a process where Ray is not imported yet (the CLI's case):
    require_ray refuses before, ensure_ray starts a loopback-only cluster, shutdown stops it."""
    code = f"""
import json, os, sys
sys.path.insert(0, {str(REPO)!r})
import psutil
from conclugen import runtime
from conclugen.config import load_config
from tests.helpers.sockets import listening, ray_processes
try:
    runtime.require_ray("extraction")
except runtime.RayNotStartedError as e:
    print("REFUSED", e)
assert runtime.ensure_ray(load_config(), num_cpus=2) is True
import ray
ray.get(ray.remote(lambda: 1).remote())
print("ADDRS", json.dumps(sorted(listening(ray_processes(psutil.Process())))))
ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "REFUSED extraction needs Ray: call conclugen.runtime.ensure_ray(cfg) first" in res.stdout
    addrs = {tuple(a) for a in json.loads(res.stdout.split("ADDRS ", 1)[1].splitlines()[0])}
    assert {n for n, _, _ in addrs} >= {"gcs_server", "raylet"}
    assert not not_loopback(addrs), not_loopback(addrs)
