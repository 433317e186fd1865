"""An absolute-form request target (`GET http://host:port/path HTTP/1.1`)
is served as its path, its authority taking the place of the Host header,
as HTTP/1.1 asks of a server. Raw sockets against a real daemon."""

import io

import pytest
import pytest_twisted

from tests.helpers import make_schema
from tests.rawhttp import exchange, ws_handshake

ensure = pytest_twisted.ensureDeferred


def head(target, host="127.0.0.1", extra=""):
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()


@ensure
async def test_an_absolute_form_target_is_served_as_its_path(daemon):
    sid = await daemon.new_session(make_schema())
    port = daemon.port.getHost().port
    daemon.port.factory.wrappedFactory.logFile = access = io.StringIO()
    for target, key in [
        (f"http://127.0.0.1:{port}/health", "status"),
        (f"HTTP://localhost:{port}/health?x=1", "status"),
        (f"http://127.0.0.1:{port}/session/{sid}", "sessionId"),
        (f"http://127.0.0.1:{port}/%73ession/{sid}", "sessionId"),
        (f"https://127.0.0.1:{port}/stats", "sessions"),  # the scheme is the client's business
    ]:
        response, _, _ = await exchange(port, head(target))
        assert response.status == 200, (target, response.raw)
        assert key in response.json(), target
    response, _, _ = await exchange(port, head(f"http://127.0.0.1:{port}"))
    assert response.status == 200 and response.headers["content-type"].startswith("text/html")
    # logged as the path it was served as, the id cut
    assert f'"GET /session/{sid[:6]}... HTTP/1.1" 200' in access.getvalue()
    assert sid not in access.getvalue()


@ensure
async def test_the_target_s_authority_is_the_host_the_access_rules_see(daemon):
    port = daemon.port.getHost().port
    response, _, _ = await exchange(port, head("http://evil.example/stats"))
    assert response.status == 403 and response.json()["code"] == "FORBIDDEN"
    assert "evil.example" in response.json()["error"]
    response, _, _ = await exchange(port, head(f"http://127.0.0.1:{port}/stats", host="evil.example"))
    assert response.status == 200


@ensure
async def test_a_request_that_came_through_the_public_url_host_stays_public(daemon_factory):
    """A tunnel that routes on the Host it received and forwards the request line as it is: the
    target's authority does not open the control API behind the --public-url host."""
    daemon = await daemon_factory(public_url="https://abc.tunnel.example")
    port = daemon.port.getHost().port
    for target in (f"http://localhost:{port}/stats", f"http://127.0.0.1:{port}/session/new"):
        response, _, _ = await exchange(port, head(target, host="abc.tunnel.example"))
        assert response.status == 403 and "public-url" in response.json()["error"], response.raw
    response, _, _ = await exchange(port, head("/health", host="abc.tunnel.example"))
    assert response.status == 200


@pytest.mark.parametrize("target", ["http:///health", "http://user@127.0.0.1/health", "http://127.0.0.1:1/a b"])
@ensure
async def test_a_bad_absolute_target_is_400_json(daemon, target):
    response, _, _ = await exchange(daemon.port.getHost().port, head(target))
    assert response.status == 400 and response.json()["code"] == "BAD_REQUEST", response.raw


@ensure
async def test_other_targets_are_as_before(daemon):
    port = daemon.port.getHost().port
    for target, status in [("/health", 200), ("/nope", 404), ("http:/health", 404), ("ftp://127.0.0.1/health", 404)]:
        response, _, _ = await exchange(port, head(target))
        assert response.status == status, (target, response.raw)


@ensure
async def test_a_websocket_upgrade_may_name_an_absolute_target(daemon):
    sid = await daemon.new_session(make_schema())
    port = daemon.port.getHost().port
    response, _, _ = await exchange(port, ws_handshake(f"http://127.0.0.1:{port}/ws?session={sid}"), timeout=1.0)
    assert response.status == 101, response.raw
