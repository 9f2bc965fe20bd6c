#!/usr/bin/env bash
# Redis with Sentinel on one machine, for tests and for users: a master, a replica and three sentinels, from
# the installed redis-server (a sentinel is `redis-server CONF --sentinel`), each on a port, a directory
# and a config file of its own. The main Redis (6379) is never touched.
#
#   scripts/cluster-redis.sh start        start what is not running (idempotent), wait until the sentinels
#                                         agree on a master that has a replica in sync; print `export` lines
#   scripts/cluster-redis.sh status       each process, each node's role, the master each sentinel names
#   scripts/cluster-redis.sh kill-master  SIGKILL the master, wait until the sentinels agree on a new one
#   scripts/cluster-redis.sh stop         stop everything it started and remove its directory
#
# `eval "$(scripts/cluster-redis.sh start)"` points tradebus at it (docs/reliability.md). Messages go to
# stderr, the export lines alone to stdout. A node started again after a kill (`start`) rejoins as a replica
# of the master the sentinels name. Settings (environment):
#   CLUSTER_REDIS_DIR            where everything lives (default ${TMPDIR:-/tmp}/tradebus-cluster-redis)
#   CLUSTER_REDIS_PORTS          the two data nodes, the first starts as master (default "6391 6392")
#   CLUSTER_REDIS_SENTINEL_PORTS the three sentinels (default "26391 26392 26393")
#   CLUSTER_REDIS_MASTER_NAME    the name the sentinels monitor (default tradebus)
#   CLUSTER_REDIS_DOWN_AFTER_MS  how long the master may not answer before a sentinel deems it down (1000)
#   CLUSTER_REDIS_FAILOVER_TIMEOUT_MS  Sentinel's failover-timeout (5000)
#   CLUSTER_REDIS_WAIT_SECONDS   how long start and kill-master wait (default 60)
set -euo pipefail

DIR=${CLUSTER_REDIS_DIR:-${TMPDIR:-/tmp}/tradebus-cluster-redis}
read -r -a NODES <<<"${CLUSTER_REDIS_PORTS:-6391 6392}"
read -r -a SENTINELS <<<"${CLUSTER_REDIS_SENTINEL_PORTS:-26391 26392 26393}"
NAME=${CLUSTER_REDIS_MASTER_NAME:-tradebus}
DOWN_AFTER_MS=${CLUSTER_REDIS_DOWN_AFTER_MS:-1000}
FAILOVER_TIMEOUT_MS=${CLUSTER_REDIS_FAILOVER_TIMEOUT_MS:-5000}
WAIT_SECONDS=${CLUSTER_REDIS_WAIT_SECONDS:-60}
HOST=127.0.0.1
QUORUM=2
REDIS_SERVER=$(command -v redis-server || echo /usr/bin/redis-server)
REDIS_CLI=$(command -v redis-cli || echo /usr/bin/redis-cli)

say() { echo "cluster-redis: $*" >&2; }
die() { say "$*"; exit 1; }
cli() { "$REDIS_CLI" -h "$HOST" -p "$1" --no-auth-warning "${@:2}" 2>/dev/null; }
answers() { [ "$(cli "$1" PING)" = PONG ]; }
node_dir() { echo "$DIR/node-$1"; }
sentinel_dir() { echo "$DIR/sentinel-$1"; }

# The pid in DIR/redis.pid when that process is alive and is the redis-server of PORT (never another one).
ours() {  # dir port
  local pid
  pid=$(cat "$1/redis.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "redis-server.*:$2\b" || return 1
  echo "$pid"
}

# The master (host:port) a sentinel names, or nothing.
named_master() { cli "$1" SENTINEL get-master-addr-by-name "$NAME" | paste -sd: -; }

# The master every answering sentinel names, when all three answer and agree.
agreed_master() {
  local port master first=""
  for port in "${SENTINELS[@]}"; do
    master=$(named_master "$port") || return 1
    [ -n "$master" ] || return 1
    [ -z "$first" ] && first=$master
    [ "$master" = "$first" ] || return 1
  done
  echo "$first"
}

write_node_config() {  # port
  local dir
  dir=$(node_dir "$1")
  mkdir -p "$dir"
  [ -f "$dir/redis.conf" ] && return 0  # rewritten by Sentinel (CONFIG REWRITE) since: keep it
  cat >"$dir/redis.conf" <<EOF
port $1
bind $HOST
daemonize yes
dir $dir
pidfile $dir/redis.pid
logfile $dir/redis.log
save ""
appendonly yes
appendfsync everysec
# A replica (re)joining syncs at once, not after the default 5 s wait for others to join too.
repl-diskless-sync-delay 0
EOF
  if [ "$1" != "${NODES[0]}" ]; then echo "replicaof $HOST ${NODES[0]}" >>"$dir/redis.conf"; fi
}

write_sentinel_config() {  # port
  local dir
  dir=$(sentinel_dir "$1")
  mkdir -p "$dir"
  [ -f "$dir/sentinel.conf" ] && return 0  # Sentinel keeps its state (the current master) in it
  cat >"$dir/sentinel.conf" <<EOF
port $1
bind $HOST
daemonize yes
dir $dir
pidfile $dir/redis.pid
logfile $dir/sentinel.log
sentinel monitor $NAME $HOST ${NODES[0]} $QUORUM
sentinel down-after-milliseconds $NAME $DOWN_AFTER_MS
sentinel failover-timeout $NAME $FAILOVER_TIMEOUT_MS
sentinel parallel-syncs $NAME 1
EOF
}

wait_for() {  # seconds description command...
  local seconds=$1 what=$2 i
  shift 2
  for ((i = 0; i < seconds * 5; i++)); do "$@" && return 0; sleep 0.2; done
  die "$what: not within ${seconds}s (logs in $DIR)"
}

start_node() {  # port
  local port=$1 dir master extra=()
  dir=$(node_dir "$port")
  ours "$dir" "$port" >/dev/null && return 0
  ! answers "$port" || die "port $port answers but is not this cluster's (see $dir)"
  # Back after a kill: straight to replica of the master the sentinels name, not a second master.
  master=$(agreed_master || true)
  if [ -n "$master" ] && [ "$master" != "$HOST:$port" ]; then extra=(--replicaof "${master%:*}" "${master##*:}"); fi
  say "starting Redis on $port${extra:+ as a replica of $master}"
  "$REDIS_SERVER" "$dir/redis.conf" "${extra[@]}" >/dev/null
  wait_for 20 "Redis on $port" answers "$port"
}

start_sentinel() {  # port
  local port=$1 dir
  dir=$(sentinel_dir "$port")
  ours "$dir" "$port" >/dev/null && return 0
  ! answers "$port" || die "port $port answers but is not this cluster's (see $dir)"
  say "starting a sentinel on $port"
  "$REDIS_SERVER" "$dir/sentinel.conf" --sentinel >/dev/null
  wait_for 20 "sentinel on $port" answers "$port"
}

# The sentinels agree on a master that is up, knows a replica in sync, and each knows the two others.
# (Outputs are read whole before grep: with pipefail, a `grep -q` that stops early could fail the pipe.)
settled() {
  local master port info others
  master=$(agreed_master) || return 1
  info=$(cli "${master##*:}" INFO replication | tr -d '\r') || return 1
  grep -q '^role:master' <<<"$info" || return 1
  grep -Eq '^slave[0-9]+:.*state=online' <<<"$info" || return 1
  for port in "${SENTINELS[@]}"; do
    info=$(cli "$port" SENTINEL master "$NAME") || return 1
    others=$(grep -A1 -x num-other-sentinels <<<"$info" | tail -1)
    [ "${others:-0}" -ge 2 ] 2>/dev/null || return 1
    [ "$(grep -A1 -x flags <<<"$info" | tail -1)" = master ] || return 1
  done
}

exports() {
  local list="" port
  for port in "${SENTINELS[@]}"; do list+="${list:+,}$HOST:$port"; done
  echo "export TRADEBUS_REDIS_SENTINELS=$list"
  echo "export TRADEBUS_REDIS_MASTER=$NAME"
  echo "export TRADEBUS_REDIS_URL=redis://$HOST:${NODES[0]}/0"
  echo "export TRADEBUS_REDIS_WAIT_REPLICAS=1"
}

start() {
  [ -x "$REDIS_SERVER" ] || die "redis-server is not installed (apt-get install redis-server)"
  local port
  for port in "${NODES[@]}"; do write_node_config "$port"; done
  for port in "${SENTINELS[@]}"; do write_sentinel_config "$port"; done
  # Nodes first (a node coming back asks the running sentinels which master to follow), then sentinels.
  for port in "${NODES[@]}"; do start_node "$port"; done
  for port in "${SENTINELS[@]}"; do start_sentinel "$port"; done
  wait_for "$WAIT_SECONDS" "the sentinels agreeing on a master with a replica in sync" settled
  say "master $(agreed_master) (name $NAME), sentinels on ${SENTINELS[*]}"
  exports
}

status() {
  local port pid role ok=0
  for port in "${NODES[@]}"; do
    if pid=$(ours "$(node_dir "$port")" "$port"); then
      role=$(cli "$port" INFO replication | tr -d '\r' | sed -n 's/^role://p')
      echo "node $port: up (pid $pid, $role)"
    else
      echo "node $port: down"; ok=1
    fi
  done
  for port in "${SENTINELS[@]}"; do
    if pid=$(ours "$(sentinel_dir "$port")" "$port"); then
      echo "sentinel $port: up (pid $pid), master $(named_master "$port" || echo unknown)"
    else
      echo "sentinel $port: down"; ok=1
    fi
  done
  return $ok
}

kill_master() {
  local master port pid started
  master=$(agreed_master) || die "the sentinels do not agree on a master (run start first)"
  port=${master##*:}
  pid=$(ours "$(node_dir "$port")" "$port") || die "the master $master is not one of this cluster's nodes"
  started=$(date +%s%N)
  kill -9 "$pid"
  say "SIGKILLed the master on $port (pid $pid)"
  new_master() { local now; now=$(agreed_master) && [ "$now" != "$master" ]; }
  wait_for "$WAIT_SECONDS" "a new master" new_master
  say "new master $(agreed_master) after $(( ($(date +%s%N) - started) / 1000000 )) ms"
}

alive() {  # pids: whether any of them still runs (a zombie, with no command line left, does not)
  local pid
  for pid in "$@"; do [ -n "$(tr -d '\0' <"/proc/$pid/cmdline" 2>/dev/null)" ] && return 0; done
  return 1
}

stop() {
  local dir pids=() pid i
  for dir in "$DIR"/node-* "$DIR"/sentinel-*; do
    [ -d "$dir" ] || continue
    if pid=$(ours "$dir" "${dir##*-}"); then pids+=("$pid"); fi
  done
  # Everything is removed next, so no node needs a graceful shutdown (a master would wait for its replica).
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 10; i++)); do alive "${pids[@]}" || break; sleep 0.1; done
    kill -9 "${pids[@]}" 2>/dev/null || true
  fi
  rm -rf "$DIR"
  say "stopped${pids[*]:+ ${#pids[@]} processes}; removed $DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  kill-master) kill_master ;;
  *) echo "usage: $0 start|stop|status|kill-master" >&2; exit 2 ;;
esac
