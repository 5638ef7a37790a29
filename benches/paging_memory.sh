#!/bin/bash
# A queue holding millions of messages: publishes N (default 10,000,000)
# transient messages of SIZE bytes (1024) to one queue with no consumer,
# then reports the broker's RSS, the messages paged out and the page files'
# size; then drains the queue with one auto-ack consumer and reports the
# time it took and the RSS at the end. Needs N x SIZE of free disk space
# in TMPDIR (about 10.5 GB for the defaults).
# Environment: N, SIZE, TARGET (target/release), PORT (5760),
#   EXTRA (more amqp-broker flags, e.g. --no-paging to compare).
# Build first: cargo build --release -p amqp-broker -p amqp-perftest
set -u
cd "$(dirname "$0")/.."
N=${N:-10000000}; SIZE=${SIZE:-1024}; PORT=${PORT:-5760}; API=$((PORT + 10000))
T=${TARGET:-target/release}
D=$(mktemp -d)
trap 'kill $B 2>/dev/null; wait $B 2>/dev/null; rm -rf $D' EXIT
# shellcheck disable=SC2086
$T/amqp-broker --listen 127.0.0.1:$PORT --management 127.0.0.1:$API --prometheus none \
  --data-dir $D/data ${EXTRA:-} > $D/log 2>&1 &
B=$!
sleep 1
rss() { awk '/VmRSS/{print int($2/1024)}' /proc/$B/status; }
q() { curl -s -u guest:guest http://127.0.0.1:$API/api/queues/%2F/paging-memory; }
echo "broker RSS at start: $(rss) MiB"
start=$(date +%s.%N)
$T/amqp-perftest -h amqp://guest:guest@127.0.0.1:$PORT -x 1 -y 0 -s $SIZE -C $N \
  -u paging-memory -c 1000 > $D/perf 2>&1
pub=$(echo "$(date +%s.%N) - $start" | bc)
tail -2 $D/perf
q | python3 -c '
import sys, json
q = json.load(sys.stdin)
print("queue: messages=%d paged_out=%d ram=%d" % (q["messages"], q["messages_paged_out"], q["messages_ram"]))'
echo "published $N x $SIZE B in ${pub}s; broker RSS $(rss) MiB; page files $(du -sh $D/data/paging | cut -f1)"
start=$(date +%s.%N)
$T/amqp-perftest -h amqp://guest:guest@127.0.0.1:$PORT -x 0 -y 1 -a -D $N \
  -u paging-memory > $D/perf2 2>&1
drain=$(echo "$(date +%s.%N) - $start" | bc)
tail -1 $D/perf2
echo "drained in ${drain}s; broker RSS $(rss) MiB; page files $(du -sh $D/data/paging | cut -f1)"
