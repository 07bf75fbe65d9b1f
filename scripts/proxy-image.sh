#!/usr/bin/env bash
# Build the build-egress proxy image, dockguard/egress-proxy:1: Debian's squid on the local
# debian:bookworm-slim base (scripts/base-images.sh), from Debian's packages only (no registry is
# reachable). In DOCKGUARD_BUILD_NETWORK=egress mode dockguard starts one hardened container of it
# per job and gives it its configuration (the job's allowlist) at start; see
# src/dockguard/sandbox/egress.py. Built once per engine; safe to run again.
set -euo pipefail

image=dockguard/egress-proxy:1
docker image inspect "$image" >/dev/null 2>&1 && exit 0
docker image inspect debian:bookworm-slim >/dev/null 2>&1 \
  || { echo "proxy-image: debian:bookworm-slim is missing; run scripts/base-images.sh" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/Dockerfile" <<'DOCKERFILE'
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends squid \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /etc/squid/conf.d \
 && squid -v | head -1
USER 65534:65534
CMD ["squid", "-N", "-f", "/tmp/squid.conf"]
DOCKERFILE
docker build -q --network bridge -t "$image" "$work" >/dev/null
echo "proxy-image: built $image"
