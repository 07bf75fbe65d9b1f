#!/usr/bin/env bash
# Set up what is missing, then run the whole test suite against a real Redis (started by the
# tests) and the real Docker Engine. Arguments go to pytest (e.g. -k happy, -x).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Tests only: a registry on loopback (Debian's docker-registry), for the allowed-pull test.
command -v docker-registry >/dev/null 2>&1 || apt_install docker-registry
exec .venv/bin/pytest "$@"
