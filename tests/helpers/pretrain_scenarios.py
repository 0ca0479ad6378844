"""Pretraining fault scenarios, each run in a subprocess of its test (they need their own Ray:
several simulated nodes, or an S3 server that is stopped), printing one JSON line
``RESULT {...}`` for the test to assert on.

    python -m tests.helpers.pretrain_scenarios node-loss WORKDIR
    python -m tests.helpers.pretrain_scenarios s3-blip WORKDIR
    python -m tests.helpers.pretrain_scenarios s3-gone WORKDIR

``node-loss``: a ``ray.cluster_utils.Cluster`` with a head (the driver, Ray Data's tasks) and two
worker nodes that each advertise one ``trainer_slot`` (``train.worker_resources``), so each Ray
Train worker runs on its own node. The same config is trained once uninterrupted, then again
while the node of rank 1 is removed once rank 1 has started epoch ``KILL_EPOCH`` (a checkpoint of
an earlier epoch is then registered) and a replacement node is added.
``s3-blip`` / ``s3-gone``: RUN_URI on a SeaweedFS started here; the server is stopped once both
ranks have started epoch 1 (the epoch-0 checkpoint is in); ``s3-blip`` starts it again as soon as
a worker logged a failed try to upload the epoch-1 checkpoint (so the outage always
covers a checkpoint upload), ``s3-gone`` never does.

The caller sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (every Ray address on 127.0.0.1) and
``RAY_AUTH_MODE=disabled`` in the environment before Python starts.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conclugen import storage
from conclugen.config import Config, load_config
from conclugen.training.retry_fs import RETRY_LOG
from conclugen.training.run_folder import CHECKPOINT_PREFIX, find_checkpoints, worker_records
from tests.helpers.configs import TINY
from tests.helpers.features import write_feature_store

EPOCHS = 5
KILL_EPOCH = 2  # rank 1's node goes once it trains this epoch (checkpoints 0.. KILL_EPOCH-2 at least exist)
# Enough rows that an epoch takes many steps: the node removal lands long before the run ends.
SPLITS = {"train": 960, "val": 64}
POLL_S = 0.1


def result(**data: Any) -> None:
    print("RESULT " + json.dumps(data, default=str), flush=True)


def scenario_cfg(work: Path, *extra: str) -> Config:
    return load_config(None, [*TINY, f"workdir={work / 'work'}", "train.workers=2", f"train.epochs={EPOCHS}",
                              "train.keep_checkpoints=10", "train.patience=100", *extra])


def wait_for(what: str, cond: Callable[[], Any], timeout: float, fit: threading.Thread | None = None) -> Any:
    """Poll ``cond`` until truthy; fails when ``timeout`` passes or the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if fit is not None and not fit.is_alive():
            raise RuntimeError(f"the run ended before {what}")
        time.sleep(POLL_S)
    raise TimeoutError(f"{what}: not after {timeout} s")


def records(run_uri: str) -> list[dict[str, Any]]:
    try:
        return worker_records(run_uri)
    except (OSError, storage.StorageError):  # an object being written, or the store hiccuped
        return []


def started(run_uri: str, rank: int, epoch: int) -> dict[str, Any] | None:
    """Rank ``rank``'s record of ``epoch`` (written after its first step), if there yet."""
    return next((r for r in records(run_uri) if r["rank"] == rank and r["epoch"] == epoch), None)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """``fn()`` in a thread; its return value or exception lands in the box."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported by the scenario
            box["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t, box


def summary(r: Any) -> dict[str, Any]:
    return {"epochs_done": r.epochs_done, "loss": r.metrics["loss"], "val_loss": r.metrics["val_loss"],
            "wall_s": r.wall_s}


# ----------------------------------------------------------------------------- node loss


def start_cluster(head_cpus: int, slot_nodes: int) -> tuple[Any, list[Any]]:
    """A ``Cluster`` (head: the driver, Ray Data's tasks) plus ``slot_nodes`` nodes with one
    ``trainer_slot`` and no CPU each; this process connected.

    RAY_ADDRESS names this cluster's GCS before anything starts, so every process of it inherits
    it: Ray Train's PlacementGroupCleaner asks the state API whether the controller lives, and
    without an address that API picks the *latest* cluster on the machine — on a shared machine
    another one, where our controller is unknown, so it removes our placement group and kills a
    healthy worker group."""
    import os

    import ray
    from ray.cluster_utils import Cluster

    from conclugen.devtools.processes import free_ports

    port = free_ports(1)[0]
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "include_dashboard": False, "object_store_memory": 300_000_000,
        "gcs_server_port": port})
    nodes = [add_slot_node(cluster) for _ in range(slot_nodes)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    return cluster, nodes


def add_slot_node(cluster: Any) -> Any:
    return cluster.add_node(num_cpus=0, resources={"trainer_slot": 1}, object_store_memory=100_000_000)


def node_loss(work: Path) -> None:
    import ray
    import ray.data
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from conclugen.training.data import build_datasets
    from conclugen.training.driver import run_pretrain

    feats = str(work / "feats")
    write_feature_store(feats, splits=SPLITS)
    t0 = time.monotonic()
    cluster, nodes = start_cluster(4, 2)
    try:
        # Ray Data's tasks (and so the materialised feature blocks) stay on the head: the worker
        # nodes have no CPU for them anyway, this also pins the (0-CPU) split coordinator there.
        head = ray.get_runtime_context().get_node_id()
        ctx = ray.data.DataContext.get_current()
        ctx.scheduling_strategy = ctx.scheduling_strategy_large_args = NodeAffinitySchedulingStrategy(head, soft=False)
        # Train workers: no CPU of their own (the worker nodes have none), one slot per node.
        cfg = scenario_cfg(work, "train.max_failures=2", "train.worker_resources={CPU: 0, trainer_slot: 1}")
        cluster_s = time.monotonic() - t0
        data = build_datasets(feats, cfg, has_val=True)  # read once, for both runs
        plain = run_pretrain(feats, str(work / "plain"), cfg, log_model=False, datasets=data)
        run_uri = str(work / "lost")
        fit, box = in_thread(lambda: run_pretrain(feats, run_uri, cfg, log_model=False, datasets=data))
        victim = wait_for(f"rank 1 at epoch {KILL_EPOCH}", lambda: started(run_uri, 1, KILL_EPOCH), 600, fit)
        ckpts_before = [c["epoch"] for c in find_checkpoints(run_uri)]
        node = next(n for n in nodes if n.node_id == victim["node"])
        t_kill = time.monotonic()
        cluster.remove_node(node, allow_graceful=False)
        add_slot_node(cluster)
        fit.join()
        t_end = time.monotonic()
        if "error" in box:
            raise box["error"]
        result(plain=summary(plain), lost=summary(box["result"]), victim=victim, removed_node=node.node_id,
               checkpoints_at_removal=ckpts_before, records=records(run_uri), cluster_start_s=cluster_s,
               removal_to_end_s=t_end - t_kill, checkpoints=[c["epoch"] for c in find_checkpoints(run_uri)])
    finally:
        ray.shutdown()
        cluster.shutdown()


# ----------------------------------------------------------------------------- S3 trouble


class LogWatch:
    """Tee of this process's stdout (Ray prints its workers' and controller's lines there):
    counts the retried storage calls (:data:`conclugen.training.retry_fs.RETRY_LOG`) and those
    of them that were part of a checkpoint upload (its folder or files)."""

    def __init__(self) -> None:
        self.out, self.retries, self.checkpoint_retries = sys.stdout, 0, 0

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if RETRY_LOG in line:
                self.retries += 1
                self.checkpoint_retries += f"/{CHECKPOINT_PREFIX}" in line
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.out, name)


def s3_outage(work: Path, comes_back: bool) -> None:
    import os

    import ray

    from conclugen.devtools.s3 import start_s3
    from conclugen.training.driver import run_pretrain

    server = start_s3(work / "seaweedfs", timeout=120)
    os.environ.update(server.env)
    watch = LogWatch()
    sys.stdout = watch
    feats = str(work / "feats")  # local: only the run folder is on the stopped server
    write_feature_store(feats, splits=SPLITS)
    run_uri = f"{server.bucket_uri('runs')}/{'blip' if comes_back else 'gone'}"
    # gone for good: a short retry budget and one restart, so the run gives up within seconds
    extra = ["train.max_failures=2"] if comes_back else ["train.max_failures=1", "storage.retry_seconds=3"]
    cfg = scenario_cfg(work, *extra)
    cluster, _ = start_cluster(8, 0)
    try:
        t0 = time.monotonic()
        fit, box = in_thread(lambda: run_pretrain(feats, run_uri, cfg, log_model=False))
        wait_for("both ranks at epoch 1", lambda: started(run_uri, 0, 1) and started(run_uri, 1, 1), 600, fit)
        server.stop()
        t_stop = time.monotonic()
        down_s = None
        if comes_back:
            wait_for("a failed checkpoint upload", lambda: watch.checkpoint_retries, 300, fit)
            server.restart(timeout=120)
            down_s = time.monotonic() - t_stop
        fit.join()
        wall = time.monotonic() - t0
        err = box.get("error")
        out: dict[str, Any] = {"run_uri": run_uri, "endpoint": server.endpoint, "wall_s": wall, "down_s": down_s,
                               "stop_to_end_s": time.monotonic() - t_stop, "retries": watch.retries, "checkpoint_retries": watch.checkpoint_retries,
                               "error_type": type(err).__name__ if err else None,
                               "error_mro": [c.__name__ for c in type(err).__mro__] if err else [],
                               "error": str(err) if err else None}
        if err is None:
            out.update(summary(box["result"]), records=records(run_uri),
                       checkpoints=[c["epoch"] for c in find_checkpoints(run_uri)])
        result(**out)
    finally:
        sys.stdout = watch.out
        ray.shutdown()
        cluster.shutdown()
        server.stop()


def main(argv: list[str]) -> None:
    name, work = argv[0], Path(argv[1])
    work.mkdir(parents=True, exist_ok=True)
    if name == "node-loss":
        node_loss(work)
    elif name in ("s3-blip", "s3-gone"):
        s3_outage(work, comes_back=name == "s3-blip")
    else:
        raise SystemExit(f"unknown scenario {name!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
