#!/bin/bash
# TLS throughput: amqp-perftest (1 producer, 1 consumer, SIZE-byte bodies,
# SECS seconds) against the broker three ways: directly on plain TCP,
# through a socat TCP relay to the plain listener, and through a socat
# relay that speaks TLS to the broker's amqps listener. The last two differ
# only by TLS (socat's copying is in both), since amqp-perftest has no TLS
# of its own. Certificates are made for the run with openssl.
# Measured (2 shared cores, load ~5, 1 KiB, 8 s, two runs): direct
# 233k-264k msg/s, TCP relay 160k-173k msg/s, TLS relay 192k-199k msg/s
# each way: TLS on the broker's side is not what limits the relayed runs
# (socat's TLS side moves 16 KiB records where its TCP side reads 8 KiB).
# Environment: SIZE (1024), SECS (10), TARGET (target/release).
# Build first: cargo build --release -p amqp-broker -p amqp-perftest
set -u
cd "$(dirname "$0")/.."
T=${TARGET:-target/release}
D=$(mktemp -d)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=bench-ca -keyout $D/ca.key -out $D/ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout $D/server.key -out $D/server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > $D/ext
openssl x509 -req -in $D/server.csr -CA $D/ca.pem -CAkey $D/ca.key -CAcreateserial \
  -days 2 -extfile $D/ext -out $D/server.pem 2>/dev/null
$T/amqp-broker --listen 127.0.0.1:5752 --tls-listen 127.0.0.1:5753 \
  --tls-cert $D/server.pem --tls-key $D/server.key \
  --management none --prometheus none --data-dir $D/data > $D/log 2>&1 &
B=$!
socat TCP-LISTEN:5754,bind=127.0.0.1,reuseaddr,fork TCP:127.0.0.1:5752 &
R1=$!
socat TCP-LISTEN:5755,bind=127.0.0.1,reuseaddr,fork \
  OPENSSL:127.0.0.1:5753,cafile=$D/ca.pem,commonname=localhost &
R2=$!
sleep 1
for way in "direct:5752" "tcp-relay:5754" "tls-relay:5755"; do
  name=${way%%:*}; port=${way##*:}
  $T/amqp-perftest -h amqp://guest:guest@127.0.0.1:$port -x 1 -y 1 -s ${SIZE:-1024} \
    -z ${SECS:-10} -u tls-bench-$name > $D/perf-$name 2>&1
  echo "== $name"; grep -iE "sending rate avg|receiving rate avg" $D/perf-$name || tail -3 $D/perf-$name
done
grep -c "TLS" $D/log >/dev/null
kill $R1 $R2 $B; wait 2>/dev/null; rm -rf $D
