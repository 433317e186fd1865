"""The epoll loop without a log context per event, on a reactor of its own
(never the tests' global one), driven by `iterate`."""

import socket
import time

import pytest
from twisted.internet import protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python import context, log

from lumora_reload import leanpoll

epollreactor = pytest.importorskip("twisted.internet.epollreactor")


class Recorder(protocol.Protocol):
    """Keeps what it reads and the log context each read ran in."""

    def connectionMade(self):
        self.factory.connections.append(self)
        self.data = b""
        self.systems = []

    def dataReceived(self, data):
        self.data += data
        self.systems.append(context.get(log.ILogContext)["system"])
        if b"boom" in data:
            raise ZeroDivisionError("a protocol callback failed")
        self.transport.write(data.upper())

    def connectionLost(self, reason):
        self.factory.lost.append(self)


class Factory(protocol.Factory):
    protocol = Recorder

    def __init__(self):
        self.connections = []
        self.lost = []


@pytest.fixture
def own_reactor():
    """A private epoll reactor, torn down with its files."""
    reactor = epollreactor.EPollReactor()
    yield reactor
    reactor.disconnectAll()
    for _ in range(5):
        reactor.iterate(0)
    reactor.removeReader(reactor.waker)
    reactor.waker.connectionLost(None)
    reactor._poller.close()


def _turn_until(reactor, done, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "nothing happened in time"
        reactor.iterate(0.01)


def _ask(reactor, client, payload):
    """Send `payload` on `client` and turn the reactor until an answer can be read."""
    client.sendall(payload)
    client.setblocking(False)
    got = []

    def answered():
        try:
            got.append(client.recv(65536))
        except BlockingIOError:
            return False
        return True

    _turn_until(reactor, answered)
    return got[0]


def _talk(reactor, factory, payloads):
    """Connect a client, send each payload, read each answer; return the
    client socket (still open) and what it read."""
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    answers = [_ask(reactor, client, payload) for payload in payloads]
    port.stopListening()
    return client, answers


def test_reads_and_writes_run_without_a_log_context_per_event(own_reactor):
    assert leanpoll.install(own_reactor) and leanpoll.installed(own_reactor)
    factory = Factory()
    client, answers = _talk(own_reactor, factory, [b"ping", b"ack"])
    client.close()
    (server,) = factory.connections
    assert answers == [b"PING", b"ACK"] and server.data == b"pingack"
    assert server.systems == ["-", "-"]  # Twisted's loop names the connection here
    _turn_until(own_reactor, lambda: factory.lost)  # the peer's close is still seen


def test_twisted_s_own_loop_is_back_after_uninstall(own_reactor):
    """The same reads under Twisted's loop carry the connection's log prefix:
    what the lean loop leaves out."""
    leanpoll.install(own_reactor)
    leanpoll.uninstall(own_reactor)
    assert not leanpoll.installed(own_reactor)
    factory = Factory()
    client, answers = _talk(own_reactor, factory, [b"ping"])
    client.close()
    (server,) = factory.connections
    assert answers == [b"PING"] and server.systems == [server.transport.logstr]


def test_a_callback_that_raises_is_logged_and_its_connection_dropped(own_reactor, logged_failures):
    logged_failures.expect(ZeroDivisionError)
    leanpoll.install(own_reactor)
    factory = Factory()
    port = own_reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    other = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    _turn_until(own_reactor, lambda: len(factory.connections) == 2)
    client.sendall(b"boom")
    _turn_until(own_reactor, lambda: factory.lost)
    assert [e["log_failure"].type for e in logged_failures.events] == [ZeroDivisionError]
    client.settimeout(5)
    assert client.recv(100) == b""  # closed by the daemon
    assert _ask(own_reactor, other, b"still here") == b"STILL HERE"  # the other connection is served on
    client.close()
    other.close()
    port.stopListening()


class LosesBadly(Recorder):
    def connectionLost(self, reason):
        super().connectionLost(reason)
        raise ZeroDivisionError("connectionLost failed")


def test_a_failure_past_twisted_s_own_handling_is_logged_with_the_connection_s_prefix(own_reactor, logged_failures):
    """connectionLost raising escapes the reactor's `_doReadOrWrite`: the loop
    logs it under the connection's name, as Twisted's loop would, and serves on."""
    logged_failures.expect(ZeroDivisionError)
    leanpoll.install(own_reactor)
    factory = Factory()
    factory.protocol = LosesBadly
    port = own_reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    _turn_until(own_reactor, lambda: factory.connections)
    (server,) = factory.connections
    client.close()
    _turn_until(own_reactor, lambda: logged_failures.events)
    (event,) = logged_failures.events
    assert event["log_failure"].type is ZeroDivisionError and event["system"] == server.transport.logstr
    port.stopListening()
    factory.protocol = Recorder
    client, answers = _talk(own_reactor, factory, [b"next"])  # the loop goes on
    client.close()
    assert answers == [b"NEXT"]


def test_a_twisted_whose_loop_changed_keeps_its_own(own_reactor, monkeypatch):
    assert leanpoll.fingerprint(type(own_reactor)) == leanpoll.DO_POLL_FINGERPRINT, (
        "Twisted's EPollReactor.doPoll changed: compare it with leanpoll._lean_poll, then update the fingerprint")
    monkeypatch.setattr(leanpoll, "DO_POLL_FINGERPRINT", "0" * 16)
    assert not leanpoll.install(own_reactor) and not leanpoll.installed(own_reactor)


def test_only_twisted_s_epoll_reactor_gets_it():
    reactor = MemoryReactorClock()
    assert not leanpoll.install(reactor)
    assert not leanpoll.installed(reactor)
    leanpoll.uninstall(reactor)  # nothing to undo
