"""A malformed WebSocket upgrade on the device path, over raw sockets
against a real daemon: answered in JSON with the right status, then
closed, with an access-log line, and no full session id in any log. A
good one opens, and leaves nothing behind for the garbage collector."""

import gc
import io
import socket
import weakref

import pytest
import pytest_twisted
from twisted.internet import task, threads
from twisted.logger import formatEvent, globalLogPublisher

from lumora_reload import web
from tests.helpers import make_schema
from tests.rawhttp import Response

ensure = pytest_twisted.ensureDeferred

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", KEY),
           ("Sec-WebSocket-Version", "13")]


def _without(name, *extra):
    return [(k, v) for k, v in UPGRADE if k != name] + list(extra)


def _with(name, value, *extra):
    return [(k, value if k == name else v) for k, v in UPGRADE] + list(extra)


# Autobahn refuses each of these after the daemon's own check let it through
MALFORMED = {
    "no Connection header": _without("Connection"),
    "Connection without upgrade": _with("Connection", "keep-alive"),
    "short key": _with("Sec-WebSocket-Key", "abc"),
    "key of bad base64": _with("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ!="),
    "two keys": UPGRADE + [("Sec-WebSocket-Key", KEY)],
    "duplicate subprotocol": UPGRADE + [("Sec-WebSocket-Protocol", "a, a")],
    "bad extension parameter": UPGRADE + [("Sec-WebSocket-Extensions", "permessage-deflate; foo=bar")],
    "origin without a host": UPGRADE + [("Origin", "::::")],
}


def closing_exchange(port, path, headers, timeout=5.0):
    """Send one request head; read until the server closes. Returns the
    Response and whether the server closed (False: it kept the connection
    open past `timeout`)."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers]
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data, closed = b"", False
        while True:
            try:
                part = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not part:
                closed = True
                break
            data += part
        return Response(data), closed
    finally:
        sock.close()


def exchange(daemon, path, headers, timeout=5.0):
    return threads.deferToThread(closing_exchange, daemon.port.getHost().port, path, headers, timeout)


def assert_json_answer(response, status):
    assert response.status == status, response.raw
    assert response.headers["content-type"] == "application/json", response.raw
    assert response.headers["content-length"] == str(len(response.body)), response.raw
    body = response.json()
    assert body["code"] == "BAD_REQUEST" and set(body) == {"error", "code"}, body
    return body


@pytest.mark.parametrize("case", sorted(MALFORMED))
@ensure
async def test_a_malformed_upgrade_is_answered_400_in_json_then_closed(daemon, case):
    daemon.port.factory.wrappedFactory.logFile = access = io.StringIO()
    response, closed = await exchange(daemon, "/ws?session=abc", MALFORMED[case])
    assert closed, response.raw
    body = assert_json_answer(response, 400)
    assert response.raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    message = body["error"]
    # Autobahn's reason, as a sentence
    assert message and message[0].isupper() and not message.startswith("HTTP "), message
    assert len(message) <= 201, message
    # logged like any other answer, the session cut as everywhere
    assert f'"GET /ws?session=abc... HTTP/1.1" 400 {len(response.body)} ' in access.getvalue()


@ensure
async def test_the_reasons_read_as_autobahn_gave_them(daemon):
    response, _ = await exchange(daemon, "/ws?session=abc", MALFORMED["no Connection header"])
    assert response.json()["error"] == "Connection header missing"
    response, _ = await exchange(daemon, "/ws?session=abc", MALFORMED["short key"])
    assert response.json()["error"] == 'Bad Sec-WebSocket-Key (length must be 24 ASCII chars) "abc"'


@ensure
async def test_a_long_value_is_not_repeated_in_full(daemon):
    key = "k" * 5000 + "=="
    response, closed = await exchange(daemon, "/ws?session=abc", _with("Sec-WebSocket-Key", key))
    assert closed
    message = assert_json_answer(response, 400)["error"]
    assert len(message) <= 201 and message.endswith("…")


@pytest.mark.parametrize("versions", [["8"], ["12", "13"], ["13", "13"], ["13", "8"], ["x"]])
@ensure
async def test_a_version_other_than_13_is_426_naming_13(daemon, versions):
    headers = _without("Sec-WebSocket-Version", *[("Sec-WebSocket-Version", v) for v in versions])
    response, _ = await exchange(daemon, "/ws?session=abc", headers, timeout=1.0)
    assert_json_answer(response, 426)
    assert response.raw.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert response.headers["sec-websocket-version"] == "13"
    assert response.headers["upgrade"] == "websocket"


@ensure
async def test_a_refused_handshake_logs_no_full_session_id(daemon):
    sid = await daemon.new_session(make_schema())
    daemon.port.factory.wrappedFactory.logFile = access = io.StringIO()
    lines = []

    def observe(event):
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    try:
        # Autobahn repeats the fragment in its reason
        response, _ = await exchange(daemon, f"/ws?session={sid}#session={sid}", UPGRADE)
        assert_json_answer(response, 400)
        response, _ = await exchange(daemon, f"/ws?session={sid}", _with("Sec-WebSocket-Key", sid))
        assert_json_answer(response, 400)
    finally:
        globalLogPublisher.removeObserver(observe)
    everything = access.getvalue() + "\n".join(lines)
    assert f"/ws?session={sid[:6]}..." in access.getvalue()
    assert sid not in everything


@ensure
async def test_a_good_upgrade_still_opens(daemon):
    sid = await daemon.new_session(make_schema())
    device = await daemon.device(sid)
    info = await device.hello()
    assert info["connectionId"]


@ensure
async def test_an_opened_upgrade_leaves_no_cycle_for_the_collector(daemon, monkeypatch):
    """Once a device is connected, the twisted.web request and channel that
    carried its upgrade are freed at once, not left in a reference cycle
    (in a connect storm the collector's passes over thousands of them held
    the reactor for up to 140 ms)."""
    carried = []
    render = web.DeviceSocket.render

    def spied(self, request):
        carried.append((weakref.ref(request), weakref.ref(request.channel)))
        return render(self, request)

    monkeypatch.setattr(web.DeviceSocket, "render", spied)
    sid = await daemon.new_session(make_schema())
    enabled = gc.isenabled()
    gc.disable()  # a cycle now stays until gc.collect()
    try:
        device = await daemon.device(sid)
        assert (await device.hello())["connectionId"]
        [(request, channel)] = carried
        assert request() is None, "the upgrade request is kept"
        assert channel() is None, "its channel is kept (still the transport's producer?)"
    finally:
        if enabled:
            gc.enable()


@ensure
async def test_a_handshake_refused_later_is_answered_and_logged_alike(daemon, reactor):
    """In cluster mode onConnect waits for the store; Autobahn refuses a bad
    extension parameter only after that, once the site's render is over."""
    sid = await daemon.new_session(make_schema())
    waited = []

    def lookup(session_id):
        waited.append(session_id)
        return task.deferLater(reactor, 0.05, lambda: None)

    daemon.server.ws_factory.lookup = lookup
    daemon.port.factory.wrappedFactory.logFile = access = io.StringIO()
    response, closed = await exchange(daemon, f"/ws?session={sid}", MALFORMED["bad extension parameter"])
    assert waited == [sid] and closed
    assert "extension" in assert_json_answer(response, 400)["error"]
    assert f'"GET /ws?session={sid[:6]}... HTTP/1.1" 400 {len(response.body)} ' in access.getvalue()


@ensure
async def test_a_failure_while_deciding_an_upgrade_is_500_internal_error(daemon, monkeypatch):
    def broken(*args):
        raise ZeroDivisionError("secret detail")

    monkeypatch.setattr(daemon.server.ws_factory.policy, "check_browser", broken)
    daemon.port.factory.wrappedFactory.logFile = access = io.StringIO()
    response, closed = await exchange(daemon, "/ws?session=abc", UPGRADE)
    assert closed and response.status == 500, response.raw
    assert response.headers["content-length"] == str(len(response.body))
    assert response.json()["code"] == "INTERNAL_ERROR"
    assert "secret detail" not in response.json()["error"]
    assert '"GET /ws?session=abc... HTTP/1.1" 500 ' in access.getvalue()


def test_autobahn_s_own_version_refusal_would_be_a_426_naming_13():
    """The site answers every version but 13 before Autobahn reads it; were
    Autobahn to refuse one, its answer would be the same."""
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from lumora_reload.access import AccessPolicy
    from lumora_reload.websocket import DeviceFactory

    factory = DeviceFactory(hub=None, policy=AccessPolicy(), reactor=MemoryReactorClock())
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.transport.unregisterProducer = lambda: None  # Autobahn unregisters on a drop
    protocol.failHandshake("WebSocket version 8 not supported (supported versions: 13,8)", 400,
                           [("Sec-WebSocket-Version", "13,8")])
    response = Response(protocol.transport.value())
    assert_json_answer(response, 426)
    assert response.headers["sec-websocket-version"] == "13" and response.headers["upgrade"] == "websocket"
    assert response.json()["error"] == "WebSocket version 8 not supported (supported versions: 13,8)"
