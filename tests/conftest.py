"""Shared pytest fixtures: one local Ray cluster per session, real local services.

Ray is started once (starting it costs seconds) by the product's own start-up
(``conclugen.runtime.start_local_ray``: loopback only) with more logical CPUs than the 2 real
cores so that Ray Data inside Ray Train does not wait for resources, and a capped object store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conclugen.devtools.mlflow_server import MlflowServer
    from conclugen.devtools.s3 import S3Server

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster shared by the whole test session."""
    import ray

    from conclugen.runtime import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=8, object_store_bytes=1_000_000_000, log_to_driver=True,
                        configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server on loopback (``conclugen.devtools.s3.S3Server``) for the session.

    Its endpoint and generated credentials are also put into ``os.environ`` (AWS_ENDPOINT_URL,
    AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION) so that code under
    test finds it through the standard variables; the previous values come back afterwards.
    Use ``s3_server.bucket_uri("name")`` for a bucket (created on first use).
    """
    from conclugen.devtools.s3 import start_s3

    # Generous timeouts: the machine is shared, and start-up is slow under load.
    server = start_s3(tmp_path_factory.mktemp("seaweedfs"), timeout=120)
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` on loopback (``conclugen.devtools.mlflow_server.MlflowServer``; ``.uri``) for the
    session, sqlite backend and artifacts under a session temp dir. It does not set
    MLFLOW_TRACKING_URI: pass ``mlflow_server.uri`` explicitly (or monkeypatch the variable)."""
    from conclugen.devtools.mlflow_server import start_mlflow

    server = start_mlflow(tmp_path_factory.mktemp("mlflow"), timeout=240)
    try:
        yield server
    finally:
        server.stop()
