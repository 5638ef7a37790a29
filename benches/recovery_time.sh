#!/bin/bash
# Recovery time: N persistent messages (SIZE bytes) on a durable queue,
# then a restart (SIGTERM: clean; KILL=1: SIGKILL, an unclean one), timed
# from the start of the process until it accepts connections, with the
# broker's own "recovered ... in ..." log line. RABBITMQ=1 also measures
# RabbitMQ (Debian's package) on a private node (RABBIT_NODE, RABBIT_PORT:
# bench@localhost on 5690, started and stopped here if not running): the
# same messages, then `rabbitmqctl stop_app` / `start_app` timed until the
# queue answers.
# Build first: cargo build --release -p amqp-broker -p amqp-perftest
set -eu
cd "$(dirname "$0")/.."
N=${N:-1000000}; SIZE=${SIZE:-1024}; T=${TARGET:-target/release}
PORT=5752
D=$(mktemp -d)
start() {
  local t0=$(date +%s.%N)
  $T/amqp-broker --listen 127.0.0.1:$PORT --management none --prometheus none --data-dir $D/data >> $D/log 2>&1 &
  B=$!
  until (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do sleep 0.01; done
  local t1=$(date +%s.%N)
  echo "listening after $(echo "$t1 - $t0" | bc) s"
}
start
$T/amqp-perftest -h amqp://guest:guest@127.0.0.1:$PORT -x 1 -y 0 -s $SIZE -C $N -c 1000 -f persistent -u recovery --auto-delete false -z 600 2>&1 | grep -E "counts" || true
du -sh $D/data
if [ "${KILL:-0}" = 1 ]; then kill -9 $B; else kill $B; fi
wait $B 2>/dev/null || true
start
grep -E "recovered" $D/log | tail -1
kill $B; wait $B 2>/dev/null || true
rm -rf $D
if [ "${RABBITMQ:-0}" = 1 ]; then
  # A private node (RABBIT_NODE, default bench@localhost on port 5690, no
  # plugins), started here if it is not running and stopped after, so the
  # system's node on 5672 is left alone.
  NODE=${RABBIT_NODE:-bench@localhost}; RPORT=${RABBIT_PORT:-5690}; RB=${RABBIT_DIR:-/tmp/rmq-recovery}
  CTL="rabbitmqctl -n $NODE"
  export PATH="$PATH:/usr/sbin:/usr/lib/rabbitmq/bin"
  owned=0
  if ! $CTL -q status >/dev/null 2>&1; then
    owned=1
    rm -rf "$RB"; mkdir -p "$RB/mnesia" "$RB/log"; echo "[]." > "$RB/plugins"
    export RABBITMQ_NODENAME=$NODE RABBITMQ_NODE_PORT=$RPORT RABBITMQ_DIST_PORT=$((RPORT + 20000)) \
      RABBITMQ_MNESIA_BASE="$RB/mnesia" RABBITMQ_LOG_BASE="$RB/log" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$RB/plugins"
    inner=/usr/lib/rabbitmq/bin/rabbitmq-server
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1 && [ -x $inner ]; then
      # Debian's wrapper would `su rabbitmq` and drop these variables.
      chown -R rabbitmq: "$RB"
      su rabbitmq -s /bin/sh -c "cd $RB && exec $inner -detached"
    else
      rabbitmq-server -detached
    fi
    sleep 2
    $CTL -q await_startup --timeout 120
  fi
  $T/amqp-perftest -h amqp://guest:guest@127.0.0.1:$RPORT -x 1 -y 0 -s $SIZE -C $N -c 1000 -f persistent -u recovery-bench --auto-delete false -z 600 2>&1 | grep -E "counts" || true
  $CTL -q stop_app
  t0=$(date +%s.%N)
  $CTL -q start_app
  until $CTL -q list_queues name messages 2>/dev/null | grep -q "recovery-bench"; do sleep 0.1; done
  t1=$(date +%s.%N)
  echo "RabbitMQ: start_app to queue listed $(echo "$t1 - $t0" | bc) s; $($CTL -q list_queues name messages | grep recovery-bench)"
  $CTL -q delete_queue recovery-bench >/dev/null
  [ $owned = 1 ] && $CTL -q stop >/dev/null 2>&1
fi
