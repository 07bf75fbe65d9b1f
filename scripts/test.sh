#!/usr/bin/env bash
# Set up what is missing, then run the tests. Arguments go to pytest (e.g. -k happy, -x); paths
# are relative to the repository. With no path, both tiers run: tests/unit (pure logic), then
# tests/e2e (a real Redis started by the tests, and the real Docker Engine).
# When every path given lies under tests/unit (`bash scripts/test.sh tests/unit`), only the Python
# environment is set up: no engine, no Redis, no images.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

unit_tier="$(pwd -P)/tests/unit/"
unit_only=""
for arg in "$@"; do
  path=${arg%%::*}  # tests/unit/test_x.py::test_y names a test in that file
  # Options, and option values that are not paths (`-k happy`), say nothing about the tier.
  if [[ $arg == -* || ! -e $path ]]; then continue; fi
  case "$(realpath -- "$path")/" in
    "$unit_tier"*) unit_only=${unit_only:-yes} ;;
    *) unit_only=no ;;  # any other path (tests/e2e, tests, a file elsewhere): the full set-up
  esac
done

if [ "$unit_only" = yes ]; then
  setup_only=python  # read by setup.sh
fi
source scripts/setup.sh
if [ "$unit_only" != yes ]; then
  # A registry on loopback (Debian's docker-registry), for the allowed-pull test.
  command -v docker-registry >/dev/null 2>&1 || apt_install docker-registry
  # Headless Chromium (Debian's), for the docs page test (tests/e2e/test_docs_page.py).
  command -v chromium >/dev/null 2>&1 || apt_install chromium
  # jq, which the README's curl examples use (tests/e2e/test_readme.py), and promtool (Debian's
  # prometheus), which checks deploy/monitoring's rules (tests/e2e/test_monitoring.py).
  command -v jq >/dev/null 2>&1 || apt_install jq
  command -v promtool >/dev/null 2>&1 || apt_install prometheus
  # Redis Sentinel, for the forced-failover test (tests/e2e/test_sentinel.py).
  command -v redis-sentinel >/dev/null 2>&1 || apt_install redis-sentinel
  # Compose, for the compose stack test (tests/e2e/test_compose.py): v2 if the docker client has
  # it, else Debian's docker-compose 1.29.
  docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 \
    || apt_install docker-compose
  # gVisor's runsc, registered with the engine (test_gvisor*.py, and the [runsc] half of
  # test_adversarial.py and test_run_sandbox.py). A machine that cannot run it still runs the
  # suite: those tests then fail, saying why.
  bash scripts/gvisor.sh || say "gVisor is not usable here: its tests will fail, saying why"
fi
exec .venv/bin/pytest "$@"
