"""A hostile network against a real daemon on loopback: routing and
methods, access decided from the request head, the tunnel rule, number
ranges, JSON answers everywhere, rate limits, liveness, secrets in logs
and the memory bounds."""

import io
import json
import socket
import time

import orjson
import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import endpoints, task, threads
from twisted.logger import formatEvent, globalLogPublisher

from lumora_reload import errors
from lumora_reload.access import AccessPolicy
from lumora_reload.connection import RateGuard, Verdict
from tests.helpers import WAIT, DeviceClient, connected_device, make_schema, open_device_as, with_text
from tests.rawhttp import exchange, request_head

ensure = pytest_twisted.ensureDeferred

DOCUMENTED_CODES = {
    errors.BAD_REQUEST, errors.FORBIDDEN, errors.NOT_FOUND, errors.PAYLOAD_TOO_LARGE, *errors.PROTOCOL_CODES,
}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def call_full(daemon, method, path, headers=None, data=None):
    response = await treq.request(method, daemon.url + path, headers=headers or {}, data=data, persistent=False)
    raw = await treq.content(response)
    return response.code, response.headers, raw


def _answers(path_methods, sid, cid):
    return {path.replace(":id", sid).replace(":cid", cid): methods for path, methods in path_methods}


DOCUMENTED = [
    ("/health", ["GET", "HEAD"]),
    ("/stats", ["GET", "HEAD"]),
    ("/session/new", ["POST"]),
    ("/session/:id", ["DELETE", "GET", "HEAD"]),
    ("/session/:id/schema", ["GET", "HEAD"]),
    ("/send/:id", ["POST"]),
    ("/session/:id/reload", ["POST"]),
    ("/session/:id/health", ["GET", "HEAD"]),
    ("/session/:id/extend", ["POST"]),
    ("/session/:id/logs", ["GET", "HEAD"]),
    ("/session/:id/devices", ["GET", "HEAD"]),
    ("/session/:id/devices/:cid", ["DELETE"]),
]


# -- routing ---------------------------------------------------------------


@ensure
async def test_every_path_answers_only_its_own_methods_and_loses_nothing(daemon):
    sid = await daemon.new_session(make_schema())
    device, info = await connected_device(daemon, sid)
    for path, allowed in _answers(DOCUMENTED, sid, info["connectionId"]).items():
        for method in METHODS:
            if method in allowed:
                continue
            for body in (None, b"{}"):  # decided at the head (body) or at render (none)
                headers = {"Content-Type": ["application/json"]} if body else {}
                status, response_headers, raw = await call_full(daemon, method, path, headers, body)
                assert status == 405, (method, path, status, raw)
                assert response_headers.getRawHeaders("allow") == [", ".join(allowed)], (method, path)
                if method != "HEAD":
                    assert orjson.loads(raw)["code"] == errors.BAD_REQUEST
    # nothing was deleted, nobody was disconnected
    status, body = await daemon.call("GET", f"/session/{sid}")
    assert status == 200 and body["connectedDevices"] == 1
    assert not device.closed.called


@ensure
async def test_get_on_a_sub_resource_does_not_answer_the_session(daemon):
    sid = await daemon.new_session()
    status, body = await daemon.call("GET", f"/session/{sid}/extend")
    assert status == 405 and body["code"] == "BAD_REQUEST"


@ensure
async def test_extra_path_segments_are_404_json(daemon):
    sid = await daemon.new_session()
    for path in ["/health/x", "/stats/x", f"/session/{sid}/extend/x", f"/session/{sid}/logs/a/b", "/nope", "/x/y"]:
        status, body = await daemon.call("GET", path)
        assert (status, body["code"]) == (404, "NOT_FOUND"), path


@ensure
async def test_the_websocket_path_answers_plain_http_in_json(daemon_factory):
    daemon = await daemon_factory(ws_path="/lumora/ws")
    status, body = await daemon.call("GET", "/lumora/ws")
    assert status == 426 and body["code"] == "BAD_REQUEST"
    status, body = await daemon.call("GET", "/lumora")
    assert (status, body["code"]) == (404, "NOT_FOUND")
    status, body = await daemon.call("POST", "/lumora/ws")
    assert status == 405
    # HEAD wherever GET: the plain GET's answer without its body, with its status line
    head = request_head("HEAD", "/lumora/ws", [("Connection", "close")])
    response, _, _ = await exchange(daemon.port.getHost().port, head)
    assert response.raw.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert response.headers["upgrade"] == "websocket"
    head = request_head("DELETE", "/lumora/ws", [("Connection", "close")])
    response, _, _ = await exchange(daemon.port.getHost().port, head)
    assert response.status == 405 and response.headers["allow"] == "GET, HEAD"


# -- the tunnel --------------------------------------------------------------

TUNNEL = "abc.ngrok-free.app"


@ensure
async def test_public_url_host_is_remote_and_needs_a_token(daemon_factory):
    daemon = await daemon_factory(public_url=f"https://{TUNNEL}")
    sid = await daemon.new_session()
    for method, path in [("GET", "/stats"), ("POST", f"/send/{sid}"), ("DELETE", f"/session/{sid}"),
                         ("GET", f"/session/{sid}")]:
        status, body = await daemon.call(method, path, headers={"Host": TUNNEL})
        assert status == 403 and body["code"] == "FORBIDDEN", (method, path)
        assert "--api-token" in body["error"]
    # /health stays open; the session is untouched
    assert (await daemon.call("GET", "/health", headers={"Host": TUNNEL}))[0] == 200
    assert (await daemon.call("GET", f"/session/{sid}"))[0] == 200


@ensure
async def test_public_url_host_with_a_token(daemon_factory):
    daemon = await daemon_factory(public_url=f"https://{TUNNEL}", api_token="s3cret-token")
    status, body = await daemon.call("GET", "/stats", headers={"Host": TUNNEL})
    assert status == 403 and "s3cret-token" not in body["error"]
    status, body = await daemon.call("GET", "/stats", headers={"Host": TUNNEL, "Authorization": "Bearer s3cret-token"})
    assert status == 200


@ensure
async def test_devices_connect_through_the_public_url_host(daemon_factory, reactor):
    daemon = await daemon_factory(public_url=f"https://{TUNNEL}")
    sid = await daemon.new_session(make_schema())
    port = daemon.port.getHost().port
    factory = WebSocketClientFactory(f"ws://{TUNNEL}:{port}/ws?session={sid}", reactor=reactor)
    factory.protocol = DeviceClient
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=WAIT)
    device = await endpoint.connect(factory)
    device.session_id = sid
    await device.opened.addTimeout(WAIT, reactor)
    info = await device.hello()
    assert info["initialSchema"] == make_schema()


# -- access from the head ----------------------------------------------------


@ensure
async def test_content_length_over_the_limit_is_refused_before_the_body(daemon_factory):
    daemon = await daemon_factory(max_body_size=1000)
    sid = await daemon.new_session()
    head = request_head("POST", f"/send/{sid}", [("Content-Type", "application/json"),
                                                  ("Content-Length", "200000000")])
    # no body is sent at all: the answer must come from the head
    response, _, _ = await exchange(daemon.port.getHost().port, head)
    assert response.status == 413 and response.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert response.headers.get("connection") == "close"


@ensure
async def test_expect_continue_over_the_limit_gets_413_not_100(daemon_factory):
    daemon = await daemon_factory(max_body_size=1000)
    head = request_head("POST", "/session/new", [("Content-Type", "application/json"),
                                                ("Content-Length", "5000"), ("Expect", "100-continue")])
    response, _, _ = await exchange(daemon.port.getHost().port, head)
    assert response.status == 413


@ensure
async def test_chunked_body_with_a_refused_host_is_refused_before_the_body(daemon):
    head = request_head("POST", "/session/new", [("Content-Type", "application/json"),
                                                ("Transfer-Encoding", "chunked")], host="evil.example")
    response, _, _ = await exchange(daemon.port.getHost().port, head)
    assert response.status == 403 and response.json()["code"] == "FORBIDDEN"


@ensure
async def test_chunked_body_is_cut_at_the_limit(daemon_factory):
    daemon = await daemon_factory(max_body_size=1000)
    sid = await daemon.new_session()
    head = request_head("POST", f"/send/{sid}", [("Content-Type", "application/json"),
                                                 ("Transfer-Encoding", "chunked")])
    chunk = b"258\r\n" + b" " * 600 + b"\r\n"
    response, sent, _ = await exchange(daemon.port.getHost().port, head, [chunk, chunk])
    assert response.status == 413 and response.json()["code"] == "PAYLOAD_TOO_LARGE"


@ensure
async def test_an_empty_chunked_body_is_no_body_whatever_its_content_type(daemon):
    """The head of a chunked request cannot tell whether its body is empty:
    an empty one is taken as `Content-Length: 0` is, a body without the JSON
    type is refused at its first byte."""
    port = daemon.port.getHost().port
    answers = {}
    for framing, chunks in (("length", []), ("chunked", [b"0\r\n\r\n"])):
        headers = [("Content-Length", "0")] if framing == "length" else [("Transfer-Encoding", "chunked")]
        response, _, _ = await exchange(port, request_head("POST", "/session/new", headers), chunks)
        answers[framing] = response.status
    assert answers == {"length": 200, "chunked": 200}
    head = request_head("POST", "/session/new", [("Transfer-Encoding", "chunked")])
    response, _, _ = await exchange(port, head, [b"2\r\n{}\r\n", b"0\r\n\r\n"])
    assert response.status == 415 and response.json()["code"] == "BAD_REQUEST"
    # a client that asks before sending means to send a body: refused at once, not asked for it
    head = request_head("POST", "/session/new", [("Transfer-Encoding", "chunked"), ("Expect", "100-continue")])
    response, _, _ = await exchange(port, head)
    assert response.status == 415 and not response.raw.startswith(b"HTTP/1.1 100")
    assert len(daemon.server.hub.sessions) == 2


@ensure
async def test_form_bodies_are_refused_in_json(daemon):
    body = b"--xx\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--broken"
    for content_type in ["multipart/form-data; boundary=xx", "application/x-www-form-urlencoded", "text/plain"]:
        status, _, raw = await call_full(daemon, "POST", "/session/new", {"Content-Type": [content_type]}, body)
        assert status == 415 and orjson.loads(raw)["code"] == "BAD_REQUEST", content_type


@ensure
async def test_json_bodies_skip_twisted_webs_form_parsing(daemon, monkeypatch):
    """A POST's Content-Type is not read again by twisted.web's form parser (the email package, per request)."""
    from twisted.web import http

    def no_form_parsing(ctype):
        raise AssertionError("twisted.web parsed the Content-Type of a JSON body")

    monkeypatch.setattr(http, "_parseContentType", no_form_parsing)
    sid = await daemon.new_session()
    result = await daemon.push(sid, make_schema())
    assert result["sequenceNumber"] == 1


@ensure
async def test_bodies_within_the_limit_stay_in_memory(daemon, monkeypatch):
    from twisted.web import http

    def no_temp_files(length):
        raise AssertionError("a request body went to a temporary file")

    monkeypatch.setattr(http, "_getContentFile", no_temp_files)
    schema = make_schema(padding="x" * 300_000)  # above twisted.web's in-memory threshold
    sid = await daemon.new_session()
    result = await daemon.push(sid, schema)
    assert result["sequenceNumber"] == 1


@ensure
async def test_malformed_requests_get_json_400(daemon):
    port = daemon.port.getHost().port
    for head in [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
                 b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"]:
        response, _, _ = await exchange(port, head)
        assert response.status == 400 and response.json()["code"] == "BAD_REQUEST", head


@ensure
async def test_options_star_is_json(daemon):
    response, _, _ = await exchange(daemon.port.getHost().port, b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert response.json()["code"] == "NOT_FOUND"
    await _http_channels_closed()


async def _http_channels_closed(limit=5.0):
    """The raw client has closed its socket; wait until the daemon has seen
    it (its HTTP channel's idle timer is cancelled then), so the test does
    not end with that timer pending."""
    from twisted.internet import reactor
    from twisted.web import http

    def open_channels():
        return [c for c in reactor.getDelayedCalls()
                if isinstance(getattr(c.func, "__self__", None), http.HTTPChannel)]

    deadline = time.monotonic() + limit
    while open_channels() and time.monotonic() < deadline:
        await task.deferLater(reactor, 0.01, lambda: None)


# -- numbers -----------------------------------------------------------------


@ensure
async def test_huge_timeouts_are_400_and_create_nothing(daemon):
    for value in [1e17, 30 * 86400 + 1, 0, -5, "60", True]:
        status, body = await daemon.call("POST", "/session/new", {"timeoutSeconds": value})
        assert status == 400 and body["code"] == "BAD_REQUEST", value
        assert body["path"] == "timeoutSeconds"
    status, stats = await daemon.call("GET", "/stats")
    assert status == 200 and stats["sessions"] == 0
    assert (await daemon.call("POST", "/session/new", {"timeoutSeconds": 30 * 86400}))[0] == 200


@ensure
async def test_huge_extend_is_400_and_the_session_still_answers(daemon):
    sid = await daemon.new_session()
    for value in [1e17, 1e20, 1e308]:
        status, body = await daemon.call("POST", f"/session/{sid}/extend", {"seconds": value})
        assert status == 400 and body["path"] == "seconds", value
    assert (await daemon.call("GET", f"/session/{sid}"))[0] == 200
    assert (await daemon.call("GET", "/stats"))[0] == 200


@ensure
async def test_acks_outside_the_session_sequence_are_invalid(daemon):
    sid = await daemon.new_session(make_schema())
    device, _ = await connected_device(daemon, sid)
    for sequence in [10**30, 1_000_000, 2, -1, 1.5]:
        device.sendMessage(json.dumps({"type": "ack", "sessionId": sid,
                                       "payload": {"sequenceNumber": sequence, "success": True}}).encode())
        error = await device.next_of("error")
        assert error["payload"]["code"] == "INVALID_MESSAGE", sequence
    device.send("ack", {"sequenceNumber": 1, "success": True})
    device.send("ping", {})
    await device.next_of("pong")
    status, info = await daemon.call("GET", f"/session/{sid}")
    assert status == 200 and info["devices"][0]["lastAckSequence"] == 1
    status, health = await daemon.call("GET", f"/session/{sid}/health")
    assert status == 200 and health["devices"][0]["lastAckSequence"] == 1
    assert (await daemon.call("GET", "/health"))[0] == 200


@ensure
async def test_bad_query_flag_is_400(daemon):
    sid = await daemon.new_session()
    status, body = await daemon.call("POST", f"/send/{sid}?preserveState=%FF", make_schema())
    assert status == 400 and body["code"] == "BAD_REQUEST"
    await daemon.push(sid, make_schema(), query="?preserveState=false")


# -- unexpected failures -------------------------------------------------------


@ensure
async def test_unexpected_exceptions_are_500_internal_error_and_logged(daemon, logged_failures):
    logged_failures.expect(ZeroDivisionError)

    def broken():
        return 1 / 0

    daemon.server.get_stats = broken
    status, body = await daemon.call("GET", "/stats")
    assert (status, body["code"]) == (500, "INTERNAL_ERROR")
    assert "division" not in body["error"]
    assert any(e["log_failure"].check(ZeroDivisionError) for e in logged_failures.events)


@ensure
async def test_exceptions_while_routing_are_500_json(daemon, logged_failures, monkeypatch):
    from lumora_reload import api

    logged_failures.expect(ZeroDivisionError)
    monkeypatch.setattr(api.Sessions, "getChild", lambda self, path, request: 1 / 0)
    status, body = await daemon.call("GET", "/session/abc")
    assert (status, body["code"]) == (500, "INTERNAL_ERROR")
    # a request with a body is routed from its head, before the body is read
    head = request_head("POST", "/session/abc/extend", [("Content-Type", "application/json"),
                                                         ("Content-Length", "2"), ("Connection", "close")])
    response, _, _ = await exchange(daemon.port.getHost().port, head + b"{}")
    assert response.status == 500 and response.json() == {
        "error": body["error"], "code": "INTERNAL_ERROR"}


@ensure
async def test_an_answer_cut_by_a_failure_still_gets_its_access_log_line(daemon, logged_failures, monkeypatch):
    """A handler that fails after it started writing cannot be answered with a 500: its connection
    is closed, the answer left incomplete, and the access log still shows the request."""
    from lumora_reload import api, web

    logged_failures.expect(ZeroDivisionError)
    logged = []
    monkeypatch.setattr(web.Site, "log", lambda site, request: logged.append((request.uri, request.code)))

    def write_then_fail(self, request):
        request.write(b'{"status":')
        return 1 / 0

    monkeypatch.setattr(api.Health, "render", write_then_fail)
    response, _, _ = await exchange(daemon.port.getHost().port, request_head("GET", "/health"))
    assert response.status == 200 and response.body == b'{"status":'
    assert logged == [(b"/health", 200)]
    status, _ = await daemon.call("GET", "/stats")  # the daemon serves on
    assert status == 200 and logged[-1] == (b"/stats", 200)


@pytest.mark.parametrize("head", [
    b"GET /health?" + b"q" * 20000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + b"c" * 17000 + b"\r\n\r\n",
], ids=["long-request-line", "long-header-line"])
@ensure
async def test_a_line_over_the_16_kib_limit_gets_a_json_400(daemon, head):
    response, _, _ = await exchange(daemon.port.getHost().port, head)
    assert response.status == 400 and response.json()["code"] == "BAD_REQUEST"
    assert (await daemon.call("GET", "/health"))[0] == 200  # and the daemon keeps answering


def _raw_request(method, path, headers, body):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *[f"{k}: {v}" for k, v in headers], "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_JSON_BODY = [("Content-Type", "application/json"), ("Content-Length", "2")]


@pytest.mark.parametrize("method, path, headers, body", [
    ("POST", "/ws", _JSON_BODY, b"{}"),
    ("OPTIONS", "*", _JSON_BODY, b"{}"),
    ("POST", "/preview", [("Content-Type", "text/plain"), ("Content-Length", "2")], b"hi"),
    ("POST", "/", [("Content-Type", "text/plain"), ("Content-Length", "2")], b"hi"),
    ("POST", "/session", _JSON_BODY, b"{}"),
    ("DELETE", "/send", _JSON_BODY, b"{}"),
    ("PUT", "/health", _JSON_BODY, b"{}"),
    ("POST", "/session/new", [("Content-Type", "text/plain"), ("Content-Length", "2")], b"{}"),
])
@ensure
async def test_an_answer_from_the_head_is_the_answer_after_the_body(daemon, monkeypatch, method, path, headers,
                                                                    body):
    """A request with a body is answered from its head when the head
    settles it; the same request answered after its body is read (the
    early path switched off) gets the same status, code and Allow."""
    from lumora_reload import web

    port = daemon.port.getHost().port
    request = _raw_request(method, path, headers, body)
    early, _, _ = await exchange(port, request)
    monkeypatch.setattr(web.Request, "_head_answer", lambda self, length: None)
    normal, _, _ = await exchange(port, request)
    assert early.status == normal.status and early.headers.get("allow") == normal.headers.get("allow")
    assert early.headers["server"] == normal.headers["server"] and "date" in early.headers
    if normal.headers.get("content-type", "").startswith("application/json"):
        assert early.json()["code"] == normal.json()["code"]


@pytest.mark.parametrize("method, path", [("GET", "/session"), ("POST", "/send"), ("DELETE", "/session")])
@ensure
async def test_a_parent_of_routes_is_no_route(daemon, method, path):
    status, body = await daemon.call(method, path)
    assert (status, body["code"]) == (404, "NOT_FOUND")


# -- Origin and Host refusals ---------------------------------------------------


@ensure
async def test_origin_null_upgrade_is_closed_4403(daemon):
    sid = await daemon.new_session()
    device = await daemon.device(sid, headers={"Origin": "null"})
    assert await device.wait_closed() == (4403, "Origin not allowed")


def test_refusals_only_suggest_options_the_parser_takes():
    from lumora_reload.tap import Options

    policy = AccessPolicy()
    for host, origin in [(None, None), ("127.0.0.1", "null"), ("bad host!", None), ("127.0.0.1", "file://")]:
        why = policy.check_browser(host, origin, "127.0.0.1")
        assert why is not None
        assert "(none)" not in why and "--allowed-origin null" not in why
        if "--allowed" in why:  # any suggested option must parse
            option = why.split("start the daemon with ")[1].split(" to ")[0].split(" if ")[0].split()
            Options().parseOptions(option)


# -- rate limits ------------------------------------------------------------------


def test_rate_guard_closes_a_steady_flood(clock):
    guard = RateGuard(rate=10, burst=100, clock=clock)
    verdicts = []
    for _ in range(300):  # 8x the rate for 3 seconds
        for _ in range(8):
            verdicts.append(guard.admit("ping"))
        clock.advance(0.1)
        if Verdict.CLOSE in verdicts:
            break
    assert Verdict.PASS in verdicts[-50:]  # messages kept getting through...
    assert verdicts[-1] == Verdict.CLOSE  # ...and the flood was closed anyway
    assert clock.seconds() <= 1.5 + 10  # burst drained in 10 s worst case, then one second


def test_rate_guard_episode_ends_after_a_quiet_second(clock):
    guard = RateGuard(rate=1, burst=3, clock=clock)
    for _ in range(3):
        assert guard.admit("ping") == Verdict.PASS
    assert guard.admit("ping") == Verdict.WARN
    assert guard.admit("ping") == Verdict.DROP
    clock.advance(2.5)  # refilled and quiet for longer than a second
    assert guard.admit("ping") == Verdict.PASS
    assert guard.admit("ping") == Verdict.PASS
    assert guard.admit("ping") == Verdict.WARN  # a new episode


def test_rate_guard_acks_have_their_own_budget(clock):
    guard = RateGuard(rate=1, burst=2, clock=clock)
    assert [guard.admit("ack") for _ in range(20)] == [Verdict.PASS] * 20
    assert guard.admit("ping") == Verdict.PASS


@ensure
async def test_acks_written_with_spaces_get_the_ack_budget(daemon_factory):
    daemon = await daemon_factory(rate_limit=5, rate_burst=5)
    sid = await daemon.new_session(make_schema())
    device, _ = await connected_device(daemon, sid)
    for _ in range(30):  # Python's json.dumps puts a space after each colon
        device.sendMessage(json.dumps({"type": "ack", "sessionId": sid,
                                       "payload": {"sequenceNumber": 1, "success": True}}).encode())
    device.send("ping", {})
    message = await device.next()
    assert message["type"] == "pong", message


@ensure
async def test_a_ping_that_mentions_ack_gets_the_message_budget(daemon_factory):
    daemon = await daemon_factory(rate_limit=5, rate_burst=5)
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    for _ in range(12):
        device.send("ping", {"status": {"type": "ack"}})
    kinds = []
    while "error" not in kinds:
        message = await device.next()
        kinds.append(message["type"])
        if message["type"] == "error":
            assert message["payload"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert kinds.count("pong") == 4  # a burst of 5, less the connect


@ensure
async def test_a_steady_flood_is_closed_4429(daemon_factory, reactor):
    daemon = await daemon_factory(rate_limit=20, rate_burst=20)
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)

    def flood():
        for _ in range(8):  # 8 per 50 ms: 8x the rate, so some always get through
            if device.state == device.STATE_OPEN:
                device.send("ping", {})

    loop = task.LoopingCall(flood)
    loop.clock = reactor
    loop.start(0.05)
    try:
        code, _ = await device.wait_closed(timeout=6)
    finally:
        loop.stop()
    assert code == 4429
    assert any(m["type"] == "pong" for m in device.received[1:])


# -- liveness ----------------------------------------------------------------------


class DeafDevice(DeviceClient):
    """Never answers a WebSocket ping."""

    def onPing(self, payload):
        pass


@ensure
async def test_a_missed_ping_does_not_drop_a_device_before_the_connection_timeout(daemon_factory, reactor):
    daemon = await daemon_factory(heartbeat_interval=0.1, connection_timeout=1.0)
    sid = await daemon.new_session()
    device = await open_device_as(DeafDevice, reactor, f"{daemon.ws}?session={sid}")
    await device.hello()
    started = time.monotonic()
    code, reason = await device.wait_closed()
    assert time.monotonic() - started >= 0.9  # ten ping intervals at least
    assert (code, reason) == (1000, "Connection timeout")


def test_pings_every_heartbeat_and_only_the_sweep_drops(reactor):
    """Pings follow --heartbeat-interval; Autobahn's own ping and ping timeout stay off."""
    from lumora_reload.server import HotReloadServer

    server = HotReloadServer(reactor=reactor, heartbeat_interval=5, connection_timeout=42)
    assert server.ws_factory.pings.interval == 5
    assert (server.ws_factory.autoPingInterval, server.ws_factory.autoPingTimeout) == (0, 0)


# -- secrets in logs ---------------------------------------------------------------------


@ensure
async def test_full_session_ids_and_tokens_never_reach_a_log(daemon_factory):
    token = "tok-" + "z" * 20
    daemon = await daemon_factory(api_token=token, verbose=True)
    access = io.StringIO()
    daemon.port.factory.wrappedFactory.logFile = access
    lines = []

    def observe(event):
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    try:
        sid = await daemon.new_session(make_schema())
        device, _ = await connected_device(daemon, sid, deviceName="Pixel")
        device.send("log", {"level": "info", "message": "hello"})
        await daemon.push(sid, with_text(make_schema(), "v2"))
        await daemon.call("GET", f"/session/{sid}/logs")
        await daemon.call("GET", "/stats", headers={"Authorization": "Bearer wrong", "Host": "evil.example"})
        await daemon.call("GET", "/stats", headers={"Authorization": f"Bearer {token}"})
        await daemon.call("DELETE", f"/session/{sid}")
        await device.wait_closed()
    finally:
        globalLogPublisher.removeObserver(observe)
    access_log = access.getvalue()
    assert f"/send/{sid[:6]}..." in access_log and "/stats" in access_log
    everything = access_log + "\n".join(lines)
    assert sid not in everything
    assert token not in everything


@pytest.mark.parametrize("path", ["/session/{sid}", "/?token={token}", "/ws?session={sid}", "/preview/{sid}"])
@ensure
async def test_a_head_request_logs_no_id_or_token(daemon_factory, path):
    """twisted.web's own warning for a HEAD answer with a body shows the
    request's URI; every answer here has a body."""
    token = "tok-" + "z" * 20
    daemon = await daemon_factory(api_token=token)
    sid = await daemon.new_session(make_schema())
    daemon.port.factory.wrappedFactory.logFile = io.StringIO()
    lines = []

    def observe(event):
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    try:
        uri = path.format(sid=sid, token=token)
        head, _, _ = await exchange(daemon.port.getHost().port, request_head("HEAD", uri, [("Connection", "close")]))
        get, _, _ = await exchange(daemon.port.getHost().port, request_head("GET", uri, [("Connection", "close")]))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert head.status == get.status and head.status in (200, 426)
    assert head.body == b"" and head.headers["content-length"] == get.headers["content-length"] == str(len(get.body))
    everything = "\n".join(lines)
    assert sid not in everything and token not in everything


def test_access_log_redacts_every_place_an_id_goes():
    from lumora_reload.accesslog import redact_uri

    sid = "c3aea446a76e2c18a9e40c315dc94f7b"
    for uri in [f"/send/{sid}", f"/session/{sid}/schema", f"/ws?session={sid}&x=1", f"/session/{sid}",
                # spelled as twisted.web still reads them
                f"/%73ession/{sid}", f"/s%65nd/{sid}", f"/ws?x=1;session={sid}", f"/ws?%73ession={sid}",
                f"/ws?x=1&%73ess%69on={sid};y=2"]:
        assert sid not in redact_uri(uri.encode()), uri
    for uri in ["/?a=1;token=s3cret", "/?%74oken=s3cret", "/?tok%65n=s3cret&x=1"]:
        assert "s3cret" not in redact_uri(uri.encode()), uri
    assert redact_uri(b"/session/new") == "/session/new"
    assert redact_uri(b"/ws?a=1;b=2&c=3") == "/ws?a=1;b=2&c=3"  # the rest as it came
    # the routes are at the top: a nested --ws-path keeps its name
    assert redact_uri(f"/dev/session/ws?session={sid}".encode()) == f"/dev/session/ws?session={sid[:6]}..."


async def _code_of_get(daemon, path, headers=None):
    response = await treq.get(daemon.url + path, headers=headers or {}, persistent=False)
    await treq.content(response)
    return response.code


@pytest.mark.parametrize("query", ["?a=1;token=", "?%74oken="])
@ensure
async def test_a_token_the_daemon_accepts_however_spelled_is_not_logged(daemon_factory, query):
    token = "tok-" + "z" * 24
    daemon = await daemon_factory(api_token=token)
    access = io.StringIO()
    daemon.port.factory.wrappedFactory.logFile = access
    # from a foreign Host only the token lets the page through: it was read
    assert await _code_of_get(daemon, "/" + query + token, {"Host": "evil.example"}) == 200
    assert await _code_of_get(daemon, "/", {"Host": "evil.example"}) == 403
    assert token not in access.getvalue() and "..." in access.getvalue()


@ensure
async def test_a_session_id_in_a_path_spelled_with_escapes_is_not_logged(daemon):
    sid = await daemon.new_session(make_schema())
    access = io.StringIO()
    daemon.port.factory.wrappedFactory.logFile = access
    assert await _code_of_get(daemon, f"/%73ession/{sid}") == 200  # served as /session/:id
    assert sid not in access.getvalue() and sid[:6] in access.getvalue()


# -- memory bounds --------------------------------------------------------------------------


@ensure
async def test_connections_per_address_are_bounded(daemon_factory):
    from tests.rawhttp import exchange_blocking

    daemon = await daemon_factory(max_connections_per_address=3)
    port = daemon.port.getHost().port
    held = [await daemon.device(await daemon.new_session()) for _ in range(3)]
    response, _, _ = await exchange(port, request_head("GET", "/health"))
    assert response.raw == b""  # closed at once, unanswered
    refused = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        assert await threads.deferToThread(refused.recv, 100) == b""  # a clean close, not a reset
    finally:
        refused.close()
    held[0].sendClose()
    await held[0].wait_closed()
    response = None
    for _ in range(50):  # the slot frees once the server saw the close
        response, _, _ = await exchange(port, request_head("GET", "/health"))
        if response.status:
            break
    assert response.status == 200
    assert exchange_blocking  # the blocking form exists for the memory test


class PartialSender(DeviceClient):
    def start_partial(self, declared, sent):
        self.beginMessage()
        self.beginMessageFrame(declared)
        self.sendMessageFrameData(b" " * sent)


@ensure
async def test_partial_messages_share_one_bounded_total(daemon_factory, reactor):
    daemon = await daemon_factory(max_pending_bytes=1_000_000)
    sid = await daemon.new_session(make_schema())
    bystander, _ = await connected_device(daemon, sid, device_id="bystander")
    first = await open_device_as(PartialSender, reactor, f"{daemon.ws}?session={sid}")
    second = await open_device_as(PartialSender, reactor, f"{daemon.ws}?session={sid}")
    first.start_partial(2_000_000, 600_000)
    await _until(lambda: daemon.server.ws_factory.pending_bytes >= 600_000, reactor)
    second.start_partial(2_000_000, 600_000)
    assert await second.wait_closed() == (1013, "Server busy; try again later")
    first.sendClose()  # mid-message: its bytes are released with it
    await first.wait_closed()
    await _until(lambda: daemon.server.ws_factory.pending_bytes == 0, reactor)
    await daemon.push(sid, with_text(make_schema(), "still here"))
    assert (await bystander.next_of("update"))["payload"]["sequenceNumber"] == 2


async def _until(condition, reactor, timeout=WAIT):
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "condition never held"
        await task.deferLater(reactor, 0.01, lambda: None)


@ensure
async def test_log_bytes_per_session_are_bounded(daemon_factory):
    daemon = await daemon_factory(max_log_bytes=10_000, rate_limit=1000, rate_burst=1000)
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    for i in range(50):
        device.send("log", {"level": "info", "message": f"{i:04d}" + "é" * 500})
    device.send("ping", {})
    await device.next_of("pong")
    _, body = await daemon.call("GET", f"/session/{sid}/logs")
    kept = body["lines"]
    assert sum(len(line["message"].encode()) for line in kept) <= 10_000
    assert kept[-1]["message"].startswith("0049") and len(kept) < 50


@ensure
async def test_device_names_are_bounded(daemon):
    sid = await daemon.new_session()
    device = await daemon.device(sid)
    for field in ["deviceId", "deviceName", "platform"]:
        payload = {"deviceId": "d", "platform": "ios", "clientVersion": "1.1.0", field: "x" * 257}
        device.send("connect", payload)
        error = await device.next_of("error")
        assert error["payload"]["code"] == "INVALID_MESSAGE" and field in error["payload"]["message"]
    info = await device.hello(deviceName="n" * 256)
    assert info["connectionId"]


@pytest.mark.parametrize("path", ["/session", "/send/ws", "/health/ws", "/stats"])
def test_ws_path_that_hides_the_api_is_refused_at_start(path, capsys):
    from lumora_reload.tap import Options

    with pytest.raises(SystemExit):
        Options().parseOptions(["--ws-path", path])
    err = capsys.readouterr().err
    assert "--ws-path" in err and len(err.strip().splitlines()) == 1


def test_embedding_with_a_colliding_ws_path_fails_loudly(reactor):
    from lumora_reload.server import HotReloadServer

    with pytest.raises(ValueError) as e:
        HotReloadServer(reactor=reactor, ws_path="/session/ws")
    assert "--ws-path" in str(e.value)
