"""The lean device protocol and the shared ping sweep."""

import json
import os
import socket
import struct
import sys
import time

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.xormasker import create_xor_masker
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task, threads
from twisted.internet.testing import MemoryReactorClock, StringTransport

from lumora_reload.sessions import Outgoing
from lumora_reload.wsbase import LeanServerProtocol, PingSweep, unmask
from tests import rawhttp
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

        sock.write(b"\x89\x00")  # a ping written by Twisted's own path: buffered
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


# -- reading whole frames in one step ------------------------------------


@given(payload=st.binary(max_size=300), mask=st.binary(min_size=4, max_size=4))
def test_unmask_is_autobahns_xor(payload, mask):
    """The one-step unmask gives exactly what Autobahn's masker gives."""
    assert unmask(payload, mask) == create_xor_masker(mask, len(payload)).process(payload)


def _masked(payload, opcode=0x1, fin=True):
    """A client frame with a random mask key, as a real client sends it."""
    key = os.urandom(4)
    head = struct.pack("!B", (0x80 if fin else 0) | opcode)
    n = len(payload)
    head += struct.pack("!B", 0x80 | n) if n < 126 else struct.pack("!BH", 0x80 | 126, n)
    return head + key + unmask(payload, key)


def _read_frame(sock, buf):
    """(opcode, payload, rest of buffer) of one unmasked server frame."""
    def need(n):
        nonlocal buf
        while len(buf) < n:
            part = sock.recv(65536)
            if not part:
                raise EOFError("closed")
            buf += part

    need(2)
    size, start = buf[1] & 0x7F, 2
    if size == 126:
        need(4)
        size, start = struct.unpack("!H", buf[2:4])[0], 4
    elif size == 127:
        need(10)
        size, start = struct.unpack("!Q", buf[2:10])[0], 10
    need(start + size)
    return buf[0] & 0x0F, buf[start:start + size], buf[start + size:]


def _envelope(kind, sid, payload):
    return json.dumps({"type": kind, "sessionId": sid, "timestamp": 1, "version": "1.0",
                       "payload": payload}).encode()


def _replies_to_one_burst(port, sid, burst_parts, count):
    """Open a device, send `burst_parts` (each one write), return the kinds
    of the next `count` replies: a message's type, "ws-pong:<payload>", or
    "close:<code>"."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(rawhttp.ws_handshake(f"/ws?session={sid}", host=f"127.0.0.1:{port}"))
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(4096)
        head, _, buf = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(_masked(_envelope("connect", sid, {"deviceId": "raw", "platform": "ios",
                                                         "clientVersion": "1.1.0"})))
        kinds = []
        while "connected" not in kinds:
            opcode, payload, buf = _read_frame(sock, buf)
            if opcode == 0x1:
                kinds.append(json.loads(payload)["type"])
        for part in burst_parts:
            sock.sendall(part)
            time.sleep(0.05)  # separate reads on the daemon's side
        replies = []
        while len(replies) < count:
            opcode, payload, buf = _read_frame(sock, buf)
            if opcode == 0x1:
                replies.append(json.loads(payload)["type"])
            elif opcode == 0xA:
                replies.append("ws-pong:" + payload.decode())
            elif opcode == 0x8:
                replies.append(f"close:{struct.unpack('!H', payload[:2])[0]}")
        return replies


@pytest_twisted.ensureDeferred
async def test_frames_in_one_read_are_handled_in_order_whatever_their_kind(daemon):
    """Whole small frames, a control frame, a fragmented message, a 16-bit
    length and a frame cut across reads, all in few writes: every reply in order."""
    sid = await daemon.new_session()
    port = daemon.port.getHost().port
    ping = _masked(_envelope("ping", sid, {}))
    padded = _masked(_envelope("ping", sid, {"pad": "x" * 200}))  # 16-bit length
    assert padded[1] & 0x7F == 126
    not_json = b"{not json"
    fragmented = _masked(not_json[:4], fin=False) + _masked(not_json[4:], opcode=0x0)
    cut = _masked(_envelope("ping", sid, {"cut": True}))
    burst = [
        ping + _masked(b"hello", opcode=0x9) + fragmented + padded + cut[:5],
        cut[5:] + _masked(b"{", opcode=0x1) + ping,
        _masked(_envelope("ping", sid, {}), opcode=0x2),  # binary: refused
        ping + ping[:-3],  # a whole frame, then one cut inside its payload
        ping[-3:] + ping,
    ]
    replies = await threads.deferToThread(_replies_to_one_burst, port, sid, burst, 11)
    # the connection outlived the errors: it answered the last ping
    assert replies == ["pong", "ws-pong:hello", "error", "pong", "pong", "error", "pong", "error",
                       "pong", "pong", "pong"], replies


@pytest_twisted.ensureDeferred
async def test_a_whole_small_frame_skips_autobahns_frame_machine(daemon):
    """An ack-sized message is delivered without Autobahn's per-frame callbacks."""
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    (protocol,) = daemon.server.ws_factory.connections
    begun = []
    original = type(protocol).onFrameBegin
    type(protocol).onFrameBegin = lambda self: begun.append(1) or original(self)
    try:
        for _ in range(3):
            device.send("ping", {})
            await device.next_of("pong")
    finally:
        del type(protocol).onFrameBegin
    assert begun == []
    device.sendClose()
    await device.wait_closed(WAIT)


@pytest_twisted.ensureDeferred
async def test_a_message_of_exactly_the_size_limit_is_read_and_one_byte_more_is_refused(daemon_factory):
    """--max-message-size holds at its boundary on the one-step path: at the limit answered, over it 1009."""
    limit = 300
    daemon = await daemon_factory(max_message_size=limit)
    # worked out once, with the options, for every connection of the factory
    assert daemon.server.ws_factory.protocol._fast_limit == limit
    sid = await daemon.new_session()
    port = daemon.port.getHost().port
    base = _envelope("ping", sid, {"pad": ""})
    exact = _envelope("ping", sid, {"pad": "x" * (limit - len(base))})
    assert len(exact) == limit
    over = _envelope("ping", sid, {"pad": "x" * (limit - len(base) + 1)})
    replies = await threads.deferToThread(
        _replies_to_one_burst, port, sid, [_masked(exact), _masked(over)], 2)
    assert replies == ["pong", "close:1009"], replies


class _Recording(LeanServerProtocol):
    __slots__ = ()

    def onMessage(self, payload, isBinary):
        self.factory.got.append(payload)


def _open_lean_protocol(log_frames=False, log_octets=False, **options):
    """A `LeanServerProtocol` built as the daemon builds its own (options
    on a per-factory class), handshaken over a memory transport."""
    factory = WebSocketServerFactory("ws://localhost:9000", reactor=MemoryReactorClock())
    factory.setProtocolOptions(failByDrop=False, **options)
    factory.logFrames, factory.logOctets = log_frames, log_octets
    factory.got = []
    factory.protocol = _Recording.options_class(factory)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    transport.unregisterProducer = lambda: None  # Autobahn unregisters on a drop
    protocol.makeConnection(transport)
    protocol.dataReceived(rawhttp.ws_handshake("/ws", host="localhost:9000"))
    transport.clear()
    return factory, protocol, transport


@pytest.mark.parametrize("option", [{"utf8validateIncoming": True}, {"autoPingInterval": 20},
                                    {"log_frames": True}, {"log_octets": True}, {"applyMask": False}])
def test_the_one_step_reader_leaves_frames_to_autobahn_when_an_option_asks_more_of_each(option):
    """Checking incoming UTF-8, Autobahn's auto-ping (a data frame cancels
    its pending timeout), frame and octet logging: Autobahn does them per
    frame."""
    base = {"utf8validateIncoming": False}
    factory, _, _ = _open_lean_protocol(**base)
    assert factory.protocol._fast_limit > 0
    factory, _, _ = _open_lean_protocol(**{**base, **option})
    assert factory.protocol._fast_limit == 0


def test_invalid_utf8_text_is_refused_when_incoming_utf8_is_checked():
    """With Autobahn's default (the daemon's devices turn it off: orjson
    checks the UTF-8) a text frame of invalid UTF-8 is closed with 1007,
    never delivered, as Autobahn's own protocol does."""
    factory, protocol, transport = _open_lean_protocol()  # utf8validateIncoming: Autobahn's default, on
    protocol.dataReceived(rawhttp.frame(b"\xff\xfe"))
    assert factory.got == []
    sent = transport.value()
    assert sent[0] == 0x88 and sent[2:4] == (1007).to_bytes(2, "big")


def test_observers_of_messages_hear_frames_the_one_step_reader_could_read():
    factory, protocol, _ = _open_lean_protocol(utf8validateIncoming=False)
    heard = []

    def hear(payload, is_binary):
        heard.append(payload)

    protocol.on("message", hear)
    protocol.dataReceived(rawhttp.frame(b'{"a":1}') + rawhttp.frame(b'{"b":2}'))
    assert factory.got == [b'{"a":1}', b'{"b":2}']
    assert heard == [b'{"a":1}', b'{"b":2}']
    # with the observer gone, frames are read in one step again
    protocol.off("message", hear)
    begun = []
    protocol.onFrameBegin = lambda: begun.append(1)  # Autobahn's frame machine
    protocol.dataReceived(rawhttp.frame(b'{"c":3}'))
    assert factory.got[-1] == b'{"c":3}' and heard == [b'{"a":1}', b'{"b":2}'] and begun == []
