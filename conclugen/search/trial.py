"""One Tune trial: a Ray Train pretraining run whose per-epoch reports become Tune reports.

Ray 2.60 (Train V2) does not run ``Tuner(TorchTrainer)`` any more, so each trial is a *function*
trainable (:func:`run_trial`) that runs :func:`conclugen.training.driver.run_pretrain` — and
so a ``TorchTrainer(...).fit()`` — in a background thread. A Ray Train ``UserCallback``
(:func:`forward_reports`, running in the Train controller) hands every epoch's rank-0 metrics and
checkpoint path to the trial through a :class:`Mailbox` actor; the trial computes the objective
(the validation linear-probe weighted F1 on that epoch's checkpoint, every ``tune.probe_every``
epochs, or the SSL validation loss) and calls ``ray.tune.report`` itself, so ASHA acts on the
objective per epoch. The controller waits for the trial's acknowledgement, so the probe of epoch
``e`` is what ASHA sees at epoch ``e`` and the checkpoint cannot be rotated away before it is read.

Each process that runs the trial (Tune retries a trial whose process died) records itself in
``<trial run>/conclugen/trial.json``; the driver waits for those processes to be gone before it
settles the trial's MLflow run (see :mod:`conclugen.search.summary`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from conclugen import storage, tracking
from conclugen.config import Config
from conclugen.search.plan import trial_config, trial_run_uri
from conclugen.search.space import Space, trial_params
from conclugen.training.errors import NonFiniteLossError
from conclugen.training.run_folder import checkpoint_uri, state_uri

TRIAL_FILE = "trial.json"
_DONE = "__conclugen_trial_done__"


@dataclass
class TrialContext:
    """What every trial of one search shares (handed to the trainable by ``tune.with_parameters``)."""

    cfg: Config  # the search's base config (secrets kept: the trial reads and writes storage)
    features_uri: str
    search_uri: str
    name: str
    space: Space
    parent_run_id: str | None
    tracking_uri: str
    datasets: dict[str, Any] | None = None  # read once by the driver, shared by all trials


class Mailbox:
    """One small async actor per trial carrying reports from the Train controller to the trial
    and acknowledgements back (one actor instead of two ray.util.queue.Queue actors: every actor
    is a process, and a 2-core machine feels each)."""

    def __init__(self) -> None:
        self.items: asyncio.Queue = asyncio.Queue()
        self.acks: asyncio.Queue = asyncio.Queue()

    async def put(self, item: Any) -> None:
        await self.items.put(item)

    async def get(self) -> Any:
        return await self.items.get()

    async def ack(self) -> None:
        await self.acks.put(True)

    async def wait_ack(self) -> bool:
        return await self.acks.get()


def forward_reports(mailbox: Any) -> Any:
    """A Ray Train ``UserCallback`` that runs in the Train controller: hands each report (rank 0's
    metrics and the persisted checkpoint path) to the trial and waits until the trial dealt with it."""
    from ray.train import UserCallback

    class ForwardReports(UserCallback):
        def __init__(self) -> None:
            self.mailbox = mailbox

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            import ray

            item = {"metrics": dict(metrics[0]), "checkpoint": checkpoint.path if checkpoint else None}
            ray.get(self.mailbox.put.remote(item))
            ray.get(self.mailbox.wait_ack.remote())

    return ForwardReports()


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics dict, as floats."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))}


# ----------------------------------------------------------------------------- the trial's processes


def record_attempt(run_uri: str, cfg: Config) -> None:
    """Append this process (pid, Ray node, start time) to the trial's ``trial.json``."""
    import psutil
    import ray

    attempts = read_attempts(run_uri, cfg)
    pid = os.getpid()
    attempts.append({"pid": pid, "node_id": ray.get_runtime_context().get_node_id(),
                     "started": psutil.Process(pid).create_time(), "time": time.time()})
    storage.write_text(state_uri(run_uri, TRIAL_FILE), json.dumps({"attempts": attempts}), cfg.storage)


def read_attempts(run_uri: str, cfg: Config) -> list[dict[str, Any]]:
    """The processes that ran the trial, in order ([] before the first one started)."""
    uri = state_uri(run_uri, TRIAL_FILE)
    if not storage.exists(uri, cfg.storage):
        return []
    return list(json.loads(storage.read_text(uri, cfg.storage))["attempts"])


def processes_alive(procs: list[tuple[int, float]], timeout_s: float) -> int:
    """Wait up to ``timeout_s`` until the processes ``(pid, start time)`` on this machine have
    exited; returns how many are still alive (a reused pid has another start time)."""
    import psutil

    def alive(pid: int, started: float) -> bool:
        try:
            p = psutil.Process(pid)
            return abs(p.create_time() - started) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout_s
    left = [p for p in procs if alive(*p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(*p)]
    return len(left)


def wait_for_exit(attempts: list[dict[str, Any]], timeout_s: float = 60.0) -> int:
    """Wait until the processes of these attempts have exited, on whichever Ray node they ran
    (a zero-CPU task pinned to each other node looks there); returns how many are still alive.
    A node that is gone took its processes with it."""
    import ray

    here = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    by_node: dict[str | None, list[tuple[int, float]]] = {}
    for a in attempts:
        by_node.setdefault(a.get("node_id"), []).append((int(a["pid"]), float(a["started"])))
    refs = []
    if ray.is_initialized():
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(num_cpus=0)(processes_alive)
        refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                .remote(procs, timeout_s) for node, procs in by_node.items() if node != here]
    left = processes_alive(by_node.get(here, []), timeout_s)
    for ref in refs:
        try:
            left += ray.get(ref, timeout=timeout_s + 30)
        except Exception:  # noqa: BLE001 - the node is gone, and its processes with it
            pass
    return left


def child_run_id(run_uri: str, cfg: Config) -> str | None:
    """The trial's MLflow run (opened by run_pretrain, recorded in its run folder), if any."""
    uri = state_uri(run_uri, "run.json")
    if not storage.exists(uri, cfg.storage):
        return None
    return json.loads(storage.read_text(uri, cfg.storage)).get("mlflow_run_id")


# ----------------------------------------------------------------------------- per-epoch work


class Prober:
    """Linear probe on a checkpoint's frozen representations: train split → fit, val → select
    and score (the test split is never read during the search)."""

    def __init__(self, ctx: TrialContext, cfg: Config) -> None:
        from conclugen.features.store import load_arrays, read_meta

        self.cfg = cfg
        meta = read_meta(ctx.features_uri, cfg.storage)
        self.label_space, self.multilabel = list(meta.label_space), bool(meta.multilabel)
        arrays = load_arrays(ctx.features_uri, cfg.model.modalities, splits=("train", "val"), cfg=cfg.storage)
        split = arrays["split"]
        self.rows = {s: [i for i, x in enumerate(split) if x == s] for s in ("train", "val")}
        self.feats = {m: arrays[m] for m in cfg.model.modalities}
        self.labels = [list(x or []) for x in arrays["labels"]]
        self.corpus = meta.corpus  # fit_probe derives the class weights under cfg.probe.protocol

    def __call__(self, checkpoint: str) -> dict[str, float]:
        import numpy as np

        from conclugen.evaluation.encoders import heads_encoder
        from conclugen.evaluation.probe import fit_probe
        from conclugen.evaluation.probe_data import ProbeData
        from conclugen.training.run_folder import load_checkpoint

        model, _ = load_checkpoint(checkpoint, self.cfg.storage)
        X = heads_encoder(model, model.modalities)(self.feats)
        data = {s: ProbeData(X[idx], [self.labels[i] for i in idx]) for s, idx in self.rows.items()}
        empty = ProbeData(np.zeros((0, X.shape[1]), np.float32), [])
        res = fit_probe(data["train"], data["val"], empty, label_space=self.label_space,
                        multilabel=self.multilabel, cfg=self.cfg.probe, corpus=self.corpus)
        from conclugen.evaluation.intervals import split_intervals

        v, P = res.val_metrics, self.cfg.probe
        # the objective's interval (bootstrap over validation clips) for the search summary
        iv = split_intervals(res, data["val"], metrics=("f1_weighted",), resamples=P.bootstrap,
                             confidence=P.confidence, seed=P.seed)["f1_weighted"]
        return {"probe_f1": float(v["f1_weighted"]), "probe_accuracy": float(v["accuracy"]),
                "probe_best_epoch": float(res.best_epoch), "probe_f1_low": float(iv.low),
                "probe_f1_high": float(iv.high)}


class _Reporter:
    """Turns the Train controller's per-epoch items into Tune reports (probed every
    ``tune.probe_every`` epochs and at the last one), logging the probe to the trial's run."""

    def __init__(self, ctx: TrialContext, cfg: Config, run_uri: str, params: Mapping[str, Any]) -> None:
        self.ctx, self.cfg, self.run_uri, self.params = ctx, cfg, run_uri, dict(params)
        self.probe = cfg.tune.objective == "probe_f1"
        self.prober: Prober | None = None
        self.child: str | None = None
        self.last_probe: dict[str, float] = {}
        self.last: dict[str, Any] | None = None  # the last epoch: its report, checkpoint, probed

    def epoch(self, item: Mapping[str, Any]) -> dict[str, float]:
        metrics = numeric(item["metrics"])
        epoch = int(metrics.get("epoch", 0))
        out = {**metrics, "epochs_done": float(epoch + 1)}
        ckpt = checkpoint_uri(self.run_uri, item["checkpoint"]) if item["checkpoint"] else None
        if self.child is None:
            self.child = self._tag_child()
        probed = bool(self.probe and ckpt and (epoch % self.cfg.tune.probe_every == 0
                                               or epoch + 1 >= self.cfg.train.epochs))
        if probed:
            self._probe(ckpt, epoch)
        out.update(self.last_probe)
        self.last = {"out": out, "ckpt": ckpt, "probed": probed}
        return out

    def final(self, held: dict[str, float] | None) -> dict[str, float] | None:
        """The report to make after training ended: the held-back last epoch, or — stopped early
        (patience) between probe epochs — the last checkpoint probed, so that the final report
        carries the objective of the trained model."""
        last = self.last
        if held is None and last is not None and self.probe and not last["probed"] and last["ckpt"]:
            self._probe(last["ckpt"], int(last["out"].get("epoch", 0)))
            return {**last["out"], **self.last_probe}
        return held

    def _probe(self, ckpt: str, epoch: int) -> None:
        self.prober = self.prober or Prober(self.ctx, self.cfg)
        self.last_probe = self.prober(ckpt)
        if self.child:
            tracking.log_metrics(self.ctx.tracking_uri, self.child, self.last_probe, step=epoch)

    def _tag_child(self) -> str | None:
        """The trial's MLflow run, with the sampled values logged as ``sampled.<field>`` params."""
        from mlflow.entities import Param

        try:
            run_id = child_run_id(self.run_uri, self.cfg)
            if run_id:
                tracking.client(self.ctx.tracking_uri).log_batch(
                    run_id, params=[Param(f"sampled.{k}", str(v)) for k, v in sorted(self.params.items())])
            return run_id
        except Exception as e:  # noqa: BLE001 - tracking must not kill the trial
            print(f"[tune] warning: could not reach the trial's MLflow run: {type(e).__name__}: {e}", flush=True)
            return None


# ----------------------------------------------------------------------------- the trainable


def _start_pretraining(ctx: TrialContext, cfg: Config, run_uri: str, trial_id: str,
                       params: Mapping[str, Any], mailbox: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """run_pretrain in a daemon thread; its result or error lands in the returned box, and
    the mailbox gets ``_DONE`` when it has returned (after it closed its MLflow run)."""
    from conclugen.training.driver import run_pretrain

    tags = {"conclugen.search": ctx.name, "conclugen.trial_id": trial_id,
            "conclugen.trial_params": json.dumps(dict(params), sort_keys=True)}
    if ctx.parent_run_id:
        tags["mlflow.parentRunId"] = ctx.parent_run_id
    box: dict[str, Any] = {}

    def work() -> None:
        import ray

        try:
            box["result"] = run_pretrain(ctx.features_uri, run_uri, cfg, run_name=f"{ctx.name}/{trial_id}",
                                         log_model=False, tags=tags, callbacks=[forward_reports(mailbox)],
                                         datasets=ctx.datasets, lock_output=False)  # Tune owns the folder
        except BaseException as e:  # noqa: BLE001 - re-raised in the trial's thread
            box["error"] = e
        finally:
            ray.get(mailbox.put.remote(_DONE))

    thread = threading.Thread(target=work, name=f"pretrain-{trial_id}", daemon=True)
    thread.start()
    return thread, box


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The function trainable: pretrain with the sampled values, report each epoch (and the probe)."""
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    run_uri = trial_run_uri(ctx.search_uri, trial_id)
    record_attempt(run_uri, ctx.cfg)
    params = trial_params(config, ctx.space)
    cfg = trial_config(ctx.cfg, params)
    mailbox = ray.remote(num_cpus=0)(Mailbox).remote()
    thread, box = _start_pretraining(ctx, cfg, run_uri, trial_id, params, mailbox)
    reporter = _Reporter(ctx, cfg, run_uri, params)
    held: dict[str, float] | None = None  # the last epoch's report, held back (see below)
    while (item := ray.get(mailbox.get.remote())) != _DONE:
        try:
            out = reporter.epoch(item)
        finally:
            ray.get(mailbox.ack.remote())
        if out["epochs_done"] >= cfg.train.epochs:
            # ASHA stops any trial that reaches max_t at once, which would kill run_pretrain
            # before it closes its run: the last epoch is reported after training has ended.
            held = out
        else:
            tune.report(out)
    thread.join()
    if isinstance(box.get("error"), NonFiniteLossError):
        # Deterministic: retrying cannot help. The trial ends without an objective; the summary
        # reads the reason from the run's error.json.
        print(f"[tune] trial {trial_id}: {box['error']}", flush=True)
        return
    if "error" in box:
        raise box["error"]
    final = reporter.final(held)
    if final is not None:
        tune.report(final)
