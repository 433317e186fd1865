"""Raw HTTP and WebSocket bytes against a live daemon, for requests no
HTTP library would send. Blocking sockets run in a thread
(`deferToThread`) so the daemon keeps serving on the reactor."""

import base64
import os
import socket
import struct

import orjson
from twisted.internet import threads

TIMEOUT = 5.0


class Response:
    def __init__(self, raw):
        self.raw = raw
        while raw.startswith(b"HTTP/1.1 100 "):  # an interim "100 Continue"
            raw = raw.partition(b"\r\n\r\n")[2]
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2) if lines and lines[0] else [b"", b"0"]
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        if self.headers.get("transfer-encoding") == "chunked":
            self.body = _dechunk(self.body)

    def json(self):
        return orjson.loads(self.body)


def _dechunk(data):
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out += rest[:n]
        data = rest[n + 2:]
    return out


def exchange_blocking(port, head, chunks=(), timeout=TIMEOUT):
    """Send `head`, then each of `chunks` (stopping if the server closed),
    and read until the server closes. Returns (Response, bytes of chunks
    sent, whether every chunk was sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sent = 0
    complete = True
    try:
        sock.sendall(head)
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                complete = False
                break
            sent += len(chunk)
        data = b""
        while True:
            try:
                part = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not part:
                break
            data += part
            if _complete(data):
                break
        return Response(data), sent, complete
    finally:
        sock.close()


def _complete(data):
    while data.startswith(b"HTTP/1.1 100 "):
        data = data.partition(b"\r\n\r\n")[2]
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
        if name.strip().lower() == b"transfer-encoding":
            return body.endswith(b"0\r\n\r\n")
    return False


def exchange(port, head, chunks=(), timeout=TIMEOUT):
    return threads.deferToThread(exchange_blocking, port, head, chunks, timeout)


def request_head(method, path, headers=(), host="127.0.0.1"):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def ws_handshake(path, host="127.0.0.1", extra=()):
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ] + [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def frame_header(length, opcode=0x1, fin=True):
    """A masked client frame header (mask key of zeros: payload as is)."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + b"\0\0\0\0"


def frame(payload, opcode=0x1, fin=True):
    return frame_header(len(payload), opcode, fin) + payload
