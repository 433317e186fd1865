"""TLS end to end: the daemon on `--port ssl:...` with a certificate from a
test CA; REST over https, `wsUrl` with `wss`, a device over `wss://` that
trusts only that CA, and a client that does not trust it is refused."""

import socket
import ssl as stdssl

import pytest
import pytest_twisted
import treq
from twisted.internet import endpoints, ssl, task, threads
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from lumora_reload.client import DeviceClient
from tests.helpers import make_schema, with_text
from tests.processes import TWIST, spawn_child  # noqa: F401 (fixture)

trustme = pytest.importorskip("trustme")


@pytest.fixture
def ca():
    return trustme.CA()


@pytest.fixture
def key_file(ca, tmp_path):
    """Private key and certificate chain for localhost and 127.0.0.1, in one PEM file."""
    path = tmp_path / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


def trusted(ca):
    return ssl.Certificate.loadPEM(ca.cert_pem.bytes())


def https_client(reactor, ca):
    """treq trusting only `ca`, with no connection left open."""
    policy = BrowserLikePolicyForHTTPS(trustRoot=trusted(ca))
    pool = HTTPConnectionPool(reactor, persistent=False)
    return treq.client.HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))


async def start_tls_daemon(spawn_child, key_file):
    argv = [TWIST, "lumora-reload", "--in-memory",
            "--port", f"ssl:0:interface=127.0.0.1:privateKey={key_file}"]
    child = spawn_child(argv)
    found = await child.wait_for(rb"starting on (\d+)")
    return child, int(found.group(1))


@pytest_twisted.ensureDeferred
async def test_devices_over_wss_and_rest_over_https(reactor, spawn_child, ca, key_file):
    """On an ssl: port the API answers https, wsUrl says wss, and a device over wss:// follows pushes."""
    child, port = await start_tls_daemon(spawn_child, key_file)
    http = https_client(reactor, ca)
    base = f"https://localhost:{port}"

    response = await http.post(base + "/session/new")
    assert response.code == 200
    created = await response.json()
    assert created["wsUrl"] == f"wss://localhost:{port}/ws?session={created['sessionId']}"

    def tls_endpoint():
        tcp = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
        # offering ALPN as browsers and mobile WebSocket stacks do
        options = ssl.optionsForClientTLS("localhost", trustRoot=trusted(ca), acceptableProtocols=[b"h2", b"http/1.1"])
        return endpoints.wrapClientTLS(options, tcp)

    device = DeviceClient(created["wsUrl"], device_id="tls-phone", reactor=reactor, endpoint=tls_endpoint)
    device.start()
    try:
        await device.when("connected").addTimeout(30, reactor)
        schema = make_schema()
        for n, body in enumerate([schema, with_text(schema, "over TLS")], start=1):
            response = await http.post(base + f"/send/{created['sessionId']}", json=body)
            assert response.code == 200, await response.text()
            await device.wait_for_sequence(n)
        assert device.replica.schema == with_text(schema, "over TLS")
        response = await http.get(base + f"/session/{created['sessionId']}")
        assert (await response.json())["connectedDevices"] == 1
    finally:
        await device.stop()
    await child.stop()


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_trust_the_ca_is_refused(reactor, spawn_child, key_file):
    """The daemon really speaks TLS with the given certificate: a client trusting another CA fails the handshake."""
    child, port = await start_tls_daemon(spawn_child, key_file)
    http = https_client(reactor, trustme.CA())
    with pytest.raises(Exception) as caught:
        await http.get(f"https://localhost:{port}/health")
    assert "certificate verify failed" in repr(caught.value)
    await child.stop()


@pytest_twisted.ensureDeferred
async def test_tls_devices_count_against_the_per_address_limit_until_they_leave(reactor, ca, key_file):
    """In process: a wss device is counted by the per-address limit while open and released when it leaves."""
    from lumora_reload import web
    from lumora_reload.server import HotReloadServer

    hot = HotReloadServer(reactor=reactor, secure=True)
    hot.startService()
    site = web.site(hot, reactor)
    endpoint = endpoints.serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={key_file}")
    port = await endpoint.listen(site)
    number = port.getHost().port
    session = hot.create_session()

    def tls_endpoint():
        tcp = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", number, timeout=10)
        return endpoints.wrapClientTLS(ssl.optionsForClientTLS("localhost", trustRoot=trusted(ca)), tcp)

    device = DeviceClient(f"wss://localhost:{number}/ws?session={session.id}", reactor=reactor, endpoint=tls_endpoint)
    device.start()
    try:
        await device.when("connected").addTimeout(30, reactor)
        assert site.per_address == {"127.0.0.1": 1}
        assert len(hot.get_connected_devices(session.id)) == 1
    finally:
        await device.stop()
    await hot.stopService()
    await port.stopListening()
    assert site.per_address == {}


def _tls_get_health(port, ca_pem):
    """What a TLS client sees: the handshake's failure, or the answer."""
    context = stdssl.create_default_context(cadata=ca_pem)
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:  # the reset can come before connect() returns
        return "refused"
    try:
        tls = context.wrap_socket(raw, server_hostname="localhost")
    except (stdssl.SSLError, OSError):
        raw.close()
        return "refused"
    try:
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return tls.recv(4096) or "closed"
    except OSError:
        return "closed"
    finally:
        tls.close()


@pytest_twisted.ensureDeferred
async def test_over_the_per_address_limit_a_tls_connection_is_dropped_quietly(reactor, ca, key_file,
                                                                            logged_failures):
    from lumora_reload import web
    from lumora_reload.server import HotReloadServer

    hot = HotReloadServer(reactor=reactor, max_connections_per_address=1, secure=True)
    hot.startService()
    site = web.site(hot, reactor)
    port = await endpoints.serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={key_file}").listen(site)
    number = port.getHost().port
    holder = socket.create_connection(("127.0.0.1", number), timeout=5)  # takes the one place
    try:
        for _ in range(200):
            if site.per_address:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        assert site.per_address == {"127.0.0.1": 1}
        seen = await threads.deferToThread(_tls_get_health, number, ca.cert_pem.bytes().decode())
        await task.deferLater(reactor, 0.2, lambda: None)
        assert seen in ("refused", "closed")  # no answer, and nothing logged as a failure
    finally:
        holder.close()
        for _ in range(200):  # the daemon sees the holder leave
            if not site.per_address:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        await hot.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_forwarded_proto_header_does_not_make_wss(daemon_factory):
    """A plain port says ws in wsUrl even when a request claims X-Forwarded-Proto: https; --public-url is the way."""
    daemon = await daemon_factory()
    status, created = await daemon.call("POST", "/session/new", headers={"X-Forwarded-Proto": "https"})
    assert status == 200
    assert created["wsUrl"].startswith("ws://")
