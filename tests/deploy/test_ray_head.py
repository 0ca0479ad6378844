"""A real local Ray head (``ray start --head``, tests/helpers/ray_head.py): a submitted job runs,
an unauthenticated client is refused, submit.sh ships only the sources."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.ray_head import REPO, RayHead, start_ray_head
from tests.helpers.sockets import listening, not_loopback, process_tree


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """One private, token-authenticated local head per test module."""
    with start_ray_head() as head:
        yield head


# --------------------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_head_runs_a_submitted_job(ray_head: RayHead, tmp_path: Path) -> None:
    """`ray job submit --working-dir` on the real head: the job sees its files and joins the cluster."""
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "payload.txt").write_text("hello-from-working-dir")
    code = (
        "import ray, pathlib; ray.init(); "
        "print('PAYLOAD', pathlib.Path('payload.txt').read_text()); "
        "print('CPUS', ray.cluster_resources().get('CPU'))"
    )
    t0 = time.monotonic()
    sid = ray_head.submit(["python", "-c", code], working_dir=wd)  # the CLI shlex-joins it
    status = ray_head.wait(sid, timeout=180)
    wall = time.monotonic() - t0
    logs = ray_head.logs(sid)
    print(f"head startup {ray_head.startup_s:.1f}s; smoke job {wall:.1f}s submit→{status}")
    assert status == "SUCCEEDED", logs
    assert "PAYLOAD hello-from-working-dir" in logs
    assert "CPUS 2.0" in logs  # the job's driver joined this head (num_cpus=2), not a new local Ray


@pytest.mark.slow
def test_head_listens_on_loopback_only(ray_head: RayHead) -> None:
    """Every socket of the head's processes (GCS, raylet, dashboard, agents, client server) is on
    loopback: the test head accepts no connection from another host."""
    addrs = listening(process_tree(ray_head.proc.pid))
    assert {"gcs_server", "raylet"} <= {n for n, _, _ in addrs}
    assert any(n == "gcs_server" and port == ray_head.gcs_port for n, _, port in addrs)
    assert not not_loopback(addrs), not_loopback(addrs)


@pytest.mark.slow
def test_head_rejects_unauthenticated_submission(ray_head: RayHead, tmp_path: Path) -> None:
    """Token auth is really on: the same CLI without the token is refused."""
    env = dict(ray_head.env, RAY_AUTH_MODE="disabled")
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    res = ray_head.ray(["job", "list", "--address", ray_head.address], env=env, check=False, timeout=60)
    assert res.returncode != 0
    assert "auth" in (res.stdout + res.stderr).lower()


@pytest.mark.slow
def test_submit_sh_excludes_venv_and_work(ray_head: RayHead, tmp_path: Path) -> None:
    """jobs/submit.sh ships the working dir without .venv, work, .git and caches."""
    wd = tmp_path / "proj"
    for d in (".venv/lib", "work/features", ".git", "__pycache__", "conclugen", "jobs"):
        (wd / d).mkdir(parents=True)
    (wd / ".venv/lib/big.bin").write_bytes(b"x" * 1024)
    (wd / "work/features/f.parquet").write_bytes(b"x")
    (wd / ".git/HEAD").write_text("ref")
    (wd / "__pycache__/m.pyc").write_bytes(b"x")
    (wd / "conclugen/keep.py").write_text("X = 1\n")
    (wd / "jobs/probe.py").write_text(
        "import os\n"
        "for name in ('.venv', 'work', '.git', '__pycache__', 'conclugen/keep.py'):\n"
        "    print('EXISTS', name, os.path.exists(name))\n"
        "print('FORWARDED', os.environ.get('CONCLUGEN_T_FWD'))\n"
        "print('NOT_FORWARDED', os.environ.get('CONCLUGEN_T_NOFWD'))\n"
    )
    env = dict(ray_head.job_env, CONCLUGEN_SUBMIT_ENV="CONCLUGEN_T_FWD",
               CONCLUGEN_T_FWD="yes", CONCLUGEN_T_NOFWD="leaked")
    res = subprocess.run(["bash", str(REPO / "jobs/submit.sh"), "--", "python", "jobs/probe.py"],
                         cwd=wd, env=env, capture_output=True, text=True, timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "EXISTS .venv False" in out
    assert "EXISTS work False" in out
    assert "EXISTS .git False" in out
    assert "EXISTS __pycache__ False" in out
    assert "EXISTS conclugen/keep.py True" in out
    assert "FORWARDED yes" in out  # named in CONCLUGEN_SUBMIT_ENV
    assert "NOT_FORWARDED None" in out  # the submitting shell's other variables stay there
