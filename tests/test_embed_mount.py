"""The embedding API's resource mounted below the root of a program's own
Site, the usual twisted.web way (`putChild`): the REST API answers there,
`wsUrl` points at the WebSocket below the same path, and a device that
follows it gets pushes."""

import pytest_twisted
from twisted.internet import endpoints
from twisted.web import resource, server as web_server

from lumora_reload.server import HotReloadServer
from tests.helpers import make_schema, open_device, with_text
from tests.processes import Remote
from tests.rawhttp import exchange, ws_handshake


@pytest_twisted.ensureDeferred
async def test_a_resource_mounted_with_putchild_serves_rest_and_devices_below_its_path(reactor):
    hot = HotReloadServer(reactor=reactor)
    hot.startService()
    root, tools = resource.Resource(), resource.Resource()
    root.putChild(b"tools", tools)
    tools.putChild(b"lumora", hot.resource())  # sets the child's `server` attribute, as putChild does
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(web_server.Site(root, reactor=reactor))
    base = f"http://127.0.0.1:{port.getHost().port}"
    remote = Remote(reactor, base + "/tools/lumora")
    try:
        status, created = await remote.call("POST", "/session/new", {"schema": make_schema()})
        assert status == 200, created
        sid = created["sessionId"]
        assert created["wsUrl"] == f"ws://127.0.0.1:{port.getHost().port}/tools/lumora/ws?session={sid}"
        status, stats = await remote.call("GET", "/stats")
        assert status == 200 and stats["sessions"] == 1
        status, info = await remote.call("GET", f"/session/{sid}")
        assert status == 200 and info["sequenceNumber"] == 1

        device = await open_device(reactor, created["wsUrl"])
        hello = await device.hello()
        assert hello["initialSchema"] == make_schema()
        status, pushed = await remote.call("POST", f"/send/{sid}", with_text(make_schema(), "mounted"))
        assert status == 200 and pushed["devicesUpdated"] == 1
        update = await device.next_of("update")
        assert update["payload"]["sequenceNumber"] == 2
        device.dropConnection()
    finally:
        await hot.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_openapi_document_of_a_mounted_resource_names_its_path(reactor):
    """Served below a path, /openapi.json says where its paths are (`servers`); at the root it names none."""
    hot = HotReloadServer(reactor=reactor)
    hot.startService()
    root = resource.Resource()
    root.putChild(b"lumora", hot.resource())
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(web_server.Site(root, reactor=reactor))
    remote = Remote(reactor, f"http://127.0.0.1:{port.getHost().port}/lumora")
    try:
        status, document = await remote.call("GET", "/openapi.json")
        assert status == 200 and document["servers"] == [{"url": "/lumora"}]
        assert "/health" in document["paths"] and "/ws" in document["paths"]
    finally:
        await hot.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_upgrade_autobahn_cannot_take_is_still_answered_in_a_program_s_site(reactor, monkeypatch):
    """In a plain Site, Autobahn's own 500 (no protocol built) goes out as
    an answer: the request is finished, not handed over."""
    hot = HotReloadServer(reactor=reactor)
    hot.startService()
    monkeypatch.setattr(hot.ws_factory, "buildProtocol", lambda address: None)
    root = resource.Resource()
    root.putChild(b"lumora", hot.resource())
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(web_server.Site(root, reactor=reactor))
    try:
        response, _, _ = await exchange(port.getHost().port, ws_handshake("/lumora/ws?session=abc"))
        assert response.status == 500, response.raw
    finally:
        await hot.stopService()
        await port.stopListening()
