"""The seed producer/consumer, run by pika against amqp-codec's server role.

Usage: python3 pika_seed.py PORT

Declares a durable direct exchange and a durable queue, binds them,
publishes one persistent message, sets basic_qos(prefetch_count=1),
consumes, acks, cancels, deletes what it declared and closes cleanly.
Prints one line per step; exits non-zero on any failure.
"""
import signal
import sys

import pika

signal.alarm(25)  # never outlive the Rust test's own limit

port = int(sys.argv[1])
params = pika.ConnectionParameters(
    host="127.0.0.1",
    port=port,
    virtual_host="/",
    credentials=pika.PlainCredentials("guest", "guest"),
    connection_attempts=1,
    socket_timeout=10,
    blocked_connection_timeout=10,
)
conn = pika.BlockingConnection(params)
print("connected", flush=True)
ch = conn.channel()
ch.exchange_declare(exchange="seed.direct", exchange_type="direct", durable=True)
ok = ch.queue_declare(queue="seed.q", durable=True)
print("declared", ok.method.queue, flush=True)
ch.queue_bind(queue="seed.q", exchange="seed.direct", routing_key="seed")
ch.basic_publish(
    exchange="seed.direct",
    routing_key="seed",
    body=b"hello from the pika seed",
    properties=pika.BasicProperties(
        content_type="text/plain",
        delivery_mode=2,
        headers={"x-seed": 42},
    ),
)
ch.basic_qos(prefetch_count=1)


def on_message(channel, method, properties, body):
    print(
        "received",
        body.decode(),
        "tag=%d" % method.delivery_tag,
        "content_type=%s" % properties.content_type,
        "delivery_mode=%s" % properties.delivery_mode,
        "x-seed=%s" % (properties.headers or {}).get("x-seed"),
        flush=True,
    )
    channel.basic_ack(delivery_tag=method.delivery_tag)
    channel.stop_consuming()


ch.basic_consume(queue="seed.q", on_message_callback=on_message, consumer_tag="seed-consumer")
ch.start_consuming()
ch.queue_delete(queue="seed.q")
ch.exchange_delete(exchange="seed.direct")
ch.close()
conn.close()
print("closed", flush=True)
