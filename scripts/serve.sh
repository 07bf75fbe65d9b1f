#!/usr/bin/env bash
# Quick start: set up what is missing, then run dockguard (API + worker) on 127.0.0.1:8000.
# Arguments go to `dockguard serve` (e.g. --port 9000, --no-worker).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

# Image scans need Trivy's vulnerability DB. Fetch one when there is none usable; on a machine
# that cannot (offline, no DOCKGUARD_SCANNER_DB_REPOSITORY mirror), this quick start turns image
# scanning off rather than failing every job. A production deployment must not do that.
if [ -z "${DOCKGUARD_SCAN_IMAGE:-}" ] && ! .venv/bin/dockguard scanner status >/dev/null 2>&1; then
  if ! .venv/bin/dockguard scanner update-db >/dev/null 2>&1; then
    cat >&2 <<'WARNING'
serve: WARNING: no usable Trivy vulnerability DB and none could be downloaded.
serve: WARNING: image vulnerability scanning is OFF for this run (DOCKGUARD_SCAN_IMAGE=false).
serve: WARNING: see README "Scanner setup" to provide a DB; Dockerfile scans still apply.
WARNING
    export DOCKGUARD_SCAN_IMAGE=false
  fi
fi
exec .venv/bin/dockguard serve "$@"
