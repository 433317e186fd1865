"""The push pipeline's promises across two daemons sharing a real
`redis-server`, as a hypothesis state machine (a smaller budget than the
single-daemon one in tests/test_push_pipeline.py).

Two in-process daemons with `RedisStore`s on real loopback ports; devices are
`lumora_reload.client.DeviceClient`s (each keeps a replica and checks every
checksum). Steps: a push on either daemon, two concurrent pushes (one on
each), a device joining either daemon (resuming with its last number and
checksum when it had one), a device leaving. After every step, once the
devices have settled: numbers are gapless and each names the schema
committed under it, both daemons show the last committed state, and every
device holds exactly that schema.
"""

import os

import pytest
import pytest_twisted
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet import defer, task

from lumora_reload import cluster as redis_store
from lumora_reload import schema as schemas
from lumora_reload.client import DeviceClient
from lumora_reload.server import HotReloadServer
from tests.helpers import Daemon, make_schema, node
from tests.test_cluster import redis  # noqa: F401  (fixture)
from tests.test_fuzz import run_blocking

pytestmark = pytest.mark.skipif(
    __import__("shutil").which("redis-server") is None, reason="redis-server is not installed"
)

SLOW = os.environ.get("HYPOTHESIS_PROFILE") == "slow"
WAIT = 10.0


class InProcess(Daemon):
    def __init__(self, reactor, url):
        self.reactor = reactor
        self.server = HotReloadServer(reactor=reactor, store=redis_store.RedisStore.open(url, reactor=reactor),
                                      heartbeat_interval=30.0)
        self.port = None


def block(d, reactor, timeout=WAIT):
    return pytest_twisted.blockon(defer.ensureDeferred(d) if not isinstance(d, defer.Deferred) else
                                  d.addTimeout(timeout, reactor))


def wait_until(predicate, reactor, tries=500):
    async def poll():
        for _ in range(tries):
            if predicate():
                return True
            await task.deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("condition not met in time")

    return block(defer.ensureDeferred(poll()), reactor)


def texts():
    return st.text(alphabet="abcxyz", min_size=1, max_size=6)


def schema_with(title, extra):
    kids = [node("title", text=title)] + [node(f"n{i}", text=f"item {i}") for i in range(extra)]
    return make_schema([node("root", "View", kids)])


class TwoDaemons(RuleBasedStateMachine):
    reactor = None
    daemons = None

    @initialize()
    def start(self):
        self.committed = {}  # sequence -> schema
        self.sid = block(self.daemons[0].new_session(schema_with("start", 0)), self.reactor)
        self.committed[1] = schema_with("start", 0)
        wait_until(lambda: self.sid in self.daemons[1].server.hub.sessions, self.reactor)
        self.devices = []  # (daemon index, DeviceClient)
        self.gone = []  # clients that left, with their replicas

    def last(self):
        return max(self.committed)

    def _push(self, index, schema):
        d = self.daemons[index].push(self.sid, schema)
        return d.addCallback(lambda result: (result, schema))

    def _record(self, result, schema):
        number = result["sequenceNumber"]
        if result["updateType"] == "none":
            # nothing changed: the schema is the one committed under that number
            assert schemas.checksum(self.committed[number]) == schemas.checksum(schema)
            return
        assert number not in self.committed, f"number {number} given twice"
        self.committed[number] = schema

    @rule(index=st.sampled_from([0, 1]), title=texts(), extra=st.integers(0, 3))
    def push(self, index, title, extra):
        result, schema = block(self._push(index, schema_with(title, extra)), self.reactor)
        self._record(result, schema)

    @rule(first=texts(), second=texts())
    def concurrent_pushes(self, first, second):
        both = block(defer.gatherResults([self._push(0, schema_with(first, 1)), self._push(1, schema_with(second, 2))]),
                     self.reactor)
        for result, schema in sorted(both, key=lambda pair: pair[0]["sequenceNumber"]):
            self._record(result, schema)

    @precondition(lambda self: len(self.devices) < 4)
    @rule(index=st.sampled_from([0, 1]), resume=st.booleans())
    def device_joins(self, index, resume):
        url = self.daemons[index].server.ws_url(self.sid).replace("localhost", "127.0.0.1")
        url = url.replace("ws://127.0.0.1", f"ws://127.0.0.1:{self.daemons[index].port.getHost().port}")
        client = DeviceClient(url, reactor=self.reactor, ping_interval=3600)
        if resume and self.gone:
            old = self.gone.pop()
            client.replica = old.replica  # reconnect holding what it had
        client.start()
        block(client.wait_for_sequence(self.last()), self.reactor)
        self.devices.append((index, client))

    @precondition(lambda self: self.devices)
    @rule(which=st.integers(0, 3))
    def device_leaves(self, which):
        index, client = self.devices.pop(which % len(self.devices))
        block(client.stop(), self.reactor)
        self.gone.append(client)

    @invariant()
    def everyone_holds_the_last_committed_state(self):
        if not hasattr(self, "sid"):
            return
        numbers = sorted(self.committed)
        assert numbers == list(range(1, len(numbers) + 1)), numbers  # gapless
        last = self.last()
        expected = self.committed[last]
        for daemon in self.daemons:
            wait_until(lambda d=daemon: d.server.hub.sessions[self.sid].sequence == last, self.reactor)
            session = daemon.server.get_session(self.sid)
            assert session.schema == expected and session.checksum == schemas.checksum(expected)
        for _, client in self.devices:
            block(client.wait_for_sequence(last), self.reactor)
            assert client.replica.schema == expected
            assert client.replica.checksum == schemas.checksum(expected)

    def teardown(self):
        for _, client in self.devices:
            block(client.stop(), self.reactor)
        if hasattr(self, "sid"):
            block(self.daemons[0].server.delete_session(self.sid), self.reactor)


@pytest_twisted.ensureDeferred
async def test_two_daemons_keep_the_pipeline_s_promises(reactor, redis):  # noqa: F811
    daemons = []
    for _ in range(2):
        daemon = InProcess(reactor, redis.url)
        await daemon.start()
        daemons.append(daemon)
    for daemon in daemons:
        for _ in range(500):
            if daemon.server.store.available():
                break
            await task.deferLater(reactor, 0.01, lambda: None)
    TwoDaemons.reactor, TwoDaemons.daemons = reactor, daemons
    budget = settings(
        max_examples=40 if SLOW else 10,
        stateful_step_count=20 if SLOW else 10,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    try:
        await run_blocking(reactor, lambda: run_state_machine_as_test(TwoDaemons, settings=budget))
    finally:
        for daemon in daemons:
            await daemon.stop()
