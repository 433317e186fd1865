"""The test kit without sockets (lumora_reload.testing.MemoryNetwork): the
daemon and DeviceClients on one task.Clock, timeouts and backoff exact."""

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol

from lumora_reload.client import Backoff
from lumora_reload.testing import MemoryNetwork
from tests.helpers import make_schema, node, with_text

NO_JITTER = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.25)


def _record(client, event, net):
    seen = []
    client.subscribe(event, lambda *args: seen.append((net.clock.seconds(), args[0] if len(args) == 1 else args)))
    return seen


@pytest.fixture
def real_reactor_untouched():
    """Fails the test if it left any DelayedCall on the global reactor."""
    from twisted.internet import reactor

    before = set(map(id, reactor.getDelayedCalls()))

    def check():
        left = [c for c in reactor.getDelayedCalls() if id(c) not in before]
        assert not left, left

    yield check
    check()


def test_full_and_incremental_updates_without_sockets(real_reactor_untouched):
    """A full then an incremental update reach a DeviceClient through memory, with nothing on the real reactor."""
    net = MemoryNetwork()
    schema = make_schema()
    session_id = net.create_session(schema)
    client = net.device(session_id)
    real_reactor_untouched()  # Autobahn's handshake timer is not on the reactor either
    updates = _record(client, "update", net)
    net.pump()
    assert client.connected and client.replica.schema == schema and client.replica.sequence == 1
    result = net.push(session_id, with_text(schema, "Bye"))
    assert result.update_type == "incremental"
    net.pump()
    assert [(u.sequence, u.update_type, u.ok) for _, u in updates] == [(2, "incremental", True)]
    assert client.replica.schema == with_text(schema, "Bye")
    assert client.replica.checksum == net.session(session_id).checksum
    assert net.session(session_id).devices[client.connection_id].last_ack_sequence == 2
    assert net.clock.seconds() == 0  # all of it took no clock time
    net.stop()
    assert client.done.called and not net.open_links


def test_heartbeat_timeout_is_exact(real_reactor_untouched):
    """A client whose pongs are late gives up after exactly its receive timeout, then reconnects after its backoff."""
    net = MemoryNetwork(heartbeat_interval=100.0, connection_timeout=1000.0)
    session_id = net.create_session(make_schema())
    client = net.device(session_id, ping_interval=1.0, receive_timeout=3.0, backoff=NO_JITTER, random=lambda: 0.0)
    closed = _record(client, "closed", net)
    connected = _record(client, "connected", net)
    net.pump()
    net.delay_pongs(session_id, 60.0, device=client)
    net.advance(3.5)
    assert closed == []  # late pongs are tolerated up to the receive timeout
    net.advance(0.5)
    # pings at 1, 2, 3 went unanswered; the beat at 4 s finds 4 s of silence
    assert [(t, c.code, c.retry_in) for t, c in closed] == [(4.0, 1006, 1.0)]
    net.advance(1.0)
    assert [t for t, _ in connected] == [0.0, 5.0]
    assert connected[1][1]["resumed"] is True
    net.advance(10.0)  # the new connection's pongs are on time
    assert len(closed) == 1
    net.stop()


def test_reconnect_backoff_schedule(real_reactor_untouched):
    """While the daemon refuses connections the client retries at 1, 2, 4, 8, 8 s, then resumes."""
    net = MemoryNetwork()
    schema = make_schema()
    session_id = net.create_session(schema)
    client = net.device(session_id, backoff=NO_JITTER, random=lambda: 0.0)
    net.pump()
    net.push(session_id, with_text(schema, "two"))
    net.pump()
    closed = _record(client, "closed", net)
    connected = _record(client, "connected", net)
    net.refusing = True
    net.drop_device(session_id)
    net.advance(1 + 2 + 4 + 8 + 8 - 0.001)
    assert [(t, c.retry_in) for t, c in closed] == [(0.0, 1.0), (1.0, 2.0), (3.0, 4.0), (7.0, 8.0), (15.0, 8.0)]
    assert connected == []
    net.refusing = False
    net.advance(0.001)
    assert [t for t, _ in connected] == [pytest.approx(23.0)]
    assert connected[0][1]["resumed"] is True and client.replica.sequence == 2
    assert client.attempts == 0
    net.stop()


def test_jitter_shortens_the_delay():
    """The jitter takes up to a quarter off each delay, never adds to it."""
    net = MemoryNetwork()
    session_id = net.create_session(make_schema())
    client = net.device(session_id, backoff=NO_JITTER, random=lambda: 0.5)
    net.pump()
    closed = _record(client, "closed", net)
    net.refusing = True
    net.drop_device(session_id)
    net.advance(10)
    assert [c.retry_in for _, c in closed][:3] == [0.875, 1.75, 3.5]
    net.stop()


def test_restart_reconnects_at_once_and_final_codes_stop():
    """1012 reconnects within the initial backoff and resumes; 4410 stops the client for good."""
    net = MemoryNetwork()
    session_id = net.create_session(make_schema())
    client = net.device(session_id, backoff=NO_JITTER, random=lambda: 0.5)
    connected = _record(client, "connected", net)
    net.pump()
    net.close_device(session_id, 1012, "Service restart")
    net.advance(0.5)
    assert [t for t, _ in connected] == [0.0, 0.5] and connected[1][1]["resumed"] is True
    net.close_device(session_id, 4410, "Session expired")
    net.advance(100)
    assert client.done.called and len(connected) == 2 and net.connections_made == 2
    net.stop()


def test_daemon_times_out_a_silent_device():
    """A device the daemon cannot hear is closed 1000 "Connection timeout" on the sweep after the timeout."""
    net = MemoryNetwork(heartbeat_interval=1.0, connection_timeout=3.0)
    session_id = net.create_session(make_schema())
    client = net.device(session_id, ping_interval=0, backoff=NO_JITTER, random=lambda: 0.0)
    closed = _record(client, "closed", net)
    net.pump()
    (stall,) = net.stall_device(session_id, reading=True, sending=False)
    net.advance(3.5)
    assert closed == [] and net.session(session_id).devices
    net.advance(0.5)
    assert not net.session(session_id).devices  # the sweep at 4 s removed it and sent the close
    # the stalled daemon never reads the client's answer: its 2 s close handshake timeout ends it
    net.advance(2.0)
    assert [(t, c.code, c.reason, c.retry_in) for t, c in closed] == [(6.0, 1000, "Connection timeout", 1.0)]
    net.advance(1.0)
    assert client.connected and client.connections == 2
    stall.resume()  # the old connection is gone: nothing to do
    net.stop()


@pytest.mark.parametrize(
    "misbehave",
    ["send_wrong_checksum", "withhold_next_update", "reorder_next_updates", "send_duplicate"],
)
def test_misbehaviours_over_memory(misbehave):
    """Each update misbehaviour leaves the client on the session's exact schema, over memory too."""
    net = MemoryNetwork()
    schema = make_schema()
    session_id = net.create_session(schema)
    client = net.device(session_id)
    updates = _record(client, "update", net)
    net.pump()
    getattr(net, misbehave)(session_id)
    for text in ("two", "three"):
        net.push(session_id, with_text(schema, text))
    net.pump()
    session = net.session(session_id)
    assert client.replica.sequence == session.sequence == 3
    assert client.replica.schema == session.schema and client.replica.checksum == session.checksum
    if misbehave != "send_duplicate":
        assert any(not u.ok for _, u in updates)  # it saw the fault and repaired it
    net.stop()


def test_refused_resume_over_memory():
    """A refused resume makes the client start over from the initial schema."""
    net = MemoryNetwork()
    schema = make_schema()
    session_id = net.create_session(schema)
    client = net.device(session_id, backoff=NO_JITTER, random=lambda: 0.0)
    connected = _record(client, "connected", net)
    net.pump()
    net.refuse_resume(session_id)
    net.drop_device(session_id)
    net.advance(1.0)
    assert connected[-1][1]["resumed"] is False and client.replica.schema == schema
    net.stop()


def test_slow_reader_gets_the_latest_state():
    """A client that stops reading makes the daemon collapse its updates into one full update of the latest state."""
    net = MemoryNetwork(max_buffer=4096)
    net.buffer_size = 2048
    big = make_schema([node(f"n{i}", text="x" * 200) for i in range(20)])
    session_id = net.create_session(big)
    client = net.device(session_id)
    updates = _record(client, "update", net)
    net.pump()
    (link,) = net.open_links
    link.client.pauseProducing()
    for i in range(30):
        net.push(session_id, with_text(big, f"v{i}", node_id="n0"))
    net.pump()
    assert client.replica.sequence == 1
    link.client.resumeProducing()
    net.pump()
    assert client.replica.sequence == 31 and client.replica.schema == net.session(session_id).schema
    kinds = [u.update_type for _, u in updates]
    assert kinds[-1] == "full" and len(kinds) < 30  # some updates never went out
    net.stop()


class _PingWatcher(WebSocketClientProtocol):
    """A client that takes the daemon's WebSocket pings as its heartbeat:
    no ping for `factory.timeout` seconds and it drops the connection."""

    watchdog = None

    def onOpen(self):
        self.factory.pings.append([])
        self.sendMessage(
            b'{"type":"connect","sessionId":"%s","payload":{"deviceId":"%s","platform":"t","clientVersion":"1.1.0"}}'
            % (self.factory.session_id.encode(), self.factory.device_id.encode())
        )
        self._watch()

    def onPing(self, payload):
        self.factory.pings[-1].append(self.factory.clock.seconds())
        super().onPing(payload)
        self._watch()

    def onClose(self, wasClean, code, reason):
        self.factory.gone.append(self.factory.clock.seconds())
        if self.watchdog is not None and self.watchdog.active():
            self.watchdog.cancel()

    def _watch(self):
        if self.factory.timeout is None:
            return
        if self.watchdog is not None and self.watchdog.active():
            self.watchdog.cancel()
        self.watchdog = self.factory.clock.callLater(self.factory.timeout, self.dropConnection, True)


def _ping_watcher(net, session_id, device_id, timeout=None):
    factory = WebSocketClientFactory(net.ws_url(session_id), reactor=net.clock)
    factory.protocol = _PingWatcher
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, serverConnectionDropTimeout=0)
    factory.session_id, factory.device_id, factory.clock = session_id, device_id, net.clock
    factory.timeout, factory.pings, factory.gone = timeout, [], []
    net.endpoint().connect(factory)
    return factory


def test_stall_pings_on_one_connection():
    """stall_pings stops the daemon's WebSocket pings to one device only; resume starts them again."""
    net = MemoryNetwork(heartbeat_interval=1.0, connection_timeout=100.0)
    session_id = net.create_session(make_schema())
    quiet = _ping_watcher(net, session_id, "quiet")
    other = _ping_watcher(net, session_id, "other")
    net.pump()
    net.advance(2.5)
    assert quiet.pings[0] == other.pings[0] == [1.0, 2.0]
    (stall,) = net.stall_pings(session_id, device="quiet")
    net.advance(3.0)
    assert quiet.pings[0] == [1.0, 2.0] and other.pings[0] == [1.0, 2.0, 3.0, 4.0, 5.0]
    stall.resume()
    net.advance(1.7)
    # pinged at once, then again on the daemon's ping sweep, once a second
    assert quiet.pings[0] == [1.0, 2.0, 5.5, 6.0, 7.0]
    net.stop()


def test_stalled_pings_trip_a_ping_watching_client():
    """A client expecting a WebSocket ping every 2.5 s drops its connection 2.5 s after the last; others stay."""
    net = MemoryNetwork(heartbeat_interval=1.0, connection_timeout=100.0)
    session_id = net.create_session(make_schema())
    quiet = _ping_watcher(net, session_id, "quiet", timeout=2.5)
    other = _ping_watcher(net, session_id, "other", timeout=2.5)
    net.pump()
    net.advance(2.2)
    net.stall_pings(session_id, device="quiet")
    net.advance(10.0)
    assert quiet.gone == [4.5] and other.gone == []
    assert [d.device_id for d in net.session(session_id).devices.values()] == ["other"]
    net.stop()
    assert other.gone == [12.2]


def test_delay_pongs_is_per_connection():
    """Late pongs for one device make only that device give up and reconnect."""
    net = MemoryNetwork(heartbeat_interval=100.0, connection_timeout=1000.0)
    session_id = net.create_session(make_schema())
    slow = net.device(session_id, device_id="slow", ping_interval=1.0, receive_timeout=2.0, random=lambda: 0.0)
    fine = net.device(session_id, device_id="fine", ping_interval=1.0, receive_timeout=2.0, random=lambda: 0.0)
    net.pump()
    net.delay_pongs(session_id, 10.0, device="slow")
    net.advance(5.0)
    assert slow.connections == 2 and fine.connections == 1
    net.stop()


@pytest.mark.lumora(heartbeat_interval=2.0)
def test_memory_fixture(lumora_memory):
    """The lumora_memory fixture is a MemoryNetwork with the marker's options, on a fresh clock."""
    assert isinstance(lumora_memory, MemoryNetwork) and lumora_memory.clock.seconds() == 0
    assert lumora_memory.server.config.heartbeat_interval == 2.0
    client = lumora_memory.device(lumora_memory.create_session(make_schema()))
    lumora_memory.pump()
    assert client.replica.sequence == 1


def test_client_by_hand_and_link_drop(real_reactor_untouched):
    """A DeviceClient built by hand on the network's endpoint and clock works; link.drop() is a dead network."""
    from lumora_reload.client import DeviceClient
    from lumora_reload.testing import CLIENT_PROTOCOL_OPTIONS

    net = MemoryNetwork()
    session_id = net.create_session(make_schema())
    client = DeviceClient(
        net.ws_url(session_id), reactor=net.clock, clock=net.clock, endpoint=net.endpoint,
        protocol_options=CLIENT_PROTOCOL_OPTIONS, backoff=NO_JITTER, random=lambda: 0.0,
    )
    closed = _record(client, "closed", net)
    client.start()
    net.pump()
    assert client.connected and client.replica.sequence == 1
    (link,) = net.open_links
    link.drop()
    net.pump()
    assert [(c.code, c.retry_in) for _, c in closed] == [(1006, 1.0)] and net.session(session_id).devices == {}
    net.advance(1.0)
    assert client.connected and client.connections == 2
    client.stop()
    net.stop()
    assert client.done.called
