#!/usr/bin/env bash
# Quick start: set up what is missing, then run dockguard (API + worker) on 127.0.0.1:8000.
# Arguments go to `dockguard serve` (e.g. --port 9000, --no-worker).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/dockguard serve "$@"
