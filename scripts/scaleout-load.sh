#!/usr/bin/env bash
# Cross-node load run (docs/scale-out.md, "Tests and figures"): starts a redis-server of its
# own and two `kasuhara-guard serve` nodes sharing it, then runs the load generator over both
# nodes with the supervisor subscribed on the second, so the report's
# `cross_node_alert_latency_ms` is the alert latency through Redis.
#
#   scripts/scaleout-load.sh [BINARY] [LOADGEN ARGS...]
#
# BINARY      the kasuhara-guard binary (default target/release/kasuhara-guard); taken as the
#             binary when the first argument does not start with "-".
# LOADGEN ARGS passed to `loadgen` after `--addr A --addr B --subscribe-addr B --server-pid PA
#             --server-pid PB`; `--conversations 1000 --rate 5000 --duration 10 --json` fill
#             in whichever of those flags is not given. E.g. a quick check on a debug build:
#               scripts/scaleout-load.sh target/debug/kasuhara-guard \
#                 --conversations 20 --rate 100 --duration 3
#
# Needs redis-server (Redis 7; Debian package redis-server, /usr/bin/redis-server, or set
# REDIS_SERVER). Redis listens on a free loopback port with its files in a temporary directory
# (`--appendonly yes --appendfsync everysec --save ""`, as deploy/redis.conf); the nodes take
# free loopback ports for gRPC and metrics and run from the repository root (its
# dictionaries/) with every KASUHARA_* variable unset, so the shell's settings do not leak in.
# Progress goes to stderr, the load generator's report to stdout (with --json, its last line
# is one JSON object). Everything started here is stopped on exit, and the directory removed;
# the exit status is the load generator's.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="target/release/kasuhara-guard"
if [ "$#" -gt 0 ] && [[ "$1" != -* ]]; then
  bin="$1"
  shift
fi
redis_server="${REDIS_SERVER:-/usr/bin/redis-server}"
startup_seconds=60
started=$SECONDS

step() { printf '== scaleout-load [%3ss] %s\n' "$((SECONDS - started))" "$*" >&2; }
die() { echo "scaleout-load: $*" >&2; exit 1; }

cd "$root"
[ -x "$bin" ] || die "no kasuhara-guard binary at $bin: build it (cargo build --release) or pass its path"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
[ -x "$redis_server" ] ||
  die "no redis-server at $redis_server: apt-get install redis-server, or set REDIS_SERVER"

for name in $(compgen -e); do
  if [[ "$name" == KASUHARA_* ]]; then
    unset "$name"
  fi
done

work="$(mktemp -d "${TMPDIR:-/tmp}/kg-scaleout.XXXXXX")"
pids=()
loadgen_pid=""

# Runs from the EXIT trap (shellcheck cannot see that call).
# shellcheck disable=SC2317
cleanup() {
  local status=$?
  # The load generator if it still runs, then the nodes (SIGTERM: they drain), then Redis;
  # only processes this script started (a pid is forgotten once reaped).
  if [ -n "$loadgen_pid" ]; then
    kill -TERM "$loadgen_pid" 2>/dev/null || true
    wait "$loadgen_pid" 2>/dev/null || true
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Whether something accepts connections on loopback port $1.
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Sets `port` to a loopback port nobody listens on and that this script has not handed out
# yet (not a $(...) subshell, which would forget what was handed out). The /dev/tcp probe
# connects, so a port that refuses the connection is free; it is only reserved once its
# process binds it, so a race with another program is possible, and then that start fails.
taken=" "
free_port() {
  while :; do
    port=$((20000 + RANDOM % 40000))
    if [[ "$taken" != *" $port "* ]] && ! tcp_open "$port"; then
      taken+="$port "
      return
    fi
  done
}

# Waits until `probe` succeeds; fails, with the log's tail, when the process dies or is late.
wait_for() {
  local what="$1" pid="$2" log="$3"
  shift 3
  local deadline=$((SECONDS + startup_seconds))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2 || true
      die "$what exited during start-up (log above)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 20 "$log" >&2 || true
      die "$what did not start within ${startup_seconds}s (log above)"
    fi
    sleep 0.1
  done
}

free_port
redis_port="$port"
step "redis-server on 127.0.0.1:$redis_port (dir $work/redis)"
mkdir -p "$work/redis"
"$redis_server" --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" \
  --appendonly yes --appendfsync everysec --save "" >"$work/redis.log" 2>&1 &
pids+=("$!")
wait_for redis-server "$!" "$work/redis.log" tcp_open "$redis_port"

names=(a b)
node_ports=()
node_pids=()
for name in "${names[@]}"; do
  free_port
  metrics_port="$port"
  free_port
  step "node $name: serve on 127.0.0.1:$port (metrics 127.0.0.1:$metrics_port)"
  "$bin" serve --addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$metrics_port" \
    --redis "redis://127.0.0.1:$redis_port" --log-filter warn >"$work/node-$name.log" 2>&1 &
  pids+=("$!")
  node_pids+=("$!")
  node_ports+=("$port")
done
for i in 0 1; do
  wait_for "node ${names[i]}" "${node_pids[i]}" "$work/node-${names[i]}.log" \
    "$bin" health --addr "http://127.0.0.1:${node_ports[i]}" --timeout 1s
done
step "both nodes SERVING (pids ${node_pids[*]})"

# Defaults for the flags the caller did not give.
args=("$@")
given=" ${args[*]-} "
defaults=(--conversations 1000 --rate 5000 --duration 10)
for ((i = 0; i < ${#defaults[@]}; i += 2)); do
  if [[ "$given" != *" ${defaults[i]} "* && "$given" != *" ${defaults[i]}="* ]]; then
    args+=("${defaults[i]}" "${defaults[i + 1]}")
  fi
done
if [[ "$given" != *" --json "* ]]; then
  args+=(--json)
fi

a="127.0.0.1:${node_ports[0]}"
b="127.0.0.1:${node_ports[1]}"
step "loadgen --addr $a --addr $b --subscribe-addr $b ${args[*]}"
# In the background and waited for, so a signal to this script is handled at once (bash
# defers traps until a foreground child ends) and the cleanup stops the load generator too.
"$bin" loadgen --addr "$a" --addr "$b" --subscribe-addr "$b" \
  --server-pid "${node_pids[0]}" --server-pid "${node_pids[1]}" "${args[@]}" &
loadgen_pid=$!
status=0
wait "$loadgen_pid" || status=$?
loadgen_pid=""
step "loadgen exited with status $status; stopping the nodes and redis-server"
exit "$status"
