"""The framework floor: the asyncio floor's trivial server (benchmarks/floor.py)
rebuilt from the parts the daemon is made of, Twisted's reactor,
twisted.web and Autobahn, doing nothing else.

It answers what the asyncio floor does: a WebSocket at ``/ws`` (a small
``connected`` message on open; device frames are read by Autobahn and
dropped), ``GET /health``, and ``POST /send/<anything>``, whose body is
the update message to broadcast: prepared once, written to every open
device. No parse, no session, no access log. What the daemon spends on a
push beyond this server is its own work; what this server spends beyond
the asyncio floor is the framework's.

Two kinds:

- ``stock``: the framework as it comes: the epoll reactor, a plain
  `twisted.web.server.Site`, Autobahn's `WebSocketServerProtocol` with
  its defaults (no automatic pings), `sendPreparedMessage`.
- ``lean``: the same with the daemon's own transport layer and settings:
  the reactor loop of `lumora_reload.leanpoll`, every connection behind
  `DirectWriteWrapper` (an HTTP answer's head and body in one send),
  `LeanServerProtocol` (its whole-frame read path and `send_prepared`),
  no UTF-8 check of device frames by Autobahn and no form parsing of a
  POST (the daemon does without both).

Both run with the daemon's garbage-collector settings, so that only the
work differs. Device frames are counted (`Devices.dropped`), nothing more.

Run: ``python -m benchmarks.framework_floor --port PORT --kind stock|lean``.
"""

import argparse

import orjson
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.protocols.policies import WrappingFactory
from twisted.web import resource, server

from benchmarks.loadgen import raise_fd_limit, sequence_of
from lumora_reload import leanpoll, tap
from lumora_reload.directwrite import DirectWriteWrapper
from lumora_reload.web import CorkedRequest
from lumora_reload.wsbase import LeanServerProtocol

KINDS = ("stock", "lean")


class Devices(WebSocketServerFactory):
    def __init__(self, lean):
        super().__init__()
        if lean:
            # as the daemon's: it reads the UTF-8 of a message itself
            # (which also lets the whole-frame read path take every ack)
            self.setProtocolOptions(autoPingInterval=0, utf8validateIncoming=False)
        else:
            self.setProtocolOptions(autoPingInterval=0)
        self.devices = set()
        self.sequence = 0
        self.dropped = 0  # device frames read (and dropped)
        self.protocol = LeanDevice.options_class(self) if lean else StockDevice

    def connected_message(self):
        return (
            b'{"type":"connected","sessionId":"floor","timestamp":0,"version":"1.1.0",'
            b'"payload":{"connectionId":"c_floor","serverVersion":"1.1.0","sequenceNumber":%d,'
            b'"resumed":false,"capabilities":{}}}' % self.sequence
        )

    def broadcast(self, message):
        seq = sequence_of(message[:512], message[-160:])
        if seq is not None:
            self.sequence = seq
        prepared = self.prepareMessage(message)
        n = 0
        for device in self.devices:
            if device.state == device.STATE_OPEN:
                device.send_update(prepared)
                n += 1
        return n, seq


class _Device:
    """What both kinds do with a device: greet it, drop what it sends."""

    def onOpen(self):
        self.factory.devices.add(self)
        self.sendMessage(self.factory.connected_message())

    def onMessage(self, payload, isBinary):
        self.factory.dropped += 1

    def onClose(self, wasClean, code, reason):
        self.factory.devices.discard(self)


class StockDevice(_Device, WebSocketServerProtocol):
    send_update = WebSocketServerProtocol.sendPreparedMessage


class LeanDevice(_Device, LeanServerProtocol):
    send_update = LeanServerProtocol.send_prepared  # straight to the socket when nothing waits


class Answers(resource.Resource):
    """``GET /health`` and ``POST /send/<anything>``, in JSON."""

    isLeaf = True

    def __init__(self, devices):
        super().__init__()
        self.devices = devices

    def render_GET(self, request):
        if request.prepath != [b"health"]:
            return self._not_found(request)
        return self._json(request, {"status": "ok", "sessions": 1, "totalDevices": len(self.devices.devices)})

    def render_POST(self, request):
        if request.prepath != [b"send"]:
            return self._not_found(request)
        n, seq = self.devices.broadcast(request.content.read())
        return self._json(request, {"success": True, "devicesUpdated": n, "updateType": "floor",
                                    "sequenceNumber": seq})

    def _not_found(self, request):
        request.setResponseCode(404)
        return self._json(request, {"error": "Not found"})

    @staticmethod
    def _json(request, answer):
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps(answer)


class QuietSite(server.Site):
    noisy = False

    def log(self, request):
        pass  # the floor keeps no access log


def site(kind):
    devices = Devices(lean=kind == "lean")
    root = resource.Resource()
    answers = Answers(devices)
    root.putChild(b"health", answers)
    root.putChild(b"send", answers)
    root.putChild(b"ws", WebSocketResource(devices))
    if kind == "stock":
        return QuietSite(root)
    # as the daemon's site: no look at a POST's Content-Type for a form
    web = QuietSite(root, parsePOSTFormSubmission=False)
    web.requestFactory = CorkedRequest  # an answer's head and body in one send, as the daemon's
    wrapped = WrappingFactory(web)
    wrapped.protocol = DirectWriteWrapper
    wrapped.noisy = False
    return wrapped


def prepare(reactor, kind):
    """The process tuning of the daemon's start (`tap.makeService`): its
    collector settings for both kinds, its reactor loop for the lean one."""
    tap.tune_collector()
    if kind == "lean":
        leanpoll.install(reactor)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=KINDS, required=True)
    args = parser.parse_args()
    raise_fd_limit()
    from twisted.internet import reactor

    prepare(reactor, args.kind)
    reactor.listenTCP(args.port, site(args.kind), backlog=1024, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
