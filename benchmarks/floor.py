"""The floor: a trivial server that sends pre-built bytes to every device.

It speaks just enough HTTP and WebSocket for the load generator: a
WebSocket upgrade on any path (answered with a small ``connected`` message),
``GET /health``, and ``POST /send/<anything>`` whose body is the exact
update message to broadcast (the coordinator replays the bytes the daemon
sent in the same run). The body is framed once and written to every open
device; incoming device frames are read and discarded. Measured beside the
daemon with the same generator and the same message sizes, it shows what
the generator and the kernel alone cost.

Run: ``python -m benchmarks.floor --port PORT``.
"""

import argparse
import asyncio
import base64
import gc
import hashlib
import re

import orjson

from benchmarks.loadgen import raise_fd_limit, sequence_of, server_frame_header

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_KEY = re.compile(rb"(?im)^sec-websocket-key:\s*(\S+)\s*$")
_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)\s*$")


class Floor:
    def __init__(self):
        self.devices = set()
        self.sequence = 0

    def connected_frame(self):
        body = (
            b'{"type":"connected","sessionId":"floor","timestamp":0,"version":"1.1.0",'
            b'"payload":{"connectionId":"c_floor","serverVersion":"1.1.0","sequenceNumber":%d,'
            b'"resumed":false,"capabilities":{}}}' % self.sequence
        )
        return server_frame_header(len(body)) + body

    def broadcast(self, message):
        seq = sequence_of(message[:512], message[-160:])
        if seq is not None:
            self.sequence = seq
        frame = server_frame_header(len(message)) + message
        n = 0
        for transport in self.devices:
            if not transport.is_closing():
                transport.write(frame)
                n += 1
        return n, seq


class Connection(asyncio.Protocol):
    def __init__(self, floor):
        self.floor = floor
        self.buffer = b""
        self.transport = None
        self.websocket = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.floor.devices.discard(self.transport)

    def data_received(self, data):
        if self.websocket:
            return  # device frames (connect, acks, pings) are discarded
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            m = _LENGTH.search(head)
            length = int(m.group(1)) if m else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            if not self.request(head, body):
                return

    def request(self, head, body):
        line = head[: head.find(b"\r\n")]
        method, path = line.split(b" ")[:2]
        key = _KEY.search(head)
        if method == b"GET" and key is not None:
            accept = base64.b64encode(hashlib.sha1(key.group(1) + _GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.transport.write(self.floor.connected_frame())
            self.websocket = True
            self.floor.devices.add(self.transport)
            return False
        if method == b"POST" and path.startswith(b"/send"):
            n, seq = self.floor.broadcast(body)
            answer = {"success": True, "devicesUpdated": n, "updateType": "floor", "sequenceNumber": seq}
        elif path.startswith(b"/health"):
            answer = {"status": "ok", "sessions": 1, "totalDevices": len(self.floor.devices)}
        else:
            answer = {"error": "Not found"}
        payload = orjson.dumps(answer)
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(payload), payload)
        )
        return True


async def serve(port):
    floor = Floor()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(floor), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_fd_limit()
    gc.disable()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
