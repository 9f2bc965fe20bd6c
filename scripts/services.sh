#!/usr/bin/env bash
# Make sure RabbitMQ (with its management API and the consistent-hash exchange) and Redis run on this
# machine; start or install them. Idempotent: when both already answer it only makes sure the plugins are
# enabled (online, no restart). Used by `make test` and `make demo`.
set -uo pipefail

RABBIT_PORT=${RABBIT_PORT:-5672}
RABBIT_API_PORT=${RABBIT_API_PORT:-15672}
RABBIT_PROMETHEUS_PORT=${RABBIT_PROMETHEUS_PORT:-15692}
REDIS_PORT=${REDIS_PORT:-6379}

say() { echo "services: $*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {  # port seconds
  local i
  for ((i = 0; i < $2 * 4; i++)); do port_open "$1" && return 0; sleep 0.25; done
  return 1
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

install_missing() {
  local missing=()
  command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
  command -v redis-server >/dev/null || missing+=(redis-server)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

#: Plugins tradebus needs: the management API, rabbitmq_prometheus (docs/operations.md) and the
#: consistent-hash exchange of the market-data shards.
PLUGINS=(rabbitmq_management rabbitmq_prometheus rabbitmq_consistent_hash_exchange)

enable_plugins() {  # on a running broker: enabling an enabled plugin is a no-op; no restart
  export PATH="$PATH:/usr/sbin:/usr/lib/rabbitmq/bin"
  local enabled
  enabled=$(as_root rabbitmq-plugins list -e -m 2>/dev/null) || return 0  # not our broker to manage
  for plugin in "${PLUGINS[@]}"; do
    grep -qx "$plugin" <<<"$enabled" && continue
    say "enabling the RabbitMQ plugin $plugin"
    as_root rabbitmq-plugins enable "$plugin" >/dev/null || { say "could not enable $plugin"; return 1; }
  done
}

start_rabbitmq() {
  export PATH="$PATH:/usr/sbin:/usr/lib/rabbitmq/bin"
  if ! port_open "$RABBIT_PORT"; then
    say "starting RabbitMQ"
    as_root rabbitmq-plugins enable --offline "${PLUGINS[@]}" >/dev/null 2>&1 || true
    # -detached can hang here; run it in its own session instead.
    as_root setsid nohup rabbitmq-server >/tmp/rabbitmq.log 2>&1 </dev/null &
    wait_port "$RABBIT_PORT" 120 || { say "RabbitMQ did not open port $RABBIT_PORT (see /tmp/rabbitmq.log)"; return 1; }
  fi
  if ! port_open "$RABBIT_API_PORT"; then
    say "enabling the RabbitMQ management API"
    as_root rabbitmq-plugins enable rabbitmq_management >/dev/null
    wait_port "$RABBIT_API_PORT" 60 || { say "management API did not open port $RABBIT_API_PORT"; return 1; }
  fi
  enable_prometheus
}

# rabbitmq_prometheus: queue depths, unacked and consumers on :15692 (docs/operations.md). Enabled online,
# no restart, on a broker that runs without it.
enable_prometheus() {
  if ! port_open "$RABBIT_PROMETHEUS_PORT"; then
    say "enabling rabbitmq_prometheus"
    as_root rabbitmq-plugins enable rabbitmq_prometheus >/dev/null
    wait_port "$RABBIT_PROMETHEUS_PORT" 60 || { say "rabbitmq_prometheus did not open port $RABBIT_PROMETHEUS_PORT"; return 1; }
  fi
}

start_redis() {
  if ! port_open "$REDIS_PORT"; then
    say "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
    wait_port "$REDIS_PORT" 30 || { say "Redis did not open port $REDIS_PORT"; return 1; }
  fi
}

if port_open "$RABBIT_PORT" && port_open "$RABBIT_API_PORT" && port_open "$RABBIT_PROMETHEUS_PORT" \
  && port_open "$REDIS_PORT"; then
  enable_plugins || exit 1
  say "RabbitMQ, its management API and Redis are up"
  exit 0
fi
install_missing
status=0
start_rabbitmq && enable_plugins || status=1
start_redis || status=1
[ $status = 0 ] && say "RabbitMQ, its management API and Redis are up"
exit $status
