"""Shared pytest fixtures: one local Ray cluster per session, real local services.

Ray is started once (starting it costs seconds) with more logical CPUs than the 2 real cores so
that Ray Data inside Ray Train does not wait for resources, and a capped object store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster shared by the whole test session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=8,
            object_store_memory=1_000_000_000,
            include_dashboard=False,
            log_to_driver=True,
            configure_logging=False,
        )
    yield
    ray.shutdown()
