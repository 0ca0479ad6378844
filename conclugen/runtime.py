"""Ray lifetime for entry points (CLI, jobs, demo). Library code never calls ``ray.init``."""

from __future__ import annotations

import os

from conclugen.config import Config


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
