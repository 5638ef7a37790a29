#!/bin/bash
# A queue holding millions of messages: publishes N (default 10,000,000)
# transient messages of SIZE bytes (1024) to one queue with no consumer,
# then reports the broker's RSS, the messages paged out and the page files'
# size; then drains the queue with one auto-ack consumer and reports the
# time it took and the RSS at the end. Needs N x SIZE of free disk space
# in TMPDIR (about 10.5 GB for the defaults).
# PERSISTENT=1: persistent messages on a durable queue (twice the disk
# space: the message store and the pages), and a clean restart before the
# drain, reporting the recovery time and the RSS after it.
# Environment: N, SIZE, TARGET (target/release), PORT (5760),
#   BUDGET ([paging] memory_budget in bytes; default 0: the queue pages
#   past its window whatever memory is free, which is what this measures;
#   unset it with BUDGET=default for the broker's own default, half the
#   memory high watermark),
#   EXTRA (more amqp-broker flags, e.g. --no-paging to compare).
# Build first: cargo build --release -p amqp-broker -p amqp-perftest
set -u
cd "$(dirname "$0")/.."
N=${N:-10000000}; SIZE=${SIZE:-1024}; PORT=${PORT:-5760}; API=$((PORT + 10000))
T=${TARGET:-target/release}
D=$(mktemp -d)
CONFIG=""
if [ "${BUDGET:-0}" != default ]; then
  printf '[paging]\nmemory_budget = %s\n' "${BUDGET:-0}" > $D/config.toml
  CONFIG="--config $D/config.toml"
fi
trap 'kill $B 2>/dev/null; wait $B 2>/dev/null; rm -rf $D' EXIT
start() {
  # shellcheck disable=SC2086
  $T/amqp-broker --listen 127.0.0.1:$PORT --management 127.0.0.1:$API --prometheus none \
    --data-dir $D/data $CONFIG ${EXTRA:-} >> $D/log 2>&1 &
  B=$!
  until (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do sleep 0.01; done
}
start
FLAGS=""
[ "${PERSISTENT:-0}" = 1 ] && FLAGS="-f persistent --auto-delete false"
rss() { awk '/VmRSS/{print int($2/1024)}' /proc/$B/status; }
q() { curl -s -u guest:guest http://127.0.0.1:$API/api/queues/%2F/paging-memory; }
echo "broker RSS at start: $(rss) MiB"
start=$(date +%s.%N)
# shellcheck disable=SC2086
$T/amqp-perftest -h amqp://guest:guest@127.0.0.1:$PORT -x 1 -y 0 -s $SIZE -C $N \
  -u paging-memory -c 1000 $FLAGS > $D/perf 2>&1
pub=$(echo "$(date +%s.%N) - $start" | bc)
tail -2 $D/perf
q | python3 -c '
import sys, json
q = json.load(sys.stdin)
print("queue: messages=%d paged_out=%d ram=%d" % (q["messages"], q["messages_paged_out"], q["messages_ram"]))'
echo "published $N x $SIZE B in ${pub}s; broker RSS $(rss) MiB; page files $(du -sh $D/data/paging | cut -f1)"
if [ "${PERSISTENT:-0}" = 1 ]; then
  kill $B; wait $B 2>/dev/null
  t0=$(date +%s.%N)
  start
  echo "restarted: listening after $(echo "$(date +%s.%N) - $t0" | bc) s; $(grep -o 'recovered.*' $D/log | tail -1); broker RSS $(rss) MiB"
  sleep 2
  echo "2 s later: broker RSS $(rss) MiB; page files $(du -sh $D/data/paging | cut -f1); store $(du -sh $D/data/messages | cut -f1)"
fi
start=$(date +%s.%N)
# shellcheck disable=SC2086
$T/amqp-perftest -h amqp://guest:guest@127.0.0.1:$PORT -x 0 -y 1 -a -D $N $FLAGS \
  -u paging-memory > $D/perf2 2>&1
drain=$(echo "$(date +%s.%N) - $start" | bc)
tail -1 $D/perf2
echo "drained in ${drain}s; broker RSS $(rss) MiB; page files $(du -sh $D/data/paging | cut -f1)"
