#!/usr/bin/env python3
"""Builds a topology in a real RabbitMQ (vhost `router-defs`), records where
a set of publishes go, and exports the definitions.

Writes, next to this script:
  definitions.json   rabbitmqctl export_definitions (the whole broker's file;
                     the test loads vhost `router-defs` from it)
  routes.json        every publish with the sorted queues that got a copy

Needs a local rabbitmq-server (guest/guest on 127.0.0.1:5672), rabbitmqctl
and pika. Re-run to re-record; the test only reads the two JSON files.
"""
import json, os, subprocess, time
import pika

VHOST = "router-defs"
HERE = os.path.dirname(os.path.abspath(__file__))


def ctl(*args, check=True):
    return subprocess.run(["rabbitmqctl", *args], check=check, capture_output=True, text=True)


ctl("delete_vhost", VHOST, check=False)
ctl("add_vhost", VHOST)
ctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
ctl("set_policy", "-p", VHOST, "--apply-to", "exchanges", "--priority", "1",
    "orders-ae", "^orders\\.", '{"alternate-exchange":"unrouted"}')

conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672, VHOST,
                                                         pika.PlainCredentials("guest", "guest")))
ch = conn.channel()
ch.confirm_delivery()

def xd(name, kind, **kw):
    ch.exchange_declare(name, kind, durable=True, **kw)

def qd(name, **kw):
    ch.queue_declare(name, durable=True, **kw)

xd("unrouted", "fanout")
xd("orders.topic", "topic")
xd("orders.direct", "direct")
xd("events", "topic", arguments={"alternate-exchange": "unrouted"})
xd("by-headers", "headers")
xd("fan", "fanout")
# Not internal: RabbitMQ leaves internal exchanges out of its export.
xd("hub", "topic")
for q in ["all-unrouted", "eu-orders", "us-orders", "created", "audit", "errors",
          "big-retries", "json-or-eu", "hub-sink", "fan-a", "fan-b"]:
    qd(q, arguments={"x-max-length": 1000} if q == "audit" else None)

ch.queue_bind("all-unrouted", "unrouted")
ch.queue_bind("eu-orders", "orders.topic", "eu.#")
ch.queue_bind("us-orders", "orders.topic", "us.*.created")
ch.queue_bind("created", "orders.topic", "*.*.created")
ch.queue_bind("created", "orders.direct", "created")
ch.queue_bind("audit", "events", "#")
ch.queue_bind("errors", "events", "*.error")
ch.exchange_bind("fan", "orders.topic", "#.audit")       # destination fan, source orders.topic
ch.queue_bind("fan-a", "fan")
ch.queue_bind("fan-b", "fan")
ch.exchange_bind("hub", "events", "hub.#")
ch.queue_bind("hub-sink", "hub", "#")
ch.queue_bind("big-retries", "by-headers", arguments={"x-match": "all", "retries": 3, "kind": "job"})
ch.queue_bind("json-or-eu", "by-headers", arguments={"x-match": "any", "format": "json", "region": "eu"})

publishes = [
    ("orders.topic", "eu.shop.created", None),
    ("orders.topic", "us.shop.created", None),
    ("orders.topic", "us.shop.cancelled", None),
    ("orders.topic", "asia.shop", None),
    ("orders.topic", "eu.audit", None),
    ("orders.direct", "created", None),
    ("orders.direct", "nothing", None),
    ("events", "db.error", None),
    ("events", "hub.x.y", None),
    ("by-headers", "", {"retries": 3, "kind": "job"}),
    ("by-headers", "", {"retries": 2, "kind": "job"}),
    ("by-headers", "", {"region": "eu"}),
    ("by-headers", "", {"other": "x"}),
    ("fan", "whatever", None),
    ("", "errors", None),
]
routes = []
for (x, key, headers) in publishes:
    props = pika.BasicProperties(headers=headers) if headers is not None else None
    ch.basic_publish(x, key, b"m", properties=props)
    time.sleep(0.05)
    got = []
    for q in ["all-unrouted", "eu-orders", "us-orders", "created", "audit", "errors",
              "big-retries", "json-or-eu", "hub-sink", "fan-a", "fan-b"]:
        while True:
            m, _, _ = ch.basic_get(q, auto_ack=True)
            if m is None:
                break
            got.append(q)
    routes.append({"exchange": x, "routing_key": key, "headers": headers, "queues": sorted(got)})
conn.close()

path = os.path.join(HERE, "definitions.json")
# The node writes the file itself (as its own user): export to /tmp first.
tmp = "/tmp/router-defs-export.json"
ctl("export_definitions", tmp)
with open(tmp) as f:
    d = json.load(f)
# Keep only what belongs to our vhost, and no users' password hashes.
for k in ["users", "permissions", "topic_permissions", "global_parameters"]:
    d[k] = []
for k in ["vhosts", "queues", "exchanges", "bindings", "policies", "parameters"]:
    if k in d:
        d[k] = [i for i in d[k] if i.get("vhost", i.get("name")) == VHOST]
with open(path, "w") as f:
    json.dump(d, f, indent=2, sort_keys=False)
    f.write("\n")
with open(os.path.join(HERE, "routes.json"), "w") as f:
    json.dump({"vhost": VHOST, "recorded_with": d.get("rabbitmq_version"), "routes": routes}, f, indent=1)
    f.write("\n")
print(json.dumps(routes, indent=1))
