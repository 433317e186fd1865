"""The lean device protocol and the shared ping sweep."""

import json
import sys

import pytest_twisted
from twisted.internet import task

from lumora_reload.sessions import Outgoing
from lumora_reload.wsbase import PingSweep
from tests.helpers import WAIT, Daemon, connected_device


class Pinged:
    """A stand-in connection that records the clock time of each ping."""

    def __init__(self, clock):
        self.clock = clock
        self.at = []

    def ping(self):
        self.at.append(self.clock.seconds())


def test_every_connection_is_pinged_once_per_interval_from_one_timer():
    """Each connection's first ping comes one interval after it joined, then every interval."""
    clock = task.Clock()
    sweep = PingSweep(clock, 10.0)
    first = Pinged(clock)
    sweep.add(first)
    clock.advance(3.0)
    second = Pinged(clock)
    sweep.add(second)
    assert len(clock.getDelayedCalls()) == 1  # one timer, however many join
    for _ in range(40):
        clock.advance(1.0)
    assert first.at == [10.0, 20.0, 30.0, 40.0]
    assert second.at == [13.0, 23.0, 33.0, 43.0]
    # no ping gap is ever longer than the interval, including the first
    assert second.at[0] - 3.0 <= 10.0


def test_the_sweep_stops_with_its_last_connection():
    """No timer is left behind once every connection is gone."""
    clock = task.Clock()
    sweep = PingSweep(clock, 0.1)
    one, two = Pinged(clock), Pinged(clock)
    sweep.add(one)
    sweep.add(two)
    sweep.remove(one)
    sweep.remove(one)  # twice is harmless
    assert clock.getDelayedCalls()
    sweep.remove(two)
    assert not clock.getDelayedCalls()
    clock.advance(1.0)
    assert one.at == two.at == []


def test_a_failing_ping_does_not_stop_the_others(logged_failures):
    """One connection raising while pinged is logged; the rest are still pinged."""
    clock = task.Clock()
    sweep = PingSweep(clock, 1.0)

    class Broken(Pinged):
        def ping(self):
            raise RuntimeError("boom")

    good = Pinged(clock)
    sweep.add(Broken(clock))
    sweep.add(good)
    clock.advance(1.0)
    clock.advance(1.0)
    assert good.at == [1.0, 2.0]
    logged_failures.expect(RuntimeError)
    assert [e["log_failure"].type for e in logged_failures.events] == [RuntimeError, RuntimeError]
    sweep.remove(good)


@pytest_twisted.ensureDeferred
async def test_an_open_device_carries_no_per_connection_copies(reactor):
    """An attached device's protocol holds no option copies, no handshake text and no ping timer."""
    daemon = Daemon(reactor, heartbeat_interval=30.0)
    await daemon.start()
    try:
        sid = await daemon.new_session()
        device, _ = await connected_device(daemon, sid)
        (protocol,) = daemon.server.ws_factory.connections
        names = set(vars(protocol))
        # what the base classes define as class defaults and Twisted sets
        assert names <= {"connected", "factory", "transport", "peer", "_results", "_valid_events"}, names
        assert protocol.http_response_data is None and protocol.http_headers is None
        assert protocol.autoPingPendingCall is None
        assert "maxMessagePayloadSize" in type(protocol).__dict__
        assert sys.getsizeof(vars(protocol)) < 1024
        assert not hasattr(protocol.connection, "__dict__") or not protocol.connection.__dict__
        device.sendClose()
        await device.wait_closed(WAIT)
    finally:
        await daemon.stop()


def _socket_of(protocol):
    transport = protocol.transport
    return getattr(transport, "transport", transport)


@pytest_twisted.ensureDeferred
async def test_a_frame_goes_straight_to_an_idle_socket_and_queues_behind_pending_bytes(reactor):
    """With nothing queued a frame is written at once; with bytes pending it waits its turn, in order."""
    daemon = Daemon(reactor, heartbeat_interval=30.0)
    await daemon.start()
    try:
        sid = await daemon.new_session()
        device, _ = await connected_device(daemon, sid)
        (protocol,) = daemon.server.ws_factory.connections
        sock = _socket_of(protocol)
        ping = {"type": "pong", "sessionId": sid, "timestamp": 1, "version": "1.0", "payload": {"n": 1}}
        protocol.connection.send(Outgoing(json.dumps(ping).encode()))
        assert not sock._tempDataBuffer and not sock.dataBuffer  # already in the kernel
        assert (await device.next_of("pong"))["payload"] == {"n": 1}

        protocol.sendPing()  # Autobahn's own write: waits in the transport's buffer
        assert sock._tempDataBuffer
        second = dict(ping, payload={"n": 2})
        protocol.connection.send(Outgoing(json.dumps(second).encode()))
        assert len(sock._tempDataBuffer) == 2  # behind the ping, not before it
        assert (await device.next_of("pong"))["payload"] == {"n": 2}
        device.sendClose()
        await device.wait_closed(WAIT)
    finally:
        await daemon.stop()



@pytest_twisted.ensureDeferred
async def test_a_browser_offering_permessage_deflate_gets_its_handshake(reactor):
    """A client offering permessage-deflate (every browser does) is answered 101, not left hanging."""
    import socket

    from twisted.internet import threads

    daemon = Daemon(reactor, heartbeat_interval=30.0)
    await daemon.start()
    try:
        sid = await daemon.new_session()
        port = daemon.port.getHost().port

        def handshake():
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(
                    f"GET /ws?session={sid} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n"
                    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n".encode()
                )
                return s.recv(200)

        answer = await threads.deferToThread(handshake)
        assert answer.startswith(b"HTTP/1.1 101"), answer
    finally:
        await daemon.stop()
