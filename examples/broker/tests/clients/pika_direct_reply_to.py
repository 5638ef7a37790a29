#!/usr/bin/env python
# Direct Reply-to as RabbitMQ's RPC tutorials use it: a server consuming
# an RPC queue answers on the reply_to it was given; the client consumes
# amq.rabbitmq.reply-to with no-ack. Then the errors RabbitMQ gives: a
# publish with reply_to set but no reply consumer, and a reply consumer
# that wants acks. Prints what happened; URL from $AMQP_URL.
import os
import pika

url = pika.URLParameters(os.environ['AMQP_URL'])
conn = pika.BlockingConnection(url)
server = conn.channel()
server.queue_declare(queue='rpc_reply_to_test', auto_delete=True)


def on_request(ch, method, props, body):
    print(" [s] request %r, reply_to starts with %r" % (body, props.reply_to[:22]))
    ch.basic_publish(exchange='', routing_key=props.reply_to,
                     properties=pika.BasicProperties(correlation_id=props.correlation_id),
                     body=b'answer to ' + body)
    ch.basic_ack(delivery_tag=method.delivery_tag)


server.basic_consume(queue='rpc_reply_to_test', on_message_callback=on_request)

client = conn.channel()
replies = []


def on_reply(ch, method, props, body):
    print(" [c] reply %r corr=%s exchange=%r rk-prefix=%r redelivered=%s" % (
        body, props.correlation_id, method.exchange, method.routing_key[:22], method.redelivered))
    replies.append(body)


client.basic_consume(queue='amq.rabbitmq.reply-to', on_message_callback=on_reply, auto_ack=True)
# One request at a time, so the server's and the client's lines interleave
# the same way whatever the timing.
for i in range(3):
    client.basic_publish(exchange='', routing_key='rpc_reply_to_test',
                         properties=pika.BasicProperties(reply_to='amq.rabbitmq.reply-to',
                                                         correlation_id=str(i)),
                         body=b'q%d' % i)
    while len(replies) < i + 1:
        conn.process_data_events(time_limit=1)
print(" [*] %d replies" % len(replies))

# A reply to a requester that is gone is dropped (mandatory: returned).
other = conn.channel()
other.confirm_delivery()
try:
    other.basic_publish(exchange='', routing_key='amq.rabbitmq.reply-to.nobody', body=b'x',
                        mandatory=True)
    print(" [*] reply to nobody: published")
except pika.exceptions.UnroutableError as e:
    print(" [*] reply to nobody: returned (%d)" % len(e.messages))

# reply_to without a reply consumer on this channel.
bad = conn.channel()
bad.basic_publish(exchange='', routing_key='rpc_reply_to_test',
                  properties=pika.BasicProperties(reply_to='amq.rabbitmq.reply-to'), body=b'x')
# (Until the broker's close arrives, at most 5 s: a loaded machine is slow.)
for _ in range(50):
    if bad.is_closed:
        break
    conn.process_data_events(time_limit=0.1)
print(" [!] %s" % (bad._closing_reason,))

# A reply consumer that wants acknowledgements.
bad2 = conn.channel()
try:
    bad2.basic_consume(queue='amq.rabbitmq.reply-to', on_message_callback=on_reply, auto_ack=False)
except pika.exceptions.ChannelClosedByBroker as e:
    print(" [!] %s %s" % (e.reply_code, e.reply_text))

# A second reply consumer on the same channel.
try:
    client.basic_consume(queue='amq.rabbitmq.reply-to', on_message_callback=on_reply, auto_ack=True)
except pika.exceptions.ChannelClosedByBroker as e:
    print(" [!] %s %s" % (e.reply_code, e.reply_text))
conn.close()
