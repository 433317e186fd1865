"""The daemon's memory stays bounded under abuse from one address: many
connections each sending part of a 9 MiB message, a session flooded with
large schemas and log lines, pushes to unknown session ids. Measured on a
real `twistd` (peak RSS, VmHWM). The default run is smaller; `--run-slow`
runs the full size (2,000 connections, 10,000 pushes)."""

import json
import socket

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.helpers import make_schema, node
from tests.rawhttp import exchange_blocking, frame_header, request_head, ws_handshake
from tests.test_durability import spawn, stop  # noqa: F401 (fixture)

MiB = 1024 * 1024
# the bound the README states for this test
RSS_BOUND = 400 * MiB


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def partial_messages(port, sid, connections, sent=512 * 1024):
    chunk = b" " * sent
    socks = []
    for _ in range(connections):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(ws_handshake(f"/ws?session={sid}") + frame_header(9 * MiB) + chunk)
            socks.append(sock)
        except OSError:
            pass  # refused by the per-address limit or closed for the total
    return socks


def answered(port, head, chunks=(), timeout=5):
    """Retry while the per-address limit still counts closed sockets."""
    for _ in range(200):
        response, _, _ = exchange_blocking(port, head, chunks, timeout=timeout)
        if response.status:
            return response
    raise AssertionError("never answered")


def abuse(port, sid, connections, pushes):
    socks = partial_messages(port, sid, connections)
    for sock in socks:  # the limit holds them to --max-connections-per-address
        sock.close()
    big = json.dumps(make_schema([node(f"n{i}", text="x" * 9000) for i in range(1000)])).encode()
    for i in range(3):
        head = request_head("POST", f"/send/{sid}", [("Content-Type", "application/json"),
                                                      ("Content-Length", str(len(big)))])
        response = answered(port, head, [big.replace(b"x", b"%d" % i, 1)], timeout=30)
        assert response.status == 200, response.raw[:300]
    for i in range(pushes):
        head = request_head("POST", f"/send/{i:032x}", [("Content-Type", "application/json"),
                                                         ("Content-Length", "2")])
        assert answered(port, head, [b"{}"]).status == 404


@pytest.mark.parametrize("connections,pushes", [
    (300, 1000),
    pytest.param(2000, 10000, marks=pytest.mark.slow),
])
@pytest_twisted.ensureDeferred
async def test_memory_stays_bounded_under_abuse(spawn, tmp_path, connections, pushes):  # noqa: F811
    proc, remote = await spawn(tmp_path / "state", "--in-memory")
    sid = await remote.new_session(make_schema())
    port = int(remote.url.rsplit(":", 1)[1])
    await threads.deferToThread(abuse, port, sid, connections, pushes)
    status, health = await remote.call("GET", "/health")
    assert status == 200
    rss = peak_rss(proc.transport.pid)
    print(f"peak RSS {rss / MiB:.0f} MiB after {connections} partial messages and {pushes} pushes")
    assert rss < RSS_BOUND
    await stop(proc)
