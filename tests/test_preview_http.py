"""The browser pages over HTTP: the preview page and its files, the
dashboard and its JSON, who may fetch them, and that `pip install .`
ships the files. Real HTTP on loopback; non-loopback clients at resource
level (a loopback test cannot be one)."""

import pathlib
import subprocess
import sys

import orjson
import pytest_twisted
import treq
from twisted.internet.address import IPv4Address
from twisted.web.test.requesthelper import DummyRequest

from lumora_reload import accesslog, preview
from lumora_reload.server import HotReloadServer
from tests.helpers import connected_device, make_schema

ensure = pytest_twisted.ensureDeferred
ROOT = pathlib.Path(__file__).resolve().parent.parent


async def get(daemon, path, method="GET", headers=None, data=None):
    h = {k: [v] for k, v in (headers or {}).items()}
    response = await treq.request(method, daemon.url + path, headers=h, data=data, persistent=False)
    body = await treq.content(response)
    return response, body


def header(response, name):
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


@ensure
async def test_preview_page_names_its_session_and_loads_only_local_files(daemon):
    """/preview/:id is HTML naming the session and the ws path, loading scripts from /assets under a strict CSP."""
    sid = await daemon.new_session()
    response, body = await get(daemon, f"/preview/{sid}")
    assert response.code == 200 and header(response, "content-type").startswith("text/html")
    text = body.decode()
    assert f'data-session="{sid}"' in text and 'data-ws-path="/ws"' in text
    for name in ("schema.js", "render.js", "preview.js", "preview.css"):
        assert f'"../assets/{name}"' in text
    assert "http://" not in text and "https://" not in text  # no CDN
    assert "script-src 'self'" in header(response, "content-security-policy")
    assert header(response, "referrer-policy") == "no-referrer"  # the URL holds the session id


@ensure
async def test_preview_page_escapes_the_id_it_echoes(daemon):
    """An id with markup in it comes back escaped, never as markup."""
    _, body = await get(daemon, "/preview/%3Cscript%3Ex%3C%2Fscript%3E%22")
    assert b"<script>x" not in body and b"&lt;script&gt;x&lt;/script&gt;&quot;" in body


@ensure
async def test_assets_are_served_with_their_types_and_nothing_else(daemon):
    """Each listed file is served with its content type; other names are 404."""
    for name, kind in preview.ASSETS.items():
        response, body = await get(daemon, f"/assets/{name}")
        assert response.code == 200 and header(response, "content-type") == kind.decode()
        assert body == (ROOT / "lumora_reload" / "static" / name).read_bytes()
    for path in ("/assets/nope.js", "/assets/", "/assets/preview.js/x", "/assets/..%2Fapi.py", "/assets"):
        response, body = await get(daemon, path)
        assert response.code == 404 and orjson.loads(body)["code"] == "NOT_FOUND", path


@ensure
async def test_pages_answer_get_and_head_only(daemon):
    """GET and HEAD answer; other methods are 405 with Allow, decided before any body is read."""
    sid = await daemon.new_session()
    for path in ("/", f"/preview/{sid}", "/assets/preview.js", "/overview"):
        response, body = await get(daemon, path, method="HEAD")
        assert response.code == 200 and body == b"", path
        for method in ("POST", "PUT", "DELETE"):
            response, body = await get(daemon, path, method=method, headers={"Content-Type": "application/json"},
                                       data=b"{}")
            assert response.code == 405, (path, method)
            assert header(response, "allow") == "GET, HEAD" and orjson.loads(body)["code"] == "BAD_REQUEST"
    for path in ("/preview/", "/preview", f"/preview/{sid}/extra"):
        response, _ = await get(daemon, path)
        assert response.code == 404, path


@ensure
async def test_dashboard_page_and_overview(daemon, reactor):
    """/ is the dashboard; /overview lists each session with its device URL, QR code, devices, updates and log tail."""
    response, body = await get(daemon, "/")
    assert response.code == 200 and b'src="assets/dashboard.js"' in body
    schema = make_schema()
    sid = await daemon.new_session(schema)
    device, _ = await connected_device(daemon, sid)
    device.send("log", {"level": "warn", "message": "hello dashboard"})
    device.send("ping", {})
    await device.next_of("pong")  # answered after the log: the log is in
    status, overview = await daemon.call("GET", "/overview")
    assert status == 200
    [entry] = [s for s in overview["sessions"] if s["sessionId"] == sid]
    assert entry["sequenceNumber"] == 1 and entry["deviceUrl"].endswith(f"/ws?session={sid}")
    assert entry["qrSvg"].startswith("<svg") and "<script" not in entry["qrSvg"]
    assert entry["updates"][0]["sequenceNumber"] == 1 and entry["updates"][0]["updateType"] == "full"
    [d] = entry["devices"]
    assert d["healthy"] and d["ackLag"] == 1 and d["lastAckSequence"] == 0 and d["platform"] == "ios"
    assert [(line["level"], line["message"]) for line in entry["logs"]] == [("warn", "hello dashboard")]


@ensure
async def test_foreign_host_or_origin_is_refused_by_every_page(daemon):
    """The dashboard, the preview and its files refuse a foreign Host or Origin, as the API and the WebSocket do."""
    for path in ("/", "/overview", "/preview/abc", "/assets/preview.js"):
        for headers in ({"Host": "attacker.example:8080"}, {"Origin": "https://evil.example"}):
            response, body = await get(daemon, path, headers=headers)
            assert response.code == 403 and orjson.loads(body)["code"] == "FORBIDDEN", (path, headers)
    # the page's own origin is accepted, as its WebSocket is
    response, _ = await get(daemon, "/assets/preview.js", headers={"Origin": daemon.url})
    assert response.code == 200


# -- clients that are not on loopback (resource level) ------------------------


def render(server, path, peer="192.168.1.50", headers=None, query=None):
    """Walk the resource tree as twisted.web does for a client at `peer`."""
    request = DummyRequest(path.lstrip("/").encode().split(b"/"))
    request.method = b"GET"
    request.client = IPv4Address("TCP", peer, 50000)
    request.isSecure = lambda: False
    request.args = {k.encode(): [v.encode()] for k, v in (query or {}).items()}
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    resource = server.resource()
    while request.postpath and not getattr(resource, "isLeaf", False):
        segment = request.postpath.pop(0)
        request.prepath.append(segment)
        resource = resource.getChildWithDefault(segment, request)
    body = resource.render(request)
    return request.responseCode or 200, body


LAN = {"Host": "127.0.0.1:8080"}


def test_dashboard_refuses_lan_clients_as_the_control_api_does(clock):
    """From the LAN without a token, / and /overview are refused exactly like /stats."""
    server = HotReloadServer(reactor=clock, clock=clock)
    refused = render(server, "/stats", headers=LAN)
    assert refused[0] == 403
    assert render(server, "/", headers=LAN) == refused
    assert render(server, "/overview", headers=LAN) == refused


def test_dashboard_takes_the_token_in_a_header_or_in_its_page_url(clock):
    """With --api-token the dashboard page opens with ?token= or the header; its JSON needs the header."""
    server = HotReloadServer(reactor=clock, clock=clock, api_token="tok")
    assert render(server, "/", headers=LAN, query={"token": "tok"})[0] == 200
    assert render(server, "/", headers=LAN, query={"token": "nope"})[0] == 403
    assert render(server, "/", headers=dict(LAN, Authorization="Bearer tok"))[0] == 200
    status, body = render(server, "/overview", headers=dict(LAN, Authorization="Bearer tok"))
    assert status == 200 and orjson.loads(body)["sessions"] == []
    # only the page takes it from the URL: the API calls send the header
    assert render(server, "/overview", headers=LAN, query={"token": "tok"})[0] == 403
    assert render(server, "/stats", headers=LAN, query={"token": "tok"})[0] == 403


def test_preview_is_served_to_lan_devices_that_name_an_allowed_host(clock):
    """A phone's browser on the LAN gets the preview (it is a device) when its Host is allowed; a foreign Host is refused."""
    server = HotReloadServer(reactor=clock, clock=clock, allowed_hosts=["192.168.1.20"])
    status, body = render(server, "/preview/abc", headers={"Host": "192.168.1.20:8080"})
    assert status == 200 and b'data-session="abc"' in body
    assert render(server, "/assets/render.js", headers={"Host": "192.168.1.20:8080"})[0] == 200
    assert render(server, "/preview/abc", headers={"Host": "rebound.example"})[0] == 403
    status, _ = render(server, "/preview/abc", headers={"Host": "192.168.1.20:8080", "Origin": "http://evil.example"})
    assert status == 403


def test_access_log_hides_the_token_and_shortens_preview_ids():
    """The access log never holds the dashboard token or a whole session id from a preview URL."""
    assert accesslog.redact_uri(b"/?token=s3cret&x=1") == "/?token=...&x=1"
    assert accesslog.redact_uri(b"/preview/0123456789abcdef") == "/preview/012345..."


def test_pip_install_ships_the_page_files(tmp_path):
    """setup.cfg's package data puts every file under lumora_reload/static into the build."""
    subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
                    "--build-lib", str(tmp_path)], cwd=ROOT, check=True, capture_output=True)
    built = {p.name for p in (tmp_path / "lumora_reload" / "static").iterdir()}
    assert built == {p.name for p in (ROOT / "lumora_reload" / "static").iterdir()}
    assert set(preview.ASSETS) | {"preview.html", "dashboard.html"} <= built


def test_the_dashboard_draws_each_session_qr_code_once(clock, monkeypatch):
    """The dashboard asks for the overview every second: each session's QR
    code is drawn once, not on every poll, however many sessions there are
    (drawing one takes milliseconds of the daemon's only thread)."""
    import segno

    drawn = []
    original = segno.make

    def make(text, **kw):
        drawn.append(text)
        return original("x", **kw)  # small and quick: only the count matters

    monkeypatch.setattr(segno, "make", make)
    server = HotReloadServer(reactor=clock, clock=clock)
    ids = {server.create_session().id for _ in range(300)}
    for _ in range(3):
        status, body = render(server, "/overview", peer="127.0.0.1", headers=LAN)
        assert status == 200 and {s["sessionId"] for s in orjson.loads(body)["sessions"]} == ids
    assert len(drawn) == 300
    # one drawing kept per session, whatever Host the dashboard is asked with
    # (its device URL follows the Host: any port of localhost is allowed)
    for port in range(1000, 1040):
        status, _ = render(server, "/overview", peer="127.0.0.1", headers={"Host": f"localhost:{port}"})
        assert status == 200
    overview = server.resource().children[b"overview"]
    assert len(overview._qr) == 300 and {len(urls) for urls in overview._qr.values()} == {4}
