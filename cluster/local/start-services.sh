#!/usr/bin/env bash
# Start a local SeaweedFS S3 server and an MLflow server on loopback, data under DIR.
# Prints shell exports (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ..., MLFLOW_TRACKING_URI); use:
#   eval "$(cluster/local/start-services.sh [DIR])"
# They are also written to DIR/services.env (mode 0600). Stop with cluster/local/stop-services.sh DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${1:-$here/.services}"
py="${PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py=python3
shift || true
cd "$here"
exec "$py" -m conclugen.devtools start --dir "$dir" "$@"
