#!/usr/bin/env bash
# gVisor for dockguard: installs Debian's `runsc` when missing, registers it with the running
# Docker Engine as the runtime `runsc` without restarting it (a `runtimes` entry merged into its
# daemon.json, then SIGHUP: Engine 20.10 reloads runtimes live), and checks that a container with
# dockguard's run flags really runs under gVisor. Safe to run again: then it only checks.
#
#     scripts/gvisor.sh                          # install + register + check (root)
#     scripts/gvisor.sh --check                  # only the check
#     scripts/gvisor.sh --build-engine [SOCKET]  # also start a dedicated build engine (below)
#     scripts/gvisor.sh --stop-build-engine [SOCKET]
#
# The main engine's default runtime stays runc; dockguard uses runsc for its runs with
# DOCKGUARD_RUNTIME=runsc. `runtimeArgs: ["--network=none", "--oci-seccomp"]`: the first is
# required with dockguard's flags (without it every start fails with "cannot run with network
# enabled in root network namespace"); the second makes runsc apply the container's seccomp
# profile (the engine's default one) inside gVisor, which it otherwise ignores: without it a run
# may, e.g., make user namespaces that runc's profile refuses.
#
# The build engine (`--build-engine`, default socket /run/dockguard-gvisor/docker.sock) is a
# second dockerd whose *default* runtime is runsc, so that the classic builder's RUN containers
# (POST /build takes no runtime) run under gVisor too. It has its own socket, data root
# (/var/lib/<the socket's directory name>-docker: /var/lib/dockguard-gvisor-docker by default),
# exec root, pidfile, config file and supervised containerd,
# its own network namespace (only loopback) and no networking of its own (`bridge: none`, no
# iptables): its builds need `--network none` (DOCKGUARD_BUILD_NETWORK=none). Its images are its own: load a base with
# `docker save busybox:latest | docker -H unix://SOCKET load`. It is started in the background
# (log: /var/log/dockguard-gvisor-dockerd.log) and keeps running until --stop-build-engine.
set -euo pipefail

RUNTIME_ARGS='["--network=none", "--oci-seccomp"]'
# gVisor's kernel says who it is in /proc/version (a fixed Linux 4.4.0 release string; `dmesg`
# would say "Starting gVisor", but the engine's seccomp profile refuses syslog(2) to a run).
GVISOR_VERSION='Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016'
RUNSC=/usr/bin/runsc
CHECK_IMAGE=busybox:latest
LABEL=dockguard.bench=gvisor  # on every container this creates (all are --rm)
BUILD_SOCKET_DEFAULT=/run/dockguard-gvisor/docker.sock
BUILD_LOG=/var/log/dockguard-gvisor-dockerd.log

say() { echo "gvisor: $*" >&2; }
die() { say "error: $*"; exit 1; }
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

mode=install
build_socket=""
while [ $# -gt 0 ]; do
  case "$1" in
    --check) mode=check ;;
    --build-engine|--stop-build-engine)
      [ "$1" = --build-engine ] && action=start || action=stop
      if [ $# -gt 1 ] && [ "${2#-}" = "$2" ]; then build_socket=$2; shift; fi
      build_socket=${build_socket:-$BUILD_SOCKET_DEFAULT}
      [ "${build_socket#/}" != "$build_socket" ] || die "the build engine's socket must be an absolute path"
      [ "$action" = start ] && mode=${mode/install/install+build} || mode=stop-build
      ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root"; }

# --- the main engine -----------------------------------------------------------------------------

# The dockerd serving the docker CLI (never the build engine, which also runs a dockerd).
main_dockerd_pid() {
  local pid
  if [ -r /var/run/docker.pid ]; then
    pid=$(cat /var/run/docker.pid)
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] && { echo "$pid"; return; }
  fi
  # A build engine runs in a network namespace of its own: the main one is in the host's.
  for pid in $(pidof dockerd); do
    [ "$(readlink "/proc/$pid/ns/net")" = "$(readlink /proc/1/ns/net)" ] && { echo "$pid"; return; }
  done
  die "no dockerd process on this machine (the engine must run here to register a runtime)"
}

# The daemon.json the running dockerd reads on SIGHUP: its --config-file, else the default.
main_config_file() {
  python3 - "$1" <<'PY'
import sys
args = open(f"/proc/{sys.argv[1]}/cmdline", "rb").read().decode().split("\0")
path = "/etc/docker/daemon.json"
for i, arg in enumerate(args):
    if arg == "--config-file" and i + 1 < len(args):
        path = args[i + 1]
    elif arg.startswith("--config-file="):
        path = arg.split("=", 1)[1]
print(path)
PY
}

# Print whether `docker info` lists runsc with our path and arguments: yes / other / no.
engine_runtime_state() {
  docker "$@" info --format '{{json .Runtimes}}' 2>/dev/null | python3 -c '
import json, sys
want = {"path": sys.argv[1], "runtimeArgs": json.loads(sys.argv[2])}
try:
    runtimes = json.load(sys.stdin)
except ValueError:
    print("no"); raise SystemExit
found = runtimes.get("runsc")
print("no" if found is None else "yes" if found == want else "other")
' "$RUNSC" "$RUNTIME_ARGS"
}

install_runsc() {
  if command -v runsc >/dev/null 2>&1; then
    say "runsc present: $(dpkg-query -W -f='${Version}' runsc 2>/dev/null || echo "not from a package: $(command -v runsc)")"
    return
  fi
  need_root "installing runsc"
  local policy candidate suite
  policy=$(apt-cache policy runsc 2>/dev/null || true)
  if ! grep -q 'Candidate: [0-9]' <<<"$policy"; then
    say "apt-get update (runsc has no install candidate yet)"
    apt-get update -qq
    policy=$(apt-cache policy runsc)
  fi
  grep -q 'Candidate: [0-9]' <<<"$policy" || die "no runsc package in this machine's apt sources"
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")-backports
  if grep -q " $suite/" <<<"$policy"; then
    # -t: backports is pinned low (priority 100) and would never be chosen by itself.
    candidate=$(apt-cache policy -t "$suite" runsc | awk '/Candidate:/ {print $2}')
    say "installing runsc $candidate from $suite"
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq -t "$suite" runsc >/dev/null
  else
    candidate=$(awk '/Candidate:/ {print $2}' <<<"$policy")
    say "$suite is not in this machine's apt sources (none is added here): installing" \
        "runsc $candidate from the configured suites; for a newer build, add $suite and" \
        "run 'apt-get install -t $suite runsc'"
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq runsc >/dev/null
  fi
  [ -x "$RUNSC" ] || die "runsc installed but $RUNSC is missing"
  say "installed runsc $(dpkg-query -W -f='${Version}' runsc)"
}

# Merge runtimes.runsc into a daemon.json (created if missing, every other key kept, written
# atomically, untouched when already right). Prints "changed" or "unchanged".
merge_runtime() {
  python3 - "$1" "$RUNSC" "$RUNTIME_ARGS" <<'PY'
import json, os, sys, tempfile
path, runsc, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    with open(path) as f:
        text = f.read()
except FileNotFoundError:
    text = ""
try:
    config = json.loads(text) if text.strip() else {}
except ValueError as exc:
    sys.exit(f"gvisor: error: {path} is not valid JSON ({exc}); not touching it")
if not isinstance(config, dict) or not isinstance(config.get("runtimes", {}), dict):
    sys.exit(f"gvisor: error: {path} is not a JSON object with an object `runtimes`")
want = {"path": runsc, "runtimeArgs": args}
runtimes = config.setdefault("runtimes", {})
if runtimes.get("runsc") == want:
    print("unchanged")
    raise SystemExit
if "runsc" in runtimes:
    print(f"gvisor: replacing {path}'s runtimes.runsc {runtimes['runsc']}", file=sys.stderr)
runtimes["runsc"] = want
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".daemon.json.")
with os.fdopen(fd, "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.chmod(tmp, os.stat(path).st_mode & 0o7777 if text else 0o644)
os.replace(tmp, path)
print("changed")
PY
}

register_runtime() {
  local state pid config
  state=$(engine_runtime_state)
  [ "$state" = yes ] && { say "the engine already has runtime runsc"; return; }
  need_root "registering runsc with the engine"
  pid=$(main_dockerd_pid)
  config=$(main_config_file "$pid")
  [ "$(merge_runtime "$config")" = changed ] && say "added runtimes.runsc to $config"
  say "reloading dockerd (pid $pid) with SIGHUP; it is not restarted"
  kill -HUP "$pid"
  for _ in $(seq 60); do
    [ "$(engine_runtime_state)" = yes ] && { say "the engine now lists runtime runsc"; return; }
    sleep 0.5
  done
  die "dockerd did not pick up runsc from $config within 30 s; its log says why (a reload" \
      "error such as a conflict with a --add-runtime flag, or invalid JSON)"
}

# A trivial container with dockguard's run flags must say it runs on gVisor's kernel, under the
# engine's seccomp profile (mode 2: a filter).
check_run() {
  local out
  docker "$@" image inspect "$CHECK_IMAGE" >/dev/null 2>&1 \
    || die "$CHECK_IMAGE is not on the engine (${*:-main}); nothing can be pulled here"
  [ "$(engine_runtime_state "$@")" = yes ] \
    || die "the engine (${*:-main}) has no runtime runsc with path $RUNSC and $RUNTIME_ARGS" \
           "(run $0 without --check to register it)"
  if ! out=$(timeout 60 docker "$@" run --rm --label "$LABEL" --runtime=runsc --network none \
      --read-only --cap-drop ALL --security-opt no-new-privileges -u 1000 "$CHECK_IMAGE" \
      sh -c 'cat /proc/version; grep "^Seccomp:" /proc/self/status' 2>&1); then
    die "a runsc container did not run: ${out:0:800}"
  fi
  grep -qF "$GVISOR_VERSION" <<<"$out" \
    || die "the container ran but its /proc/version is not gVisor's: ${out:0:300}"
  grep -qE '^Seccomp:[[:space:]]+2$' <<<"$out" \
    || die "the container runs without a seccomp filter under gVisor: ${out:0:300}"
  say "ok: a container with dockguard's run flags runs under gVisor, with a seccomp filter" \
      "($(head -n 1 <<<"$out"))"
}

# --- the build engine ----------------------------------------------------------------------------

build_dir() { dirname "$build_socket"; }
# One data root per build engine: two dockerds on one data root would corrupt it.
build_data_root() { echo "/var/lib/$(basename "$(build_dir)")-docker"; }

# The build engine's directory holds its socket, pidfile and config, written as root: it must be
# root's own and not writable by anyone else, and must not be the main engine's.
check_build_dir() {
  local dir
  dir=$(build_dir)
  case "$dir" in
    /var/run|/run|/var/run/docker|/run/docker|/etc/docker|/)
      die "$dir is not a directory for the build engine: give its socket a directory of its" \
          "own (default $(dirname "$BUILD_SOCKET_DEFAULT"))" ;;
  esac
  if [ -e "$dir" ]; then
    [ -d "$dir" ] && [ ! -L "$dir" ] || die "$dir is not a directory"
    [ "$(stat -c %u "$dir")" = 0 ] || die "$dir is not owned by root"
    [ $(( 0$(stat -c %a "$dir") & 022 )) = 0 ] || die "$dir is writable by others than root"
  fi
}

build_engine_pid() {
  local pidfile pid
  pidfile="$(build_dir)/docker.pid"
  [ -r "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 1
  # Only a dockerd started with this engine's config file: never the main engine.
  tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF "$(build_dir)/daemon.json" || return 1
  echo "$pid"
}

start_build_engine() {
  need_root "the build engine"
  check_build_dir
  local dir config pid host data_root
  dir=$(build_dir)
  data_root=$(build_data_root)
  host="unix://$build_socket"
  if pid=$(build_engine_pid) && docker -H "$host" info >/dev/null 2>&1; then
    say "the build engine is already running (pid $pid, $host)"
  else
    mkdir -p -m 0755 "$dir" "$data_root"
    config="$dir/daemon.json"
    rm -f "$config"  # written anew below (never through a link someone left there)
    # Everything in its own file: it must not read the main engine's /etc/docker/daemon.json
    # (which would also set the main engine's data root, hosts…).
    python3 - "$config" "$RUNSC" "$RUNTIME_ARGS" "$host" "$dir" "$data_root" <<'PY'
import json, os, sys
path, runsc, args, host, run_dir, data_root = sys.argv[1:]
config = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "w")
json.dump({
    "hosts": [host],
    "data-root": data_root,
    "exec-root": f"{run_dir}/exec",
    "pidfile": f"{run_dir}/docker.pid",
    "runtimes": {"runsc": {"path": runsc, "runtimeArgs": json.loads(args)}},
    "default-runtime": "runsc",
    # No networking of its own: no docker0 of its own, no iptables rules, no sysctl changes;
    # its builds and containers use network `none`.
    "bridge": "none",
    "iptables": False,
    "ip-forward": False,
    "ip-masq": False,
    "storage-driver": "overlay2",
    "cgroup-parent": "/dockguard-gvisor",
}, config, indent=2)
config.close()
PY
    say "starting the build engine on $host in its own network namespace (log: $BUILD_LOG)"
    # Its own network namespace: a dockerd with `bridge: none` deletes any `docker0` in its
    # namespace when it starts (moby's removeDefaultBridgeInterface) — in the host's, the main
    # engine's bridge. There it has none, and nothing it does reaches the host's network.
    # setsid: the engine outlives this script and its terminal.
    setsid nohup unshare --net sh -c 'ip link set lo up && exec dockerd --config-file "$1"' \
      sh "$config" >>"$BUILD_LOG" 2>&1 </dev/null &
    for _ in $(seq 120); do docker -H "$host" info >/dev/null 2>&1 && break; sleep 0.5; done
    docker -H "$host" info >/dev/null 2>&1 \
      || die "the build engine did not start within 60 s; see $BUILD_LOG"
  fi
  [ "$(docker -H "$host" info --format '{{.DefaultRuntime}}')" = runsc ] \
    || die "the build engine's default runtime is not runsc"
  [ "$(readlink "/proc/$(build_engine_pid)/ns/net")" != "$(readlink "/proc/$(main_dockerd_pid)/ns/net")" ] \
    || die "the build engine shares the main engine's network namespace; stop it ($0 --stop-build-engine)"
  if ! docker -H "$host" image inspect "$CHECK_IMAGE" >/dev/null 2>&1; then
    say "loading $CHECK_IMAGE from the main engine into the build engine"
    docker save "$CHECK_IMAGE" | docker -H "$host" load >/dev/null
  fi
  check_run -H "$host"
  # The classic builder (DOCKER_BUILDKIT=0, as dockguard's POST /build) runs RUN under the
  # engine's default runtime: the step must see gVisor's kernel.
  local out tag="dockguard-gvisor-check:$$"
  if ! out=$(printf 'FROM %s\nLABEL %s\nRUN grep -F "%s" /proc/version\n' \
        "$CHECK_IMAGE" "$LABEL" "$GVISOR_VERSION" \
      | DOCKER_BUILDKIT=0 timeout 120 docker -H "$host" build --network none --no-cache \
        --force-rm -t "$tag" - 2>&1); then
    die "a RUN step on the build engine failed: ${out: -800}"
  fi
  docker -H "$host" rmi "$tag" >/dev/null
  say "ok: the build engine's RUN steps run under gVisor"
  say "build engine ready: DOCKER_HOST=$host (pid $(build_engine_pid)); stop it with" \
      "$0 --stop-build-engine $build_socket"
}

stop_build_engine() {
  need_root "stopping the build engine"
  local pid
  if ! pid=$(build_engine_pid); then
    say "no build engine running for $build_socket"
    return
  fi
  say "stopping the build engine (pid $pid); its data root $(build_data_root) is kept"
  kill -TERM "$pid"
  for _ in $(seq 60); do
    [ -e "/proc/$pid" ] || { say "stopped"; return; }
    sleep 0.5
  done
  die "the build engine (pid $pid) did not stop within 30 s"
}

case "$mode" in
  check) check_run ;;
  stop-build) stop_build_engine ;;
  install|install+build)
    install_runsc
    register_runtime
    check_run
    [ "$mode" = install+build ] && start_build_engine
    ;;
esac
exit 0
