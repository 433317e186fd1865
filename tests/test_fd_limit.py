"""A daemon out of file descriptors says so once, clearly, and keeps
serving the connections it has (a real `twistd` with a lowered
RLIMIT_NOFILE, real sockets)."""

import json
import os
import re
import resource
import selectors
import socket
import subprocess
import time

from tests.helpers import make_schema, with_text
from tests.rawhttp import Response, _complete, frame, request_head, ws_handshake
from tests.test_durability import TWISTD

LIMIT = 64  # open files the daemon may hold
LINE = b"out of file descriptors (EMFILE)"
DEADLINE = 30.0


class Output:
    """The daemon's stdout, read without blocking past a deadline."""

    def __init__(self, proc):
        self.proc = proc
        self.data = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(proc.stdout, selectors.EVENT_READ)

    def wait_for(self, pattern):
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            found = re.search(pattern, self.data)
            if found:
                return found
            if self._sel.select(timeout=0.2):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                self.data += chunk
        raise AssertionError(f"{pattern!r} not in output:\n{self.data.decode(errors='replace')[-3000:]}")

    def drain(self):
        while self._sel.select(timeout=0.5):
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return
            self.data += chunk


def call(sock, method, path, body=None):
    """One request on a keep-alive socket; returns the Response."""
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))] if body else []
    sock.sendall(request_head(method, path, headers) + (body or b""))
    data = b""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        part = sock.recv(65536)
        if not part:
            raise ConnectionResetError(f"closed before answering: {data[:300]!r}")
        data += part
        if _complete(data):
            return Response(data)
    raise AssertionError(f"no answer: {data[:300]!r}")


def read_until(sock, needle):
    data = b""
    deadline = time.monotonic() + DEADLINE
    while needle not in data and time.monotonic() < deadline:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    assert needle in data, data[-300:]


def health_once_freed(port):
    """GET /health on a new connection. The daemon frees the flood's files
    only as it reads their closes, and until then it still accepts and at
    once closes each new connection: try again until it answers."""
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
                return call(sock, "GET", "/health")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def device(port, sid, name):
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    sock.sendall(ws_handshake(f"/ws?session={sid}"))
    read_until(sock, b"\r\n\r\n")
    hello = {"type": "connect", "sessionId": sid, "timestamp": 0, "version": "1.0",
             "payload": {"deviceId": name, "platform": "ios", "clientVersion": "1.1.0"}}
    sock.sendall(frame(json.dumps(hello).encode()))
    read_until(sock, b'"connected"')
    return sock


def test_out_of_file_descriptors_is_logged_once_and_open_connections_keep_working(tmp_path):
    """Past the open-files limit the daemon logs one clear EMFILE line, refuses new sockets and keeps serving."""

    def lower_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logfile=-", "lumora-reload", "--in-memory",
         "--port", "tcp:0:interface=127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        preexec_fn=lower_limit, cwd=tmp_path,
    )
    out = Output(proc)
    flood = []
    try:
        port = int(out.wait_for(rb"Site starting on (\d+)").group(1))
        api = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        schema = make_schema()
        made = call(api, "POST", "/session/new", json.dumps({"schema": schema}).encode())
        sid = json.loads(made.body)["sessionId"]
        phones = [device(port, sid, f"phone-{i}") for i in range(2)]

        for _ in range(3 * LIMIT):  # far past the limit; the kernel queues, the daemon refuses
            try:
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
            except OSError:
                break
        out.wait_for(re.escape(LINE))
        assert re.search(rb"limit is %d open files.*LimitNOFILE.*ulimit -n" % LIMIT, out.data)

        # what was open before still works: a push reaches both devices
        pushed = call(api, "POST", f"/send/{sid}", json.dumps(with_text(schema, "after EMFILE")).encode())
        assert pushed.status == 200, pushed.raw[:300]
        for phone in phones:
            read_until(phone, b'"update"')

        for sock in flood:
            sock.close()
        flood.clear()
        health = health_once_freed(port)
        assert health.status == 200
        out.drain()
        assert proc.poll() is None, "the daemon exited"
        assert out.data.count(LINE) == 1, "one line, however many connections were refused"
        assert b"Traceback" not in out.data
    finally:
        for sock in flood:
            sock.close()
        proc.terminate()
        proc.wait(DEADLINE)
        proc.stdout.close()
