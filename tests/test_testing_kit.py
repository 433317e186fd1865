"""The test kit (lumora_reload.testing): its pytest fixtures, a clean stop,
and every misbehaviour against the project's own DeviceClient."""

import json
import os
import subprocess
import sys

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

from lumora_reload.client import Backoff
from lumora_reload.testing import LumoraServer
from lumora_reload.testing.server import STOP_TIMEOUT
from tests.helpers import make_schema, with_text

FAST = Backoff(initial=0.02, maximum=0.1)


@pytest_twisted.inlineCallbacks
def test_push_reaches_a_device(lumora_server, lumora_device):
    session_id = lumora_server.create_session()
    client = yield lumora_device(session_id)
    assert client.connected and client.session_id == session_id
    schema = make_schema()
    result = yield lumora_server.push(session_id, schema)
    assert (result.sequence_number, result.update_type, result.devices_updated) == (1, "full", 1)
    yield client.wait_for_sequence(1)
    assert client.replica.schema == schema
    result = yield lumora_server.push(session_id, with_text(schema, "Bye"))
    assert result.update_type == "incremental"
    yield client.wait_for_sequence(2)
    assert client.replica.schema == with_text(schema, "Bye")
    assert client.replica.checksum == lumora_server.session(session_id).checksum


def test_urls_and_server(lumora_server):
    session_id = lumora_server.create_session(make_schema())
    port = lumora_server.port.getHost().port
    assert lumora_server.url == f"http://127.0.0.1:{port}"
    assert lumora_server.ws_url(session_id) == f"ws://127.0.0.1:{port}/ws?session={session_id}"
    assert lumora_server.server.get_session(session_id).sequence == 1
    assert lumora_server.server.config.heartbeat_interval == 30.0


@pytest.mark.lumora(heartbeat_interval=0.5, connection_timeout=2.0)
def test_marker_sets_options(lumora_server):
    assert lumora_server.server.config.heartbeat_interval == 0.5
    assert lumora_server.server.config.connection_timeout == 2.0


@pytest_twisted.inlineCallbacks
def test_factory_starts_more_servers(lumora_server, lumora_server_factory):
    other = yield lumora_server_factory(history_size=3)
    assert other.port.getHost().port != lumora_server.port.getHost().port
    assert other.server.config.history_size == 3


@pytest_twisted.inlineCallbacks
def test_device_on_a_new_session(lumora_server, lumora_device):
    client = yield lumora_device()
    assert client.session_id in lumora_server.server.hub.sessions


@pytest_twisted.inlineCallbacks
def test_refused_device_fails(lumora_server):
    with pytest.raises(ConnectionError, match="4404"):
        yield lumora_server.device("no-such-session")


@pytest_twisted.inlineCallbacks
def test_stop_leaves_nothing(reactor):
    before = set(map(id, reactor.getDelayedCalls()))
    server = yield LumoraServer(heartbeat_interval=0.2).start()
    session_id = server.create_session(make_schema())
    yield server.device(session_id, ping_interval=0.05)
    yield server.device(session_id)
    port = server.port.getHost().port
    yield server.stop()
    assert not server.server.ws_factory.connections
    left = [c for c in reactor.getDelayedCalls() if id(c) not in before and c.active()]
    assert not left, left
    with pytest.raises(error.ConnectionRefusedError):
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(protocol.Factory.forProtocol(protocol.Protocol))


@pytest_twisted.inlineCallbacks
def test_a_started_server_says_so_when_started_again(reactor):
    """A second `start` before `stop` is refused with a message that says
    so (it failed deep in Twisted, on a timer already running); after
    `stop` it starts again."""
    server = yield LumoraServer().start()
    try:
        with pytest.raises(RuntimeError, match="already started; stop it first"):
            yield server.start()
    finally:
        yield server.stop()
    yield server.start()
    yield server.stop()


@pytest_twisted.inlineCallbacks
def test_a_server_that_could_not_listen_is_not_left_started(reactor):
    """Its port taken, `start` fails; the server is not counted as running
    (another server's stop would then not wait for timers), and starts
    once the port is free."""
    taken = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(protocol.Factory())
    server = LumoraServer(port=taken.getHost().port)
    with pytest.raises(error.CannotListenError):
        yield server.start()
    assert not server.server.running
    yield taken.stopListening()
    yield server.start()
    yield server.stop()


@pytest_twisted.inlineCallbacks
def test_a_device_stopped_before_it_is_connected_says_so(reactor):
    """Not "device refused: None stopped": nothing refused it."""
    server = yield LumoraServer().start()
    joining = server.device(server.create_session(make_schema()))
    yield server.stop()
    with pytest.raises(ConnectionError, match="^device stopped before it was connected$"):
        yield joining


@pytest_twisted.inlineCallbacks
def test_stopping_one_server_does_not_wait_for_anothers_timers(reactor):
    first = yield LumoraServer(heartbeat_interval=0.05).start()
    second = yield LumoraServer().start()
    client = yield first.device(first.create_session(), ping_interval=0.05)
    for _ in range(3):  # the first server's and its device's timers have come round since
        yield client.when("pong")
    started = reactor.seconds()
    yield second.stop()
    assert reactor.seconds() - started < STOP_TIMEOUT / 2
    yield first.stop()
    assert not first.pending_calls()


TWO_SERVERS = """
import pytest
import pytest_twisted


@pytest.mark.lumora(heartbeat_interval=0.05)
@pytest_twisted.inlineCallbacks
def test_two_servers(lumora_server, lumora_device, lumora_server_factory):
    yield lumora_server_factory()
    client = yield lumora_device(ping_interval=0.05)
    for _ in range(3):
        yield client.when("pong")
"""


def test_fixtures_stop_two_servers_cleanly(tmp_path):
    """The timers of the first server, still running when the second one
    is stopped, are neither a leak of the second nor cancelled twice."""
    (tmp_path / "test_two.py").write_text(TWO_SERVERS)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_two.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "1 passed" in out and "error" not in out, out


# -- misbehaviour ------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_close_with_a_final_code(lumora_server, lumora_device):
    client = yield lumora_device()
    stopped = client.when("stopped")
    lumora_server.close_device(client.session_id, 4404, "Session not found")
    closed = yield stopped
    assert (closed.code, closed.reason, closed.final) == (4404, "Session not found", True)


@pytest_twisted.inlineCallbacks
def test_close_4409_reconnects_and_resumes(lumora_server, lumora_device):
    client = yield lumora_device(backoff=FAST)
    yield lumora_server.push(client.session_id, make_schema())
    yield client.wait_for_sequence(1)
    closed = client.when("closed")
    again = client.when("connected")
    lumora_server.close_device(client.session_id, 4409, "Replaced", device=client)
    assert (yield closed).retry_in is not None
    assert (yield again)["resumed"] is True


@pytest_twisted.inlineCallbacks
def test_drop_reconnects_and_resumes(lumora_server, lumora_device):
    client = yield lumora_device(backoff=FAST)
    yield lumora_server.push(client.session_id, make_schema())
    yield client.wait_for_sequence(1)
    closed = client.when("closed")
    again = client.when("connected")
    lumora_server.drop_device(client.session_id, client.device_id)
    assert (yield closed).code == 1006
    assert (yield again)["resumed"] is True


@pytest_twisted.inlineCallbacks
def test_stall_makes_the_client_give_up_and_reconnect(lumora_server, lumora_device):
    client = yield lumora_device(backoff=FAST, ping_interval=0.05, receive_timeout=0.2)
    again = client.when("connected")
    stalls = lumora_server.stall_device(client.session_id)
    yield again
    assert client.connections == 2
    for stall in stalls:
        stall.resume()


@pytest_twisted.inlineCallbacks
def test_stall_then_resume_delivers_what_was_held(lumora_server, lumora_device):
    client = yield lumora_device()
    schema = make_schema()
    yield lumora_server.push(client.session_id, schema)
    yield client.wait_for_sequence(1)
    (stall,) = lumora_server.stall_device(client.session_id, reading=False)
    yield lumora_server.push(client.session_id, with_text(schema, "two"))
    assert client.replica.sequence == 1 and len(stall.queued) == 1
    stall.resume()
    yield client.wait_for_sequence(2)
    assert client.replica.schema == with_text(schema, "two")


def _updates(client):
    seen = []
    client.subscribe("update", seen.append)
    return seen


@pytest_twisted.inlineCallbacks
def test_wrong_checksum_is_refused_then_repaired(lumora_server, lumora_device):
    client = yield lumora_device()
    yield lumora_server.push(client.session_id, make_schema())
    yield client.wait_for_sequence(1)
    seen = _updates(client)
    repaired = client.when("update", lambda event: event.ok)
    lumora_server.send_wrong_checksum(client.session_id)
    yield repaired
    assert [(u.ok, u.code) for u in seen] == [(False, "CHECKSUM_MISMATCH"), (True, None)]
    assert client.replica.checksum == lumora_server.session(client.session_id).checksum


@pytest_twisted.inlineCallbacks
def test_duplicate_changes_nothing(lumora_server, lumora_device):
    client = yield lumora_device()
    schema = make_schema()
    yield lumora_server.push(client.session_id, schema)
    yield lumora_server.push(client.session_id, with_text(schema, "two"))
    yield client.wait_for_sequence(2)
    seen = client.when("update")
    lumora_server.send_duplicate(client.session_id)
    event = yield seen
    assert (event.sequence, event.update_type, event.ok, event.changed) == (2, "incremental", True, False)


@pytest_twisted.inlineCallbacks
def test_gap_ends_in_a_full_update(lumora_server, lumora_device):
    client = yield lumora_device()
    schema = make_schema()
    yield lumora_server.push(client.session_id, schema)
    yield client.wait_for_sequence(1)
    seen = _updates(client)
    lumora_server.withhold_next_update(client.session_id, client)
    yield lumora_server.push(client.session_id, with_text(schema, "two"))
    yield lumora_server.push(client.session_id, with_text(schema, "three"))
    yield client.wait_for_sequence(3)
    assert [(u.sequence, u.update_type, u.ok) for u in seen] == [(3, "incremental", False), (3, "full", True)]
    assert client.replica.schema == with_text(schema, "three")


@pytest_twisted.inlineCallbacks
def test_out_of_order_ends_on_the_latest(lumora_server, lumora_device):
    client = yield lumora_device()
    schema = make_schema()
    yield lumora_server.push(client.session_id, schema)
    yield client.wait_for_sequence(1)
    seen = _updates(client)
    lumora_server.reorder_next_updates(client.session_id)
    yield lumora_server.push(client.session_id, with_text(schema, "two"))
    assert seen == []
    full = client.when("update", lambda u: u.update_type == "full")
    yield lumora_server.push(client.session_id, with_text(schema, "three"))
    yield full
    assert [(u.sequence, u.update_type, u.ok) for u in seen] == [
        (3, "incremental", False), (2, "incremental", True), (3, "full", True)
    ]
    assert client.replica.schema == with_text(schema, "three")


@pytest_twisted.inlineCallbacks
def test_late_pongs_make_the_client_reconnect(lumora_server, lumora_device):
    session_id = lumora_server.create_session()
    client = yield lumora_device(session_id, backoff=FAST, ping_interval=0.05, receive_timeout=0.2)
    lumora_server.delay_pongs(session_id, 5.0)
    closed = yield client.when("closed")
    assert closed.retry_in is not None
    yield client.when("connected")


@pytest_twisted.inlineCallbacks
def test_one_late_pong_is_tolerated(lumora_server, lumora_device):
    session_id = lumora_server.create_session()
    client = yield lumora_device(session_id, ping_interval=0.05, receive_timeout=1.0)
    lumora_server.delay_pongs(session_id, 0.1, count=1)
    pongs = []
    client.subscribe("pong", pongs.append)
    while len(pongs) < 3:
        yield client.when("pong")
    assert client.connections == 1


@pytest_twisted.inlineCallbacks
def test_refused_resume_starts_over(lumora_server, lumora_device):
    client = yield lumora_device(backoff=FAST)
    schema = make_schema()
    yield lumora_server.push(client.session_id, schema)
    yield client.wait_for_sequence(1)
    lumora_server.refuse_resume(client.session_id)
    again = client.when("connected")
    lumora_server.drop_device(client.session_id)
    connected = yield again
    assert connected["resumed"] is False
    assert connected["initialSchema"] == schema
    assert connected["checksum"] == client.replica.checksum
    again = client.when("connected")
    lumora_server.drop_device(client.session_id)
    assert (yield again)["resumed"] is True


@pytest_twisted.inlineCallbacks
def test_send_update_by_hand(lumora_server, lumora_device):
    client = yield lumora_device()
    seen = client.when("update")
    lumora_server.send_update(client.session_id, {"type": "bogus", "sequenceNumber": 0})
    event = yield seen
    assert not event.ok


def test_unknown_device_is_an_error(lumora_server):
    session_id = lumora_server.create_session()
    with pytest.raises(LookupError):
        lumora_server.close_device(session_id, 1000, "x", device="nobody")


@pytest_twisted.inlineCallbacks
def test_defer_is_used(lumora_server):
    # push on a session with no device answers at once
    session_id = lumora_server.create_session()
    result = yield defer.maybeDeferred(lumora_server.push, session_id, make_schema())
    assert result.devices_updated == 0


@pytest_twisted.inlineCallbacks
def test_late_pongs_hit_one_connection_only(lumora_server, lumora_device):
    """delay_pongs on one device makes it give up and reconnect; another device of the session keeps its connection."""
    session_id = lumora_server.create_session()
    slow = yield lumora_device(session_id, backoff=FAST, ping_interval=0.05, receive_timeout=0.2)
    fine = yield lumora_device(session_id, backoff=FAST, ping_interval=0.05, receive_timeout=2.0)
    lumora_server.delay_pongs(session_id, 5.0, device=slow)
    yield slow.when("connected")  # it gave up and came back
    assert slow.connections == 2 and fine.connections == 1


class _PingCounter(WebSocketClientProtocol):
    """Joins as a device and counts the daemon's WebSocket pings."""

    def onOpen(self):
        factory = self.factory
        self.sendMessage(json.dumps({"type": "connect", "sessionId": factory.session_id, "payload": {
            "deviceId": factory.device_id, "platform": "test", "clientVersion": "1.1.0"}}).encode())

    def onMessage(self, payload, isBinary):
        if json.loads(payload)["type"] == "connected":
            self.factory.joined.callback(self)

    def onPing(self, payload):
        super().onPing(payload)
        self.factory.pings.append(payload)
        waiting, self.factory.waiting = self.factory.waiting, []
        for d in waiting:
            d.callback(None)


@defer.inlineCallbacks
def _ping_counter(reactor, server, session_id, device_id):
    factory = WebSocketClientFactory(server.ws_url(session_id), reactor=reactor)
    factory.protocol = _PingCounter
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, serverConnectionDropTimeout=0)
    factory.session_id, factory.device_id, factory.pings, factory.waiting = session_id, device_id, [], []
    factory.joined = defer.Deferred()
    port = server.port.getHost().port
    yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    protocol_ = yield factory.joined
    return factory, protocol_


@defer.inlineCallbacks
def _pings(factory, count):
    while len(factory.pings) < count:
        d = defer.Deferred()
        factory.waiting.append(d)
        yield d


@pytest.mark.lumora(heartbeat_interval=0.05)
@pytest_twisted.inlineCallbacks
def test_stall_pings_over_real_sockets(lumora_server, reactor):
    """stall_pings silences the daemon's pings to one device while another keeps getting them; resume restarts them."""
    session_id = lumora_server.create_session()
    quiet, quiet_protocol = yield _ping_counter(reactor, lumora_server, session_id, "quiet")
    other, other_protocol = yield _ping_counter(reactor, lumora_server, session_id, "other")
    yield defer.gatherResults([_pings(quiet, 1), _pings(other, 1)])
    (stall,) = lumora_server.stall_pings(session_id, device="quiet")
    held = len(quiet.pings)
    yield _pings(other, len(other.pings) + 3)
    assert len(quiet.pings) <= held + 1  # one ping may have been on its way
    stall.resume()
    yield _pings(quiet, len(quiet.pings) + 2)
    for p in (quiet_protocol, other_protocol):
        p.dropConnection(abort=True)


def test_docstrings_name_what_exists():
    """Every `name` a kit method's docstring points a test author at is a
    method or attribute of the servers, or a parameter of that method."""
    import inspect
    import re

    from lumora_reload.testing import MemoryNetwork, misbehave

    network = MemoryNetwork()
    try:
        servers = (LumoraServer(), network)
        for cls in (misbehave.Misbehaviours, LumoraServer, MemoryNetwork):
            for method_name, method in vars(cls).items():
                if not inspect.isfunction(method):
                    continue
                parameters = inspect.signature(method).parameters
                for name in re.findall(r"(?<!`)`([a-z_]+)`(?!`)", method.__doc__ or ""):
                    known = name in parameters or any(hasattr(s, name) for s in servers)
                    assert known, f"{cls.__name__}.{method_name} names `{name}`, which does not exist"
    finally:
        network.stop()
