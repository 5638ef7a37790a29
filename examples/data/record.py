"""Regenerates demo.c2s.bin / demo.s2c.bin: one pika 1.x conversation with a
RabbitMQ broker, recorded byte for byte by amqp-dump's own proxy.

    amqp-dump --listen 127.0.0.1:5673 --upstream 127.0.0.1:5672 --record /tmp/rec &
    python3 examples/data/record.py          # connects to 127.0.0.1:5673
    cp /tmp/rec/conn-1.c2s.bin examples/data/demo.c2s.bin
    cp /tmp/rec/conn-1.s2c.bin examples/data/demo.s2c.bin
"""
import pika

params = pika.ConnectionParameters(
    host="127.0.0.1", port=5673, heartbeat=60,
    credentials=pika.PlainCredentials("guest", "guest"),
    client_properties={"connection_name": "amqp-dump demo"},
)
conn = pika.BlockingConnection(params)
ch = conn.channel()
ch.confirm_delivery()
ch.exchange_declare("demo.orders", exchange_type="topic", durable=False, auto_delete=True)
ch.queue_declare("demo.eu", auto_delete=True, arguments={"x-max-priority": 5, "x-message-ttl": 60000})
ch.queue_bind("demo.eu", "demo.orders", routing_key="order.eu.*")
props = pika.BasicProperties(
    content_type="application/json", delivery_mode=2, priority=3,
    correlation_id="c-42", message_id="m-1", app_id="record.py",
    headers={"tenant": "acme", "attempt": 1, "tags": ["a", "b"]},
)
ch.basic_publish("demo.orders", "order.eu.paris", b'{"id":1,"qty":3}', props)
ch.basic_publish("demo.orders", "order.eu.rome", b"x" * 5000,
                 pika.BasicProperties(content_type="application/octet-stream"))
method, header, body = ch.basic_get("demo.eu")
ch.basic_ack(method.delivery_tag)
method, header, body = ch.basic_get("demo.eu")
ch.basic_nack(method.delivery_tag, requeue=False)
ch.basic_get("demo.eu")  # empty now
try:
    ch.queue_declare("demo.missing", passive=True)  # 404: the channel closes
except pika.exceptions.ChannelClosedByBroker:
    pass
conn.close()
