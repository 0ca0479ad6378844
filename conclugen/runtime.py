"""Ray lifetime: entry points (the CLI, jobs, the demo) start or join a cluster with
:func:`ensure_ray`; library functions only check for one with :func:`require_ray`."""

from __future__ import annotations

import os

from conclugen.config import Config
from conclugen.errors import ConCluGenError


class RayNotStartedError(ConCluGenError, RuntimeError):
    """A library function that needs Ray was called before Ray was started."""


def ensure_ray(cfg: Config, num_cpus: int | None = None) -> None:
    """Join ``cfg.ray_address`` / RAY_ADDRESS, else start a local cluster.

    The local cluster declares more logical CPUs than cores (at least 8): Ray Data inside Ray
    Train otherwise waits forever for a CPU slot on a 2-core machine. The object store is capped
    at 2 GB so a laptop keeps its memory.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus or max(8, os.cpu_count() or 1), include_dashboard=False,
                 object_store_memory=2 * 1024**3)


def require_ray(what: str) -> None:
    """Library entry points run on a Ray cluster that their caller started (the CLI, a job, the
    demo, a test fixture): say so clearly instead of silently starting one."""
    import ray

    if not ray.is_initialized():
        raise RayNotStartedError(
            f"{what} needs Ray: call conclugen.runtime.ensure_ray(cfg) first (the conclugen CLI does)")
