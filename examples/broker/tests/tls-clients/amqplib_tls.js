// amqplib over amqps:// (examples/broker/tests/tls.rs).
//
// usage: node amqplib_tls.js PORT CA_FILE plain|external [CERT_FILE KEY_FILE]
//
// Connects to amqps://127.0.0.1:PORT (the server certificate checked
// against CA_FILE for the name localhost), with the client certificate if
// given, logging in as guest (PLAIN) or by the certificate
// (amqp.credentials.external()); publishes to a server-named queue and
// gets the message back.
const amqp = require('amqplib');
const fs = require('fs');

async function main() {
  const [port, ca, mechanism, cert, key] = process.argv.slice(2);
  const opts = { ca: [fs.readFileSync(ca)], servername: 'localhost' };
  if (cert) {
    opts.cert = fs.readFileSync(cert);
    opts.key = fs.readFileSync(key);
  }
  let url = `amqps://guest:guest@127.0.0.1:${port}`;
  if (mechanism === 'external') {
    opts.credentials = amqp.credentials.external();
    url = `amqps://127.0.0.1:${port}`;
  }
  const conn = await amqp.connect(url, opts);
  console.log(`connected with ${mechanism.toUpperCase()}`);
  const ch = await conn.createChannel();
  const { queue } = await ch.assertQueue('', { exclusive: true });
  ch.sendToQueue(queue, Buffer.from('hello over amqps'));
  for (let i = 0; i < 100; i++) {
    const m = await ch.get(queue, { noAck: true });
    if (m) {
      console.log(`got: ${m.content.toString()}`);
      break;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  await conn.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
