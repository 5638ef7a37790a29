"""Topology and traffic for the management API tests (tests/management.rs).

Usage: management_traffic.py HOST PORT PREFIX

Declares exchange PREFIX-x (topic), queue PREFIX-q (x-max-length 100)
bound with 'a.#'; publishes 5 messages with confirms and 1 unroutable
one; a consumer (prefetch 2, manual ack, tag ctag-1) holds 2 deliveries
unacknowledged; a basic.get takes 1 and acks it. Leaves 2 ready, 2
unacknowledged. Prints READY, waits for stdin to close, then deletes what
it declared.
"""
import sys
import time

import pika

host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
x, q = prefix + "-x", prefix + "-q"
c = pika.BlockingConnection(
    pika.ConnectionParameters(host, port, credentials=pika.PlainCredentials("guest", "guest"))
)
ch = c.channel()
ch.exchange_declare(x, "topic", durable=False, auto_delete=False)
ch.queue_declare(q, durable=False, arguments={"x-max-length": 100})
ch.queue_bind(q, x, "a.#")
ch.confirm_delivery()
for i in range(5):
    ch.basic_publish(x, "a.b", b"hello%d" % i)
ch.basic_publish(x, "z", b"nowhere")
consumer = c.channel()
consumer.basic_qos(prefetch_count=2)
got = []
consumer.basic_consume(q, lambda *a: got.append(a), auto_ack=False, consumer_tag="ctag-1")
deadline = time.time() + 10
while len(got) < 2 and time.time() < deadline:
    c.process_data_events(0.1)
getter = c.channel()
method, _, _ = getter.basic_get(q, auto_ack=False)
getter.basic_ack(method.delivery_tag)
c.process_data_events(0.2)
print("READY", flush=True)
sys.stdin.read()
consumer.basic_cancel("ctag-1")
ch.queue_delete(q)
ch.exchange_delete(x)
c.close()
