#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, without Docker, for the fault tests and for trying the
# clustered mode (docs/scaling.md):
#
#   scripts/cluster.sh start      start (or complete) the cluster, wait until it is up, print `export` lines
#   scripts/cluster.sh status     each node up or down; the `export` lines when all is up (exit 1 otherwise)
#   scripts/cluster.sh kill N     SIGKILL node N's Erlang VM (beam), as a crashed host would go
#   scripts/cluster.sh restart N  start node N again (its data kept) and wait until it is back in the cluster
#   scripts/cluster.sh stop       stop every node, remove every file this made
#
#   eval "$(scripts/cluster.sh start)"    # then tradebus, its workers and tests use the cluster
#
# Nodes rabbit1@localhost..rabbit3@localhost from the installed rabbitmq-server package: AMQP on 5681-5683,
# management on 15681-15683, Erlang distribution on 25681-25683, all on 127.0.0.1, each with its own config
# file and data directory under $TRADEBUS_CLUSTER_DIR (default /tmp/tradebus-cluster), and an Erlang cookie
# of their own there. The machine's own RabbitMQ (5672/25672, /etc/rabbitmq) is not read nor touched; epmd
# is shared with it, which is how Erlang works. The nodes cluster by peer discovery (classic config):
# rabbit1 starts alone, rabbit2 and rabbit3 find it and join. When scripts/cluster-redis.sh exists (Redis
# master, replica and sentinels), `start`, `status` and `stop` run it too and pass its `export` lines on.
# Progress goes to stderr, `export` lines to stdout.
set -euo pipefail

DIR=${TRADEBUS_CLUSTER_DIR:-/tmp/tradebus-cluster}
NODES=(1 2 3)
HERE=$(cd "$(dirname "$0")" && pwd)
REDIS_SCRIPT="$HERE/cluster-redis.sh"
RABBIT_BIN=${RABBIT_BIN:-/usr/lib/rabbitmq/bin}
START_TIMEOUT=${TRADEBUS_CLUSTER_TIMEOUT:-180}

say() { echo "cluster: $*" >&2; }
die() { say "$*"; exit 1; }
amqp_port() { echo $((5680 + $1)); }
api_port() { echo $((15680 + $1)); }
dist_port() { echo $((25680 + $1)); }
node() { echo "rabbit$1@localhost"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# owned PID N: PID runs, and is a process this script started for node N (its environment names node N's
# pid file under $DIR). A pid file outlives its process, and the pid may be reused by anything: never
# trust, nor signal, a pid without this check.
owned() {
  [[ "$1" =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null || return 1
  grep -qxF "RABBITMQ_PID_FILE=$DIR/rabbit$2/pid" < <(tr '\0' '\n' 2>/dev/null <"/proc/$1/environ")
}
# Node N's Erlang VM (beam, owned by us), or nothing.
beam_pid() {
  local pid cmd
  pid=$(cat "$DIR/rabbit$1/pid" 2>/dev/null) || return 0
  owned "$pid" "$1" || return 0
  cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 0
  [[ "$cmd" == *beam* ]] && echo "$pid" || true
}
# Node N's start wrapper (rabbitmq-server, owned by us), or nothing.
wrapper_pid() {
  local pid
  pid=$(cat "$DIR/rabbit$1/wrapper.pid" 2>/dev/null) || return 0
  owned "$pid" "$1" && echo "$pid" || true
}
alive() { [ -n "$(beam_pid "$1")" ]; }

# The environment every rabbitmq-* command of node N runs with: this cluster's files only.
node_env() {
  local n=$1 base="$DIR/rabbit$1"
  echo HOME="$DIR" \
    RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
    RABBITMQ_NODENAME="$(node "$n")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
    RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    RABBITMQ_CONFIG_FILE="$base/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$base/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$base/mnesia" \
    RABBITMQ_MNESIA_DIR="$base/mnesia/$(node "$n")" \
    RABBITMQ_PLUGINS_EXPAND_DIR="$base/plugins-expand" \
    RABBITMQ_LOG_BASE="$base/log" \
    RABBITMQ_PID_FILE="$base/pid" \
    RABBITMQ_QUORUM_DIR="$base/mnesia/$(node "$n")/quorum" \
    RABBITMQ_STREAM_DIR="$base/mnesia/$(node "$n")/stream"
}
ctl() {  # ctl N args...: rabbitmqctl against node N
  local n=$1; shift
  # shellcheck disable=SC2046
  env $(node_env "$n") "$RABBIT_BIN/rabbitmqctl" -n "$(node "$n")" "$@"
}

write_files() {
  mkdir -p "$DIR"
  # $DIR is in /tmp by default: one that another user made (or a symlink) could hand us their cookie.
  [ ! -L "$DIR" ] && [ "$(stat -c %u "$DIR")" = "$(id -u)" ] || die "$DIR is not a directory of $(id -un)'s"
  chmod 700 "$DIR"
  if [ -e "$DIR/.erlang.cookie" ] && { [ -L "$DIR/.erlang.cookie" ] \
    || [ "$(stat -c %u "$DIR/.erlang.cookie")" != "$(id -u)" ]; }; then
    die "$DIR/.erlang.cookie is not $(id -un)'s: remove it"
  fi
  if [ ! -s "$DIR/.erlang.cookie" ]; then
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/.erlang.cookie")
  fi
  chmod 400 "$DIR/.erlang.cookie"
  : >"$DIR/rabbitmq-env.conf"
  echo '[rabbitmq_management].' >"$DIR/enabled_plugins"
  local n base
  for n in "${NODES[@]}"; do
    base="$DIR/rabbit$n"
    mkdir -p "$base/mnesia" "$base/log"
    {
      echo "listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")"
      echo "management.tcp.ip = 127.0.0.1"
      echo "management.tcp.port = $(api_port "$n")"
      # A minority (one node cut off from the other two) pauses rather than diverging (docs/scaling.md).
      echo "cluster_partition_handling = pause_minority"
      # Statistics (the management API's consumers, connections, queue depths) every second, not every 5.
      echo "collect_statistics_interval = 1000"
      # The test machine's disk is small and shared: do not stop publishers at the default 50 MB free.
      echo "disk_free_limit.absolute = 10MB"
      if [ "$n" != 1 ]; then
        echo "cluster_formation.peer_discovery_backend = classic_config"
        echo "cluster_formation.classic_config.nodes.1 = $(node 1)"
      fi
    } >"$base/rabbitmq.conf"
    # Erlang distribution on 127.0.0.1 only, as the machine's own node has it.
    echo '[{kernel, [{inet_dist_use_interface, {127,0,0,1}}]}].' >"$base/advanced.config"
  done
}

start_node() {
  local n=$1 base="$DIR/rabbit$1"
  # One start of node N at a time (two test sessions may run `start` at once): the check and the launch
  # under a lock on $DIR, and a node whose start is under way (its wrapper runs, the pid file is not
  # written yet) is not started twice, which would fail on the taken ports and remove its pid file.
  exec 8<"$DIR"
  flock 8
  if alive "$n" || [ -n "$(wrapper_pid "$n")" ]; then flock -u 8; return 0; fi
  if port_open "$(amqp_port "$n")" || port_open "$(dist_port "$n")"; then
    die "port $(amqp_port "$n") or $(dist_port "$n") is taken by something else than $(node "$n")"
  fi
  rm -f "$base/pid"
  say "starting $(node "$n") (AMQP $(amqp_port "$n"), management $(api_port "$n"))"
  # Schedulers sleep when idle instead of spinning: three nodes share the machine's cores.
  # shellcheck disable=SC2046
  env $(node_env "$n") RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none" \
    setsid nohup "$RABBIT_BIN/rabbitmq-server" >"$base/log/console.log" 2>&1 </dev/null &
  echo $! >"$base/wrapper.pid"
  flock -u 8
}

wait_node() {  # wait until node N runs its apps, answers on AMQP and on the management API
  local n=$1 deadline=$((SECONDS + START_TIMEOUT))
  until [ -s "$DIR/rabbit$n/pid" ] && ctl "$n" await_startup --timeout 5 >/dev/null 2>&1 \
    && port_open "$(amqp_port "$n")" && port_open "$(api_port "$n")"; do
    if [ $SECONDS -ge $deadline ]; then
      die "$(node "$n") did not start in ${START_TIMEOUT}s (see $DIR/rabbit$n/log)"
    fi
    # The wrapper this start launched: its pid is ours even before it has exec'd into the node's
    # environment (which wrapper_pid checks), so only its absence means it exited.
    if [ -s "$DIR/rabbit$n/wrapper.pid" ] && ! kill -0 "$(cat "$DIR/rabbit$n/wrapper.pid")" 2>/dev/null \
      && ! alive "$n"; then
      die "$(node "$n") exited while starting (see $DIR/rabbit$n/log/console.log)"
    fi
    sleep 0.5
  done
}

running_nodes() {  # the cluster's running nodes, as node 1..3 sees them (the first that answers)
  local n
  for n in "${NODES[@]}"; do
    if alive "$n"; then
      ctl "$n" eval 'lists:sort(rabbit_nodes:all_running()).' 2>/dev/null | tr -d "[]'\n" | tr ',' ' ' && return 0
    fi
  done
}

wait_clustered() {  # wait until every live node of ours is a running member of one cluster
  local deadline=$((SECONDS + START_TIMEOUT)) want n running
  want=0
  for n in "${NODES[@]}"; do alive "$n" && want=$((want + 1)); done
  while true; do
    running=$(running_nodes || true)
    [ "$(wc -w <<<"$running")" -ge "$want" ] && return 0
    [ $SECONDS -ge $deadline ] && die "the nodes did not form one cluster in ${START_TIMEOUT}s: $running"
    sleep 0.5
  done
}

exports() {
  local n urls=() apis=()
  for n in "${NODES[@]}"; do
    urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")//")
    apis+=("http://guest:guest@127.0.0.1:$(api_port "$n")")
  done
  local IFS=';'
  echo "export TRADEBUS_BROKER_URL='${urls[*]}'"
  echo "export TRADEBUS_MANAGEMENT_URL='${apis[*]}'"
  echo "export TRADEBUS_QUEUE_TYPE=quorum"
  echo "export TRADEBUS_CLUSTER_DIR='$DIR'"
}

redis() {  # redis ACTION: scripts/cluster-redis.sh ACTION when it exists, passing its export lines on
  if [ -x "$REDIS_SCRIPT" ] || [ -f "$REDIS_SCRIPT" ]; then
    local out
    out=$(bash "$REDIS_SCRIPT" "$1") || return  # its failure is ours (a pipe's status would be grep's)
    grep '^export ' <<<"$out" || true
  fi
}

cmd_start() {
  write_files
  start_node 1
  wait_node 1
  local n
  for n in "${NODES[@]:1}"; do start_node "$n"; done
  for n in "${NODES[@]:1}"; do wait_node "$n"; done
  wait_clustered
  say "running: $(running_nodes)"
  exports
  redis start
}

cmd_status() {
  local n up=0
  for n in "${NODES[@]}"; do
    if alive "$n"; then
      say "$(node "$n") up (pid $(beam_pid "$n"), AMQP $(amqp_port "$n"), management $(api_port "$n"))"
      up=$((up + 1))
    else
      say "$(node "$n") down"
    fi
  done
  [ $up -gt 0 ] && say "running: $(running_nodes || true)"
  [ $up -eq ${#NODES[@]} ] || return 1
  exports
  redis status
}

cmd_kill() {
  local n=${1:?kill N}
  alive "$n" || die "$(node "$n") is not running"
  say "SIGKILL $(node "$n") (pid $(beam_pid "$n"))"
  kill -KILL "$(beam_pid "$n")"
  # Its wrapper follows it at once; gone, it no longer stands for a start under way (start_node).
  local deadline=$((SECONDS + 10))
  while [ -n "$(wrapper_pid "$n")" ] && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
}

cmd_restart() {
  local n=${1:?restart N}
  [ -d "$DIR/rabbit$n" ] || die "no cluster in $DIR: scripts/cluster.sh start"
  write_files
  start_node "$n"
  wait_node "$n"
  wait_clustered
  say "running: $(running_nodes)"
}

cmd_stop() {
  local n pid deadline=$((SECONDS + 30))
  for n in "${NODES[@]}"; do
    for pid in $(beam_pid "$n") $(wrapper_pid "$n"); do
      kill -KILL "$pid" 2>/dev/null || true
    done
  done
  for n in "${NODES[@]}"; do
    while alive "$n"; do
      [ $SECONDS -ge $deadline ] && die "$(node "$n") (pid $(beam_pid "$n")) did not die in 30s; $DIR kept"
      sleep 0.1
    done
  done
  redis stop >/dev/null || true
  rm -rf "$DIR"
  say "stopped; $DIR removed"
}

# Sourced (tests/unit/test_cluster_script.py), it only defines its functions.
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

case "${1:-}" in
  start) cmd_start ;;
  status) cmd_status ;;
  kill) cmd_kill "${2:-}" ;;
  restart) cmd_restart "${2:-}" ;;
  stop) cmd_stop ;;
  *) echo "usage: $0 start|stop|status|kill N|restart N" >&2; exit 2 ;;
esac
