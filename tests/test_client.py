"""lumora_reload.client: the replica (pure), backoff and close-code policy
(injected clock), and the client against a real daemon on loopback."""

import copy

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, task
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web import server as web_server

from lumora_reload import schema as schemas
from lumora_reload.client import (
    RESTART,
    RETRY,
    STOP,
    Backoff,
    Closed,
    DeviceClient,
    Replica,
    UpdateError,
    close_action,
)
from lumora_reload.server import HotReloadServer
from tests.helpers import WAIT, make_schema, node, with_text

ensure = pytest_twisted.ensureDeferred


def big_schema():
    """Large enough that a one-leaf change goes out incremental."""
    schema = make_schema()
    schema["nodes"][0]["children"].append(node("blob", text="x" * 4000))
    return schema


def full(schema, sequence):
    return {"type": "full", "schema": schema, "sequenceNumber": sequence, "checksum": schemas.checksum(schema)}


def incremental(old, new, sequence):
    return {
        "type": "incremental",
        "delta": schemas.compute_delta(old, new),
        "sequenceNumber": sequence,
        "checksum": schemas.checksum(new),
    }


# -- the replica ------------------------------------------------------------


def test_replica_applies_full_and_incremental_updates():
    a = make_schema()
    b = with_text(a, "changed")
    c = copy.deepcopy(b)
    c["nodes"][0]["children"].insert(0, node("new", text="n"))
    replica = Replica()
    assert replica.apply(full(a, 1)) is True
    assert replica.apply(incremental(a, b, 2)) is True
    assert replica.apply(incremental(b, c, 3)) is True
    assert (replica.schema, replica.sequence, replica.checksum) == (c, 3, schemas.checksum(c))


def test_replica_refuses_a_wrong_checksum_and_keeps_its_state():
    a = make_schema()
    b = with_text(a, "changed")
    replica = Replica()
    replica.reset(a, 1, schemas.checksum(a))
    bad = incremental(a, b, 2)
    bad["checksum"] = "0" * 64
    with pytest.raises(UpdateError) as e:
        replica.apply(bad)
    assert e.value.code == "CHECKSUM_MISMATCH"
    assert (replica.schema, replica.sequence) == (a, 1)
    with pytest.raises(UpdateError):
        replica.apply(dict(full(b, 2), checksum="1" * 64))
    assert replica.schema == a
    with pytest.raises(UpdateError):
        Replica().reset(a, 1, "2" * 64)


def test_replica_refuses_a_gap_and_skips_a_duplicate():
    a, b = make_schema(), with_text(make_schema(), "b")
    c = with_text(b, "c")
    replica = Replica()
    replica.reset(a, 1)
    with pytest.raises(UpdateError) as e:
        replica.apply(incremental(b, c, 3))
    assert e.value.code == "UPDATE_FAILED" and "missed" in e.value.message
    assert replica.apply(incremental(a, b, 2)) is True
    assert replica.apply(incremental(a, b, 2)) is False  # replayed twice: already held
    assert replica.sequence == 2


def test_replica_refuses_a_delta_that_does_not_fit():
    replica = Replica()
    replica.reset(make_schema(), 1)
    update = {"type": "incremental", "delta": {"added": [], "modified": [], "removed": ["nope"]},
              "sequenceNumber": 2, "checksum": "x"}
    with pytest.raises(UpdateError) as e:
        replica.apply(update)
    assert e.value.code == "UPDATE_FAILED"
    with pytest.raises(UpdateError):
        Replica().apply(incremental(make_schema(), with_text(make_schema(), "b"), 1))  # nothing held


# -- close codes and backoff -----------------------------------------------


@pytest.mark.parametrize("code", [4400, 4401, 4403, 4404, 4410, 4426, 1009])
def test_final_close_codes_stop(code):
    assert close_action(code, "whatever") == STOP


@pytest.mark.parametrize(
    "code, reason, action",
    [
        (1000, "Connection timeout", RETRY),
        (1000, "Session closed", STOP),
        (1000, "Disconnected by server", STOP),
        (1012, "Service restart", RESTART),
        (4409, "Replaced", RETRY),
        (4429, "Rate limit exceeded", RETRY),
        (1006, "", RETRY),
        (None, "Connection refused", RETRY),
    ],
)
def test_retry_close_codes(code, reason, action):
    assert close_action(code, reason) == action


def test_backoff_doubles_from_one_second_to_thirty_with_jitter_below():
    backoff = Backoff()
    assert [backoff.delay(n, 0.0) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.delay(0, 0.999) == pytest.approx(0.75, abs=0.001)
    assert 22.5 <= backoff.delay(10_000, 0.999) <= 30  # no overflow, never above the cap


def _failing_client(rand=0.0):
    reactor = MemoryReactorClock()
    client = DeviceClient("ws://127.0.0.1:9/ws?session=s", reactor=reactor, random=lambda: rand)
    return reactor, client


def _refuse_last(reactor):
    factory = reactor.tcpClients[-1][2]
    factory.clientConnectionFailed(reactor.connectors[-1], Failure(ConnectionRefusedError()))


@pytest.mark.parametrize("rand, scale", [(0.0, 1.0), (0.5, 0.875)])
def test_backoff_timing_on_an_injected_clock(rand, scale):
    reactor, client = _failing_client(rand)
    seen = []
    client.subscribe("closed", seen.append)
    client.start()
    assert len(reactor.tcpClients) == 1
    for attempt, base in enumerate([1, 2, 4, 8, 16, 30, 30]):
        _refuse_last(reactor)
        delay = base * scale
        assert seen[-1].retry_in == pytest.approx(delay)
        reactor.advance(delay - 0.001)
        assert len(reactor.tcpClients) == attempt + 1, "retried too early"
        reactor.advance(0.001)
        assert len(reactor.tcpClients) == attempt + 2, "did not retry on time"
    d = client.stop()
    _refuse_last(reactor)  # the pending attempt fails after stop: no retry
    assert d.called and client.done.called
    assert reactor.getDelayedCalls() == []


def test_stop_while_waiting_to_retry_cancels_the_retry():
    reactor, client = _failing_client()
    client.start()
    _refuse_last(reactor)
    assert len(reactor.getDelayedCalls()) == 1
    d = client.stop()
    assert d.called and reactor.getDelayedCalls() == []
    reactor.advance(100)
    assert len(reactor.tcpClients) == 1


# -- against a real daemon -------------------------------------------------


def _client(daemon, sid, clock=None, **kw):
    kw.setdefault("random", lambda: 0.0)
    return DeviceClient(f"{daemon.ws}?session={sid}", reactor=daemon.reactor, clock=clock or task.Clock(), **kw)


def _wait(d, reactor):
    return d.addTimeout(WAIT, reactor)


@ensure
async def test_client_keeps_a_replica_equal_to_every_push_and_acks(daemon, reactor):
    schema = big_schema()
    sid = await daemon.new_session(schema)
    client = _client(daemon, sid, device_name="bench")
    updates, changes = [], []
    client.subscribe("update", updates.append)
    client.subscribe("schema", lambda s, seq: changes.append(seq))
    client.start()
    await _wait(client.wait_for_sequence(1), reactor)
    assert client.replica.schema == schema and client.connected
    current = schema
    for i in range(3):
        current = with_text(current, f"v{i}")
        result = await daemon.push(sid, current)
        assert result["updateType"] == "incremental"
        await _wait(client.wait_for_sequence(result["sequenceNumber"]), reactor)
    assert client.replica.schema == current
    assert [u.update_type for u in updates] == ["incremental"] * 3 and all(u.ok for u in updates)
    assert changes == [1, 2, 3, 4]
    bigger = copy.deepcopy(current)
    bigger["nodes"] = [node(f"n{i}") for i in range(30)]
    result = await daemon.push(sid, bigger)
    assert result["updateType"] == "full"
    await _wait(client.wait_for_sequence(5), reactor)
    assert client.replica.schema == bigger
    # acks reached the daemon (the last one may still be in flight)
    device = daemon.server.get_connected_devices(sid)[0]
    for _ in range(100):
        if device.last_ack_sequence == 5:
            break
        await task.deferLater(reactor, 0.01)
    assert device.last_ack_sequence == 5 and device.device_name == "bench"
    await client.stop()


@ensure
async def test_a_corrupted_replica_acks_failure_and_heals_with_a_full_update(daemon, reactor):
    schema = big_schema()
    sid = await daemon.new_session(schema)
    client = _client(daemon, sid)
    updates = []
    client.subscribe("update", updates.append)
    client.start()
    await _wait(client.wait_for_sequence(1), reactor)
    client.replica.schema = with_text(schema, "corrupted", "blob")  # the device's copy went wrong
    new = with_text(schema, "next")
    await daemon.push(sid, new)
    await _wait(client.when("update", lambda u: u.ok), reactor)
    assert [(u.update_type, u.ok, u.code) for u in updates] == [
        ("incremental", False, "CHECKSUM_MISMATCH"),
        ("full", True, None),
    ]
    assert client.replica.schema == new and client.replica.sequence == 2
    await client.stop()


@pytest.mark.parametrize("query, code", [("", 4400), ("?session=" + "0" * 32, 4404)])
@ensure
async def test_final_close_stops_retrying(daemon, reactor, query, code):
    clock = task.Clock()
    client = DeviceClient(daemon.ws + query, reactor=reactor, clock=clock)
    client.start()
    closed = await _wait(client.done, reactor)
    assert closed.code == code and closed.final and closed.retry_in is None
    assert clock.getDelayedCalls() == []
    clock.advance(3600)
    assert daemon.server.hub.total_devices() == 0


@ensure
async def test_connection_timeout_reconnects_with_backoff_and_resumes(daemon_factory, reactor):
    daemon_clock = task.Clock()
    daemon = await daemon_factory(clock=daemon_clock, connection_timeout=3)
    schema = big_schema()
    sid = await daemon.new_session(schema)
    clock = task.Clock()
    client = _client(daemon, sid, clock=clock)
    client.start()
    await _wait(client.wait_for_sequence(1), reactor)
    closed = client.when("closed")
    daemon_clock.advance(4)
    assert daemon.server.cleanup_stale_connections() == 1
    closed = await _wait(closed, reactor)
    assert (closed.code, closed.reason, closed.retry_in) == (1000, "Connection timeout", 1.0)
    new = with_text(schema, "while away")
    await daemon.push(sid, new)  # missed while disconnected
    connected = client.when("connected")
    clock.advance(1.0)
    info = await _wait(connected, reactor)
    assert info["resumed"] is True
    await _wait(client.wait_for_sequence(2), reactor)
    assert client.replica.schema == new and client.connections == 2 and client.attempts == 0
    await client.stop()


class PortDaemon:
    """A HotReloadServer on a chosen loopback port, so a restarted daemon
    answers at the same address."""

    def __init__(self, reactor, port=0, server=None):
        self.reactor = reactor
        self.server = server or HotReloadServer(reactor=reactor, heartbeat_interval=30.0)
        self.wanted = port

    async def start(self):
        if not self.server.running:
            self.server.startService()
        site = web_server.Site(self.server.resource(), reactor=self.reactor)
        endpoint = endpoints.TCP4ServerEndpoint(self.reactor, self.wanted, interface="127.0.0.1")
        self.port = await endpoint.listen(site)
        self.number = self.port.getHost().port
        self.ws = f"ws://127.0.0.1:{self.number}/ws"
        return self

    async def stop(self):
        if self.server.running:
            await self.server.stopService()
        await self.port.stopListening()


@ensure
async def test_in_memory_daemon_restart_gets_4404_and_stops(reactor):
    first = await PortDaemon(reactor).start()
    second = None
    try:
        sid = first.server.create_session(schema=big_schema()).id
        clock = task.Clock()
        client = DeviceClient(f"{first.ws}?session={sid}", reactor=reactor, clock=clock, random=lambda: 0.0)
        events = []
        client.subscribe("closed", events.append)
        client.start()
        await _wait(client.wait_for_sequence(1), reactor)
        await first.stop()  # closes devices with 1012 "Service restart"
        assert events == [Closed(1012, "Service restart", 0.0)]
        second = await PortDaemon(reactor, first.number).start()  # knows no sessions
        clock.advance(0)
        closed = await _wait(client.done, reactor)
        assert (closed.code, closed.final) == (4404, True)
        assert clock.getDelayedCalls() == []
    finally:
        if second is not None:
            await second.stop()


@ensure
async def test_daemon_restart_with_state_kept_resumes(reactor):
    """The same server object restarted keeps its sessions, as the durable
    store does across a process restart: the device resumes."""
    daemon = await PortDaemon(reactor).start()
    try:
        schema = big_schema()
        sid = daemon.server.create_session(schema=schema).id
        clock = task.Clock()
        client = DeviceClient(f"{daemon.ws}?session={sid}", reactor=reactor, clock=clock, random=lambda: 0.0)
        client.start()
        await _wait(client.wait_for_sequence(1), reactor)
        closed = client.when("closed")
        await daemon.stop()
        assert (await closed).code == 1012
        daemon = await PortDaemon(reactor, daemon.number, daemon.server).start()
        new = with_text(schema, "after restart")
        await daemon.server.push_update(sid, new)
        connected = client.when("connected")
        clock.advance(0)
        info = await _wait(connected, reactor)
        assert info["resumed"] is True
        await _wait(client.wait_for_sequence(2), reactor)
        assert client.replica.schema == new
        await client.stop()
    finally:
        await daemon.stop()


@ensure
async def test_a_number_reused_for_another_schema_is_not_resumed(reactor):
    """A daemon that lost its last push (a Redis that lost its last second)
    may give the same number to another schema. The client says which
    state it holds (lastChecksum), so it gets the daemon's schema in full
    instead of keeping the wrong screen."""
    from lumora_reload import schema as schemas
    from lumora_reload.sessions import State

    daemon = await PortDaemon(reactor).start()
    try:
        sid = daemon.server.create_session(schema=big_schema()).id
        clock = task.Clock()
        client = DeviceClient(f"{daemon.ws}?session={sid}", reactor=reactor, clock=clock, random=lambda: 0.0)
        client.start()
        await _wait(client.wait_for_sequence(1), reactor)
        closed = client.when("closed")
        await daemon.stop()
        await closed
        other = with_text(big_schema(), "another schema under number 1")
        daemon.server.get_session(sid).state = State(
            1, other, schemas.checksum(other), True, schemas.encode_schema(other)
        )
        daemon = await PortDaemon(reactor, daemon.number, daemon.server).start()
        connected = client.when("connected")
        clock.advance(0)
        info = await _wait(connected, reactor)
        assert info["resumed"] is False
        assert client.replica.schema == other and client.replica.sequence == 1
        await client.stop()
    finally:
        await daemon.stop()


@ensure
async def test_heartbeat_pings_and_a_silent_server_is_dropped(daemon, reactor):
    sid = await daemon.new_session(big_schema())
    clock = task.Clock()
    client = _client(daemon, sid, clock=clock, ping_interval=5)
    client.start()
    await _wait(client.wait_for_sequence(1), reactor)
    pong = client.when("pong")
    clock.advance(5)
    assert (await _wait(pong, reactor))["sequenceNumber"] == 1
    closed = client.when("closed")
    clock.advance(16)  # no word for more than 3 ping intervals
    closed = await _wait(closed, reactor)
    assert closed.retry_in == 1.0 and closed.code not in (1000, 4404)
    connected = client.when("connected")
    clock.advance(1)
    assert (await _wait(connected, reactor))["resumed"] is True
    await client.stop()


@ensure
async def test_pong_ahead_of_the_replica_asks_for_a_reload(daemon, reactor):
    schema = big_schema()
    sid = await daemon.new_session(schema)
    clock = task.Clock()
    client = _client(daemon, sid, clock=clock, ping_interval=5)
    client.start()
    await _wait(client.wait_for_sequence(1), reactor)
    new = with_text(schema, "missed")
    await daemon.push(sid, new)
    await _wait(client.wait_for_sequence(2), reactor)
    client.replica.schema, client.replica.sequence = schema, 1  # as if update 2 was lost
    update = client.when("update")
    clock.advance(5)  # ping -> pong says 2 -> reload -> full update
    event = await _wait(update, reactor)
    assert (event.update_type, event.ok, event.sequence) == ("full", True, 2)
    assert client.replica.schema == new
    await client.stop()


@ensure
async def test_replaced_device_retries_with_backoff(daemon, reactor):
    sid = await daemon.new_session(big_schema())
    clock = task.Clock()
    first = _client(daemon, sid, clock=clock, device_id="same")
    first.start()
    await _wait(first.wait_for_sequence(1), reactor)
    closed = first.when("closed")
    second = _client(daemon, sid, device_id="same")
    second.start()
    closed = await _wait(closed, reactor)
    assert (closed.code, closed.retry_in) == (4409, 1.0)
    await defer.gatherResults([first.stop(), second.stop()])
    assert first.done.called and clock.getDelayedCalls() == []


@ensure
async def test_log_lines_reach_the_session_log(daemon, reactor):
    sid = await daemon.new_session()
    client = _client(daemon, sid, device_name="Pixel 8")
    client.start()
    info = await _wait(client.when("connected"), reactor)
    assert "initialSchema" not in info and client.replica.schema is None
    client.log("warn", "low battery")
    for _ in range(200):
        status, body = await daemon.call("GET", f"/session/{sid}/logs")
        if body["lines"]:
            break
        await task.deferLater(reactor, 0.01)
    assert [(l["deviceName"], l["level"], l["message"]) for l in body["lines"]] == [
        ("Pixel 8", "warn", "low battery")
    ]
    await client.stop()
