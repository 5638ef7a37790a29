#!/usr/bin/env python3
"""amqp-broker against RabbitMQ, the same amqp-perftest scenarios in one run.

Builds amqp-broker and amqp-perftest (release), then runs every scenario
against RabbitMQ and then against amqp-broker, never both at once, and
prints one Markdown table: msg/s received, broker CPU per message, latency
percentiles and the ratios; then the memory scenarios (broker RSS per idle
connection with heartbeats, per queued 16 B message); optionally a chart.

RabbitMQ: by default a private node (--rabbit-node bench@localhost on
--rabbit-port 5690, its files under --rabbit-dir, no plugins) that the
script starts, restarts for each memory scenario, and stops at the end. If
a node of that name is already running it is used as it is, its
application is stopped (`rabbitmqctl stop_app`) while amqp-broker runs and
started again at the end; pointing --rabbit-node/--rabbit-port at the
system node (rabbit@HOST, 5672) does that to it, so do not on a machine
where others use it. amqp-broker runs on --broker-port with a temporary
data directory, management and Prometheus off (RabbitMQ's node has no
plugins either).

    python3 benches/broker_vs_rabbitmq.py [--seconds 15] [--only NAME ...]
        [--json results.json] [--chart docs/broker_vs_rabbitmq.png]
        [--rabbit-node bench@localhost] [--rabbit-port 5690]
        [--rabbit-dir /tmp/rmq-bench] [--broker-port 5680]
        [--connections 10000] [--heartbeat 10] [--queued 1000000]

Both brokers and the load generator get `ulimit -n` raised (setrlimit, up
to --nofile) for the idle connections. Run as root, RabbitMQ's Debian
wrapper switches to the rabbitmq user through su, which resets the limit;
the script then starts the node through su itself with `ulimit -n`.

Long runs: this is a script, not a test; it takes about
2 x scenarios x (seconds + 3) s plus a few minutes for the memory ones.
"""

import argparse
import json
import os
import pwd
import resource
import select
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
    ("persist1-16B", "persistent 16 B to a durable queue, confirms (1,000 outstanding), 1 producer, 1 consumer, auto-ack",
     ["-x", "1", "-y", "1", "-a", "-s", "16", "-c", "1000", "-f", "persistent",
      "-u", "perf-durable-16-1"]),
    ("persist4-16B", "persistent 16 B to a durable queue, confirms (1,000 outstanding), 4 producers, 1 consumer, auto-ack",
     ["-x", "4", "-y", "1", "-a", "-s", "16", "-c", "1000", "-f", "persistent",
      "-u", "perf-durable-16-4"]),
    ("topic1000", "topic exchange, 1,000 bindings over 10 queues, 1 producer, 10 consumers, auto-ack, 16 B",
     ["-x", "1", "-y", "10", "-a", "-s", "16", "-t", "topic", "-e", "perf-topic",
      "--queue-pattern", "perf-topic-%d", "--queue-pattern-from", "1",
      "--queue-pattern-to", "10", "--bindings-per-queue", "100",
      "--binding-key-pattern", "perf.%d.*", "-c", "1000"]),
    ("fanout50", "fan-out to 50 queues, 1 producer, 50 consumers, auto-ack, 16 B",
     ["-x", "1", "-y", "50", "-a", "-s", "16", "-t", "fanout", "-e", "perf-fanout",
      "-c", "1000"]),
    # The scaling goal's baseline: one pair with exactly the per-pair
    # settings of pairs100 (16B above has no confirm window, and without
    # one a hundred unconfirmed producers outrun their consumers, so
    # pairs100 needs it).
    ("pair1", "1 producer and 1 consumer on 1 queue, confirms (100 outstanding), auto-ack, 16 B",
     ["-x", "1", "-y", "1", "-a", "-s", "16", "--queue-pattern", "perf-pair-%d",
      "--queue-pattern-from", "1", "--queue-pattern-to", "1", "-c", "100",
      "--auto-delete", "true"]),
    ("pairs100", "100 producers and 100 consumers on 100 queues, confirms (100 outstanding each), auto-ack, 16 B",
     ["-x", "100", "-y", "100", "-a", "-s", "16", "--queue-pattern", "perf-pair-%d",
      "--queue-pattern-from", "1", "--queue-pattern-to", "100", "-c", "100",
      "--auto-delete", "true"]),
    # The fixed-rate rows pace each message to its time (a wake-up per
    # message, as PerfTest's rate limiter); one worker thread is all one
    # producer and one consumer need, and leaves the broker the most CPU
    # (with two, RabbitMQ's p99 at 10,000 msg/s was ten times worse).
    ("lat1k", "latency at a fixed 1,000 msg/s, 1 KiB",
     ["-x", "1", "-y", "1", "-a", "-s", "1024", "-r", "1000", "--threads", "1"]),
    ("lat10k", "latency at a fixed 10,000 msg/s, 1 KiB",
     ["-x", "1", "-y", "1", "-a", "-s", "1024", "-r", "10000", "--threads", "1"]),
]
# Memory scenarios, each on a freshly started broker.
MEMORY = ["idle", "queued"]
ALL = [s[0] for s in SCENARIOS] + MEMORY


def sh(*args, check=True, quiet=True, env=None, timeout=None):
    return subprocess.run(args, check=check, stdout=subprocess.PIPE if quiet else None,
                          stderr=subprocess.STDOUT if quiet else None, text=True, env=env,
                          timeout=timeout)


def wait_port(port, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def raise_nofile(want):
    """Raises this process's open-file limit (inherited by children) to
    `want`, or as far as the hard limit allows; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for new in ((want, max(want, hard)), (min(want, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, new)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def settle_rss(pid, seconds=3.0):
    """VmRSS after it stopped moving by more than 1% per second (at most
    `seconds` * 5)."""
    last = rss_kib(pid)
    deadline = time.time() + seconds * 5
    time.sleep(seconds)
    while time.time() < deadline:
        now = rss_kib(pid)
        if abs(now - last) <= max(last // 100, 256):
            return now
        last = now
        time.sleep(1)
    return rss_kib(pid)


class Rabbit:
    """A RabbitMQ node: a private one the script owns, or an existing one."""

    def __init__(self, node, port, base, nofile):
        self.node, self.port, self.base, self.nofile = node, port, base, nofile
        self.ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
        self.owned = False
        self.env = dict(os.environ,
                        RABBITMQ_NODENAME=node,
                        RABBITMQ_NODE_PORT=str(port),
                        RABBITMQ_DIST_PORT=str(port + 20000),
                        RABBITMQ_MNESIA_BASE=os.path.join(base, "mnesia"),
                        RABBITMQ_LOG_BASE=os.path.join(base, "log"),
                        RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(base, "plugins"))

    def ctl_run(self, *args, timeout=180):
        return sh(self.ctl, "-n", self.node, *args, check=False, timeout=timeout)

    def running(self):
        return self.ctl_run("status", timeout=60).returncode == 0

    def start(self):
        """Uses the node if it runs, otherwise starts a private one."""
        if self.running():
            if not wait_port(self.port, 1):
                self.ctl_run("start_app")
            if not wait_port(self.port, 120):
                sys.exit(f"RabbitMQ node {self.node} runs but does not listen on {self.port}")
            return
        self.owned = True
        shutil.rmtree(self.base, ignore_errors=True)
        os.makedirs(os.path.join(self.base, "mnesia"))
        os.makedirs(os.path.join(self.base, "log"))
        with open(os.path.join(self.base, "plugins"), "w") as f:
            f.write("[].\n")
        self.boot()

    def boot(self):
        inner = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        try:
            rabbit_user = pwd.getpwnam("rabbitmq")
        except KeyError:
            rabbit_user = None
        if os.getuid() == 0 and rabbit_user and os.path.exists(inner):
            # Debian's wrapper would `su rabbitmq`, which resets ulimit -n.
            shutil.chown(self.base, rabbit_user.pw_uid, rabbit_user.pw_gid)
            for d, subdirs, files in os.walk(self.base):
                for x in subdirs + files:
                    shutil.chown(os.path.join(d, x), rabbit_user.pw_uid, rabbit_user.pw_gid)
            cmd = ["su", "rabbitmq", "-s", "/bin/sh", "-c",
                   f"cd {self.base} && ulimit -n {self.nofile} && exec {inner} -detached"]
        else:
            cmd = [shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server", "-detached"]
        r = subprocess.run(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            sys.exit(f"could not start RabbitMQ node {self.node}: {r.stdout.strip()[-500:]}")
        time.sleep(2)
        if self.ctl_run("await_startup", "--timeout", "120").returncode != 0 or not wait_port(self.port, 60):
            sys.exit(f"RabbitMQ node {self.node} did not start (logs in {self.base}/log)")

    def pid(self):
        out = self.ctl_run("eval", "list_to_integer(os:getpid()).").stdout.strip()
        return int(out)

    def fresh(self):
        """A freshly started broker for a memory measurement."""
        if self.owned:
            self.ctl_run("stop")
            time.sleep(1)
            self.boot()
        else:
            self.ctl_run("stop_app")
            self.ctl_run("start_app")
            wait_port(self.port, 120)

    def pause(self):
        """Stops using the CPU while amqp-broker runs."""
        self.ctl_run("stop" if self.owned else "stop_app")

    def finish(self):
        if self.owned:
            self.ctl_run("stop")
        else:
            self.ctl_run("start_app")

    def version(self):
        if self.owned and not self.running():
            return ""
        return self.ctl_run("version").stdout.strip()


class Ours:
    """amqp-broker on a port with a temporary data directory."""

    def __init__(self, port):
        self.port, self.proc, self.data = port, None, None

    def start(self):
        self.data = tempfile.mkdtemp(prefix="amqp-broker-bench-")
        self.proc = subprocess.Popen(
            [BROKER, "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data,
             "--management", "none", "--prometheus", "none"],
            stderr=subprocess.DEVNULL)
        if not wait_port(self.port, 10):
            self.stop()
            sys.exit(f"amqp-broker did not start on 127.0.0.1:{self.port}")
        return self.proc.pid

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.data:
            shutil.rmtree(self.data, ignore_errors=True)
            self.data = None


def uri(port):
    return f"amqp://guest:guest@127.0.0.1:{port}/%2f"


def perftest(port, pid, args, seconds=None, timeout=None):
    cmd = [PERFTEST, "-h", uri(port), "--json", "--quiet", "--broker-pid", str(pid)]
    if seconds is not None:
        cmd += ["-z", str(seconds)]
    p = subprocess.run(cmd + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": (p.stderr or p.stdout).strip()[-300:]}


def measure_idle(port, pid, a):
    """Broker RSS before and after `a.connections` idle connections with
    heartbeats (amqp-perftest idle), held for two heartbeat intervals."""
    before = settle_rss(pid)
    cmd = [PERFTEST, "idle", "-h", uri(port), "-n", str(a.connections),
           "--heartbeat", str(a.heartbeat), "--threads", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 600)
        line = p.stdout.readline().strip() if ready else ""
        if not line.startswith("connected"):
            p.kill()
            return {"error": (line + " " + p.stderr.read()).strip()[-300:]}
        connect_s = float(line.split()[3])
        time.sleep(2 * a.heartbeat)
        if p.poll() is not None:
            return {"error": ("idle connections ended: " + p.stderr.read()).strip()[-300:]}
        after = settle_rss(pid)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
    n = a.connections
    return {"connections": n, "heartbeat_s": a.heartbeat, "connect_s": connect_s,
            "rss_before_kib": before, "rss_after_kib": after,
            "bytes_per_connection": (after - before) * 1024 / n}


def measure_queued(port, pid, a):
    """Broker RSS before and after `a.queued` transient 16 B messages
    published (with confirms, so all are enqueued) to a queue with no
    consumer."""
    before = settle_rss(pid)
    s = perftest(port, pid, ["-x", "1", "-y", "0", "-s", "16", "-C", str(a.queued), "-c", "1000",
                             "-u", "perf-backlog"], timeout=1800)
    if s.get("error"):
        return {"error": s["error"]}
    after = settle_rss(pid)
    n = s.get("confirmed") or s.get("sent") or a.queued
    per = (after - before) * 1024 / n
    return {"messages": n, "body_bytes": 16, "rss_before_kib": before, "rss_after_kib": after,
            "bytes_per_message": per, "bytes_per_message_beyond_body": per - 16,
            "publish_rate": s.get("send_rate"), "broker_cpu_us_per_sent": s.get("broker_cpu_us_per_sent")}


def measure(name, port, pid, a):
    return measure_idle(port, pid, a) if name == "idle" else measure_queued(port, pid, a)


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}{unit}" if v < 100 else f"{v:,.0f}{unit}"
    return f"{v:,}{unit}"


def chart(path, scenarios, memory, results, title, run):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tp = [(name, desc) for name, desc, _ in scenarios
          if not name.startswith("lat") and not results[(name, "rabbitmq")].get("error")
          and not results[(name, "ours")].get("error")]
    lat = [name for name, _, _ in scenarios if name.startswith("lat")
           and not results[(name, "rabbitmq")].get("error") and not results[(name, "ours")].get("error")]
    mem = [m for m in memory if not results[(m, "rabbitmq")].get("error")
           and not results[(m, "ours")].get("error")]
    top = 0.42 * max(len(tp), 3) + 1
    fig = plt.figure(figsize=(13, top + 5))
    gs = fig.add_gridspec(2, 2 if mem else 1, height_ratios=[top, 4.2])
    axes = [fig.add_subplot(gs[0, :]), fig.add_subplot(gs[1, 0])]
    if mem:
        axes.append(fig.add_subplot(gs[1, 1]))
    colors = {"rabbitmq": "#f28e2b", "ours": "#4e79a7"}
    labels = {"rabbitmq": "RabbitMQ", "ours": "amqp-broker"}
    ax = axes[0]
    h = 0.38
    for k, who in enumerate(["rabbitmq", "ours"]):
        ys = [i + (k - 0.5) * h for i in range(len(tp))]
        xs = [results[(n, who)].get("receive_rate") or 0 for n, _ in tp]
        ax.barh(ys, xs, height=h, color=colors[who], label=labels[who])
        for y, x in zip(ys, xs):
            ax.text(x, y, f" {x / 1000:,.0f}k", va="center", fontsize=7)
    ax.set_yticks(range(len(tp)))
    ax.set_yticklabels([n for n, _ in tp], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    top_rate = max([results[(n, w)].get("receive_rate") or 0 for n, _ in tp for w in colors] + [1000])
    ax.set_xlim(1000, top_rate * 4)
    ax.set_xlabel("messages received per second (log scale)")
    ax.set_title("Throughput per scenario (msg/s received)")
    ax.legend(loc="lower right", fontsize=8)
    ax = axes[1]
    pcts = [("median", "p50"), ("p99", "p99"), ("p999", "p99.9")]
    groups = [(n, who) for n in lat for who in ["rabbitmq", "ours"]]
    w = 0.8 / len(pcts)
    shades = [0.45, 0.75, 1.0]
    for j, (key, label) in enumerate(pcts):
        xs = [i + (j - 1) * w for i in range(len(groups))]
        vals = [results[g]["consumer_latency_us"].get(key) or 0 for g in groups]
        cols = [colors[who] for _, who in groups]
        ax.bar(xs, vals, width=w, color=cols, alpha=shades[j], edgecolor="black", linewidth=0.3)
        for x, v in zip(xs, vals):
            ax.text(x, v, f"{v:,}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{n}\n{labels[who]}" for n, who in groups], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("consumer latency, µs (log scale)")
    ax.set_title("Latency at a fixed rate: p50 / p99 / p99.9 (light to dark)")
    if mem:
        ax = axes[2]
        keys = {"idle": ("bytes_per_connection", f"per idle connection\n({run['connections']:,}, heartbeats)"),
                "queued": ("bytes_per_message_beyond_body",
                           f"per queued 16 B message\n({run['queued']:,}), beyond the body")}
        for k, who in enumerate(["rabbitmq", "ours"]):
            xs = [i + (k - 0.5) * h for i in range(len(mem))]
            vals = [max(results[(m, who)][keys[m][0]], 1) for m in mem]
            ax.bar(xs, vals, width=h, color=colors[who], label=labels[who])
            for x, v in zip(xs, vals):
                ax.text(x, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(mem)))
        ax.set_xticklabels([keys[m][1] for m in mem], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("broker RSS growth, bytes (log scale)")
        ax.set_title("Memory")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--only", nargs="*", choices=ALL, metavar="NAME", help=" ".join(ALL))
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--chart", help="draw throughput and latency bars to this PNG/SVG (matplotlib)")
    ap.add_argument("--rabbit-node", default="bench@localhost",
                    help="RabbitMQ node name; started privately unless it runs (default bench@localhost)")
    ap.add_argument("--rabbit-port", type=int, default=5690, help="its AMQP port (default 5690)")
    ap.add_argument("--rabbit-dir", default="/tmp/rmq-bench",
                    help="a private node's mnesia, logs and plugins file (deleted first)")
    ap.add_argument("--broker-port", type=int, default=5680, help="amqp-broker's AMQP port (default 5680)")
    ap.add_argument("--connections", type=int, default=10000, help="idle connections (default 10000)")
    ap.add_argument("--heartbeat", type=int, default=10,
                    help="their heartbeat in seconds; held for two intervals (default 10)")
    ap.add_argument("--queued", type=int, default=1_000_000, help="queued 16 B messages (default 1000000)")
    ap.add_argument("--from-json", metavar="FILE",
                    help="run nothing: print the table (and draw --chart) from a --json file of an earlier run")
    ap.add_argument("--nofile", type=int, default=None,
                    help="ulimit -n for the brokers and the load generator (default connections + 2000)")
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as f:
            raw = json.load(f)
        run = raw.pop("_run")
        run.setdefault("rabbit_node", "rabbit@localhost")
        results = {tuple(k.split("/")): v for k, v in raw.items()}
        names = a.only or ALL
        scenarios = [s for s in SCENARIOS if s[0] in names and (s[0], "ours") in results]
        memory = [m for m in MEMORY if m in names and (m, "ours") in results]
        report(a, run, scenarios, memory, results)
        return
    nofile = raise_nofile(a.nofile or a.connections + 2000)
    if nofile < a.connections + 100:
        print(f"warning: ulimit -n is {nofile}, too low for {a.connections} connections", file=sys.stderr)
    sh("cargo", "build", "--release", "-q", "-p", "amqp-broker", "-p", "amqp-perftest", quiet=False)
    names = a.only or ALL
    scenarios = [s for s in SCENARIOS if s[0] in names]
    memory = [m for m in MEMORY if m in names]
    rabbit = Rabbit(a.rabbit_node, a.rabbit_port, a.rabbit_dir, nofile)
    ours = Ours(a.broker_port)
    results = {}
    load0 = os.getloadavg()
    rabbit.start()
    try:
        version = rabbit.version()
        # RabbitMQ first, with our broker not running.
        rpid = rabbit.pid()
        for name, _, args in scenarios:
            results[(name, "rabbitmq")] = perftest(a.rabbit_port, rpid, args, a.seconds)
            print(f"rabbitmq    {name}: {results[(name, 'rabbitmq')].get('receive_rate')}", file=sys.stderr)
        for name in memory:
            rabbit.fresh()
            results[(name, "rabbitmq")] = measure(name, a.rabbit_port, rabbit.pid(), a)
            print(f"rabbitmq    {name}: {results[(name, 'rabbitmq')]}", file=sys.stderr)
        # Then ours, with RabbitMQ stopped (private node) or its application
        # stopped (its VM idles).
        rabbit.pause()
        if scenarios:
            pid = ours.start()
            for name, _, args in scenarios:
                results[(name, "ours")] = perftest(a.broker_port, pid, args, a.seconds)
                print(f"amqp-broker {name}: {results[(name, 'ours')].get('receive_rate')}", file=sys.stderr)
            ours.stop()
        for name in memory:
            pid = ours.start()
            results[(name, "ours")] = measure(name, a.broker_port, pid, a)
            print(f"amqp-broker {name}: {results[(name, 'ours')]}", file=sys.stderr)
            ours.stop()
    finally:
        ours.stop()
        rabbit.finish()
    commit = sh("git", "-C", ROOT, "rev-parse", "--short", "HEAD").stdout.strip()
    run = {"command": " ".join(sys.argv), "rabbitmq": version, "rabbit_node": a.rabbit_node,
           "commit": commit, "cpus": os.cpu_count(), "seconds": a.seconds, "connections": a.connections,
           "heartbeat": a.heartbeat, "queued": a.queued, "nofile": nofile,
           "loadavg_start": load0, "loadavg_end": os.getloadavg()}
    if a.json:
        out = {f"{k[0]}/{k[1]}": v for k, v in results.items()}
        out["_run"] = run
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    report(a, run, scenarios, memory, results)


def report(a, run, scenarios, memory, results):
    """Prints the tables and draws the chart."""
    head = (f"RabbitMQ {run['rabbitmq']} (node {run['rabbit_node']}, no plugins) and amqp-broker {run['commit']}, "
            f"{run['cpus']} CPUs, load generator on the same machine, {run['seconds']} s per run, release builds")
    print(f"\n{head}\n")
    print("| scenario | RabbitMQ msg/s | amqp-broker msg/s | ratio | RabbitMQ CPU µs/msg | amqp-broker CPU µs/msg | ratio | p50 / p99 / p99.9 µs RabbitMQ | p50 / p99 / p99.9 µs amqp-broker |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, desc, _ in scenarios:
        r, o = results[(name, "rabbitmq")], results[(name, "ours")]
        if r.get("error") or o.get("error"):
            print(f"| {desc} | {r.get('error') or '-'} | {o.get('error') or '-'} | | | | | | |")
            continue
        rr, orr = r.get("receive_rate") or 0, o.get("receive_rate") or 0
        rc, oc = r.get("broker_cpu_us_per_received"), o.get("broker_cpu_us_per_received")
        lat = lambda x: " / ".join(fmt(x["consumer_latency_us"].get(k)) for k in ("median", "p99", "p999"))
        print(f"| {desc} | {fmt(rr)} | {fmt(orr)} | {orr / rr if rr else 0:.1f}× | {fmt(rc)} | {fmt(oc)} | "
              f"{(rc / oc) if rc and oc else 0:.1f}× less | {lat(r)} | {lat(o)} |")
    if memory:
        print("\n| memory scenario | RabbitMQ | amqp-broker | ratio |")
        print("|---|---|---|---|")
    for name in memory:
        r, o = results[(name, "rabbitmq")], results[(name, "ours")]
        if name == "idle":
            desc = (f"{run['connections']:,} idle connections, heartbeat {run['heartbeat']} s: "
                    "broker RSS bytes per connection")
            key = "bytes_per_connection"
        else:
            desc = f"{run['queued']:,} queued transient 16 B messages: broker RSS bytes per message beyond the body"
            key = "bytes_per_message_beyond_body"
        if r.get("error") or o.get("error"):
            print(f"| {desc} | {r.get('error') or '-'} | {o.get('error') or '-'} | |")
            continue
        rv, ov = r[key], o[key]
        ratio = (f"{rv / ov:.1f}× less" if rv >= ov else f"{ov / rv:.1f}× more") if rv > 0 and ov > 0 else "-"
        print(f"| {desc} | {fmt(rv)} | {fmt(ov)} | {ratio} |")
        print(f"| (RSS before → after, MiB) | {r['rss_before_kib'] / 1024:,.0f} → {r['rss_after_kib'] / 1024:,.0f} | "
              f"{o['rss_before_kib'] / 1024:,.0f} → {o['rss_after_kib'] / 1024:,.0f} | |")
    if a.chart and scenarios:
        chart(a.chart, scenarios, memory, results, head, run)


if __name__ == "__main__":
    main()
