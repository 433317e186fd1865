"""Fuzz a live daemon with raw HTTP requests and raw WebSocket frames.

Every HTTP answer must be JSON (an error body with a documented code), no
5xx, and afterwards the daemon still serves and a bystander device still
receives updates. Hypothesis runs in a thread with blocking sockets while
the daemon serves on the reactor. `--run-slow` (or HYPOTHESIS_PROFILE=slow)
runs larger budgets.
"""

import json
import os
import socket

import orjson
import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import threads

from lumora_reload import errors
from tests.helpers import connected_device, make_schema, with_text
from tests.rawhttp import exchange_blocking, frame, ws_handshake

ensure = pytest_twisted.ensureDeferred

CODES = {errors.BAD_REQUEST, errors.FORBIDDEN, errors.NOT_FOUND, errors.PAYLOAD_TOO_LARGE, *errors.PROTOCOL_CODES}
MAX_BODY = 4096
ANSWER_WITHIN = 2.0  # seconds; a request left unanswered fails the example


def _examples():
    return 1000 if os.environ.get("LUMORA_SLOW") or os.environ.get("HYPOTHESIS_PROFILE") == "slow" else 100


def requests(sid):
    segment = st.one_of(st.sampled_from([sid, "new", "x", "", "%FF", "..", "%2e%2e", "a" * 300]),
                        st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?#/ "),
                                max_size=12))
    path = st.one_of(
        st.sampled_from(["/health", "/stats", "/session/new", f"/session/{sid}", f"/send/{sid}", "/ws", "/", "*",
                         f"/session/{sid}/schema", f"/session/{sid}/extend", f"/session/{sid}/devices/c_1"]),
        st.lists(segment, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts)),
    )
    query = st.sampled_from(["", "?preserveState=false", "?preserveState=%FF", "?session=" + sid, "?a&&b==", "?%"])
    method = st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]),
                       st.text(st.characters(min_codepoint=65, max_codepoint=90), min_size=1, max_size=8))
    header = st.one_of(
        st.sampled_from([
            ("Host", "evil.example"), ("Host", "localhost"), ("Origin", "null"), ("Origin", "http://evil.example"),
            ("Origin", "http://localhost:3000"), ("Authorization", "Bearer nope"), ("Expect", "100-continue"),
            ("Content-Type", "application/json"), ("Content-Type", "multipart/form-data; boundary=b"),
            ("Content-Type", "application/x-www-form-urlencoded"), ("Connection", "close"),
            ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA=="),
            ("Cookie", "a=b; c"), ("Host", "[::1"), ("Origin", "http://["),
        ]),
        st.tuples(st.text(st.characters(min_codepoint=65, max_codepoint=122), min_size=1, max_size=10),
                  st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)),
    )
    body = st.one_of(
        st.just(b""),
        st.binary(max_size=200),
        st.sampled_from([
            json.dumps(make_schema()).encode(), b'{"timeoutSeconds": 1e17}', b'{"seconds": 1e308}',
            b'{"schema": {"version": "1", "nodes": [' + b"1" * 40 + b"]}}", b"[" * 5000, b'"\\ud800"',
            b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b", b"x" * (MAX_BODY + 10),
        ]),
    )
    framing = st.sampled_from(["length", "none", "chunked", "too-long-length", "bad-length"])
    return st.tuples(method, path, query, st.lists(header, max_size=5), body, framing, st.integers(1, 50))


def build(method, path, query, headers, body, framing, chunk):
    lines = [f"{method} {path}{query} HTTP/1.1"]
    names = {name.lower() for name, _ in headers}
    if "host" not in names:
        lines.append("Host: 127.0.0.1")
    lines += [f"{name}: {value}" for name, value in headers]
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
    elif framing == "too-long-length":
        lines.append("Content-Length: 200000000")
    elif framing == "bad-length":
        lines.append("Content-Length: -1")
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + chunk]), body[i:i + chunk])
                        for i in range(0, len(body), chunk)) + b"0\r\n\r\n"
    if framing == "none":
        body = b""
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body


# what the browser pages (the dashboard at /, the preview and its assets)
# answer when they are found; their refusals are JSON like every other
PAGE_TYPES = {"text/html; charset=utf-8", "text/javascript; charset=utf-8", "text/css; charset=utf-8"}


def _is_page(path):
    first = path.split("?")[0].split("/")[1] if path.startswith("/") else ""
    return first in ("", "preview", "assets")


def check_answer(method, response, path="/x"):
    assert response.status, f"no answer: {response.raw[:200]!r}"
    assert response.status < 500, response.raw[:500]
    if method == "HEAD" or response.status in (101, 204):
        return
    if response.status < 400 and _is_page(path) and response.headers.get("content-type") in PAGE_TYPES:
        return
    assert response.headers.get("content-type") == "application/json", response.raw[:500]
    body = orjson.loads(response.body)
    if response.status >= 400:
        assert body["code"] in CODES and isinstance(body["error"], str), body


def fuzz_http(port, sid):
    @settings(max_examples=_examples(), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(requests(sid))
    def one(example):
        method, path, query, headers, body, framing, chunk = example
        if method == "DELETE" and sid in path and path.rstrip("/").endswith(sid):
            method = "GET"  # keep the bystander's session (deleting it is allowed, not interesting)
        head, payload = build(method, path, query, headers, body, framing, chunk)
        response, _, _ = exchange_blocking(port, head, [payload] if payload else [], timeout=ANSWER_WITHIN)
        check_answer(method, response, path)

    one()


@ensure
async def test_fuzzed_http_requests_always_get_json(daemon_factory):
    daemon = await daemon_factory(max_body_size=MAX_BODY)
    sid = await daemon.new_session(make_schema())
    bystander, _ = await connected_device(daemon, sid, device_id="bystander")
    await threads.deferToThread(fuzz_http, daemon.port.getHost().port, sid)
    status, _ = await daemon.call("GET", "/health")
    assert status == 200
    result = await daemon.push(sid, with_text(make_schema(), "after the fuzz"))
    update = await bystander.next_of("update")
    assert update["payload"]["sequenceNumber"] == result["sequenceNumber"]


# -- WebSocket frames --------------------------------------------------------------


def messages(sid):
    kinds = st.sampled_from(["connect", "ping", "ack", "reload", "log", "error", "nope", 5, None])
    value = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64), st.floats(allow_nan=False, allow_infinity=False),
                  st.text(max_size=20)),
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
        max_leaves=8,
    )
    payload = st.dictionaries(
        st.sampled_from(["deviceId", "platform", "clientVersion", "deviceName", "lastSequence", "sequenceNumber",
                         "success", "level", "message", "status", "code", "reason"]),
        value, max_size=6)
    envelope = st.fixed_dictionaries(
        {"type": kinds, "sessionId": st.sampled_from([sid, "other", 1])},
        optional={"payload": payload, "version": st.sampled_from(["1.1.0", "2.0", "x", 1]), "timestamp": value},
    ).map(lambda m: orjson.dumps(m, option=orjson.OPT_NON_STR_KEYS) if _encodable(m) else b"{}")
    opcode = st.sampled_from([0x1, 0x1, 0x1, 0x2, 0x9, 0xA, 0x3, 0x0])
    raw = st.one_of(envelope, st.binary(max_size=100), st.just(b'{"type":"ack","sessionId":"' + sid.encode() + b'",'
                                                               b'"payload":{"sequenceNumber":1e300,"success":true}}'))
    return st.lists(st.tuples(opcode, raw), min_size=1, max_size=10)


def _encodable(message):
    try:
        orjson.dumps(message)
        return True
    except TypeError:
        return False


def fuzz_ws(port, sid):
    @settings(max_examples=_examples() // 3, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(messages(sid), st.booleans())
    def one(frames, hello_first):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            sock.sendall(ws_handshake(f"/ws?session={sid}"))
            head = b""
            while b"\r\n\r\n" not in head:
                part = sock.recv(4096)
                assert part, "upgrade refused"
                head += part
            assert head.startswith(b"HTTP/1.1 101"), head
            data = b""
            if hello_first:
                data += frame(orjson.dumps({"type": "connect", "sessionId": sid, "payload": {
                    "deviceId": "fuzz", "platform": "x", "clientVersion": "1.1.0"}}))
            for opcode, payload in frames:
                if opcode >= 0x8:
                    payload = payload[:125]
                data += frame(payload, opcode)
            try:
                sock.sendall(data)
            except OSError:
                pass
        finally:
            sock.close()

    one()


@ensure
async def test_fuzzed_websocket_frames_leave_the_daemon_serving(daemon_factory):
    daemon = await daemon_factory(rate_limit=1e6, rate_burst=10**6)
    sid = await daemon.new_session(make_schema())
    bystander, _ = await connected_device(daemon, sid, device_id="bystander")
    await threads.deferToThread(fuzz_ws, daemon.port.getHost().port, sid)
    assert (await daemon.call("GET", "/health"))[0] == 200
    assert (await daemon.call("GET", f"/session/{sid}/health"))[0] == 200
    result = await daemon.push(sid, with_text(make_schema(), "after the frames"))
    update = await bystander.next_of("update")
    assert update["payload"]["sequenceNumber"] == result["sequenceNumber"]


@pytest.mark.slow
@ensure
async def test_fuzzed_http_requests_large_budget(daemon_factory, monkeypatch):
    monkeypatch.setenv("LUMORA_SLOW", "1")
    await test_fuzzed_http_requests_always_get_json(daemon_factory)
