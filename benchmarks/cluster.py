"""Cluster-mode figures: what Redis adds to push latency, and fan-out to
N devices spread over 2 daemons vs one daemon alone (loopback, one machine).
All devices live in this one process, which is the bottleneck of the
fan-out figure (it parses every frame); compare the two rows, not the
absolute numbers, with benchmarks/RESULTS.md.

    python benchmarks/cluster.py [--devices 1000] [--pushes 20] [--latency-pushes 200]
"""
import argparse, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time
import orjson, treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, protocol, task

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
STARTED = re.compile(rb"Site starting on (\d+)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


class Proc(protocol.ProcessProtocol):
    def __init__(self):
        self.out = b""; self.started = defer.Deferred()
    def childDataReceived(self, fd, data):
        self.out += data
        m = STARTED.search(self.out)
        if m and not self.started.called and (b"--redis" not in self.argv or b"subscribed to" in self.out):
            self.started.callback(int(m.group(1)))


def schema(text, pads=25):
    nodes = [{"id": f"pad{i}", "type": "Text", "props": {"text": f"padding {i} " + "x" * 40}, "children": [], "metadata": {}} for i in range(pads)]
    return {"version": "1.0", "metadata": {"sourceFramework": "react", "sourceFile": "a", "generatedAt": 1},
            "nodes": [{"id": "root", "type": "View", "props": {}, "children": [
                {"id": "title", "type": "Text", "props": {"text": text}, "children": [], "metadata": {}}, *nodes], "metadata": {}}]}


class Dev(WebSocketClientProtocol):
    def onMessage(self, payload, isBinary):
        if b'"update"' in payload[:40] or b'"type":"update"' in payload:
            self.factory.bench.got()


class Bench:
    def __init__(self, reactor):
        self.reactor = reactor; self.waiting = 0; self.done = None
    def got(self):
        self.waiting -= 1
        if self.waiting == 0 and self.done is not None:
            d, self.done = self.done, None; d.callback(time.perf_counter())


async def start(reactor, *extra):
    p = Proc(); argv = [TWISTD, "-n", "--pidfile=", "lumora-reload", "--in-memory", "--port", "tcp:0:interface=127.0.0.1",
                        "--rate-limit", "10000", "--max-devices-per-session", "100000",
                        "--max-connections-per-address", "1000000", *extra]
    p.argv = b" ".join(a.encode() for a in argv)
    reactor.spawnProcess(p, TWISTD, argv, env=dict(os.environ))
    port = await p.started
    return p, f"http://127.0.0.1:{port}"


async def post(url, body):
    r = await treq.post(url, data=orjson.dumps(body), headers={"Content-Type": ["application/json"]}, persistent=True)
    return r.code, orjson.loads(await treq.content(r))


async def latency(reactor, url, n):
    code, s = await post(url + "/session/new", {"schema": schema("start")})
    sid = s["sessionId"]; times = []
    for i in range(n):
        t = time.perf_counter(); code, body = await post(f"{url}/send/{sid}", schema(f"v{i}")); times.append(time.perf_counter() - t)
        assert code == 200, body
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * .95)] * 1000


async def fanout(reactor, urls, devices, pushes):
    code, s = await post(urls[0] + "/session/new", {"schema": schema("start")})
    sid = s["sessionId"]
    await task.deferLater(reactor, 0.2, lambda: None)
    bench = Bench(reactor); conns = []
    for i in range(devices):
        url = urls[i % len(urls)].replace("http", "ws") + f"/ws?session={sid}"
        f = WebSocketClientFactory(url, reactor=reactor); f.protocol = Dev; f.bench = bench
        port = int(url.split(":")[2].split("/")[0])
        proto = await endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(f)
        conns.append(proto)
        if i % 100 == 99:
            await task.deferLater(reactor, 0.05, lambda: None)
    await task.deferLater(reactor, 1.0, lambda: None)
    for j, c in enumerate(conns):
        c.sendMessage(orjson.dumps({"type": "connect", "sessionId": sid, "timestamp": 1, "version": "1.1.0",
                                    "payload": {"deviceId": f"d{j}", "platform": "ios", "clientVersion": "1.1.0"}}))
    await task.deferLater(reactor, 2.0, lambda: None)
    times = []
    for i in range(pushes):
        bench.waiting = devices; done = bench.done = defer.Deferred()
        t = time.perf_counter()
        code, body = await post(f"{urls[i % len(urls)]}/send/{sid}", schema(f"p{i}"))
        assert code == 200, body
        end = await done.addTimeout(30, reactor)
        times.append(end - t)
    for c in conns:
        c.transport.abortConnection()
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * .95)] * 1000


async def main(reactor, args):
    tmp = tempfile.mkdtemp(); rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--dir", tmp, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    rurl = f"redis://127.0.0.1:{rport}/0"
    procs = []
    try:
        p1, single = await start(reactor); procs.append(p1)
        p2, c1 = await start(reactor, "--redis", rurl); procs.append(p2)
        p3, c2 = await start(reactor, "--redis", rurl); procs.append(p3)
        print(f"push latency, no device ({args.latency_pushes} pushes, incremental, HTTP round trip):")
        s = await latency(reactor, single, args.latency_pushes)
        c = await latency(reactor, c1, args.latency_pushes)
        print(f"  one daemon alone : p50 {s[0]:.2f} ms  p95 {s[1]:.2f} ms")
        print(f"  cluster (--redis): p50 {c[0]:.2f} ms  p95 {c[1]:.2f} ms   (Redis adds {c[0]-s[0]:.2f} ms at p50)")
        print(f"fan-out to {args.devices} devices, push sent -> last device has it ({args.pushes} pushes):")
        s = await fanout(reactor, [single], args.devices, args.pushes)
        print(f"  one daemon alone        : p50 {s[0]:.1f} ms  p95 {s[1]:.1f} ms")
        c = await fanout(reactor, [c1, c2], args.devices, args.pushes)
        print(f"  2 daemons through Redis : p50 {c[0]:.1f} ms  p95 {c[1]:.1f} ms (pushes alternate daemons)")
    finally:
        for p in procs:
            p.transport.signalProcess("KILL")
        redis.terminate(); redis.wait(); shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--pushes", type=int, default=20)
    ap.add_argument("--latency-pushes", type=int, default=200)
    args = ap.parse_args()
    task.react(lambda r: defer.ensureDeferred(main(r, args)))
