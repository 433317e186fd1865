"""Writes that go straight to the socket when nothing is queued."""

import socket
from contextlib import asynccontextmanager

import orjson
import pytest
import pytest_twisted
from twisted.internet import task, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import WrappingFactory

from lumora_reload import directwrite
from lumora_reload.directwrite import DirectWriteWrapper, write_now
from tests.helpers import Daemon, make_schema, with_text
from tests.rawhttp import exchange, request_head


def _read_exactly(sock, n):
    sock.settimeout(5)
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            break
        data += part
    return data


@asynccontextmanager
async def _one_connection(reactor):
    """A daemon and one raw client; yields (client socket, server wrapper)."""
    daemon = Daemon(reactor)
    await daemon.start()
    client = socket.create_connection(("127.0.0.1", daemon.port.getHost().port), timeout=5)
    factory = daemon.port.factory
    try:
        for _ in range(200):
            if factory.protocols:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        (wrapper,) = factory.protocols
        yield client, wrapper
    finally:
        client.close()
        for _ in range(200):
            if not factory.protocols:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_write_reaches_the_kernel_at_once_and_queues_behind_pending_bytes(reactor):
    """Every connection's wrapper writes in the same turn when idle; behind queued bytes it waits, in order."""
    async with _one_connection(reactor) as (client, wrapper):
        tcp = wrapper.transport
        wrapper.write(b"first")
        write_now(wrapper, b"+")  # what a device's frame takes
        assert not tcp._tempDataBuffer and not tcp.dataBuffer  # in the kernel already
        tcp.write(b"-queued-")  # Twisted's own path: held for a later turn
        wrapper.writeSequence([b"after", b"!"])
        write_now(wrapper, b"?")
        assert b"".join(tcp._tempDataBuffer) == b"-queued-after!?"  # behind it, not before
        expected = b"first+-queued-after!?"
        assert await threads.deferToThread(_read_exactly, client, len(expected)) == expected


def _read_until_closed(sock):
    sock.settimeout(5)
    data = b""
    try:
        while True:
            part = sock.recv(65536)
            if not part:
                return data
            data += part
    except ConnectionResetError:
        return data


@pytest_twisted.ensureDeferred
async def test_http_connections_have_nagle_off_through_the_wrapper(reactor):
    """An answer's head and body, now written apart, are not held for the peer's ACK (TCP_NODELAY)."""
    async with _one_connection(reactor) as (client, wrapper):
        handle = wrapper.transport.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest_twisted.ensureDeferred
async def test_what_is_not_plain_bytes_is_refused_whole_and_a_write_after_an_abort_is_dropped(reactor):
    """A bytearray is refused as Twisted refuses it (never half sent); a write after an abort never leaves."""
    async with _one_connection(reactor) as (client, wrapper):
        with pytest.raises(TypeError):
            wrapper.write(bytearray(b"not bytes"))
        wrapper.write(b"sent")
        wrapper.transport.abortConnection()
        wrapper.write(b"late")
        received = await threads.deferToThread(_read_until_closed, client)
        assert received == b"sent"


@pytest_twisted.ensureDeferred
async def test_an_http_answer_leaves_in_one_send_head_and_body_together(daemon, monkeypatch):
    """Answered at once (GET /health) or later (a push, once stored): one write reaches the
    socket. A head alone (HEAD) is not held back."""
    sent = []

    def recording(transport, data):
        sent.append(data)
        real(transport, data)

    real = directwrite.write_now
    monkeypatch.setattr(directwrite, "write_now", recording)
    sid = await daemon.new_session(make_schema())
    port = daemon.port.getHost().port
    for method, path, body in [("GET", "/health", b""), ("HEAD", "/health", b""),
                               ("POST", f"/send/{sid}", orjson.dumps(with_text(make_schema(), "edited")))]:
        del sent[:]
        head = request_head(method, path, [("Content-Type", "application/json"),
                                           ("Content-Length", len(body)), ("Connection", "close")])
        answer, _, _ = await exchange(port, head, [body] if body else [])
        assert answer.status == 200
        assert sent == [answer.raw]  # the head and the body, in one write


class _Recorder(Protocol):
    def __init__(self):
        self.got = []

    def dataReceived(self, data):
        self.got.append(data)


def test_reads_go_straight_to_the_wrapped_protocol_and_follow_a_swap():
    """A read skips the wrapper's own hop, and goes to the new protocol once
    Autobahn swaps it in for an upgraded request."""
    http, websocket = _Recorder(), _Recorder()
    wrapper = DirectWriteWrapper(WrappingFactory(Factory()), http)
    assert wrapper.dataReceived == http.dataReceived  # bound to it: no wrapper frame per read
    wrapper.dataReceived(b"GET / HTTP/1.1")
    wrapper.wrappedProtocol = websocket  # what WebSocketResource.render does
    wrapper.dataReceived(b"frame")
    assert wrapper.wrappedProtocol is websocket
    assert (http.got, websocket.got) == ([b"GET / HTTP/1.1"], [b"frame"])
    wrapper.wrappedProtocol = None  # what connectionLost does
    assert "dataReceived" not in vars(wrapper)
