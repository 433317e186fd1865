"""The access log never holds a session id in full, wherever in the
request line or User-Agent a client put it; its line format is unchanged.
Nor do the daemon's other lines that repeat what a client sent."""

import io
from urllib.parse import unquote

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from lumora_reload.accesslog import access_log_line, redact_ids
from tests.helpers import connected_device, make_schema
from tests.rawhttp import exchange, ws_handshake

ensure = pytest_twisted.ensureDeferred

SID = "c3aea446a76e2c18a9e40c315dc94f7b"
ENCODED = "".join(f"%{ord(c):02x}" for c in SID)  # every character escaped


class FakeRequest:
    def __init__(self, uri, method=b"GET", agent=None, code=200, length=57):
        self.uri, self.method, self.clientproto = uri, method, b"HTTP/1.1"
        self.code, self.sentLength = code, length
        self._agent = agent

    def getClientAddress(self):
        class Peer:
            host = "127.0.0.1"
        return Peer()

    def getHeader(self, name):
        return self._agent if name == b"user-agent" else None


STAMP = "[02/Dec/2026:02:49:58 +0000]"


def line(uri, **kw):
    return access_log_line(STAMP, FakeRequest(uri.encode("latin-1"), **kw))


def test_the_line_format_is_unchanged():
    assert line("/health", agent=b"curl/8.5.0") == (
        f'"127.0.0.1" - - {STAMP} "GET /health HTTP/1.1" 200 57 "-" "curl/8.5.0"')
    assert line(f"/send/{SID}", method=b"POST") == (
        f'"127.0.0.1" - - {STAMP} "POST /send/c3aea4... HTTP/1.1" 200 57 "-" "-"')
    assert line(f"/ws?session={SID}&x=1") == (
        f'"127.0.0.1" - - {STAMP} "GET /ws?session=c3aea4...&x=1 HTTP/1.1" 200 57 "-" "-"')


ODD_PLACES = [
    f"http://localhost:8080/session/{SID}",
    f"http://localhost:8080/ws?session={SID}",
    f"//session/{SID}",
    f"/./session/{SID}",
    f"/session//{SID}",
    f"/ws;session={SID}",
    f"/stats?id={SID}",
    f"/stats?id={SID.upper()}",
    f"/session/{SID}{SID}",
    f"/x/{SID}/y",
    f"/stats?id={ENCODED}",
    f"/stats?id=%{ord(SID[0]):02X}{SID[1:]}",
    f"/stats?id={SID[:10]}" + "".join(f"%{ord(c):02x}" if i % 2 else c for i, c in enumerate(SID[10:])),
]


@pytest.mark.parametrize("uri", ODD_PLACES)
def test_an_id_anywhere_in_the_target_is_cut(uri):
    logged = line(uri)
    assert SID not in unquote(logged).lower(), logged
    assert "..." in logged


def test_an_id_in_the_user_agent_or_method_is_cut():
    logged = line("/health", agent=f"my-tool/1.0 (session {SID})".encode())
    assert SID not in logged and f"(session {SID[:6]}...)" in logged
    logged = line("/health", method=SID.encode())
    assert SID not in logged and f'"{SID[:6]}... /health' in logged


def test_a_run_is_cut_as_the_named_places_are():
    assert redact_ids(f"/stats?id={SID}") == f"/stats?id={SID[:6]}..."
    assert redact_ids(f"a {SID} b {SID}") == f"a {SID[:6]}... b {SID[:6]}..."
    # shorter runs are not ids: hashes of builds, addresses, numbers stay
    for text in ["/assets/app.0123456789abcdef.js", "GET /health 2001:db8::1", SID[:31], "%2F" * 40]:
        assert redact_ids(text) == text


# -- against a real daemon ------------------------------------------------


@ensure
async def test_no_request_for_a_real_session_logs_its_id(daemon):
    sid = await daemon.new_session(make_schema())
    port = daemon.port.getHost().port
    daemon.port.factory.wrappedFactory.logFile = access = io.StringIO()
    targets = [
        f"http://localhost:{port}/session/{sid}",
        f"//session/{sid}",
        f"/./session/{sid}",
        f"/session//{sid}",
        f"/ws;session={sid}",
        f"/stats?id={sid}",
        f"/stats?id={''.join(f'%{ord(c):02x}' for c in sid)}",
    ]
    for target in targets:
        head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        response, _, _ = await exchange(port, head)
        assert response.status, target
    head = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: probe {sid}\r\nConnection: close\r\n\r\n"
    response, _, _ = await exchange(port, head.encode())
    assert response.status == 200
    logged = access.getvalue()
    assert len(logged.splitlines()) == len(targets) + 1, logged
    assert sid not in logged, logged
    assert logged.count(f"{sid[:6]}...") >= len(targets), logged


# -- the daemon's other log lines ------------------------------------------


async def _logged_while(coroutine):
    lines = []

    def observe(event):
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    try:
        await coroutine
    finally:
        globalLogPublisher.removeObserver(observe)
    return "\n".join(lines)


@pytest.mark.parametrize("host, origin", [("{sid}.example", None), ("127.0.0.1", "http://{sid}.example")])
@ensure
async def test_a_refused_upgrade_s_log_line_cuts_an_id_in_its_host_or_origin(daemon, host, origin):
    sid = await daemon.new_session(make_schema())
    extra = [("Origin", origin.format(sid=sid))] if origin else []
    head = ws_handshake(f"/ws?session={sid}", host=host.format(sid=sid), extra=extra)
    logged = await _logged_while(exchange(daemon.port.getHost().port, head))
    assert "refused device upgrade" in logged and f"{sid[:6]}..." in logged, logged
    assert sid not in logged, logged


@ensure
async def test_what_a_device_sends_is_logged_with_ids_cut(daemon):
    sid = await daemon.new_session(make_schema())

    async def chatter():
        device, _ = await connected_device(daemon, sid, deviceName=f"phone {sid}")
        device.send("log", {"level": "warn", "message": f"connected to /ws?session={sid}"})
        device.send("error", {"code": "X", "message": f"lost {sid}"})
        device.send("ack", {"sequenceNumber": 0, "success": False, "error": f"bad {sid}"})
        await device.next_of("update")
        _, body = await daemon.call("GET", f"/session/{sid}/logs")
        # the session's own log, for those who hold the id, keeps the line whole
        assert body["lines"][-1]["message"] == f"connected to /ws?session={sid}"
        device.sendClose()
        await device.wait_closed()

    logged = await _logged_while(chatter())
    assert "connected to /ws?session=" in logged and "lost " in logged and "bad " in logged, logged
    assert sid not in logged, logged
