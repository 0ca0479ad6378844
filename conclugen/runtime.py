"""Ray lifetime: entry points (the CLI, jobs, the demo, benchmarks) start or join a cluster with
:func:`ensure_ray`; library functions only check for one with :func:`require_ray`.

A cluster the project starts itself (:func:`start_local_ray`) is a single node that accepts no
connection from another host: its node address is 127.0.0.1, so the GCS, raylet, object manager,
workers, dashboard agent, runtime-env agent and metrics servers all listen on loopback only.
Ray turns an explicit ``_node_ip_address="127.0.0.1"`` into the machine's routable address, so the
switch used is Ray's own single-node mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the default on
macOS and Windows), set only while the cluster starts. Joining a cluster
(``cfg.ray_address`` / ``RAY_ADDRESS``) is unchanged.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from conclugen.config import Config
from conclugen.errors import ConCluGenError

LOOPBACK = "127.0.0.1"
# Ray reads this at import (ray._private.ray_constants); "0" makes every node address loopback.
_SINGLE_NODE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
DEFAULT_OBJECT_STORE_BYTES = 2 * 1024**3


class RayNotStartedError(ConCluGenError, RuntimeError):
    """A library function that needs Ray was called before Ray was started."""


def start_local_ray(num_cpus: int | None = None, object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES,
                    **init_kwargs: Any) -> None:
    """Start a single-node Ray cluster in this process, every port bound to 127.0.0.1.

    It declares more logical CPUs than cores (at least 8): Ray Data inside Ray Train otherwise
    waits forever for a CPU slot on a 2-core machine. The object store is capped (2 GB by default)
    so a laptop keeps its memory. ``init_kwargs`` go to ``ray.init`` (the test fixture's logging).
    It always starts a new cluster (``address="local"``): without it ``ray.init`` joins whatever
    Ray already runs on the machine (another user's session, a test run) and then fails on
    ``num_cpus``.
    """
    import ray

    # Ray 2.60 otherwise turns token auth on for a new local cluster and writes ~/.ray/auth_token,
    # which then switches every other Ray client of this user to token mode.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # DDP on CPU (gloo) binds the address of the host name unless told an interface: on a
    # single-node cluster every rank is here, so the loopback interface is enough.
    loopback_if = next((n for _, n in socket.if_nameindex() if n in ("lo", "lo0")), None)
    if loopback_if:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback_if)
    with _single_node_mode():
        ray.init(num_cpus=num_cpus or max(8, os.cpu_count() or 1), object_store_memory=object_store_bytes,
                 **{"address": "local", "include_dashboard": False, **init_kwargs})


@contextmanager
def _single_node_mode() -> Iterator[None]:
    """Ray's single-node mode for the block: the node address (and so every port Ray opens, and
    the address a driver announces when it joins) is 127.0.0.1."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(_SINGLE_NODE_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_NODE_VAR] = "0"  # inherited by the raylet, GCS and agents started in the block
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported Ray before the variable was set
    try:
        yield
    finally:  # joining a remote cluster later from this process must find the routable address
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_SINGLE_NODE_VAR, None)
        else:
            os.environ[_SINGLE_NODE_VAR] = saved_env


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in {"127.0.0.1", "localhost", "::1"}


def ensure_ray(cfg: Config, num_cpus: int | None = None) -> bool:
    """Join ``cfg.ray_address`` / RAY_ADDRESS, else start a loopback-only local cluster
    (:func:`start_local_ray`). Returns True when this call connected (the caller then owns
    ``ray.shutdown()``), False when Ray was already initialised."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":  # "local": Ray's own word for "start a new one here"
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if _is_loopback(address):  # a cluster on this machine, started loopback-only (see above)
            with _single_node_mode():
                ray.init(address=address)
        else:
            ray.init(address=address)
    else:
        start_local_ray(num_cpus)
    return True


@contextmanager
def ray_session(cfg: Config) -> Iterator[None]:
    """:func:`ensure_ray` for a block; shuts Ray down afterwards only if this block started it."""
    import ray

    started = ensure_ray(cfg)
    try:
        yield
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def require_ray(what: str) -> None:
    """Library entry points run on a Ray cluster that their caller started (the CLI, a job, the
    demo, a test fixture): say so clearly instead of silently starting one."""
    import ray

    if not ray.is_initialized():
        raise RayNotStartedError(
            f"{what} needs Ray: call conclugen.runtime.ensure_ray(cfg) first (the conclugen CLI does)")


def machine_cores() -> int:
    """The cores this process may run on: its affinity mask where the OS has one (a container's
    or a `taskset`'s share, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cluster_is_this_machine() -> bool:
    """Ray is running here with one alive node, the driver's own (not a remote cluster joined
    from a laptop, not several nodes)."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    try:
        here = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001  (a Ray Client driver is on no node)
        return False
    return len(alive) == 1 and alive[0].get("NodeID") == here
