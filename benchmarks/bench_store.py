"""Push latency with the SQLite store vs ``--in-memory``, side by side.

Run: ``python benchmarks/bench_store.py [--pushes N] [--size BYTES]``.

Two measurements, both printed as markdown tables:

1. End to end: a real `HotReloadServer` on a loopback port with one
   connected device; `POST /send/:id` of a ~50 KB schema (one text changed
   per push), timed from request to response, for each store. The stores
   take turns in blocks so that drift of this shared machine hits both.
   Target: the durable store adds <= 2 ms at p50.
2. The store alone: `commit_push` (one committed transaction of an update
   already planned and encoded, on
   the calling thread, i.e. the time the reactor is blocked) for 50 KB and
   500 KB schemas, with ``synchronous=NORMAL`` (the default) and ``FULL``.
"""

import argparse
import collections
import copy
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import orjson  # noqa: E402
import treq  # noqa: E402
from twisted.internet import defer, endpoints, task  # noqa: E402
from twisted.web import client, server as web_server  # noqa: E402

from lumora_reload.server import HotReloadServer  # noqa: E402
from lumora_reload.sessions import Hub  # noqa: E402
from lumora_reload.sqlite_store import SQLiteStore  # noqa: E402
from lumora_reload.store import MemoryStore  # noqa: E402
from tests.helpers import make_schema, node, open_device, with_text  # noqa: E402


def schema_of(size):
    """A schema of about `size` bytes of JSON: a root with many leaves."""
    leaves = [node("title", text="Hello")]
    while len(orjson.dumps(make_schema([node("root", "View", leaves)]))) < size:
        i = len(leaves)
        leaves.append(node(f"leaf{i}", text=f"item {i} " + "lorem ipsum " * 4, color="#336699", padding=8))
    return make_schema([node("root", "View", leaves)])


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def row(name, values):
    return f"| {name} | {len(values)} | {statistics.median(values):.2f} | {pct(values, 95):.2f} | {max(values):.2f} |"


class Target:
    """One daemon (with one device) on a loopback port."""

    def __init__(self, reactor, store, pool):
        self.reactor, self.store, self.pool = reactor, store, pool

    async def start(self, schema):
        self.server = HotReloadServer(reactor=self.reactor, store=self.store)
        self.server.startService()
        site = web_server.Site(self.server.resource(), reactor=self.reactor)
        site.noisy = False
        endpoint = endpoints.TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self.port = await endpoint.listen(site)
        base = f"127.0.0.1:{self.port.getHost().port}"
        self.url = f"http://{base}"
        session = self.server.create_session(schema=schema)
        self.sid = session.id
        self.device = await open_device(self.reactor, f"ws://{base}/ws?session={self.sid}")
        await self.device.hello()
        self.device.inbox = defer.DeferredQueue()  # nobody reads it: keep it from growing
        self.device.onMessage = lambda payload, binary: None
        self.schema = schema
        self.n = 0

    async def push(self):
        self.n += 1
        body = orjson.dumps(with_text(self.schema, f"push {self.n}"))
        started = time.perf_counter()
        response = await treq.post(
            f"{self.url}/send/{self.sid}", data=body,
            headers={"Content-Type": ["application/json"]}, pool=self.pool,
        )
        await treq.content(response)
        elapsed = (time.perf_counter() - started) * 1000
        assert response.code == 200, response.code
        return elapsed

    async def stop(self):
        self.device.dropConnection()
        await self.server.stopService()
        await self.port.stopListening()


async def end_to_end(reactor, pushes, size, tmp):
    pool = client.HTTPConnectionPool(reactor, persistent=True)
    schema = schema_of(size)
    targets = {
        "in-memory": Target(reactor, MemoryStore(), pool),
        "SQLite (synchronous=NORMAL, default)": Target(reactor, SQLiteStore.open(os.path.join(tmp, "e2e")), pool),
    }
    for target in targets.values():
        await target.start(copy.deepcopy(schema))
    times = collections.defaultdict(list)
    for target in targets.values():  # warm-up
        for _ in range(20):
            await target.push()
    block = 25
    for _ in range(max(1, pushes // block)):
        for name, target in targets.items():
            for _ in range(block):
                times[name].append(await target.push())
    for target in targets.values():
        await target.stop()
    await pool.closeCachedConnections()
    return len(orjson.dumps(schema)), times


def store_alone(pushes, tmp):
    results = {}
    for synchronous in ("NORMAL", "FULL"):
        for size in (50_000, 500_000):
            store = SQLiteStore.open(os.path.join(tmp, f"{synchronous}-{size}"), synchronous=synchronous)
            store.load()
            schema = schema_of(size)
            hub = Hub(task.Clock())
            session, first = hub.new_session(schema)
            store.create_session(session)
            store.commit_push(first)
            session.state = first.state
            hub.add_session(session)
            times = []
            for i in range(1, pushes + 1):
                update = hub.plan_push(session.id, with_text(schema, f"push {i}"))
                started = time.perf_counter()
                store.commit_push(update)
                times.append((time.perf_counter() - started) * 1000)
                hub.apply_update(update)
            store.close()
            results[(synchronous, size)] = times
    return results


async def main(reactor, args):
    with tempfile.TemporaryDirectory() as tmp:
        size, times = await end_to_end(reactor, args.pushes, args.size, tmp)
        alone = store_alone(args.pushes, tmp)
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()} with {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}\n")
    print(f"POST /send of a {size / 1000:.0f} KB schema (one text changed), one device connected, ms:\n")
    print("| store | pushes | p50 | p95 | max |\n|---|---|---|---|---|")
    for name, values in times.items():
        print(row(name, values))
    names = list(times)
    added = statistics.median(times[names[1]]) - statistics.median(times[names[0]])
    print(f"\nThe durable store adds {added:.2f} ms at p50 (target <= 2 ms).\n")
    print("`commit_push` alone (one committed transaction; the time the reactor is blocked), ms:\n")
    print("| synchronous | schema | pushes | p50 | p95 | max |\n|---|---|---|---|---|---|")
    for (synchronous, size), values in alone.items():
        print(row(f"{synchronous} | {size // 1000} KB", values))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pushes", type=int, default=500, help="timed pushes per store")
    parser.add_argument("--size", type=int, default=50_000, help="schema size in bytes")
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))
