"""Access rules (docs/protocol.md, section 3) at unit level: the policy, and the root resource
seen from a non-loopback client (which a loopback test cannot be)."""

import orjson
from twisted.internet.address import IPv4Address
from twisted.web.test.requesthelper import DummyRequest

from lumora_reload import access
from lumora_reload.access import AccessPolicy, is_loopback
from lumora_reload.server import HotReloadServer


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.1") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("192.168.1.20") and not is_loopback("") and not is_loopback("localhost")


def test_host_check():
    policy = AccessPolicy(allowed_hosts=["tunnel.example"])
    for host in ["localhost", "localhost:8080", "127.0.0.1:8080", "[::1]:8080", "app.localhost", "tunnel.example"]:
        assert policy.host_ok(host), host
    assert not policy.host_ok("evil.example")
    assert not policy.host_ok(None)
    # the address the client actually connected to is this machine's
    assert policy.host_ok("192.168.1.20:8080", local_address="192.168.1.20")


def test_host_check_takes_every_address_of_this_machines_interfaces(monkeypatch):
    """Not only the one a request arrived on: a port forward delivers on loopback a request naming the LAN address."""
    monkeypatch.setattr(access, "list_interfaces", lambda: [("lo", "127.0.0.1"), ("eth0", "192.0.2.7"), ("", "0.0.0.0")])
    policy = AccessPolicy()
    assert policy.host_ok("192.0.2.7:8080", local_address="127.0.0.1")
    assert policy.origin_ok("http://192.0.2.7:8080", local_address="127.0.0.1")
    assert not policy.host_ok("192.0.2.8:8080", local_address="127.0.0.1")
    assert not policy.host_ok("0.0.0.0:8080", local_address="127.0.0.1")  # names no machine


def test_origin_check():
    policy = AccessPolicy(allowed_origins=["https://snack.example"])
    assert policy.origin_ok(None)
    assert policy.origin_ok("http://localhost:19006")
    assert policy.origin_ok("https://snack.example/")
    assert not policy.origin_ok("https://evil.example")
    assert not policy.origin_ok("null")


def test_token():
    policy = AccessPolicy(api_token="tok")
    assert policy.token_ok("Bearer tok") and policy.token_ok("bearer tok")
    assert not policy.token_ok("Bearer nope") and not policy.token_ok(None) and not policy.token_ok("tok")
    assert not AccessPolicy().token_ok("Bearer anything")


def _render(server, path, peer="192.168.1.50", headers=None, method=b"GET"):
    request = DummyRequest(path.strip("/").encode().split(b"/"))
    request.method = method
    request.client = IPv4Address("TCP", peer, 50000)
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    resource = server.resource()
    for segment in list(request.postpath):
        if getattr(resource, "isLeaf", False):
            break
        request.prepath.append(request.postpath.pop(0))
        resource = resource.getChildWithDefault(segment, request)
    body = resource.render(request)
    return request.responseCode or 200, orjson.loads(body)


def test_lan_client_is_refused_without_token(clock):
    server = HotReloadServer(reactor=clock, clock=clock)
    status, body = _render(server, "/stats", headers={"Host": "192.168.1.10:8080"})
    assert status == 403 and body["code"] == "FORBIDDEN"
    assert "--api-token" in body["error"]


def test_lan_client_with_token_is_served(clock):
    server = HotReloadServer(reactor=clock, clock=clock, api_token="tok")
    status, body = _render(server, "/stats", headers={"Authorization": "Bearer tok", "Host": "x"})
    assert status == 200 and body["sessions"] == 0
    status, _ = _render(server, "/stats", headers={"Authorization": "Bearer bad", "Host": "x"})
    assert status == 403


def test_health_is_open_to_lan(clock):
    server = HotReloadServer(reactor=clock, clock=clock)
    status, body = _render(server, "/health")
    assert status == 200 and body["status"] == "ok"


def test_long_host_names_are_not_remembered():
    """Addresses are cached per string; a client's long Host header cannot fill that cache."""
    before = access._is_loopback.cache_info().currsize
    for i in range(50):
        assert not is_loopback(f"{i}." + "a" * 5000)
    assert access._is_loopback.cache_info().currsize == before
    assert is_loopback("127.0.0.1")
