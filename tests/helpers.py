"""Test helpers: a real daemon on a loopback port, a real WebSocket device
and real HTTP calls. No sleeps: every wait has a timeout and fails loudly."""

import copy
import json

import orjson
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, task

from lumora_reload import web
from lumora_reload.server import HotReloadServer

WAIT = 10.0


def node(node_id, type_="Text", children=(), **props):
    return {
        "id": node_id,
        "type": type_,
        "props": dict(props),
        "children": list(children),
        "metadata": {"lineNumber": 1},
    }


def make_schema(nodes=None, **extra):
    schema = {
        "version": "1.0",
        "metadata": {"sourceFramework": "react", "sourceFile": "App.tsx", "generatedAt": 1700000000000},
        "nodes": nodes if nodes is not None else [node("root", "View", [node("title", text="Hello")])],
    }
    schema.update(extra)
    return schema


def with_text(schema, text, node_id="title"):
    """A copy of `schema` with one leaf's text changed."""
    schema = copy.deepcopy(schema)
    stack = list(schema["nodes"])
    while stack:
        n = stack.pop()
        if n["id"] == node_id:
            n["props"]["text"] = text
            return schema
        stack.extend(n.get("children", []))
    raise KeyError(node_id)


class Daemon:
    def __init__(self, reactor, **options):
        self.reactor = reactor
        options.setdefault("heartbeat_interval", 30.0)
        self.server = HotReloadServer(reactor=reactor, **options)
        self.port = None

    @defer.inlineCallbacks
    def start(self):
        self.server.startService()
        site = web.site(self.server, self.reactor)
        endpoint = endpoints.TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self.port = yield endpoint.listen(site)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.ws = f"ws://127.0.0.1:{self.port.getHost().port}{self.server.ws_path}"
        return self

    @defer.inlineCallbacks
    def stop(self):
        if self.server.running:
            yield self.server.stopService()
        yield self.port.stopListening()
        # an answer goes out at once and its connection closes a turn
        # later: let connections already closing finish (their idle timers
        # end with them)
        for _ in range(100):
            closing = [p for p in self.port.factory.protocols if p.transport.disconnecting]
            if not closing:
                break
            yield task.deferLater(self.reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def call(self, method, path, body=None, headers=None, data=None):
        """A real HTTP request; returns (status, parsed JSON body)."""
        h = {"Content-Type": ["application/json"]} if (body is not None) else {}
        for k, v in (headers or {}).items():
            h[k] = [v]
        if body is not None:
            data = json.dumps(body).encode()
        response = yield treq.request(method, self.url + path, data=data, headers=h, persistent=False)
        raw = yield treq.content(response)
        parsed = orjson.loads(raw) if raw else None
        return response.code, parsed

    @defer.inlineCallbacks
    def new_session(self, schema=None, **extra):
        body = dict(extra)
        if schema is not None:
            body["schema"] = schema
        status, result = yield self.call("POST", "/session/new", body or None)
        assert status == 200, result
        return result["sessionId"]

    @defer.inlineCallbacks
    def push(self, session_id, schema, expect=200, query=""):
        status, result = yield self.call("POST", f"/send/{session_id}{query}", schema)
        assert status == expect, result
        return result

    def device(self, session_id=None, query=None, headers=None):
        url = self.ws if query is None else self.ws + query
        if query is None and session_id is not None:
            url = f"{self.ws}?session={session_id}"
        return open_device(self.reactor, url, headers=headers)


class DeviceClient(WebSocketClientProtocol):
    """A scripted device: collects every message, exposes waits."""

    def __init__(self):
        super().__init__()
        self.inbox = defer.DeferredQueue()
        self.received = []
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()
        self.session_id = None

    def onOpen(self):
        self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        message = orjson.loads(payload)
        self.received.append(message)
        self.inbox.put(message)

    def onClose(self, wasClean, code, reason):
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"closed before open: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    # -- scripting -----------------------------------------------------

    def send_json(self, message):
        self.sendMessage(orjson.dumps(message))

    def send(self, kind, payload=None, session_id=None, **envelope):
        message = {"type": kind, "sessionId": session_id or self.session_id, "timestamp": 1, "version": "1.1.0"}
        message.update(envelope)
        if payload is not None:
            message["payload"] = payload
        self.send_json(message)

    def next(self, timeout=WAIT):
        d = self.inbox.get()
        return d.addTimeout(timeout, self.factory.reactor)

    @defer.inlineCallbacks
    def next_of(self, kind, timeout=WAIT):
        while True:
            message = yield self.next(timeout)
            if message["type"] == kind:
                return message

    def wait_closed(self, timeout=WAIT):
        d = defer.Deferred()
        self.closed.addBoth(lambda r: (d.called or d.callback(r), r)[1])
        return d.addTimeout(timeout, self.factory.reactor)

    @defer.inlineCallbacks
    def hello(self, device_id="phone-1", platform="ios", client_version="1.1.0", **extra):
        payload = {"deviceId": device_id, "platform": platform, "clientVersion": client_version}
        payload.update(extra)
        self.send("connect", payload)
        message = yield self.next()
        assert message["type"] == "connected", message
        return message["payload"]


def open_device(reactor, url, headers=None):
    return open_device_as(DeviceClient, reactor, url, headers)


@defer.inlineCallbacks
def connected_device(daemon, session_id, **hello):
    device = yield daemon.device(session_id)
    info = yield device.hello(**hello)
    return device, info


@defer.inlineCallbacks
def open_device_as(protocol_class, reactor, url, headers=None):
    """`open_device` with a `DeviceClient` subclass as the protocol."""
    from urllib.parse import parse_qs, urlsplit

    factory = WebSocketClientFactory(url, headers=headers or {}, reactor=reactor)
    factory.protocol = protocol_class
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    parts = urlsplit(url)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, parts.hostname, parts.port, timeout=WAIT)
    protocol = yield endpoint.connect(factory)
    protocol.session_id = (parse_qs(parts.query).get("session") or [None])[0]
    yield protocol.opened.addTimeout(WAIT, reactor)
    return protocol
