#!/bin/bash
# Recovery time: N persistent messages (SIZE bytes) on a durable queue,
# then RUNS restarts of amqp-broker, each timed from the start of the
# process until it accepts connections, with the broker's own "recovered
# ... in ..." log line. The first restart follows a SIGTERM (clean) or,
# with KILL=1, a SIGKILL; the others follow a SIGTERM.
#
# RABBITMQ=1 also measures RabbitMQ (Debian's package) on a private node
# (RABBIT_NODE, RABBIT_PORT: bench@localhost on 5690, started and stopped
# here if not running, so a node on 5672 is left alone), with the same
# messages: RUNS times `rabbitmqctl stop_app` / `start_app` (the Erlang VM
# stays up) timed until the queue is listed; then the whole node stopped
# and started again (with KILL=1: its VM killed with SIGKILL), timed from
# the start command until the queue is listed, which is what the
# amqp-broker figure measures.
# Build first: cargo build --release -p amqp-broker -p amqp-perftest
set -eu
cd "$(dirname "$0")/.."
N=${N:-1000000}; SIZE=${SIZE:-1024}; RUNS=${RUNS:-3}; T=${TARGET:-target/release}
PORT=5752
D=$(mktemp -d)
now() { date +%s.%N; }
start() {
  local t0; t0=$(now)
  $T/amqp-broker --listen 127.0.0.1:$PORT --management none --prometheus none --data-dir $D/data >> $D/log 2>&1 &
  B=$!
  until (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do sleep 0.01; done
  echo "amqp-broker: listening after $(echo "$(now) - $t0" | bc) s; $(grep -E "recovered" $D/log | tail -1 | sed 's/.*INFO amqp_broker: //')"
}
start
$T/amqp-perftest -h amqp://guest:guest@127.0.0.1:$PORT -x 1 -y 0 -s $SIZE -C $N -c 1000 -f persistent -u recovery --auto-delete false -z 600 2>&1 | grep -E "counts" || true
du -sh $D/data/messages
if [ "${KILL:-0}" = 1 ]; then echo "(SIGKILL)"; kill -9 $B; else kill $B; fi
wait $B 2>/dev/null || true
for i in $(seq 1 $RUNS); do
  start
  kill $B; wait $B 2>/dev/null || true
done
rm -rf $D
if [ "${RABBITMQ:-0}" = 1 ]; then
  NODE=${RABBIT_NODE:-bench@localhost}; RPORT=${RABBIT_PORT:-5690}; RB=${RABBIT_DIR:-/tmp/rmq-recovery}
  CTL="rabbitmqctl -n $NODE"
  export PATH="$PATH:/usr/sbin:/usr/lib/rabbitmq/bin"
  export RABBITMQ_NODENAME=$NODE RABBITMQ_NODE_PORT=$RPORT RABBITMQ_DIST_PORT=$((RPORT + 20000)) \
    RABBITMQ_MNESIA_BASE="$RB/mnesia" RABBITMQ_LOG_BASE="$RB/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$RB/plugins"
  rstart() {
    local inner=/usr/lib/rabbitmq/bin/rabbitmq-server
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1 && [ -x $inner ]; then
      # Debian's wrapper would `su rabbitmq` and drop these variables.
      chown -R rabbitmq: "$RB"
      su rabbitmq -s /bin/sh -c "cd $RB && exec $inner -detached"
    else
      rabbitmq-server -detached
    fi
  }
  listed() {
    until $CTL -q list_queues name messages 2>/dev/null | grep -q "recovery-bench"; do sleep 0.1; done
  }
  owned=0
  if ! $CTL -q status >/dev/null 2>&1; then
    owned=1
    rm -rf "$RB"; mkdir -p "$RB/mnesia" "$RB/log"; echo "[]." > "$RB/plugins"
    rstart
    sleep 2
    $CTL -q await_startup --timeout 120
  fi
  $T/amqp-perftest -h amqp://guest:guest@127.0.0.1:$RPORT -x 1 -y 0 -s $SIZE -C $N -c 1000 -f persistent -u recovery-bench --auto-delete false -z 600 2>&1 | grep -E "counts" || true
  for i in $(seq 1 $RUNS); do
    $CTL -q stop_app
    t0=$(now)
    $CTL -q start_app
    listed
    echo "RabbitMQ: start_app to queue listed $(echo "$(now) - $t0" | bc) s; $($CTL -q list_queues name messages | grep recovery-bench)"
  done
  if [ $owned = 1 ]; then
    if [ "${KILL:-0}" = 1 ]; then
      # (The node's name is in its environment, not its command line.)
      rpid=$($CTL eval 'os:getpid().' | tr -d '"')
      kill -9 "$rpid"
      while kill -0 "$rpid" 2>/dev/null; do sleep 0.1; done
      how="SIGKILL"
    else
      $CTL -q stop
      how="stop"
    fi
    t0=$(now)
    rstart
    listed
    echo "RabbitMQ: whole node ($how, start) to queue listed $(echo "$(now) - $t0" | bc) s; $($CTL -q list_queues name messages | grep recovery-bench)"
  fi
  $CTL -q delete_queue recovery-bench >/dev/null
  [ $owned = 1 ] && $CTL -q stop >/dev/null 2>&1
fi
