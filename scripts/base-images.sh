#!/usr/bin/env bash
# Build the local base images dockguard's tests and quick start use. No registry is reachable here,
# so they are made from Debian packages: `busybox:latest` from busybox-static (< 1 s) and
# `debian:bookworm-slim` with debootstrap (~1 min). Each is built once per engine and reused:
# re-importing would change its id and invalidate every build cache on top of it.
set -euo pipefail

need() { command -v "$1" >/dev/null 2>&1; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
apt_install() {
  [ "$(id -u)" = 0 ] || { echo "base-images: $* missing and not root" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! have_image busybox:latest; then
  [ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && ldd /bin/busybox 2>&1 | grep -q "not a dynamic" \
    || apt_install busybox-static
  mkdir -p "$work/busybox"
  cp /bin/busybox "$work/busybox/busybox"
  cat >"$work/busybox/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["sh"]
DOCKERFILE
  docker build -q -t busybox:latest "$work/busybox" >/dev/null
  echo "base-images: built busybox:latest"
fi

if ! have_image debian:bookworm-slim; then
  need debootstrap || apt_install debootstrap
  root="$work/rootfs"
  # The mirror and apt sources are the host's own, so the image fetches from where the host does.
  sources=/etc/apt/sources.list.d/debian.sources
  mirror=$(awk '/^URIs:/ {print $2; exit}' "$sources")
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -f "$root/etc/apt/sources.list"
  cp "$sources" "$root/etc/apt/sources.list.d/debian.sources"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
  echo "base-images: built debian:bookworm-slim"
fi
