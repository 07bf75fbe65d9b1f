#!/usr/bin/env bash
# Every dockguard benchmark, one after the other, with defaults suited to the 2-core development
# machine; prints each one's figures (and the load average before each) and asserts nothing.
#
#     bash bench/all.sh            # about 30 minutes on 2 cores
#
# What it runs:
#   bench/api.py --rounds 2 --duration 5    API vs a bare uvicorn hello (wrk), 1/16/64 connections
#   bench/pipeline.py --runs 5              one job vs by hand, ratios, stage profile
#   bench/throughput.py --jobs 100          jobs/min at 1x1, 1x2, 1x4 and 2x4 worker slots
#   bench/memory.py --jobs 300              RSS idle, over 300 jobs (1000 is the script's default:
#                                           ~30 min here), and during a 20 s log flood
#   bench/runtimes.py --repeat 5 --jobs 5   runc vs runsc (gVisor): containers and whole jobs
#                                           (needs runsc registered: scripts/gvisor.sh)
# Each script's docstring says what it measures and how; each starts its own private
# redis-server on a free loopback port and removes what it created. Needs wrk, redis-server and
# the Docker Engine with busybox:latest (see the README's Benchmarks section).
# A benchmark that fails does not stop the others; the exit status says whether any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
failed=()

run() {
    echo
    echo "=== $* (load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ))"
    "$python" "$@" || failed+=("$1")
}

run bench/api.py --rounds 2 --duration 5
run bench/pipeline.py --runs 5
run bench/throughput.py --jobs 100
run bench/memory.py --jobs 300
run bench/runtimes.py --repeat 5 --jobs 5

if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
