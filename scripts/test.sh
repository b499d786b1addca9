#!/usr/bin/env bash
# Set up everything the test suite needs, then run it. Safe to run again: it installs only what is
# missing. Extra arguments go to pytest (e.g. `bash scripts/test.sh -k settings`).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

# System tools the loopback tests drive for real. Installed when we can (root on Debian/Ubuntu);
# otherwise the tests that need them fail under CI=true with this same hint and skip loudly elsewhere.
need=()
command -v skopeo >/dev/null || need+=(skopeo)
command -v docker-registry >/dev/null || need+=(docker-registry)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v strace >/dev/null || need+=(strace)  # proves gcloud talks to loopback only
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: missing ${need[*]}; install with: sudo apt-get install -y ${need[*]}" >&2
  fi
fi
if ! command -v gcloud >/dev/null; then
  echo "note: gcloud is missing; the setup-cluster tests need the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)" >&2
fi

# The tests spend most of their time in child processes (gcloud, inv, skopeo): one worker per core
# (pytest-xdist) nearly halves the wall time. TEST_WORKERS=0 runs them in this process.
workers=(-n "${TEST_WORKERS:-auto}")
for arg in "$@"; do
  case "$arg" in -n|-n*|--numprocesses*) workers=() ;; esac
done
exec .venv/bin/python -m pytest "${workers[@]}" "$@"
