#!/usr/bin/env bash
# Everything serve.sh and test.sh need on a fresh Debian machine, installed only when missing:
# a Docker Engine (Debian's docker.io, started without systemd), redis-server, poetry, the project
# in .venv, and the local base images. Sourced by serve.sh and test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "setup: $*" >&2; }
need_root() {
  [ "$(id -u)" = 0 ] || { say "$1 is missing and installing it needs root"; exit 1; }
}
apt_updated=""
apt_install() {
  need_root "$*"
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The Python side: poetry in its own venv under .tools/, so the system Python is never modified,
# and the project in .venv.
setup_python_env() {
  if [ ! -x .tools/poetry/bin/python ] || ! .tools/poetry/bin/python -c "import poetry" 2>/dev/null; then
    python3 -c "import venv, ensurepip" 2>/dev/null || apt_install python3-venv
    say "installing poetry into .tools/poetry"
    python3 -m venv .tools/poetry
    .tools/poetry/bin/python -m pip install -q 'poetry>=2,<3'
  fi
  .tools/poetry/bin/python scripts/poetry_simple.py install --no-interaction --quiet
}
# A caller that sets setup_only=python before sourcing this (test.sh, for the unit tests alone)
# gets only the Python side: no engine, no Redis, no images.
if [ "${setup_only:-}" = python ]; then
  setup_python_env
  return 0 2>/dev/null || exit 0
fi

# Docker Engine: a reachable daemon is used as it is; otherwise install and start one.
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  need_root "a running Docker Engine"
  say "starting dockerd (log: /var/log/dockerd.log)"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { say "dockerd did not start; see /var/log/dockerd.log"; exit 1; }
fi

command -v redis-server >/dev/null 2>&1 || apt_install redis-server

setup_python_env

bash scripts/base-images.sh
bash scripts/proxy-image.sh  # the build egress proxy (DOCKGUARD_BUILD_NETWORK=egress)
