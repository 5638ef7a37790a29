#!/bin/bash
# A queue with x-message-ttl=1 fed at full speed by one producer and no
# consumer: expiry at the head keeps it short. Samples the queue length
# (management API) and the broker's RSS every 50 ms and prints the maxima.
# Environment: SIZE (body bytes, 1024), SECS (10), TARGET (target/release).
# Build first: cargo build --release -p amqp-broker -p amqp-perftest
set -u
cd "$(dirname "$0")/.."
D=$(mktemp -d)
${TARGET:-target/release}/amqp-broker --listen 127.0.0.1:5750 --management 127.0.0.1:15750 --prometheus 127.0.0.1:15751 --data-dir $D/data > $D/log 2>&1 &
B=$!
sleep 1
${TARGET:-target/release}/amqp-perftest -h amqp://guest:guest@127.0.0.1:5750 -x 1 -y 0 -s ${SIZE:-1024} -z ${SECS:-10} -u ttl1 --queue-args x-message-ttl=1 > $D/perf 2>&1 &
P=$!
max=0; maxrss=0; n=0
while kill -0 $P 2>/dev/null; do
  m=$(curl -s -u guest:guest http://127.0.0.1:15750/api/queues/%2F/ttl1 | python3 -c 'import sys,json; print(json.load(sys.stdin).get("messages",0))' 2>/dev/null || echo 0)
  r=$(awk '/VmRSS/{print $2}' /proc/$B/status)
  [ "$m" -gt "$max" ] && max=$m
  [ "$r" -gt "$maxrss" ] && maxrss=$r
  n=$((n+1))
  sleep 0.05
done
tail -3 $D/perf
echo "samples=$n max_queue_len=$max max_rss_kib=$maxrss"
kill $B; wait $B 2>/dev/null; rm -rf $D
