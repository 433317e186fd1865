"""Soak test: many devices, steady pushes, a few devices dropping
off and resuming at random, one device that never reads.

    python -m benchmarks.soak [--seconds 300] [--devices 200] [--rate 10]

Starts the daemon as a subprocess (``twistd -n lumora-reload --in-memory``
on a free loopback port), connects the devices from this process (Twisted +
Autobahn), pushes `--rate` schemas a second through ``POST /send`` for
`--seconds`, then stops pushing and checks where every device ended.

Devices:
- *steady* devices read everything; each checks that the sequence numbers
  on its connection have no gaps; `--replicas` of them also keep a replica
  of the schema (apply_delta on incremental updates) and check every
  update's checksum against it (apply_delta copies the 100 KB tree, so
  not every device does this: it would make this process the bottleneck);
- `--reconnectors` *roamers* drop their TCP connection at random (no close
  frame, like a phone leaving Wi-Fi), stay away for 0.1-2 s and reconnect
  with ``lastSequence``; `--replicas` of them keep replicas too;
- one device never reads (its socket is never read after ``connected``)
  but keeps sending pings; the daemon must switch it to latest-wins and
  keep its own memory flat; when the daemon closes it (auto-ping timeout)
  it comes back and stalls again. At the end it reads again and must
  arrive at the latest state.

Pushes: a ~100 KB schema; each push changes one node's text (an incremental
update) and every `--full-every`-th rewrites 30 nodes (a full update).

Prints: delivered/expected per device class (and per special device), the
daemon's RSS over time, and the latency from the start of each push to its
arrival at the last steady device (p50/p99/max). Exit status 1 if a reading
device did not end on the latest state or saw a gap.
"""

import argparse
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import orjson
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, task

from lumora_reload import schema as schemas

UPDATE_HEAD = b'{"type":"update"'
FULL_MARK = b'"payload":{"type":"full"'
TAIL = re.compile(rb'"sequenceNumber":(\d+),"checksum":"[0-9a-f]{64}"\}\}$')

SESSION_NODES = 360  # ~100 KB of schema


def node(node_id, text):
    return {"id": node_id, "type": "Text", "props": {"text": text}, "children": [], "metadata": {"lineNumber": 1}}


def make_schema(version, rewritten=()):
    children = [
        node(f"n{i}", (f"v{version} " if i in rewritten else "") + f"node {i} " + "lorem ipsum " * 14)
        for i in range(SESSION_NODES)
    ]
    return {
        "version": "1.0",
        "metadata": {"sourceFramework": "react", "sourceFile": "App.tsx", "generatedAt": version},
        "nodes": [{"id": "root", "type": "View", "props": {}, "children": children, "metadata": {"lineNumber": 1}}],
    }


class Schemas:
    """The sequence of schemas pushed: each push changes one node, every
    `full_every`-th rewrites 30 nodes."""

    def __init__(self, full_every):
        self.full_every = full_every
        self.rewritten = {}
        self.version = 0
        self.current = make_schema(0)

    def next(self):
        self.version += 1
        v = self.version
        if v % self.full_every == 0:
            for i in random.sample(range(SESSION_NODES), 30):
                self.rewritten[i] = v
        else:
            self.rewritten[v % SESSION_NODES] = v
        children = self.current["nodes"][0]["children"]
        for i, version in self.rewritten.items():
            if version == v:
                children[i] = node(f"n{i}", f"v{v} node {i} " + "lorem ipsum " * 14)
        self.current["metadata"] = dict(self.current["metadata"], generatedAt=v)
        return self.current


# -- devices -----------------------------------------------------------------


class Device(WebSocketClientProtocol):
    """One device connection. Its record (`self.record`) outlives the
    connection, so a reconnecting device keeps counting."""

    def onOpen(self):
        record = self.record = self.factory.record
        payload = {"deviceId": record.device_id, "platform": "soak", "clientVersion": "1.1.0"}
        if record.sequence is not None:
            payload["lastSequence"] = record.sequence
        self.sendMessage(orjson.dumps({"type": "connect", "sessionId": record.session_id, "payload": payload}))
        record.protocol = self

    def onMessage(self, payload, isBinary):
        record = self.record
        now = time.monotonic()
        if not record.keep_replica and payload.startswith(UPDATE_HEAD):
            # Fast path for devices without a replica: read the type and
            # the sequence number without parsing 100 KB of schema, so
            # this process (200 devices) does not dominate the latency.
            # The daemon writes payload keys in a fixed order: the type
            # first, sequenceNumber and checksum last.
            tail = TAIL.search(payload, max(0, len(payload) - 120))
            if tail is not None:
                full = FULL_MARK in payload[:200]
                record.update(int(tail.group(1)), full, None, now)
                return
        message = orjson.loads(payload)
        kind = message["type"]
        body = message.get("payload") or {}
        if kind == "connected":
            record.connected(body)
            if record.stall:
                # never reads again (not shrinking SO_RCVBUF here: on
                # loopback, whose MSS is 64 KiB, a tiny receive buffer never
                # sends a window update when reading resumes, and the flow
                # then waits for zero-window probes backed off to minutes)
                self.transport.pauseProducing()
        elif kind == "update":
            record.update(body["sequenceNumber"], body["type"] == "full", body, now)
        elif kind == "error":
            record.errors.append(body.get("code"))

    def onClose(self, wasClean, code, reason):
        record = self.record
        record.protocol = None
        record.closes.append(code)
        if record.on_close is not None:
            record.on_close(code)


class Record:
    def __init__(self, run, device_id, session_id, replica=False, stall=False):
        self.run = run
        self.device_id = device_id
        self.session_id = session_id
        self.keep_replica = replica
        self.stall = stall
        self.protocol = None
        self.sequence = None
        self.first_sequence = None
        self.replica = None
        self.updates = 0
        self.fulls = 0
        self.skips = 0
        self.replayed = 0
        self.gaps = 0
        self.checksum_errors = 0
        self.connects = 0
        self.resumed = 0
        self.errors = []
        self.closes = []
        self.on_close = None
        self.reach_waiters = []
        self.hello = None

    def connected(self, body):
        self.connects += 1
        if self.first_sequence is None:
            self.first_sequence = body["sequenceNumber"]
        if body["resumed"]:
            self.resumed += 1
        else:
            self.sequence = body["sequenceNumber"]
            if self.keep_replica:
                self.replica = body.get("initialSchema")
        if self.hello is not None and not self.hello.called:
            self.hello.callback(None)

    def update(self, seq, full, body, now):
        if full:
            self.fulls += 1
            if self.sequence is not None and seq < self.sequence:
                self.gaps += 1
            if self.sequence is not None and seq > self.sequence + 1:
                self.skips += 1  # latest wins: stale updates collapsed
            if self.keep_replica:
                self.replica = body["schema"]
        else:
            if self.sequence is not None and seq != self.sequence + 1:
                self.gaps += 1
            if self.keep_replica:
                self.replica = schemas.apply_delta(self.replica, body["delta"])
        if self.keep_replica and schemas.checksum(self.replica) != body["checksum"]:
            self.checksum_errors += 1
        self.sequence = seq
        self.updates += 1
        self.run.arrived(self, seq, now)
        self._wake()

    def _wake(self):
        for seq, d in list(self.reach_waiters):
            if self.sequence is not None and self.sequence >= seq:
                self.reach_waiters.remove((seq, d))
                d.callback(None)

    def reach(self, seq):
        d = defer.Deferred()
        self.reach_waiters.append((seq, d))
        self._wake()
        return d


# -- the run -----------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


class Soak:
    def __init__(self, reactor, options):
        self.reactor = reactor
        self.o = options
        self.records = []
        self.push_started = {}  # seq -> monotonic
        self.last_arrival = {}  # seq -> (count of steady devices, latest arrival)
        self.rss = []
        self.daemon = None
        self.log_dir = tempfile.mkdtemp(prefix="lumora-soak-")

    # -- daemon --

    def start_daemon(self):
        self.port = free_port()
        twistd = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
        args = [
            twistd, "-n", "--pidfile=", f"--logfile={self.log_dir}/daemon.log",
            "lumora-reload", "--in-memory",
            "--port", f"tcp:{self.port}:interface=127.0.0.1",
            "--max-buffer", str(self.o.max_buffer),
            "--max-connections-per-address", "1000000",  # every device is on loopback
        ]
        self.daemon = subprocess.Popen(args, cwd=self.log_dir)
        self.base = f"http://127.0.0.1:{self.port}"

    @defer.inlineCallbacks
    def wait_daemon(self):
        for _ in range(200):
            try:
                response = yield treq.get(self.base + "/health", persistent=False)
                yield treq.content(response)
                return
            except Exception:
                yield task.deferLater(self.reactor, 0.05, lambda: None)
        raise RuntimeError("daemon did not start; see " + self.log_dir)

    def stop_daemon(self):
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()

    # -- devices --

    @defer.inlineCallbacks
    def connect(self, record):
        url = f"ws://127.0.0.1:{self.port}/ws?session={record.session_id}"
        factory = WebSocketClientFactory(url, reactor=self.reactor)
        factory.protocol = Device
        factory.record = record
        factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
        endpoint = endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=10)
        record.hello = defer.Deferred()
        protocol = yield endpoint.connect(factory)
        yield record.hello.addTimeout(30, self.reactor)
        return protocol

    def arrived(self, record, seq, now):
        if record.kind != "steady":
            return
        count, latest = self.last_arrival.get(seq, (0, 0.0))
        self.last_arrival[seq] = (count + 1, max(latest, now))

    @defer.inlineCallbacks
    def push(self, schema):
        started = time.monotonic()
        response = yield treq.post(
            f"{self.base}/send/{self.sid}",
            data=orjson.dumps(schema),
            headers={"Content-Type": ["application/json"]},
        )
        body = orjson.loads((yield treq.content(response)))
        if response.code != 200:
            raise RuntimeError(f"push failed: {response.code} {body}")
        self.push_started[body["sequenceNumber"]] = started
        return body

    # -- chaos --

    def reconnector(self, record):
        """Drop at random (exponential, mean --drop-every s), come back
        0.1-2 s later with lastSequence."""

        def drop():
            if self.stopping:
                return
            if record.protocol is not None:
                record.on_close = lambda code: self.reactor.callLater(random.uniform(0.1, 2.0), back)
                record.protocol.transport.abortConnection()
            else:
                schedule()

        def back():
            record.on_close = None
            if self.stopping:
                return
            self.connect(record).addCallbacks(lambda _: schedule(), lambda f: (print("reconnect failed", f), schedule()))

        def schedule():
            self.reactor.callLater(random.expovariate(1.0 / self.o.drop_every), drop)

        schedule()

    def pinger(self):
        """Every device sends an application ping every --ping-every
        seconds, as real devices do (the daemon closes devices silent for
        --connection-timeout); spread over the interval."""
        ping = orjson.dumps({"type": "ping", "sessionId": self.sid, "payload": {}})
        state = {"i": 0}
        per_tick = max(1, round(len(self.records) / self.o.ping_every))

        def tick():
            for _ in range(per_tick):
                record = self.records[state["i"] % len(self.records)]
                state["i"] += 1
                if record.protocol is not None and record.protocol.state == record.protocol.STATE_OPEN:
                    record.protocol.sendMessage(ping)

        loop = task.LoopingCall(tick)
        loop.start(1.0, now=False)
        return loop

    def staller(self, record):
        """The never-reading device keeps pinging (see pinger); when the
        daemon closes it, it comes back and stalls again."""

        def closed(code):
            if not self.stopping:
                self.stall_drops.append((round(time.monotonic() - self.t0, 1), code))
                self.reactor.callLater(1.0, lambda: self.connect(record))

        record.on_close = closed

    # -- main --

    @defer.inlineCallbacks
    def run(self):
        o = self.o
        random.seed(o.seed)
        self.stopping = False
        self.stall_drops = []
        self.start_daemon()
        try:
            yield self.wait_daemon()
            self.schemas = Schemas(o.full_every)
            response = yield treq.post(
                self.base + "/session/new",
                data=orjson.dumps({"schema": self.schemas.current}),
                headers={"Content-Type": ["application/json"]},
            )
            self.sid = orjson.loads((yield treq.content(response)))["sessionId"]
            steady = o.devices - o.reconnectors - 1
            for i in range(o.devices):
                if i < steady:
                    record = Record(self, f"steady-{i}", self.sid, replica=i < o.replicas)
                    record.kind = "steady"
                elif i < steady + o.reconnectors:
                    record = Record(self, f"roamer-{i - steady}", self.sid, replica=i - steady < o.replicas)
                    record.kind = "roamer"
                else:
                    record = Record(self, "stalled", self.sid, stall=True)
                    record.kind = "stalled"
                self.records.append(record)
            # connect in batches so the handshakes do not all queue at once
            for start in range(0, len(self.records), 50):
                yield defer.gatherResults([self.connect(r) for r in self.records[start:start + 50]], consumeErrors=True)
            print(f"{len(self.records)} devices connected; pushing {o.rate}/s for {o.seconds:g} s", flush=True)
            print(f"daemon log: {self.log_dir}/daemon.log", flush=True)

            self.t0 = time.monotonic()
            self.cpu0 = cpu_seconds(self.daemon.pid)
            own = os.times()
            self.own_cpu0 = own.user + own.system
            for record in self.records:
                if record.kind == "roamer":
                    self.reconnector(record)
                elif record.kind == "stalled":
                    self.staller(record)
            sampler = task.LoopingCall(self.sample)
            sampler.start(o.sample_every, now=True)
            pinger = self.pinger()

            pushes = int(o.seconds * o.rate)
            failures = []
            inflight = []
            for k in range(pushes):
                due = self.t0 + k / o.rate
                delay = due - time.monotonic()
                if delay > 0:
                    yield task.deferLater(self.reactor, delay, lambda: None)
                d = self.push(self.schemas.next())
                d.addErrback(lambda f: failures.append(f.getErrorMessage()))
                inflight.append(d)
                inflight = [x for x in inflight if not x.called]
            yield defer.DeferredList(inflight)
            pushed_for = time.monotonic() - self.t0
            self.stopping = True
            sampler.stop()
            pinger.stop()
            self.sample()
            cpu = cpu_seconds(self.daemon.pid) - self.cpu0
            own = os.times()
            self.own_cpu = own.user + own.system - self.own_cpu0
            final = max(self.push_started)

            # every reading device must arrive at the final state
            pending = []
            for record in self.records:
                if record.kind == "roamer" and record.protocol is None:
                    pending.append(self.connect(record))
            yield defer.gatherResults(pending, consumeErrors=True)
            stalled = [r for r in self.records if r.kind == "stalled"][0]
            if stalled.protocol is not None:
                stalled.protocol.transport.resumeProducing()
            else:
                stalled.stall = False
                yield self.connect(stalled)
            waits = [r.reach(final) for r in self.records]
            done = defer.DeferredList(waits)
            done.addTimeout(60, self.reactor)
            try:
                yield done
            except defer.TimeoutError:
                pass
            ok = self.report(final, pushes, pushed_for, cpu, failures)
            return ok
        finally:
            self.stopping = True
            for record in self.records:
                if record.protocol is not None:
                    record.on_close = None
                    record.protocol.transport.abortConnection()
            self.stop_daemon()

    def sample(self):
        if self.daemon.poll() is None:
            self.rss.append((time.monotonic() - self.t0, rss_kb(self.daemon.pid)))

    def report(self, final, pushes, pushed_for, cpu, failures):
        o = self.o
        print()
        print(f"## Soak: {o.devices} devices, {o.rate:g} pushes/s for {o.seconds:g} s "
              f"({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)")
        print(f"- pushes: {pushes} sent in {pushed_for:.1f} s, {len(failures)} failed; final sequence {final}")
        print(f"- daemon CPU: {cpu:.1f} s over {pushed_for:.0f} s ({100 * cpu / pushed_for:.0f}% of one core); "
              f"this process (all devices + pusher): {self.own_cpu:.1f} s ({100 * self.own_cpu / pushed_for:.0f}%)")
        all_ok = not failures
        print()
        print("| devices | count | at latest | gaps | checksum errors | latest-wins jumps | delivered/expected (min-max) |")
        print("|---|---|---|---|---|---|---|")
        for kind in ("steady", "roamer", "stalled"):
            group = [r for r in self.records if r.kind == kind]
            at_latest = sum(r.sequence == final for r in group)
            gaps = sum(r.gaps for r in group)
            bad = sum(r.checksum_errors for r in group)
            ratios = [r.updates / max(1, final - r.first_sequence) for r in group]
            jumps = sum(r.skips for r in group)
            print(f"| {kind} | {len(group)} | {at_latest} | {gaps} | {bad} | {jumps} | "
                  f"{min(ratios):.3f}-{max(ratios):.3f} |")
            all_ok &= at_latest == len(group) and gaps == 0 and bad == 0
        print()
        print("delivered = updates received (replays included), expected = states after the first connect;")
        print("a roamer that resumes gets every missed update replayed (ratio 1.0); one that gets a full")
        print("schema skips states (ratio < 1); the stalled device gets latest-wins full updates.")
        print()
        print("| device | connects | resumed | full updates | latest-wins jumps | delivered/expected | closes | at latest |")
        print("|---|---|---|---|---|---|---|---|")
        for r in self.records:
            if r.kind != "steady":
                expected = final - r.first_sequence
                closes = ",".join(str(c) for c in r.closes[:6]) + ("…" if len(r.closes) > 6 else "")
                print(f"| {r.device_id} | {r.connects} | {r.resumed} | {r.fulls} | {r.skips} | {r.updates}/{expected} | "
                      f"{closes or '-'} | {'yes' if r.sequence == final else 'NO'} |")
        if self.stall_drops:
            print(f"\nstalled device closed by the daemon at (s, code): {self.stall_drops}")
        try:
            with open(f"{self.log_dir}/daemon.log") as f:
                drained = sum("drained; sending the latest state" in line for line in f)
            print(f"daemon log: {drained} time(s) a congested device drained and got the latest state")
        except OSError:
            pass
        if o.per_device:
            print("\nper device (delivered/expected):")
            for r in self.records:
                print(f"  {r.device_id}: {r.updates}/{final - r.first_sequence}")

        print("\n| t (s) | daemon RSS (MiB) |\n|---|---|")
        for t, kb in self.rss:
            print(f"| {t:.0f} | {kb / 1024:.1f} |")
        after_warmup = [kb for t, kb in self.rss if t >= min(30, pushed_for / 4)]
        if after_warmup:
            print(f"\nRSS after warm-up: min {min(after_warmup) / 1024:.1f} MiB, "
                  f"max {max(after_warmup) / 1024:.1f} MiB, growth {(after_warmup[-1] - after_warmup[0]) / 1024:+.1f} MiB")

        steady = sum(r.kind == "steady" for r in self.records)
        latencies = [
            (latest - self.push_started[seq]) * 1000
            for seq, (count, latest) in self.last_arrival.items()
            if count == steady and seq in self.push_started
        ]
        incomplete = sum(1 for seq in self.push_started if self.last_arrival.get(seq, (0, 0))[0] != steady)
        print(f"\npush-to-last-steady-device latency over {len(latencies)} pushes: "
              f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms, "
              f"max {max(latencies, default=float('nan')):.1f} ms"
              + (f" ({incomplete} pushes not seen by every steady device)" if incomplete else ""))
        errors = sorted({c for r in self.records for c in r.errors})
        if errors:
            print(f"error codes seen by devices: {errors}")
        print("\nRESULT:", "OK" if all_ok else "FAILED")
        return all_ok


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=300, help="how long to push [300]")
    p.add_argument("--devices", type=int, default=200, help="devices in the session [200]")
    p.add_argument("--rate", type=float, default=10, help="pushes per second [10]")
    p.add_argument("--reconnectors", type=int, default=5, help="devices that drop and resume at random [5]")
    p.add_argument("--drop-every", type=float, default=20, help="mean seconds between a roamer's drops [20]")
    p.add_argument("--replicas", type=int, default=2,
                   help="steady devices, and roamers, that also keep a replica and check checksums [2 of each]")
    p.add_argument("--max-buffer", type=int, default=1024 * 1024, help="daemon --max-buffer [1 MiB]")
    p.add_argument("--full-every", type=int, default=20, help="every N-th push rewrites 30 nodes (full update) [20]")
    p.add_argument("--ping-every", type=float, default=20, help="seconds between a device's pings [20]")
    p.add_argument("--sample-every", type=float, default=10, help="seconds between RSS samples [10]")
    p.add_argument("--per-device", action="store_true", help="print delivered/expected for every device")
    p.add_argument("--seed", type=int, default=4)
    return p.parse_args(argv)


def main(argv=None):
    options = parse_args(sys.argv[1:] if argv is None else argv)

    def go(reactor):
        def done(ok):
            if not ok:
                raise SystemExit(1)

        return Soak(reactor, options).run().addCallback(done)

    task.react(go)


if __name__ == "__main__":
    main()
