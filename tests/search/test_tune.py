"""Hyperparameter search (conclugen/search/tune.py): the searchers, then real searches —
Ray Tune + ASHA + Optuna over Ray Train pretraining runs on a tiny feature store, MLflow runs
checked on a real MLflow server, and a search killed mid-way that resumes under the same name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conclugen.config import load_config
from conclugen.search.plan import trial_config
from conclugen.search.space import load_space, trial_params
from tests.helpers.configs import TINY_MODEL, TINY_TRAIN

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "tune_spaces" / "quick.yaml"
# Tiny heads and pretraining, plus a 2-epoch search budget: one Train worker per trial, half a
# CPU for the trial itself, ASHA's first rung after one epoch, no warm-up.
TINY = [
    *TINY_MODEL, *TINY_TRAIN, "train.warmup_epochs=0",
    "train.epochs=2", "train.workers=1", "probe.epochs=20", "tune.cpus_per_trial=0.5", "tune.grace_period=1",
]


@pytest.mark.parametrize("searcher", ["optuna", "hyperopt"])
def test_searchers_sample_valid_trial_configs(searcher: str) -> None:
    """Both model-based searchers turn the paper's space into valid configs on the q-grid."""
    pytest.importorskip(searcher)
    from conclugen.search.space import to_tune
    from conclugen.search.tune import make_searcher

    cfg = load_config(None, [f"tune.searcher={searcher}"])
    space = load_space(REPO / "tune_spaces" / "paper.yaml")
    s = make_searcher(cfg, "probe_f1", "max", 3)
    s.set_search_properties("probe_f1", "max", to_tune(space))
    for i in range(3):
        params = trial_params(s.suggest(f"t{i}"), space)
        assert set(params) == set(space)
        c = trial_config(cfg, params)
        for loss in ("contrastive", "clustering", "reconstruction"):
            w = getattr(c.losses, loss)
            assert 1e-4 <= w <= 1.1 and abs(w / 1e-4 - round(w / 1e-4)) < 1e-6
        assert c.model.k in (2, 4, 8, 32, 64, 128) and 2 <= c.losses.queue_batches <= 128
        assert 1e-5 <= c.train.lr <= 1e-3 and c.model.d in (1024, 2048, 4096)
    assert s.suggest("t3") is None  # the ConcurrencyLimiter holds a 4th until one completes


# ----------------------------------------------------------------------------- real searches


def _features(tmp_path: Path) -> str:
    from tests.helpers.features import write_feature_store

    root = str(tmp_path / "features")
    # noisy enough that the probe's F1 is not 1.0 for every trial
    write_feature_store(root, {"train": 96, "val": 32, "test": 16}, noise=2.0)
    return root


def _children(client, exp_id: str, parent: str) -> list:
    return client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")


@pytest.mark.slow
def test_quick_search_asha_optuna_nested_mlflow(tmp_path: Path, ray_cluster, mlflow_server, capsys) -> None:
    from mlflow.tracking import MlflowClient

    from conclugen.search.tune import run_tune

    feats = _features(tmp_path)
    cfg = load_config(None, [*TINY, f"workdir={tmp_path / 'work'}", f"tracking.uri={mlflow_server.uri}",
                             "tracking.experiment=tune-quick", "tune.max_concurrent=2"])
    space = load_space(QUICK)
    summary = run_tune(feats, QUICK, cfg, samples=2, name="quick")
    # The budget line, before the search: 2 trials of at most 2 epochs (--set beats the space's
    # fixed epochs), tiny heads, 2 at a time.
    assert "tune: 2 trials × ≤2 epochs, heads " in capsys.readouterr().out

    assert summary.metric == "probe_f1" and summary.mode == "max" and not summary.resumed
    assert len(summary.trials) == 2 and len({t.trial_id for t in summary.trials}) == 2
    for t in summary.trials:
        assert set(t.params) == set(space)
        lo, hi = space["train.lr"][1]
        assert lo <= t.params["train.lr"] <= hi and t.params["model.k"] in (4, 8)
        assert t.status in ("completed", "stopped (ASHA)"), t
        assert t.objective is not None and 0.0 <= t.objective <= 1.0
        # the objective's bootstrap interval over validation clips travels with each report
        assert t.metrics["probe_f1_low"] <= t.objective <= t.metrics["probe_f1_high"]
    assert "[" in summary.table()  # the table prints "0.752 [0.65, 0.84]"
    completed = [t for t in summary.trials if t.status == "completed"]
    assert completed, "ASHA may stop a trial, not both"
    assert all(t.epochs == 2 for t in completed)
    assert summary.best is not None
    assert summary.best.objective == max(t.objective for t in completed)

    # The best config: a full Config that `conclugen pretrain --config` loads, with the best values.
    best = load_config(summary.best_config_path)
    for k, v in summary.best.params.items():
        section, key = k.split(".")
        assert getattr(getattr(best, section), key) == (pytest.approx(v) if isinstance(v, float) else v)
    assert best.model.d == 32 and best.train.epochs == 2
    assert Path(summary.best_config_path).parent == tmp_path / "work" / "tune" / "quick"

    # MLflow: one parent run, one nested child per trial.
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    exp = client.get_experiment_by_name("tune-quick")
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["conclugen.command"] == "tune"
    assert parent.data.tags["best.trial_id"] == summary.best.trial_id
    assert parent.data.params["model.d"] == "32" and parent.data.params["tune.samples"] == "2"
    assert parent.data.metrics["best_probe_f1"] == pytest.approx(summary.best.objective)
    assert parent.data.metrics["trials_total"] == 2
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "space.yaml", "summary.md", "config.yaml"} <= arts
    children = _children(client, exp.experiment_id, parent.info.run_id)
    assert sorted(r.data.tags["conclugen.trial_id"] for r in children) == sorted(t.trial_id for t in summary.trials)
    by_trial = {t.trial_id: t for t in summary.trials}
    for run in children:
        t = by_trial[run.data.tags["conclugen.trial_id"]]
        assert run.info.run_id == t.mlflow_run_id
        assert run.info.status == ("FINISHED" if t.status == "completed" else "KILLED")
        p = run.data.params
        assert p["model.d"] == "32" and p["train.epochs"] == "2"  # the full config
        for k, v in t.params.items():  # and the sampled values, both as config params and sampled.*
            assert p[f"sampled.{k}"] == str(v) and p[k] == str(v)
        # Per-epoch training and probe metrics (probe_every = 1). An ASHA-stopped trial's worker
        # may have logged one epoch more than Tune saw before it was stopped.
        loss_steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
        f1 = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "probe_f1")}
        assert loss_steps[: t.epochs] == list(range(t.epochs))
        assert sorted(f1)[: t.epochs] == list(range(t.epochs))
        if t.status == "completed":
            assert len(loss_steps) == len(f1) == 2
        assert f1[t.epochs - 1] == pytest.approx(t.objective)
        assert run.data.metrics["objective"] == pytest.approx(t.objective)


def _experiment_trials(exp_dir: Path) -> int:
    states = sorted(exp_dir.glob("experiment_state-*.json"))
    if not states:
        return 0
    try:
        return len(json.loads(states[-1].read_text())["trial_data"])
    except (ValueError, KeyError):
        return 0  # being written


@pytest.mark.slow
def test_killed_search_resumes_under_the_same_name(tmp_path: Path, ray_cluster, mlflow_server) -> None:
    """`jobs/tune.py` (the CLI) is killed while its second trial runs; `run_tune` with the same
    name finishes the search: the first trial is not trained again, the parent run is reused and
    there is one child run per trial."""
    import ray
    from mlflow.tracking import MlflowClient

    from conclugen.search.tune import run_tune

    feats = _features(tmp_path)
    work = tmp_path / "work"
    sets = [*TINY, "train.epochs=3", f"workdir={work}", f"tracking.uri={mlflow_server.uri}",
            "tracking.experiment=tune-resume", "tune.max_concurrent=1"]
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, str(REPO / "jobs" / "tune.py"), feats, "--space", str(QUICK), "--samples", "2",
           "--name", "resume", *[a for s in [*sets, f"ray_address={address}"] for a in ("--set", s)]]
    search = work / "tune" / "resume"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    first: Path | None = None
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            done = sorted(search.glob("trials/*/conclugen/summary.json"))
            # Kill once trial 1 has finished and Tune's saved state holds trial 2 (running).
            if done and _experiment_trials(search / "ray_tune") >= 2:
                first = done[0].parent.parent
                break
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    assert first is not None, (tmp_path / "first.log").read_text()[-3000:]
    first_ckpts = sorted(p.name for p in first.glob("checkpoint_*"))
    # the trial that was running when the search was killed (its checkpoints so far, maybe none)
    second = [p for p in (search / "trials").iterdir() if p != first]
    second_ckpts = {p.name for p in second[0].glob("checkpoint_*")} if second else set()
    state = json.loads((search / "conclugen" / "search.json").read_text())

    cfg = load_config(None, sets)
    summary = run_tune(feats, QUICK, cfg, samples=2, name="resume")
    assert summary.resumed
    assert len(summary.trials) == 2
    ids = {t.trial_id for t in summary.trials}
    assert first.name in ids
    assert sorted(p.name for p in first.glob("checkpoint_*")) == first_ckpts  # not trained again
    if second:  # the interrupted trial continued in its own folder
        assert second[0].name in ids
        assert {p.name for p in second[0].glob("checkpoint_*")} >= second_ckpts  # kept: keep_checkpoints 3 ≥ 3 epochs
    assert sorted(p.name for p in (search / "trials").iterdir()) == sorted(ids)
    assert all(t.objective is not None for t in summary.trials)
    assert summary.parent_run_id == state["parent_run_id"]

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    exp = client.get_experiment_by_name("tune-resume")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`conclugen.command` = 'tune'")
    assert [r.info.run_id for r in parents] == [state["parent_run_id"]]
    assert parents[0].info.status == "FINISHED"
    children = _children(client, exp.experiment_id, state["parent_run_id"])
    assert sorted(r.data.tags["conclugen.trial_id"] for r in children) == sorted(ids)
    assert load_config(summary.best_config_path).train.epochs == 3


def test_cli_stops_on_a_bad_space_or_features_before_ray(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from conclugen.cli import app

    bad = tmp_path / "bad.yaml"
    bad.write_text("train.lr: {loguniform: [0.1, 0.01]}\n")
    res = CliRunner().invoke(app, ["tune", str(tmp_path / "nofeatures"), "--space", str(bad)])
    assert res.exit_code == 1
    assert "train.lr" in res.output and "low 0.1 must be below high 0.01" in res.output
    res = CliRunner().invoke(app, ["tune", str(tmp_path / "nofeatures"), "--space", str(QUICK)])
    assert res.exit_code == 1 and "meta.json missing" in res.output


def _attempts(trial_json: Path) -> list[int]:
    """The pids of the processes that ran a trial, from its run folder ([] while being written)."""
    try:
        return [int(a["pid"]) for a in json.loads(trial_json.read_text())["attempts"]]
    except (ValueError, KeyError):
        return []


@pytest.mark.slow
def test_trial_whose_process_dies_is_retried_and_resumes(tmp_path: Path, ray_cluster, mlflow_server) -> None:
    """SIGKILL the trial's process after its first checkpoint: Tune retries the trial
    (FailureConfig), whose Ray Train run continues from that checkpoint in the same MLflow run."""
    import threading

    from mlflow.tracking import MlflowClient

    from conclugen.search.tune import run_tune

    feats = _features(tmp_path)
    work = tmp_path / "work"
    cfg = load_config(None, [*TINY, "train.epochs=3", f"workdir={work}", f"tracking.uri={mlflow_server.uri}",
                             "tracking.experiment=tune-retry"])
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            snaps = list((work / "tune" / "retry" / "trials").glob("*/checkpoint_manager_snapshot.json"))
            files = list((work / "tune" / "retry" / "trials").glob("*/conclugen/trial.json"))
            pids = _attempts(files[0]) if files else []
            if snaps and pids and "checkpoint_" in snaps[0].read_text():
                pid = pids[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    summary = run_tune(feats, QUICK, cfg, samples=1, name="retry")
    t.join(timeout=1)
    assert killed, "the trial finished before it could be killed"
    (trial,) = summary.trials
    assert trial.status == "completed" and trial.epochs == 3 and trial.objective is not None
    attempts = _attempts(Path(trial.run_uri) / "conclugen" / "trial.json")
    assert len(attempts) >= 2 and attempts[0] == killed[0]  # a second process ran the trial
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    exp = client.get_experiment_by_name("tune-retry")
    children = _children(client, exp.experiment_id, summary.parent_run_id)
    assert [r.info.run_id for r in children] == [trial.mlflow_run_id]  # the same child run resumed
    steps = [m.step for m in client.get_metric_history(trial.mlflow_run_id, "loss")]
    assert steps.count(0) == 1 and set(steps) == {0, 1, 2}  # epoch 0 was not trained again
