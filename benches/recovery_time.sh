#!/bin/bash
# Recovery time: N persistent messages (SIZE bytes) on a durable queue,
# then a restart (SIGTERM: clean; KILL=1: SIGKILL, an unclean one), timed
# from the start of the process until it accepts connections, with the
# broker's own "recovered ... in ..." log line. RABBITMQ=1 also measures a
# local RabbitMQ (Debian's package, 127.0.0.1:5672): the same messages,
# then `rabbitmqctl stop_app` / `start_app` timed until the queue answers.
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
  $T/amqp-perftest -h amqp://guest:guest@127.0.0.1:5672 -x 1 -y 0 -s $SIZE -C $N -c 1000 -f persistent -u recovery-bench --auto-delete false -z 600 2>&1 | grep -E "counts" || true
  rabbitmqctl -q stop_app
  t0=$(date +%s.%N)
  rabbitmqctl -q start_app
  until rabbitmqctl -q list_queues name messages 2>/dev/null | grep -q "recovery-bench"; do sleep 0.1; done
  t1=$(date +%s.%N)
  echo "RabbitMQ: start_app to queue listed $(echo "$t1 - $t0" | bc) s; $(rabbitmqctl -q list_queues name messages | grep recovery-bench)"
  rabbitmqctl -q delete_queue recovery-bench >/dev/null
fi
