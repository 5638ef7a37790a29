#!/usr/bin/env python3
"""amqp-broker against RabbitMQ, the same amqp-perftest scenarios in one run.

Builds amqp-broker and amqp-perftest (release), then for each scenario runs
amqp-perftest against the local RabbitMQ (127.0.0.1:5672, started if it is
not running; its management plugin makes no difference to these figures
but is reported) and against amqp-broker (started on 127.0.0.1:5680 while
RabbitMQ's application is stopped, so the two never share the CPU), and
prints one Markdown table: msg/s received, broker CPU per message, latency
percentiles, and the ratios.

    python3 benches/broker_vs_rabbitmq.py [--seconds 15] [--only NAME ...]
                                          [--json results.json]

Long runs: this is a script, not a test; it takes about
2 x scenarios x (seconds + 3) s.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
PERFTEST = os.path.join(TARGET, "release", "amqp-perftest")
BROKER = os.path.join(TARGET, "release", "amqp-broker")
OURS = "127.0.0.1:5680"
RABBIT = "127.0.0.1:5672"

# (name, description, amqp-perftest arguments)
SCENARIOS = [
    ("16B", "1 producer, 1 consumer, auto-ack, 16 B",
     ["-x", "1", "-y", "1", "-a", "-s", "16"]),
    ("1KiB", "1 producer, 1 consumer, auto-ack, 1 KiB",
     ["-x", "1", "-y", "1", "-a", "-s", "1024"]),
    ("confirms", "confirms (1,000 outstanding) + manual acks, prefetch 100, 1 KiB",
     ["-x", "1", "-y", "1", "-c", "1000", "-q", "100", "-s", "1024"]),
    ("persist1", "persistent 1 KiB to a durable queue, confirms (1,000 outstanding), 1 producer, 1 consumer, auto-ack",
     ["-x", "1", "-y", "1", "-a", "-s", "1024", "-c", "1000", "-f", "persistent",
      "-u", "perf-durable-1"]),
    ("persist4", "persistent 1 KiB to a durable queue, confirms (1,000 outstanding), 4 producers, 1 consumer, auto-ack",
     ["-x", "4", "-y", "1", "-a", "-s", "1024", "-c", "1000", "-f", "persistent",
      "-u", "perf-durable-4"]),
    ("fanout50", "fan-out to 50 queues, 1 producer, 50 consumers, auto-ack, 16 B",
     ["-x", "1", "-y", "50", "-a", "-s", "16", "-t", "fanout", "-e", "perf-fanout",
      "-c", "1000"]),
    ("pairs100", "100 producers and 100 consumers on 100 queues, auto-ack, 16 B",
     ["-x", "100", "-y", "100", "-a", "-s", "16", "--queue-pattern", "perf-pair-%d",
      "--queue-pattern-from", "1", "--queue-pattern-to", "100", "-c", "100",
      "--auto-delete", "true"]),
    ("lat1k", "latency at a fixed 1,000 msg/s, 1 KiB",
     ["-x", "1", "-y", "1", "-a", "-s", "1024", "-r", "1000"]),
    ("lat10k", "latency at a fixed 10,000 msg/s, 1 KiB",
     ["-x", "1", "-y", "1", "-a", "-s", "1024", "-r", "10000"]),
]


def sh(*args, check=True, quiet=True):
    return subprocess.run(args, check=check, stdout=subprocess.PIPE if quiet else None,
                          stderr=subprocess.STDOUT if quiet else None, text=True)


def wait_port(addr, seconds=60):
    host, port = addr.split(":")
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def rabbit_pid():
    out = sh("pgrep", "-f", "beam.smp", check=False).stdout.split()
    return int(out[0]) if out else None


def rabbitmqctl(*args):
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    return sh(exe, *args, check=False)


def run(addr, pid, args, seconds):
    cmd = [PERFTEST, "-h", f"amqp://guest:guest@{addr}/%2f", "-z", str(seconds),
           "--json", "--quiet", "--broker-pid", str(pid)] + args
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": (p.stderr or p.stdout).strip()[-300:]}


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}{unit}" if v < 100 else f"{v:,.0f}{unit}"
    return f"{v:,}{unit}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--json")
    a = ap.parse_args()
    sh("cargo", "build", "--release", "-q", "-p", "amqp-broker", "-p", "amqp-perftest", quiet=False)
    scenarios = [s for s in SCENARIOS if not a.only or s[0] in a.only]
    if not wait_port(RABBIT, 1):
        rabbitmqctl("start_app")
        if not wait_port(RABBIT, 120):
            sys.exit("RabbitMQ is not running on 127.0.0.1:5672: run `bash .ci/services`")
    version = rabbitmqctl("version").stdout.strip()
    results = {}
    # RabbitMQ first, with our broker not running.
    rpid = rabbit_pid()
    for name, _, args in scenarios:
        results[(name, "rabbitmq")] = run(RABBIT, rpid, args, a.seconds)
        print(f"rabbitmq   {name}: {results[(name, 'rabbitmq')].get('receive_rate')}", file=sys.stderr)
    # Then ours, with RabbitMQ's application stopped (its VM idles).
    rabbitmqctl("stop_app")
    data = tempfile.mkdtemp(prefix="amqp-broker-bench-")
    broker = subprocess.Popen([BROKER, "--listen", OURS, "--data-dir", data],
                              stderr=subprocess.DEVNULL)
    try:
        if not wait_port(OURS, 10):
            sys.exit("amqp-broker did not start")
        for name, _, args in scenarios:
            results[(name, "ours")] = run(OURS, broker.pid, args, a.seconds)
            print(f"amqp-broker {name}: {results[(name, 'ours')].get('receive_rate')}", file=sys.stderr)
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(timeout=10)
        shutil.rmtree(data, ignore_errors=True)
        rabbitmqctl("start_app")
    cpu = os.cpu_count()
    print(f"\nRabbitMQ {version} and amqp-broker {sh('git', '-C', ROOT, 'rev-parse', '--short', 'HEAD').stdout.strip()}, "
          f"{cpu} CPUs, load generator on the same machine, {a.seconds} s per run, release builds\n")
    print("| scenario | RabbitMQ msg/s | amqp-broker msg/s | ratio | RabbitMQ CPU µs/msg | amqp-broker CPU µs/msg | ratio | p50 / p99 µs RabbitMQ | p50 / p99 µs amqp-broker |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, desc, _ in scenarios:
        r, o = results[(name, "rabbitmq")], results[(name, "ours")]
        if r.get("error") or o.get("error"):
            print(f"| {desc} | {r.get('error') or '-'} | {o.get('error') or '-'} | | | | | | |")
            continue
        rr, orr = r.get("receive_rate") or 0, o.get("receive_rate") or 0
        rc, oc = r.get("broker_cpu_us_per_received"), o.get("broker_cpu_us_per_received")
        lat = lambda x: f"{fmt(x['consumer_latency_us'].get('median'))} / {fmt(x['consumer_latency_us'].get('p99'))}"
        print(f"| {desc} | {fmt(rr)} | {fmt(orr)} | {orr / rr if rr else 0:.1f}× | {fmt(rc)} | {fmt(oc)} | "
              f"{(rc / oc) if rc and oc else 0:.1f}× less | {lat(r)} | {lat(o)} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({f"{k[0]}/{k[1]}": v for k, v in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
