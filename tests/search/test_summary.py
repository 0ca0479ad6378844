"""The end of a search (conclugen/search/summary.py): the table, the best trial, and the final
state of each trial's MLflow run — decided by the driver alone, after the trial's processes exited."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from conclugen import tracking
from conclugen.config import load_config
from conclugen.search.summary import TrialSummary, TuneSummary, pick_best, settle_trial_runs, trial_status


def test_summary_table_marks_the_best() -> None:
    a = TrialSummary("t1", {"train.lr": 0.001, "losses.mode": "joint"}, 0.5, "completed", 2, "/x/t1")
    b = TrialSummary("t2", {"train.lr": 0.01, "losses.mode": "individual"}, None, "error", 0, "/x/t2")
    s = TuneSummary("s", "/x", "probe_f1", "max", [a, b], a, "/x/best_config.yaml", "p", "u", 2, False, 1.0)
    lines = s.table().splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["trial", "mode", "lr", "probe_f1", "epochs", "status"]
    assert "t1 ★" in lines[2] and "0.5000" in lines[2] and "completed" in lines[2]
    assert "t2" in lines[3] and "error" in lines[3] and "★" not in lines[3]
    assert "best probe_f1 0.5000 (t1)" in s.describe()


def test_summary_table_shows_the_objective_interval() -> None:
    a = TrialSummary("t1", {"train.lr": 0.001}, 0.7523, "completed", 2, "/x/t1",
                     metrics={"probe_f1": 0.7523, "probe_f1_low": 0.6512, "probe_f1_high": 0.8449})
    b = TrialSummary("t2", {"train.lr": 0.01}, 0.5, "completed", 2, "/x/t2", metrics={"probe_f1": 0.5})
    s = TuneSummary("s", "/x", "probe_f1", "max", [a, b], a, "/x/best_config.yaml", "p", "u", 2, False, 1.0)
    lines = s.table().splitlines()
    assert "probe_f1 [interval]" in lines[0]
    assert "0.752 [0.65, 0.84]" in lines[2] and "0.5000" in lines[3]  # no bounds reported: the value alone
    assert "best probe_f1 0.752 [0.65, 0.84] (t1)" in s.describe()


def test_best_prefers_trials_that_trained_to_their_end() -> None:
    done = TrialSummary("a", {}, 0.6, "completed", 2, "/a")
    stopped = TrialSummary("b", {}, 0.9, "stopped (ASHA)", 1, "/b")
    assert pick_best([done, stopped], "max") is done
    assert pick_best([stopped], "max") is stopped
    assert pick_best([TrialSummary("c", {}, None, "error", 0, "/c")], "max") is None
    assert pick_best([done, TrialSummary("d", {}, 0.4, "completed", 2, "/d")], "min").trial_id == "d"


def test_trial_status_from_tune_and_the_run_folder(tmp_path: Path) -> None:
    cfg = load_config(None)
    run = tmp_path / "t"
    assert trial_status("TERMINATED", str(run), cfg) == "stopped (ASHA)"
    assert trial_status("ERROR", str(run), cfg) == "error"
    assert trial_status("PENDING", str(run), cfg) == "pending"
    (run / "conclugen").mkdir(parents=True)
    (run / "conclugen" / "summary.json").write_text("{}")
    assert trial_status("TERMINATED", str(run), cfg) == "completed"
    (run / "conclugen" / "error.json").write_text("{}")
    assert trial_status("TERMINATED", str(run), cfg) == "non-finite loss"


def _runs(tmp_path: Path, statuses: list[str]) -> tuple[str, list[str]]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.get_or_create_experiment(uri, "settle")
    ids = []
    for st in statuses:
        run_id = tracking.client(uri).create_run(exp).info.run_id
        if st != "RUNNING":
            tracking.end_run(uri, run_id, st)
        ids.append(run_id)
    return uri, ids


def test_trial_runs_get_the_state_of_the_trials_fate(tmp_path: Path) -> None:
    """Whatever a trial's process left behind (a stopped trial torn down mid-epoch may have ended
    its run FAILED), the run ends as the trial's fate says."""
    cfg = load_config(None)
    uri, ids = _runs(tmp_path, ["FAILED", "RUNNING", "FINISHED", "RUNNING", "KILLED"])
    fates = ["stopped (ASHA)", "error", "completed", "running", "pending"]
    trials = [TrialSummary(f"t{i}", {}, 0.5, fate, 1, str(tmp_path / f"t{i}"), run_id)
              for i, (fate, run_id) in enumerate(zip(fates, ids, strict=True))]
    end_before = tracking.client(uri).get_run(ids[2]).info.end_time
    settle_trial_runs(uri, trials, cfg)
    got = [tracking.client(uri).get_run(r) for r in ids]
    assert [r.info.status for r in got] == ["KILLED", "FAILED", "FINISHED", "FAILED", "KILLED"]
    assert got[2].info.end_time == end_before  # a settled run is left alone
    assert all(r.data.tags["conclugen.trial_status"] == f for r, f in zip(got, fates, strict=True))
    assert all(r.data.metrics["objective"] == 0.5 for r in got)


# A trial process that Tune tears down: it ends its run FAILED on the way out, but only once the
# test lets it (so the driver is certainly settling the run by then).
_DYING_TRIAL = """
import json, os, pathlib, sys, time
import psutil
from conclugen import tracking
run_dir, uri, run_id, node = sys.argv[1:5]
state = pathlib.Path(run_dir, "conclugen")
state.mkdir(parents=True, exist_ok=True)
attempt = {"pid": os.getpid(), "node_id": None if node == "-" else node,
           "started": psutil.Process().create_time()}
(state / "trial.json").write_text(json.dumps({"attempts": [attempt]}))
while not pathlib.Path(run_dir, "go").exists():
    time.sleep(0.05)
tracking.end_run(uri, run_id, "FAILED")
"""


def test_settling_waits_for_the_trials_processes(tmp_path: Path) -> None:
    import ray

    cfg = load_config(None)
    uri, (run_id,) = _runs(tmp_path, ["RUNNING"])
    run_dir = tmp_path / "t0"
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "-"
    proc = subprocess.Popen([sys.executable, "-c", _DYING_TRIAL, str(run_dir), uri, run_id, node])
    try:
        trial_json = run_dir / "conclugen" / "trial.json"
        while proc.poll() is None and not trial_json.exists():
            time.sleep(0.05)
        assert json.loads(trial_json.read_text())["attempts"][0]["pid"] == proc.pid
        trial = TrialSummary("t0", {}, 0.5, "stopped (ASHA)", 1, str(run_dir), run_id)
        settler = threading.Thread(target=settle_trial_runs, args=(uri, [trial], cfg))
        settler.start()
        (run_dir / "go").write_text("")  # the trial's last word: FAILED, then it exits
        settler.join(timeout=120)
        assert not settler.is_alive()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert tracking.client(uri).get_run(run_id).info.status == "KILLED"
