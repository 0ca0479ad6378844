"""jobs/*.py are the CLI under another name, and run from any directory; jobs/submit.sh guards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOBS = ["extract", "pretrain", "evaluate", "ablate", "tune", "predict"]
# Minimal positional arguments/options each command needs before it loads its config.
ARGS = {
    "extract": ["corpus", "--out", "features"],
    "pretrain": ["features", "--out", "run"],
    "evaluate": ["features", "--checkpoint", "ckpt"],
    "ablate": ["features", "--out", "out"],
    "tune": ["features", "--space", "tune_spaces/quick.yaml"],
    "predict": ["clip.mp4", "--model", "model"],
}


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH: the scripts must find the repo themselves, as under `ray job submit`.
    e = {k: v for k, v in (env or os.environ).items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("job", JOBS)
def test_job_script_is_the_cli_command(job: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from conclugen.cli import app

    res = _run([str(REPO / "jobs" / f"{job}.py"), "--help"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"Usage: jobs/{job}.py" in res.stdout
    # Same options as `conclugen <job>`.
    cli = CliRunner().invoke(app, [job, "--help"], prog_name="conclugen")
    assert cli.exit_code == 0
    for opt in ("--config", "--set"):
        assert opt in res.stdout and opt in cli.output
    script_opts = {w.strip(",") for w in res.stdout.split() if w.startswith("--")}
    cli_opts = {w.strip(",") for w in cli.output.split() if w.startswith("--")}
    assert script_opts == cli_opts


@pytest.mark.parametrize("job", JOBS)
def test_job_script_rejects_a_bad_override_like_the_cli(job: str, tmp_path: Path) -> None:
    res = _run([str(REPO / "jobs" / f"{job}.py"), *ARGS[job], "--set", "train.epochz=3"], cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "train.epochz: unknown field" in res.stderr


def test_job_script_takes_the_cluster_config(tmp_path: Path) -> None:
    """--config with the cluster config is parsed and validated (a bad value in it still stops)."""
    cfg = REPO / "cluster" / "configs" / "cluster.yaml"
    res = _run([str(REPO / "jobs" / "pretrain.py"), "f", "--out", "o", "--config", str(cfg),
                "--set", "train.workers=-1"], cwd=tmp_path)
    assert res.returncode == 2
    assert "train.workers" in res.stderr


def test_submit_sh_needs_ray_address(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run(["bash", str(REPO / "jobs" / "submit.sh"), "--", "python", "-c", "1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "RAY_ADDRESS" in res.stderr


def test_submit_sh_refuses_to_forward_credentials(tmp_path: Path) -> None:
    env = dict(os.environ, RAY_ADDRESS="http://127.0.0.1:9", CONCLUGEN_SUBMIT_ENV="AWS_SECRET_ACCESS_KEY",
               AWS_SECRET_ACCESS_KEY="s3cr3t")
    res = subprocess.run(["bash", str(REPO / "jobs" / "submit.sh"), "--", "python", "-c", "1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert "credentials" in res.stderr and "s3cr3t" not in res.stderr + res.stdout
