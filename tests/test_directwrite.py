"""Writes that go straight to the socket when nothing is queued."""

import socket

import pytest_twisted
from twisted.internet import task, threads

from tests.helpers import Daemon


def _read_exactly(sock, n):
    sock.settimeout(5)
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            break
        data += part
    return data


@pytest_twisted.ensureDeferred
async def test_a_write_reaches_the_kernel_at_once_and_queues_behind_pending_bytes(reactor):
    """Every connection's wrapper writes in the same turn when idle; behind queued bytes it waits, in order."""
    daemon = Daemon(reactor)
    await daemon.start()
    client = socket.create_connection(("127.0.0.1", daemon.port.getHost().port), timeout=5)
    try:
        factory = daemon.port.factory
        for _ in range(200):
            if factory.protocols:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        (wrapper,) = factory.protocols
        tcp = wrapper.transport
        wrapper.write(b"first")
        assert not tcp._tempDataBuffer and not tcp.dataBuffer  # in the kernel already
        tcp.write(b"-queued-")  # Twisted's own path: held for a later turn
        wrapper.writeSequence([b"after", b"!"])
        assert b"".join(tcp._tempDataBuffer) == b"-queued-after!"  # behind it, not before
        expected = b"first-queued-after!"
        assert await threads.deferToThread(_read_exactly, client, len(expected)) == expected
    finally:
        client.close()
        for _ in range(200):  # let the daemon see the close (its idle timer ends)
            if not daemon.port.factory.protocols:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        await daemon.stop()
