#!/usr/bin/env bash
# Stop the services started by start-services.sh for DIR (default: .services in the repo).
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${1:-$here/.services}"
py="${PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py=python3
cd "$here"
exec "$py" -m conclugen.devtools stop --dir "$dir"
