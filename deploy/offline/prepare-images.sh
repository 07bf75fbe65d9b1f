#!/usr/bin/env bash
# The images dockguard's stack needs, made from Debian packages only, for a host with no registry
# (an air-gapped site, or these development machines):
#   - a Python base: Debian bookworm's python3 (3.11) on a debootstrap'd bookworm, and
#   - a Redis image: Debian bookworm's redis-server (7.0),
# both on one Debian base layer, and the way to move them (and dockguard's own images) to a site
# without a registry as one tarball.
#
#   deploy/offline/prepare-images.sh build             # make the images (idempotent)
#   deploy/offline/prepare-images.sh save FILE [IMAGE…] # docker save them (and IMAGE…) into FILE
#   deploy/offline/prepare-images.sh load FILE         # docker load FILE on the site's engine
#
# Names, all configurable (the compose file reads the same two variables):
#   DOCKGUARD_DEBIAN_IMAGE  (debian:bookworm-slim)          the base; debootstrap'd when missing
#   DOCKGUARD_PYTHON_IMAGE  (dockguard/python:3.11-bookworm) FROM of deploy/Dockerfile
#   DOCKGUARD_REDIS_IMAGE   (dockguard/redis:7-bookworm)     compose.yaml's redis service
#   DEBIAN_MIRROR           (the host's apt mirror, else http://deb.debian.org/debian)
#   DOCKGUARD_EXTRA_CA_DIR  (/usr/local/share/ca-certificates) *.crt the Python base trusts too:
#                           by default the host's own additions, e.g. a TLS-inspecting proxy's CA
# The builds install packages with apt from that mirror (a site's own Debian mirror works), so
# the engine's default bridge must reach it; nothing else is fetched. `build` needs root only to
# debootstrap the base, and only when the base image is missing.
set -euo pipefail
cd "$(dirname "$0")"

debian_image=${DOCKGUARD_DEBIAN_IMAGE:-debian:bookworm-slim}
python_image=${DOCKGUARD_PYTHON_IMAGE:-dockguard/python:3.11-bookworm}
redis_image=${DOCKGUARD_REDIS_IMAGE:-dockguard/redis:7-bookworm}
say() { echo "prepare-images: $*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

host_mirror() {
  local sources=/etc/apt/sources.list.d/debian.sources
  if [ -r "$sources" ]; then awk '/^URIs:/ {print $2; exit}' "$sources"; fi
}

# A minimal bookworm like the official debian:bookworm-slim: deb822 sources for bookworm,
# -updates and -security, no apt lists or caches, none of the host's resolv.conf or hostname.
build_debian() {
  local mirror=${DEBIAN_MIRROR:-$(host_mirror)}
  mirror=${mirror:-http://deb.debian.org/debian}
  command -v debootstrap >/dev/null 2>&1 || {
    say "debootstrap is missing: apt-get install debootstrap"; exit 1; }
  [ "$(id -u)" = 0 ] || { say "debootstrap needs root (or load $debian_image first)"; exit 1; }
  local root="$work/rootfs"
  say "debootstrap bookworm from $mirror (about a minute)"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -f "$root/etc/apt/sources.list"
  local security=${DEBIAN_SECURITY_MIRROR:-${mirror%/debian}/debian-security}
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$debian_image" >/dev/null
  say "built $debian_image"
}

build() {
  local started=$SECONDS
  have_image "$debian_image" || build_debian
  # --pull=false: the base is local; a registry lookup would fail (or, worse, succeed elsewhere).
  local context="$work/python"
  mkdir "$context"
  cp python.Dockerfile "$context/Dockerfile"
  mkdir "$context/extra-ca"
  local ca_dir=${DOCKGUARD_EXTRA_CA_DIR:-/usr/local/share/ca-certificates} cert
  for cert in "$ca_dir"/*.crt; do
    [ -f "$cert" ] || continue
    cp "$cert" "$context/extra-ca/"
    say "the Python base trusts $cert too"
  done
  say "building $python_image"
  docker build -q --pull=false --build-arg "DEBIAN_IMAGE=$debian_image" \
    -t "$python_image" "$context" >/dev/null
  say "building $redis_image"
  docker build -q --pull=false -f redis.Dockerfile --build-arg "DEBIAN_IMAGE=$debian_image" \
    -t "$redis_image" . >/dev/null
  say "done in $(( SECONDS - started )) s; point compose (or your builds) at them with:"
  echo "export DOCKGUARD_PYTHON_IMAGE=$python_image DOCKGUARD_REDIS_IMAGE=$redis_image"
}

case "${1:-}" in
  build) build ;;
  save)
    [ $# -ge 2 ] || { say "usage: $0 save FILE [IMAGE…]"; exit 2; }
    file=$2; shift 2
    # One tarball: layers shared by the images (the Debian base) are stored once.
    docker save "$debian_image" "$python_image" "$redis_image" "$@" | gzip -1 >"$file.part"
    mv "$file.part" "$file"
    say "saved $(du -h "$file" | cut -f1) to $file"
    ;;
  load)
    [ $# -eq 2 ] || { say "usage: $0 load FILE"; exit 2; }
    docker load -i "$2"
    ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
