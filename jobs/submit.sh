#!/usr/bin/env bash
# Submit a ConCluGen job to a Ray cluster with this directory as the job's working dir.
#
#   RAY_ADDRESS=http://127.0.0.1:8265 jobs/submit.sh [ray job submit options] -- python jobs/pretrain.py ARGS
#
# Wraps `ray job submit --working-dir . --runtime-env-json …`: the working dir goes up without the
# virtualenv, the local work dir, .git and caches (Ray refuses working dirs over its size limit,
# and a venv would be hundreds of MB).
#
# Environment: the job gets the cluster's own (MLFLOW_TRACKING_URI, S3 region/endpoint and
# credentials are set on every node by ray-cluster.yaml, the KubeRay manifests, or the shell that
# ran `ray start`). Nothing is forwarded from this shell by default: a laptop's values (a
# port-forwarded http://127.0.0.1:5000, a local S3 endpoint) would be wrong inside the cluster.
# Forward variables explicitly with CONCLUGEN_SUBMIT_ENV="NAME1,NAME2" (not credentials: a
# job's runtime env is visible in the dashboard).
#
# Extra excludes: CONCLUGEN_SUBMIT_EXCLUDES="data,*.mp4". Token auth: as for any Ray CLI call
# (RAY_AUTH_MODE=token and ~/.ray/auth_token or RAY_AUTH_TOKEN).
set -euo pipefail

if [[ -z "${RAY_ADDRESS:-}" ]]; then
  echo "error: set RAY_ADDRESS to the cluster's Jobs API, e.g. http://127.0.0.1:8265" >&2
  exit 2
fi
if [[ "$#" -eq 0 ]]; then
  sed -n '2,4p' "$0" >&2
  exit 2
fi

RAY_BIN="${RAY_BIN:-ray}"
PYTHON_BIN="${PYTHON_BIN:-python3}"

runtime_env="$("$PYTHON_BIN" - <<'EOF'
import json, os

# gitignore syntax, relative to the working dir; a leading / anchors at its top.
excludes = [
    "/.venv", "/venv", "/work", "/mlruns", "/mlartifacts", "/mlflow.db", ".git", "__pycache__",
    "*.pyc", ".pytest_cache", ".ruff_cache", ".mypy_cache", "*.egg-info", ".ipynb_checkpoints",
]
excludes += [e.strip() for e in os.environ.get("CONCLUGEN_SUBMIT_EXCLUDES", "").split(",") if e.strip()]
forward = [n.strip() for n in os.environ.get("CONCLUGEN_SUBMIT_ENV", "").split(",") if n.strip()]
secret = [n for n in forward if any(w in n.upper() for w in ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY"))]
if secret:
    raise SystemExit(f"error: CONCLUGEN_SUBMIT_ENV names credentials {secret}; the cluster must provide them")
env_vars = {k: os.environ[k] for k in forward if k in os.environ}
print(json.dumps({"excludes": excludes, "env_vars": env_vars}))
EOF
)"

exec "$RAY_BIN" job submit --address "$RAY_ADDRESS" --working-dir . --runtime-env-json "$runtime_env" "$@"
