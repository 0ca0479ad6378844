"""Scale-out files: ray-cluster.yaml through Ray's own schema check, KubeRay and MLflow manifests,
the Dockerfile, and the cluster conclugen config."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "ray-cluster.yaml"
KUBERAY = REPO / "cluster" / "kuberay"
MLFLOW_DIR = REPO / "cluster" / "mlflow"
DOCKERFILE = REPO / "cluster" / "Dockerfile"
BASE_IMAGE = "rayproject/ray:2.60.0-py311-gpu"
WORLD = ("0.0.0.0/0", "::/0")
# What a leaked credential would look like: AWS access key ids, inline secret values, Ray tokens.
SECRET_PATTERNS = [r"AKIA[0-9A-Z]{16}", r"AWS_SECRET_ACCESS_KEY\s*[=:]\s*\S", r"RAY_AUTH_TOKEN\s*=", r"[0-9a-f]{64}"]


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def cluster_cfg() -> dict[str, Any]:
    return _load(CLUSTER_YAML)


# ----------------------------------------------------------------------------- ray-cluster.yaml


def test_cluster_yaml_passes_ray_schema(cluster_cfg: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster_cfg))
    validate_config(prepared)  # raises on unknown keys, wrong types, head type missing, min > max
    assert prepared["provider"]["type"] == "aws"


def test_ray_schema_check_is_strict(cluster_cfg: dict[str, Any]) -> None:
    """The validation above can fail: a misspelt key in a node type is rejected."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(cluster_cfg)
    bad["available_node_types"]["gpu_spot"]["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_cluster_node_types(cluster_cfg: dict[str, Any]) -> None:
    types = cluster_cfg["available_node_types"]
    head = types[cluster_cfg["head_node_type"]]
    assert "GPU" not in head["resources"] and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu, "no GPU worker type"
    markets = set()
    for name, t in gpu.items():
        nc = t["node_config"]
        assert nc["InstanceType"].startswith("g5."), name
        assert 0 <= t["min_workers"] <= t["max_workers"], name
        assert t["max_workers"] >= 1, name
        markets.add(nc.get("InstanceMarketOptions", {}).get("MarketType", "on-demand"))
    assert markets == {"spot", "on-demand"}
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cluster_cfg["max_workers"]
    assert cluster_cfg["idle_timeout_minutes"] > 0


def test_cluster_opens_no_port_to_the_world(cluster_cfg: dict[str, Any]) -> None:
    from ray.autoscaler._private.aws.config import _create_default_ssh_inbound_rules

    # Why every node type must name its own group: the group Ray would create allows SSH from anywhere.
    assert any(r["CidrIp"] in WORLD for rule in _create_default_ssh_inbound_rules() for r in rule["IpRanges"])
    for name, t in cluster_cfg["available_node_types"].items():
        assert t["node_config"].get("SecurityGroupIds"), f"{name}: Ray would create a world-open SSH rule"
    for rule in cluster_cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])] + [
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        assert not set(cidrs) & set(WORLD), rule
    assert "0.0.0.0" not in json.dumps(cluster_cfg)  # neither a CIDR nor a bind address (comments aside)
    head_start = " ".join(cluster_cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    # The MLflow server binds the head's private IP, not every interface.
    assert re.search(r"mlflow server --host \"\$HEAD_IP\"", head_start)


def test_cluster_image_is_built_from_cluster_dockerfile(cluster_cfg: dict[str, Any]) -> None:
    image = cluster_cfg["docker"]["image"]
    repo, tag = image.rsplit(":", 1)
    version = _load_toml_version()
    assert repo.endswith("/conclugen") and tag == f"{version}-gpu"
    assert DOCKERFILE.read_text().count(f"FROM {BASE_IMAGE}") == 1
    readme = (REPO / "cluster" / "README.md").read_text()
    assert f"docker build -f cluster/Dockerfile -t conclugen:{tag} ." in readme
    # KubeRay runs the same image.
    for f in ("raycluster.yaml", "rayjob.yaml"):
        assert set(re.findall(r"image: (\S+)", (KUBERAY / f).read_text())) == {image}


def _load_toml_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_cluster_setup_installs_the_project(cluster_cfg: dict[str, Any]) -> None:
    mounts = {remote.removeprefix("/home/ray/conclugen/"): local for remote, local in
              cluster_cfg["file_mounts"].items() if remote.startswith("/home/ray/conclugen/")}
    assert mounts and all(local == f"./{path}" for path, local in mounts.items())
    assert all((REPO / path).exists() for path in mounts)
    # The same source folders the image copies (so the node's re-install matches a fresh image),
    # never the whole repo (its .venv and work/ would be hashed and synced by `ray up`).
    copied = {src.rstrip("/") for srcs in re.findall(r"^COPY(?:\s+--\S+)*\s+(.+)\s+\S+$",
                                                      DOCKERFILE.read_text(), re.M) for src in srcs.split()}
    assert set(mounts) == {src for src in copied if (REPO / src).is_dir()}
    assert any("pip install" in c and "/home/ray/conclugen" in c for c in cluster_cfg["setup_commands"])
    # Every command is valid shell.
    keys = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands"]
    for key in keys:
        for cmd in cluster_cfg[key]:
            res = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert res.returncode == 0, f"{key}: {cmd}\n{res.stderr}"


def test_cluster_env_for_mlflow_s3_and_auth_without_secrets(cluster_cfg: dict[str, Any]) -> None:
    run_opts = " ".join(cluster_cfg["docker"]["run_options"])
    env = dict(re.findall(r"--env (\w+)=(\S+)", run_opts))
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["AWS_DEFAULT_REGION"] == cluster_cfg["provider"]["region"]
    assert env["CONCLUGEN_S3_ROOT"].startswith("s3://")
    head = " ".join(cluster_cfg["head_start_ray_commands"])
    worker = " ".join(cluster_cfg["worker_start_ray_commands"])
    assert "export MLFLOW_TRACKING_URI=http://$(hostname -I" in head
    assert "export MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in worker
    assert '--artifacts-destination "$CONCLUGEN_S3_ROOT/' in head
    # The token travels as a file mount of the launching machine's token, never inline.
    assert cluster_cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    text = CLUSTER_YAML.read_text()
    for pat in SECRET_PATTERNS:
        assert not re.search(pat, text), pat
    assert "AWS_ACCESS_KEY_ID" not in text and "AWS_SECRET_ACCESS_KEY" not in text
    # Nodes get S3 (and ECR) through instance profiles; the README creates both.
    readme = (REPO / "cluster" / "README.md").read_text()
    for name, t in cluster_cfg["available_node_types"].items():
        profile = t["node_config"]["IamInstanceProfile"]["Name"]
        head = name == cluster_cfg["head_node_type"]
        assert profile == ("conclugen-ray-head" if head else "conclugen-ray-worker")
    assert "for ROLE in conclugen-ray-head conclugen-ray-worker" in readme


# ----------------------------------------------------------------------------- KubeRay


def _containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return template["spec"]["containers"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _check_ray_cluster_spec(spec: dict[str, Any], mlflow_uri: str) -> None:
    assert spec["rayVersion"] == "2.60.0"
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"  # no load balancer, no node port
    assert head["rayStartParams"]["num-cpus"] == "0"
    templates = [head["template"]]
    workers = spec["workerGroupSpecs"]
    assert workers
    gpu_groups = 0
    for g in workers:
        assert {"groupName", "rayStartParams", "template", "minReplicas", "maxReplicas"} <= set(g)
        assert 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
        for c in _containers(g["template"]):
            limits = c["resources"]["limits"]
            if int(limits.get("nvidia.com/gpu", 0)) >= 1:
                gpu_groups += 1
                assert c["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
        templates.append(g["template"])
    assert gpu_groups >= 1
    for t in templates:
        for c in _containers(t):
            env = _env(c)
            assert env["MLFLOW_TRACKING_URI"]["value"] == mlflow_uri
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert "value" not in env[key], f"{key} inline"
                ref = env[key]["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "conclugen-s3" and ref["key"]
            assert env["CONCLUGEN_S3_ROOT"]["value"].startswith("s3://")
            assert any(v["mountPath"] == "/dev/shm" for v in c["volumeMounts"])


def _mlflow_service_uri() -> str:
    svc = next(d for d in _docs(MLFLOW_DIR / "mlflow.yaml") if d["kind"] == "Service")
    port = svc["spec"]["ports"][0]["port"]
    return f"http://{svc['metadata']['name']}.conclugen.svc.cluster.local:{port}"


def test_kuberay_raycluster_manifest() -> None:
    doc = _load(KUBERAY / "raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["metadata"]["name"]
    _check_ray_cluster_spec(doc["spec"], _mlflow_service_uri())


def test_kuberay_rayjob_manifest() -> None:
    doc = _load(KUBERAY / "rayjob.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    _check_ray_cluster_spec(spec["rayClusterSpec"], _mlflow_service_uri())
    # Same cluster as the standalone RayCluster (one place to change GPUs, image, env).
    assert spec["rayClusterSpec"] == _load(KUBERAY / "raycluster.yaml")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and argv[1] == "/home/ray/conclugen/jobs/pretrain.py"
    assert (REPO / "jobs" / "pretrain.py").is_file()
    cfg_path = argv[argv.index("--config") + 1]
    assert cfg_path.startswith("/home/ray/conclugen/")
    assert (REPO / cfg_path.removeprefix("/home/ray/conclugen/")).is_file()
    assert argv[2].startswith("s3://") and argv[argv.index("--out") + 1].startswith("s3://")
    yaml.safe_load(spec["runtimeEnvYAML"])


def test_rayjob_entrypoint_parses_with_the_cli() -> None:
    """The entrypoint's arguments are ones `conclugen pretrain` accepts (checked with --help
    appended, so the CLI parses every option and exits before doing any work)."""
    argv = shlex.split(_load(KUBERAY / "rayjob.yaml")["spec"]["entrypoint"])[2:]
    argv = [a.replace("/home/ray/conclugen/", str(REPO) + "/") for a in argv]
    res = subprocess.run([sys.executable, str(REPO / "jobs" / "pretrain.py"), *argv, "--help"],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert res.returncode == 0, res.stderr
    assert "Usage: jobs/pretrain.py" in res.stdout


# ----------------------------------------------------------------------------- MLflow server


def test_mlflow_manifests() -> None:
    docs = _docs(MLFLOW_DIR / "mlflow.yaml")
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service"}
    svc, dep = kinds["Service"], kinds["Deployment"]
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = _env(c)
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "uri"}
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "conclugen-s3"
    args = " ".join(c["args"])
    assert '--backend-store-uri "$MLFLOW_BACKEND_STORE_URI"' in args
    assert '--artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"' in args
    assert svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["containerPort"]
    pg = {d["kind"]: d for d in _docs(MLFLOW_DIR / "postgres.yaml")}
    assert set(pg) == {"Service", "StatefulSet"}
    pg_env = _env(pg["StatefulSet"]["spec"]["template"]["spec"]["containers"][0])
    assert pg_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    for f in MLFLOW_DIR.glob("*.yaml"):
        for pat in SECRET_PATTERNS:
            assert not re.search(pat, f.read_text()), (f, pat)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_allowed_hosts_accept_the_service_name(tmp_path: Path) -> None:
    """A real `mlflow server` with the manifest's MLFLOW_SERVER_ALLOWED_HOSTS answers requests
    addressed to the in-cluster Service name (what Ray pods use) and refuses other Host headers."""
    dep = next(d for d in _docs(MLFLOW_DIR / "mlflow.yaml") if d["kind"] == "Deployment")
    allowed = _env(dep["spec"]["template"]["spec"]["containers"][0])["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"]
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ALLOWED_HOSTS=allowed, HOME=str(tmp_path))
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
           "--artifacts-destination", str(tmp_path / "artifacts")]
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def get(host: str, path: str = "/api/2.0/mlflow/experiments/search?max_results=1") -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if get(f"127.0.0.1:{port}", "/health") == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        in_cluster = _mlflow_service_uri().removeprefix("http://")
        assert get(in_cluster) == 200
        assert get("localhost:5000") == 200  # kubectl port-forward
        assert get("evil.example.com:5000") == 403
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_installs_the_project_with_gpu_extra() -> None:
    import tomllib

    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == [BASE_IMAGE]
    assert 'pip install ".[gpu]"' in text
    assert "pip install --no-deps ." in text
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("faiss-gpu-cu12") for d in extras["gpu"])
    # Every COPY source exists and is not excluded by the Dockerfile's ignore file.
    ignore = (REPO / "cluster" / "Dockerfile.dockerignore").read_text().splitlines()
    for srcs in re.findall(r"^COPY(?:\s+--\S+)*\s+(.+)\s+\S+$", text, re.M):
        for src in srcs.split():
            assert (REPO / src).exists(), src
            assert f"!{src}" in ignore or f"!{src}/**" in ignore, src


# ----------------------------------------------------------------------------- cluster config


def test_cluster_conclugen_config_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    from conclugen.config import load_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.conclugen.svc.cluster.local:5000")
    cfg = load_config(REPO / "cluster" / "configs" / "cluster.yaml")
    b = cfg.extract.backbones
    assert b.text == "hf:j-hartmann/emotion-english-distilroberta-base"
    assert b.asr == "hf:facebook/s2t-large-librispeech-asr"
    assert b.image == "hf:microsoft/resnet-152"
    assert b.video3d == "hf:MCG-NJU/videomae-base-finetuned-kinetics"
    assert b.audio == "hf:facebook/wav2vec2-base"
    assert cfg.train.use_gpu is True and cfg.extract.num_gpus_per_actor > 0
    assert cfg.storage.s3_endpoint is None and cfg.storage.s3_region  # real AWS S3
    assert cfg.storage.access_key_id is None and cfg.storage.secret_access_key is None
    # The tracking URI is the cluster's MLflow server, from the environment every node has.
    assert cfg.tracking_uri() == "http://mlflow.conclugen.svc.cluster.local:5000"
    assert (REPO / cfg.tune.space).is_file()
    # The hub ids are ones the backbone registry understands.
    from conclugen.features.backbones.registry import parse_spec

    for spec in json.loads(b.model_dump_json()).values():
        assert parse_spec(spec)[0] == "hf"
