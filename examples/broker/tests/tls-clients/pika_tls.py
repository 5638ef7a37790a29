"""pika over amqps:// (examples/broker/tests/tls.rs).

usage: pika_tls.py PORT CA_FILE plain|external [CERT_FILE KEY_FILE]

Connects to amqps://127.0.0.1:PORT (the server certificate checked
against CA_FILE for the name localhost), with the client certificate if
given, logging in as guest (PLAIN) or by the certificate (EXTERNAL);
publishes to a server-named queue and gets the message back.
"""
import ssl
import sys

import pika

port, ca, mechanism = sys.argv[1], sys.argv[2], sys.argv[3]
context = ssl.create_default_context(cafile=ca)
if len(sys.argv) > 5:
    context.load_cert_chain(sys.argv[4], sys.argv[5])
if mechanism == "external":
    params = pika.URLParameters(f"amqps://127.0.0.1:{port}/%2F")
    params.credentials = pika.credentials.ExternalCredentials()
else:
    params = pika.URLParameters(f"amqps://guest:guest@127.0.0.1:{port}/%2F")
params.ssl_options = pika.SSLOptions(context, "localhost")
try:
    conn = pika.BlockingConnection(params)
except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError) as e:
    print(f"refused: {e}")
    sys.exit(0)
print(f"connected with {mechanism.upper()}")
ch = conn.channel()
q = ch.queue_declare(queue="", exclusive=True).method.queue
ch.basic_publish(exchange="", routing_key=q, body=b"hello over amqps")
for _ in range(100):
    method, _props, body = ch.basic_get(queue=q, auto_ack=True)
    if method:
        print(f"got: {body.decode()}")
        break
    conn.sleep(0.05)
conn.close()
