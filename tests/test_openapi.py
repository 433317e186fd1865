"""GET /openapi.json: the document matches the routes the resource tree
answers (paths, methods, parameters, error statuses), and the answers of a
live daemon match it."""

import pathlib
import re

import jsonschema_rs
import orjson
import pytest
import pytest_twisted
import schemathesis
import treq
from twisted.web.test.requesthelper import DummyRequest

from lumora_reload import api, openapi
from lumora_reload.server import HotReloadServer
from lumora_reload.store import MemoryStore, StoreUnavailable
from lumora_reload.web import DeviceSocket
from tests.helpers import connected_device, make_schema, open_device, with_text

ensure = pytest_twisted.ensureDeferred


@pytest.mark.parametrize("path", ["/session/new", "/session/{sid}/extend"])
@pytest.mark.parametrize("body", [[], 0, False, "", [1]])
@ensure
async def test_a_body_that_is_not_an_object_is_refused(daemon, path, body):
    """A JSON body that is not an object (an empty array, 0, false, "") is refused with 400, not taken as no body."""
    sid = await daemon.new_session(make_schema())
    status, answer = await daemon.call("POST", path.format(sid=sid), body)
    assert status == 400 and answer["code"] == "BAD_REQUEST", answer
    _, stats = await daemon.call("GET", "/stats")
    assert stats["sessions"] == 1


def test_every_routed_path_and_method_is_documented_and_nothing_else(clock):
    """Walking the resource tree gives exactly the document's paths and methods (HEAD goes with GET)."""
    for ws_path in ("/ws", "/lumora/devices"):
        server = HotReloadServer(reactor=clock, clock=clock, ws_path=ws_path)
        doc = openapi.document(server.ws_path)
        documented = {path: {m.upper() for m in item} for path, item in doc["paths"].items()}
        assert routes(server) == documented


def routes(server):
    """{path template: methods} of every resource that answers, from the tree itself."""
    found = {}
    request = DummyRequest([])

    def walk(resource, path):
        if isinstance(resource, DeviceSocket):
            found[path] = {"GET"}
        elif isinstance(resource, api.JsonResource):
            methods = set(api.allowed_methods(resource)) - {"HEAD"}
            assert "HEAD" in api.allowed_methods(resource) or "GET" not in methods
            if methods:
                found[path] = methods
        for name, child in getattr(resource, "children", {}).items():
            walk(child, f"{path}/{name.decode()}")
        for name in getattr(resource, "named", ()):
            child = resource.getChild(name, request)
            assert not isinstance(child, api.NotFound), (path, name)
            walk(child, f"{path}/{name.decode()}")
        param = getattr(resource, "param", None)
        if param:
            walk(resource.getChild(b"0123456789abcdef", request), f"{path}/{{{param}}}")

    walk(server.resource(), "")
    return found


def test_path_parameters_are_declared_and_operation_ids_unique():
    """Every {name} in a path is a declared path parameter, and every operation has its own id."""
    doc = openapi.document()
    ids = []
    for path, item in doc["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for operation in item.values():
            ids.append(operation["operationId"])
            declared = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
            assert declared == names, (path, declared)
            for status, answer in operation["responses"].items():
                assert int(status) in range(100, 600) and answer["description"]
    assert len(ids) == len(set(ids))


def test_the_document_is_valid_openapi_3_1():
    """The document passes the OpenAPI 3.1 meta-schema (a broken one does not)."""
    doc = openapi.document()
    assert doc["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(doc).validate()
    schemathesis.openapi.from_dict(openapi.document(mount="/tools/lumora")).validate()
    broken = openapi.document()
    broken["paths"]["/health"]["get"]["responses"] = "none"
    with pytest.raises(Exception):
        schemathesis.openapi.from_dict(broken).validate()
    for schema in doc["components"]["schemas"].values():
        jsonschema_rs.meta.validate(schema)


class DiskGone(Exception):
    pass


class SwitchableStore(MemoryStore):
    """A store whose writes fail with `failure` while it is set."""

    failure = None

    def _write(self):
        if self.failure is not None:
            raise self.failure

    def create_session(self, session):
        self._write()

    def save_session(self, session):
        self._write()

    def commit_push(self, update):
        self._write()

    def delete_session(self, session_id):
        self._write()


SESSION_ID = "0123456789abcdef0123456789abcdef"


def concrete(path, sid, connection_id="c_0123456789abcdef"):
    return path.replace("{sessionId}", sid).replace("{connectionId}", connection_id)


def body_for(operation):
    """A valid body for an operation that takes one."""
    if operation["operationId"] == "pushSchema":
        return make_schema()
    return None


async def probes(daemon, clock, store, method, path, operation):
    """Every way to make this operation answer with an error, and the statuses it gave."""
    seen = set()
    takes_session = "{sessionId}" in path

    async def call(target, body=None, data=None, headers=None):
        h = {"Content-Type": ["application/json"]} if body is not None else {}
        h.update({k: [v] for k, v in (headers or {}).items()})
        if body is not None:
            data = orjson.dumps(body)
        response = await treq.request(method, daemon.url + target, data=data, headers=h, persistent=False)
        await treq.content(response)
        seen.add(response.code)
        return response.code

    async def fresh():
        return await daemon.new_session(make_schema())

    sid = await fresh() if takes_session else None
    target = concrete(path, sid) if sid else path
    if "{connectionId}" in path:
        _, info = await connected_device(daemon, sid)
        target = concrete(path, sid, info["connectionId"])
    if path == daemon.server.ws_path:
        await call(target)
        await call(target, data=b"{}", headers={"Content-Type": "application/json"})
        return seen
    await call(target, body=body_for(operation))
    await call(target, headers={"Host": "evil.example"}, body=body_for(operation))
    await call(target, data=b"x" * (daemon.server.max_body_size + 1), headers={"Content-Type": "application/json"})
    await call(target, data=b"{}", headers={"Content-Type": "text/plain"})
    if "requestBody" in operation:
        await call(target, data=b"{not json", headers={"Content-Type": "application/json"})
        await call(target, body={"seconds": -1, "timeoutSeconds": -1, "nodes": 1})
    if takes_session:
        await call(concrete(path, SESSION_ID), body=body_for(operation))
        expiring = await daemon.new_session(timeoutSeconds=1)
        clock.advance(2)
        await call(concrete(path, expiring), body=body_for(operation))
        empty = await daemon.new_session()  # no schema yet: 404 NOT_FOUND for its schema
        await call(concrete(path, empty), body=body_for(operation))
        for failure in (DiskGone("disk gone"), StoreUnavailable("store down")):
            victim = await fresh()
            store.failure = failure
            try:
                body = body_for(operation) or ({"seconds": 60} if "extend" in path else None)
                if "pushSchema" == operation["operationId"]:
                    body = with_text(make_schema(), "changed")
                await call(concrete(path, victim), body=body)
            finally:
                store.failure = None
    if path == "/session/new":
        for failure in (DiskGone("disk gone"), StoreUnavailable("store down")):
            store.failure = failure
            try:
                await call(path)
            finally:
                store.failure = None
        while await call(path) == 200:
            pass
    return seen


@ensure
async def test_every_status_an_operation_gives_is_documented_and_every_documented_one_happens(
    daemon_factory, clock, logged_failures
):
    """Provoking every operation's errors on a live daemon gives exactly the documented statuses."""
    logged_failures.expect(DiskGone)
    store = SwitchableStore()
    daemon = await daemon_factory(store=store, clock=clock, max_sessions=200, max_body_size=4096)
    doc = openapi.document(daemon.server.ws_path)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            seen = await probes(daemon, clock, store, method.upper(), path, operation)
            documented = {int(s) for s in operation["responses"]} - {101}
            assert seen == documented, (method, path, sorted(seen), sorted(documented))
            for session_id in list(daemon.server.hub.sessions):
                daemon.server.hub.drop(daemon.server.hub.sessions[session_id], 1000, "done")


@ensure
async def test_the_daemon_serves_its_document(daemon_factory):
    """GET /openapi.json answers the document of this daemon's own WebSocket path."""
    daemon = await daemon_factory(ws_path="/devices")
    status, body = await daemon.call("GET", "/openapi.json")
    assert status == 200 and body == openapi.document("/devices")
    assert "/devices" in body["paths"] and "/ws" not in body["paths"]
    status, _ = await daemon.call("GET", "/openapi.json", headers={"Host": "evil.example"})
    assert status == 403


@ensure
async def test_a_ws_path_with_doubled_slashes_is_where_wsurl_and_the_document_say(daemon_factory):
    """--ws-path /a//b is served at /a/b, and wsUrl and the document say so (they said /a//b, a 404)."""
    daemon = await daemon_factory(ws_path="/a//b/")
    status, created = await daemon.call("POST", "/session/new")
    assert status == 200 and created["wsUrl"].split("?")[0].endswith(":%d/a/b" % daemon.port.getHost().port)
    device = await open_device(daemon.reactor, created["wsUrl"])
    assert (await device.hello())["sequenceNumber"] == 0
    status, document = await daemon.call("GET", "/openapi.json")
    assert "/a/b" in document["paths"] and "/a//b" not in document["paths"]
    device.dropConnection()


@ensure
async def test_the_browser_preview_page_is_documented_as_it_answers(daemon):
    """GET /preview/{sessionId} (a route of the tree) is in the document: HTML for any id, 403 for a foreign Host."""
    operation = openapi.document()["paths"]["/preview/{sessionId}"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"text/html"}
    for sid in (await daemon.new_session(), SESSION_ID):
        response = await treq.get(f"{daemon.url}/preview/{sid}", persistent=False)
        await treq.content(response)
        assert response.code == 200
        assert response.headers.getRawHeaders("content-type")[0].startswith("text/html")
    status, _ = await daemon.call("GET", f"/preview/{SESSION_ID}", headers={"Host": "evil.example"})
    assert str(status) in operation["responses"]


def test_the_readmes_control_api_table_lists_every_operation_of_the_document():
    """Each method and path of the document (the device WebSocket aside) is a row of the README's table, and no other."""
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("\n## Control API\n"):readme.index("\n## Metrics\n")]
    rows = {
        (method, re.sub(r":(\w+)", lambda m: "{sessionId}" if m.group(1) == "id" else "{%s}" % m.group(1), path))
        for method, path in re.findall(r"^\| `([A-Z]+) (/[^`]*)`", section, re.M)
    }
    doc = openapi.document()
    documented = {(m.upper(), path) for path, item in doc["paths"].items() for m in item if path != "/ws"}
    assert rows == documented


@pytest_twisted.ensureDeferred
async def test_behind_a_public_url_with_a_path_the_document_names_that_path(daemon_factory):
    """Reached through --public-url https://host/lumora (a proxy that serves
    the daemon below /lumora), the paths are below /lumora there, as wsUrl
    says; without a path the document names no servers."""
    daemon = await daemon_factory(public_url="https://tunnel.example/lumora/")
    _, document = await daemon.call("GET", "/openapi.json")
    _, made = await daemon.call("POST", "/session/new")
    assert made["wsUrl"].startswith("wss://tunnel.example/lumora/ws?")
    assert document["servers"] == [{"url": "https://tunnel.example/lumora"}]  # read on loopback too
    plain = await daemon_factory(public_url="https://tunnel.example")
    _, document = await plain.call("GET", "/openapi.json")
    assert "servers" not in document
