"""Load-generator worker: one process holding many WebSocket devices.

The coordinator (benchmarks.harness.Generators) starts several of these
processes and talks to each over a multiprocessing pipe. A worker runs a
plain asyncio loop with a minimal WebSocket client written for cost per
message, not generality:

* frames from the server are walked header by header; of each message only
  the first `HEAD` bytes and the last `TAIL` bytes are kept, which is where
  the envelope's ``type`` and the ``sequenceNumber`` are (orjson keeps key
  order: ``sequenceNumber`` of an update comes after the schema or delta;
  that of ``connected`` before ``initialSchema``). ``--parse`` switches to
  assembling every message and parsing it with orjson, to show what a real
  JSON parse costs;
* frames to the server are masked with the all-zero key (legal, and masking
  then costs nothing);
* the arrival time of every update (``time.monotonic()``, CLOCK_MONOTONIC:
  comparable across processes on one machine) is folded into per-sequence
  ``[count, first, last]`` records, reported to the coordinator when every
  ready device of the worker holds that sequence.

Each device checks that it sees sequence numbers in order without gaps,
answers protocol pings, sends an application ``ping`` every
`ping_interval` seconds (the daemon drops devices silent for
``--connection-timeout``), and optionally acks every update.

Commands (tuples on the pipe), answers in brackets:
  ("connect", host, port, path, session_id, count, concurrency, ack)  [("connected", ok, failed, seconds, errors)]
  ("report", bool)     proactive ("arrived", seq, count, first, last) on/off
  ("status", seq)      [("status", seq, count, first, last, ready)]
  ("stats",)           [("stats", {...})]
  ("reset",)           forget arrivals and counters   [("reset",)]
  ("captured",)        [("captured", {seq: bytes})] (device 0 of worker 0 keeps whole updates)
  ("close",)           close every device   [("closed", n)]
  ("quit",)
"""

import asyncio
import gc
import os
import re
import resource
import time

import orjson

HEAD = 512
TAIL = 160

_SEQ = re.compile(rb'"sequenceNumber":(\d+)')
_CODE = re.compile(rb'"code":"([A-Z_]+)"')
_ZERO_MASK = b"\x00\x00\x00\x00"


def client_frame(payload, opcode=0x1):
    """A masked (all-zero key) client frame."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + _ZERO_MASK + payload


def server_frame_header(n, opcode=0x1):
    """Header of an unmasked server frame of `n` payload bytes."""
    if n < 126:
        return bytes((0x80 | opcode, n))
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")


def sequence_of(head, tail):
    """The last ``"sequenceNumber":N`` in the tail, else the first in the head."""
    k = tail.rfind(b'"sequenceNumber":')
    if k >= 0:
        m = _SEQ.match(tail, k)
        if m:
            return int(m.group(1))
    m = _SEQ.search(head)
    return int(m.group(1)) if m else None


class Device(asyncio.Protocol):
    __slots__ = (
        "pool", "number", "transport", "upgraded", "pending", "need", "in_frame",
        "opcode", "fin", "head", "tail", "size", "parts", "keep", "last_seq", "ready", "close_code",
    )

    def __init__(self, pool, number, keep=False):
        self.pool = pool
        self.number = number
        self.transport = None
        self.upgraded = False
        self.pending = b""  # handshake bytes or a split frame header
        self.need = 0
        self.in_frame = False
        self.opcode = 0
        self.fin = 0
        self.head = b""
        self.tail = b""
        self.size = 0
        self.keep = keep or pool.parse
        self.parts = [] if self.keep else None
        self.last_seq = None
        self.ready = pool.loop.create_future()
        self.close_code = None

    # -- asyncio ----------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.pool.handshake)

    def connection_lost(self, exc):
        self.pool.lost(self)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before 'connected' (code {self.close_code})"))

    def data_received(self, data):
        if not self.upgraded:
            self.pending += data
            end = self.pending.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.pending[: self.pending.find(b"\r\n")]
            if b" 101 " not in status + b" ":
                self.ready.done() or self.ready.set_exception(ConnectionError(status.decode("latin-1")))
                self.transport.close()
                return
            data = self.pending[end + 4:]
            self.pending = b""
            self.upgraded = True
            self.transport.write(self.pool.connect_frame(self.number))
            if not data:
                return
        if self.pending:
            data = self.pending + data
            self.pending = b""
        mv = memoryview(data)
        n = len(data)
        pos = 0
        while pos < n:
            if not self.in_frame:
                if n - pos < 2:
                    self.pending = bytes(mv[pos:])
                    return
                b0 = data[pos]
                length = data[pos + 1] & 0x7F
                if length == 126:
                    if n - pos < 4:
                        self.pending = bytes(mv[pos:])
                        return
                    length = int.from_bytes(mv[pos + 2:pos + 4], "big")
                    pos += 4
                elif length == 127:
                    if n - pos < 10:
                        self.pending = bytes(mv[pos:])
                        return
                    length = int.from_bytes(mv[pos + 2:pos + 10], "big")
                    pos += 10
                else:
                    pos += 2
                opcode = b0 & 0x0F
                if opcode:  # not a continuation: a new message starts
                    self.opcode = opcode
                    self.head = b""
                    self.tail = b""
                    self.size = 0
                    if self.parts is not None:
                        self.parts = []
                self.fin = b0 & 0x80
                self.need = length
                self.in_frame = True
            take = self.need if self.need <= n - pos else n - pos
            if take:
                end = pos + take
                if len(self.head) < HEAD:
                    self.head += bytes(mv[pos:min(end, pos + HEAD - len(self.head))])
                if take >= TAIL:
                    self.tail = bytes(mv[end - TAIL:end])
                else:
                    self.tail = (self.tail + bytes(mv[pos:end]))[-TAIL:]
                if self.parts is not None:
                    self.parts.append(bytes(mv[pos:end]))
                self.size += take
                self.need -= take
                pos = end
            if self.need == 0:
                self.in_frame = False
                if self.fin:
                    self.message()

    # -- messages ---------------------------------------------------------

    def message(self):
        opcode = self.opcode
        if opcode == 0x1:
            head = self.head
            if head.startswith(b'{"type":"update"'):
                if self.pool.parse:
                    body = orjson.loads(b"".join(self.parts))
                    seq = body["payload"]["sequenceNumber"]
                else:
                    seq = sequence_of(head, self.tail)
                if self.keep and self.pool.capture is not None and self.number == 0:
                    self.pool.capture[seq] = b"".join(self.parts)
                self.pool.arrived(self, seq, time.monotonic())
            elif head.startswith(b'{"type":"connected"'):
                self.last_seq = sequence_of(head, b"")
                if not self.ready.done():
                    self.ready.set_result(None)
            elif head.startswith(b'{"type":"error"'):
                m = _CODE.search(head)
                code = m.group(1).decode() if m else "?"
                self.pool.errors[code] = self.pool.errors.get(code, 0) + 1
            self.pool.messages += 1
            self.pool.bytes += self.size
        elif opcode == 0x9:  # ping -> pong
            self.transport.write(client_frame(self.head, 0xA))
        elif opcode == 0x8:  # close
            code = int.from_bytes(self.head[:2], "big") if len(self.head) >= 2 else 1005
            self.close_code = code
            self.pool.closes[code] = self.pool.closes.get(code, 0) + 1
            self.transport.write(client_frame(self.head[:2], 0x8))
            self.transport.close()
        if self.parts:
            self.parts = []


class Pool:
    """The devices of one worker process and its pipe to the coordinator."""

    def __init__(self, conn, index, options):
        self.conn = conn
        self.index = index
        self.parse = options.get("parse", False)
        self.ack = options.get("ack", False)
        self.ping_interval = options.get("ping_interval", 25.0)
        self.loop = None
        self.devices = []
        self.ready = set()
        self.capture = {} if index == 0 else None
        self.session_id = ""
        self.handshake = b""
        self.report = True
        self._ack_frames = {}
        self._done = None
        self._ping_cursor = 0
        self.reset()

    def reset(self):
        self.arrivals = {}
        self.gaps = 0
        self.missed = 0
        self.reorders = 0
        self.messages = 0
        self.updates = 0
        self.bytes = 0
        self.errors = {}
        self.closes = {}
        if self.capture is not None:
            self.capture.clear()

    # -- frames -------------------------------------------------------------

    def connect_frame(self, number):
        body = orjson.dumps(
            {
                "type": "connect",
                "sessionId": self.session_id,
                "payload": {
                    "deviceId": f"bench-{self.index}-{number}",
                    "platform": "bench",
                    "clientVersion": "1.1.0",
                },
            }
        )
        return client_frame(body)

    def ack_frame(self, seq):
        frame = self._ack_frames.get(seq)
        if frame is None:
            if len(self._ack_frames) > 64:
                self._ack_frames.clear()
            body = b'{"type":"ack","sessionId":"%s","payload":{"sequenceNumber":%d,"success":true}}' % (
                self.session_id.encode(),
                seq,
            )
            frame = self._ack_frames[seq] = client_frame(body)
        return frame

    # -- events from devices -------------------------------------------------

    def arrived(self, device, seq, now):
        last = device.last_seq
        if last is not None and seq != last + 1:
            if seq <= last:
                self.reorders += 1
            else:
                self.gaps += 1
                self.missed += seq - last - 1
        if last is None or seq > last:
            device.last_seq = seq
        self.updates += 1
        record = self.arrivals.get(seq)
        if record is None:
            record = self.arrivals[seq] = [0, now, now]
        record[0] += 1
        record[2] = now
        if self.report and record[0] == len(self.ready):
            self.conn.send(("arrived", seq, record[0], record[1], record[2]))
        if self.ack:
            device.transport.write(self.ack_frame(seq))

    def lost(self, device):
        self.ready.discard(device)

    # -- commands ---------------------------------------------------------------

    def on_command(self):
        while self.conn.poll():
            try:
                command = self.conn.recv()
            except EOFError:
                self._done.set_result(None)
                return
            getattr(self, "do_" + command[0])(*command[1:])

    def do_connect(self, host, port, path, session_id, count, concurrency, ack=False):
        self.ack = ack
        self.loop.create_task(self._connect(host, port, path, session_id, count, concurrency))

    async def _connect(self, host, port, path, session_id, count, concurrency):
        self.session_id = session_id
        self._ack_frames.clear()
        self.handshake = (
            f"GET {path}?session={session_id} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        # One source address per generator process on loopback: one
        # address has about 28,000 ephemeral ports to one server port.
        source = (f"127.0.0.{2 + self.index}", 0) if host == "127.0.0.1" else None
        started = time.monotonic()
        gate = asyncio.Semaphore(concurrency)
        failures = []
        first = len(self.devices)

        async def one(number):
            async with gate:
                device = Device(self, number, keep=(number == 0 and self.capture is not None))
                try:
                    await self.loop.create_connection(lambda: device, host, port, local_addr=source)
                    await asyncio.wait_for(asyncio.shield(device.ready), 120)
                except Exception as e:  # reported, not raised: the coordinator decides
                    failures.append(repr(e)[:200])
                    if device.transport is not None:
                        device.transport.abort()
                    return
                self.devices.append(device)
                self.ready.add(device)

        await asyncio.gather(*(one(first + i) for i in range(count)))
        self.conn.send(("connected", count - len(failures), len(failures), time.monotonic() - started, failures[:5]))

    def do_report(self, on):
        self.report = on

    def do_status(self, seq):
        record = self.arrivals.get(seq, [0, None, None])
        self.conn.send(("status", seq, record[0], record[1], record[2], len(self.ready)))

    def do_stats(self):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.conn.send(
            (
                "stats",
                {
                    "ready": len(self.ready),
                    "gaps": self.gaps,
                    "missed": self.missed,
                    "reorders": self.reorders,
                    "messages": self.messages,
                    "updates": self.updates,
                    "bytes": self.bytes,
                    "errors": dict(self.errors),
                    "closes": dict(self.closes),
                    "cpu": usage.ru_utime + usage.ru_stime,
                    "maxrss_kb": usage.ru_maxrss,
                },
            )
        )

    def do_reset(self):
        self.reset()
        self.conn.send(("reset",))

    def do_captured(self):
        self.conn.send(("captured", dict(self.capture or {})))

    def do_close(self):
        n = 0
        for device in self.devices:
            if device.transport is not None and not device.transport.is_closing():
                device.transport.abort()
                n += 1
        self.devices = []
        self.ready.clear()
        self.conn.send(("closed", n))

    def do_quit(self):
        self.do_close()
        if not self._done.done():
            self._done.set_result(None)

    # -- liveness -------------------------------------------------------------

    async def _pinger(self):
        """Every second, send an application ping from the share of
        devices whose turn it is, so each pings every `ping_interval`."""
        body = None
        while True:
            await asyncio.sleep(1.0)
            devices = self.devices
            if not devices:
                continue
            if body is None or self.session_id not in body:
                body = client_frame(b'{"type":"ping","sessionId":"%s"}' % self.session_id.encode())
            share = max(1, int(len(devices) / self.ping_interval + 0.999))
            for _ in range(share):
                self._ping_cursor = (self._ping_cursor + 1) % len(devices)
                device = devices[self._ping_cursor]
                if device.transport is not None and not device.transport.is_closing():
                    device.transport.write(body)

    async def run(self):
        self.loop = asyncio.get_running_loop()
        self._done = self.loop.create_future()
        self.loop.add_reader(self.conn.fileno(), self.on_command)
        pinger = self.loop.create_task(self._pinger())
        await self._done
        pinger.cancel()


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main(conn, index, options):
    """Entry point of a worker process."""
    raise_fd_limit()
    gc.disable()  # devices form no cycles worth collecting; keeps timing clean
    try:
        os.nice(0)
    except OSError:
        pass
    asyncio.run(Pool(conn, index, options).run())
