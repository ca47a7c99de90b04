#!/usr/bin/env bash
# Tools for the browser test (garden_assets_tests/test_ui_browser.py, `pytest -m browser`):
# Debian's Chromium at /usr/bin/chromium and Playwright's Python package driving it.
# Idempotent. Never runs `playwright install` (its browser download is blocked here; the test uses
# executable_path=/usr/bin/chromium instead).
set -euo pipefail
cd "$(dirname "$0")/.."
PLAYWRIGHT_VERSION="${PLAYWRIGHT_VERSION:-1.65.2}"
PY="${VENV_PY:-.venv/bin/python}"

if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
fi
/usr/bin/chromium --version

if [ ! -x "$PY" ]; then
  echo "no $PY: run 'make setup' first" >&2
  exit 1
fi
if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('playwright') != '$PLAYWRIGHT_VERSION')" 2>/dev/null; then
  "$PY" -m pip install -q "playwright==$PLAYWRIGHT_VERSION"
fi
"$PY" -c "import importlib.metadata as m; print('playwright', m.version('playwright'))"
