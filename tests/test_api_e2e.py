"""The REST control API (docs/protocol.md, section 3) over real HTTP on loopback."""

import orjson
import pytest_twisted
from twisted.internet import task

from lumora_reload import schema as schemas
from tests.helpers import connected_device, make_schema, with_text
from tests.rawhttp import exchange, request_head

ensure = pytest_twisted.ensureDeferred


@ensure
async def test_health(daemon):
    status, body = await daemon.call("GET", "/health")
    assert (status, body) == (200, {"status": "ok", "sessions": 0, "totalDevices": 0})


@ensure
async def test_health_is_open_to_any_host(daemon):
    status, body = await daemon.call("GET", "/health", headers={"Host": "lb.internal"})
    assert status == 200 and body["status"] == "ok"


@ensure
async def test_create_session_shape(daemon):
    status, body = await daemon.call("POST", "/session/new")
    assert status == 200
    assert set(body) == {"sessionId", "wsUrl", "expiresAt", "createdAt"}
    assert len(body["sessionId"]) == 32 and int(body["sessionId"], 16) >= 0
    port = daemon.port.getHost().port
    assert body["wsUrl"] == f"ws://127.0.0.1:{port}/ws?session={body['sessionId']}"
    assert body["expiresAt"] - body["createdAt"] == 28800 * 1000


@ensure
async def test_ws_url_uses_public_url(daemon_factory):
    daemon = await daemon_factory(public_url="https://preview.example.dev/")
    _, body = await daemon.call("POST", "/session/new")
    assert body["wsUrl"] == f"wss://preview.example.dev/ws?session={body['sessionId']}"


@ensure
async def test_create_with_schema_and_timeout(daemon):
    schema = make_schema()
    _, body = await daemon.call("POST", "/session/new", {"schema": schema, "timeoutSeconds": 60})
    assert body["expiresAt"] - body["createdAt"] == 60_000
    status, got = await daemon.call("GET", f"/session/{body['sessionId']}/schema")
    assert (status, got) == (200, schema)


@ensure
async def test_create_with_invalid_schema_is_400(daemon):
    status, body = await daemon.call("POST", "/session/new", {"schema": {"version": "1", "metadata": {}, "nodes": [{"id": 3}]}})
    assert status == 400 and body["code"] == "SCHEMA_VALIDATION_FAILED"
    assert body["path"] == "nodes[0].id"  # from the schema's root, as POST /send gives it


@ensure
async def test_get_session_shape(daemon):
    sid = await daemon.new_session(make_schema())
    await connected_device(daemon, sid, deviceName="Pixel")
    status, body = await daemon.call("GET", f"/session/{sid}")
    assert status == 200
    assert body["sessionId"] == sid and body["sequenceNumber"] == 1 and body["connectedDevices"] == 1
    (device,) = body["devices"]
    assert set(device) == {"connectionId", "deviceId", "platform", "deviceName", "connectedAt", "lastAckSequence"}
    assert device["deviceName"] == "Pixel"


@ensure
async def test_unknown_session_is_404_everywhere(daemon):
    for method, path in [
        ("GET", "/session/nope"),
        ("GET", "/session/nope/schema"),
        ("GET", "/session/nope/health"),
        ("GET", "/session/nope/logs"),
        ("POST", "/session/nope/reload"),
        ("POST", "/session/nope/extend"),
        ("DELETE", "/session/nope"),
        ("DELETE", "/session/nope/devices/c1"),
    ]:
        status, body = await daemon.call(method, path)
        assert (status, body) == (404, {"error": "Session not found", "code": "SESSION_NOT_FOUND"}), path
    status, body = await daemon.call("POST", "/send/nope", make_schema())
    assert status == 404 and body["code"] == "SESSION_NOT_FOUND"


@ensure
async def test_expired_session_is_410(daemon_factory):
    clock = task.Clock()
    daemon = await daemon_factory(clock=clock)
    sid = await daemon.new_session(timeoutSeconds=0.2)
    clock.advance(0.5)
    status, body = await daemon.call("GET", f"/session/{sid}")
    assert (status, body["code"]) == (410, "SESSION_EXPIRED")
    assert daemon.server.cleanup_expired_sessions() == 1
    status, body = await daemon.call("POST", f"/send/{sid}", make_schema())
    assert (status, body["code"]) == (410, "SESSION_EXPIRED")


@ensure
async def test_schema_404_before_first_push(daemon):
    sid = await daemon.new_session()
    status, body = await daemon.call("GET", f"/session/{sid}/schema")
    assert status == 404 and body["code"] == "NOT_FOUND"


@ensure
async def test_send_invalid_schema_names_the_path(daemon):
    sid = await daemon.new_session()
    bad = make_schema()
    bad["nodes"][0]["children"][0]["id"] = 7
    status, body = await daemon.call("POST", f"/send/{sid}", bad)
    assert status == 400
    assert body["code"] == "SCHEMA_VALIDATION_FAILED"
    assert body["path"] == "nodes[0].children[0].id"
    assert "nodes[0].children[0].id" in body["error"]


@ensure
async def test_send_duplicate_id_is_refused(daemon):
    sid = await daemon.new_session()
    bad = make_schema()
    bad["nodes"][0]["children"][0]["id"] = "root"
    status, body = await daemon.call("POST", f"/send/{sid}", bad)
    assert status == 400 and body["code"] == "SCHEMA_VALIDATION_FAILED"
    assert "root" in body["error"]


@ensure
async def test_a_pushed_body_is_validated_whole_once_then_where_it_changed(daemon):
    """A body parsed for the push is the daemon's alone: after the first,
    a push checks only what its delta changed, and still refuses a
    duplicate id the change brings in."""
    sid = await daemon.new_session()
    first = make_schema()
    assert (await daemon.call("POST", f"/send/{sid}", first))[0] == 200
    state = daemon.server.hub.get_session(sid).state
    assert state.index == schemas.node_index(first)
    assert (await daemon.call("POST", f"/send/{sid}", with_text(first, "next")))[0] == 200
    assert daemon.server.hub.get_session(sid).state.index == state.index  # same ids, no walk of the tree
    bad = with_text(first, "again")
    bad["nodes"][0]["children"][0]["id"] = "root"
    status, body = await daemon.call("POST", f"/send/{sid}", bad)
    assert status == 400 and body["path"] == "nodes[0].children[0]"


@ensure
async def test_a_push_is_answered_with_its_length_not_in_chunks(daemon):
    """A push answers once stored (later than its request): the answer still carries its length."""
    sid = await daemon.new_session(make_schema())
    body = orjson.dumps(with_text(make_schema(), "edited"))
    head = request_head("POST", f"/send/{sid}", [("Content-Type", "application/json"),
                                                 ("Content-Length", len(body)), ("Connection", "close")])
    answer, _, _ = await exchange(daemon.port.getHost().port, head, [body])
    assert answer.status == 200 and answer.json()["updateType"] == "incremental"
    assert "transfer-encoding" not in answer.headers
    assert answer.headers["content-length"] == str(len(answer.body))


@ensure
async def test_send_not_json_is_400(daemon):
    sid = await daemon.new_session()
    status, body = await daemon.call(
        "POST", f"/send/{sid}", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and body["code"] == "BAD_REQUEST"


@ensure
async def test_send_wrong_content_type_is_refused(daemon):
    sid = await daemon.new_session()
    status, body = await daemon.call("POST", f"/send/{sid}", data=b"{}", headers={"Content-Type": "text/plain"})
    assert status == 415 and body["code"] == "BAD_REQUEST"
    assert "application/json" in body["error"]


@ensure
async def test_body_over_limit_is_413(daemon_factory):
    daemon = await daemon_factory(max_body_size=2000)
    sid = await daemon.new_session()
    big = make_schema()
    big["nodes"][0]["props"]["blob"] = "x" * 5000
    status, body = await daemon.call("POST", f"/send/{sid}", big)
    assert status == 413 and body["code"] == "PAYLOAD_TOO_LARGE"


@ensure
async def test_generated_at_only_change_is_none(daemon):
    schema = make_schema()
    sid = await daemon.new_session(schema)
    again = make_schema()
    again["metadata"]["generatedAt"] = 1800000000000
    result = await daemon.push(sid, again)
    assert result["updateType"] == "none" and result["sequenceNumber"] == 1
    assert result["devicesUpdated"] == 0


@ensure
async def test_preserve_state_flag(daemon):
    sid = await daemon.new_session(make_schema())
    device, _ = await connected_device(daemon, sid)
    await daemon.push(sid, with_text(make_schema(), "x"), query="?preserveState=false")
    update = await device.next()
    assert update["payload"]["preserveState"] is False


@ensure
async def test_reload_sends_full_to_every_device(daemon):
    schema = make_schema()
    sid = await daemon.new_session(schema)
    a, _ = await connected_device(daemon, sid, device_id="a")
    b, _ = await connected_device(daemon, sid, device_id="b")
    status, body = await daemon.call("POST", f"/session/{sid}/reload")
    assert status == 200 and body["success"] is True and body["devicesUpdated"] == 2
    for device in (a, b):
        update = await device.next()
        assert update["payload"]["type"] == "full" and update["payload"]["sequenceNumber"] == 1


@ensure
async def test_session_health(daemon):
    sid = await daemon.new_session(make_schema())
    device, info = await connected_device(daemon, sid)
    status, body = await daemon.call("GET", f"/session/{sid}/health")
    assert status == 200
    assert body["sessionId"] == sid
    assert (body["totalDevices"], body["healthyDevices"], body["unhealthyDevices"]) == (1, 1, 0)
    (entry,) = body["devices"]
    assert entry["connectionId"] == info["connectionId"] and entry["healthy"] is True
    assert {"deviceId", "lastPing", "timeSinceLastPing", "lastAckSequence"} <= set(entry)


@ensure
async def test_extend(daemon):
    sid = await daemon.new_session(timeoutSeconds=10)
    status, body = await daemon.call("POST", f"/session/{sid}/extend", {"seconds": 3600})
    assert status == 200 and body["success"] is True
    _, info = await daemon.call("GET", f"/session/{sid}")
    assert info["expiresAt"] == body["expiresAt"]
    assert body["expiresAt"] - info["createdAt"] >= 3599_000
    status, body = await daemon.call("POST", f"/session/{sid}/extend", {"seconds": "soon"})
    assert status == 400 and body["code"] == "BAD_REQUEST"


@ensure
async def test_disconnect_one_device(daemon):
    sid = await daemon.new_session()
    device, info = await connected_device(daemon, sid)
    status, body = await daemon.call("DELETE", f"/session/{sid}/devices/{info['connectionId']}")
    assert (status, body) == (200, {"success": True})
    code, _ = await device.wait_closed()
    assert code == 1000
    status, body = await daemon.call("DELETE", f"/session/{sid}/devices/{info['connectionId']}")
    assert status == 404 and body["code"] == "NOT_FOUND"


@ensure
async def test_stats(daemon):
    sid = await daemon.new_session()
    await connected_device(daemon, sid)
    status, body = await daemon.call("GET", "/stats")
    assert status == 200 and body["sessions"] == 1 and body["totalDevices"] == 1
    (detail,) = body["sessionDetails"]
    assert detail["id"] == sid and detail["devices"] == 1
    assert {"createdAt", "expiresAt"} <= set(detail)


@ensure
async def test_unknown_path_and_method(daemon):
    status, body = await daemon.call("GET", "/nope")
    assert status == 404 and body["code"] == "NOT_FOUND"
    status, body = await daemon.call("PUT", "/health")
    assert status == 405 and body["code"] == "BAD_REQUEST"


@ensure
async def test_foreign_host_is_refused_with_a_hint(daemon):
    status, body = await daemon.call("GET", "/stats", headers={"Host": "attacker.example:8080"})
    assert status == 403 and body["code"] == "FORBIDDEN"
    assert "--allowed-host attacker.example" in body["error"]


@ensure
async def test_allowed_host_is_accepted(daemon_factory):
    daemon = await daemon_factory(allowed_hosts=["tunnel.example"])
    status, _ = await daemon.call("GET", "/stats", headers={"Host": "tunnel.example"})
    assert status == 200


@ensure
async def test_foreign_origin_is_refused(daemon):
    status, body = await daemon.call("POST", "/session/new", headers={"Origin": "https://evil.example"})
    assert status == 403 and body["code"] == "FORBIDDEN"
    assert "--allowed-origin" in body["error"]
    status, _ = await daemon.call("POST", "/session/new", headers={"Origin": "http://localhost:5173"})
    assert status == 200


@ensure
async def test_token_bypasses_host_and_origin_checks(daemon_factory):
    daemon = await daemon_factory(api_token="s3cret")
    headers = {"Host": "anything.example", "Origin": "https://elsewhere.example"}
    status, _ = await daemon.call("GET", "/stats", headers=headers)
    assert status == 403
    status, _ = await daemon.call("GET", "/stats", headers=dict(headers, Authorization="Bearer s3cret"))
    assert status == 200


@ensure
async def test_schema_with_integer_beyond_64_bits(daemon):
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    schema = make_schema()
    schema["nodes"][0]["props"]["big"] = 2**70
    result = await daemon.push(sid, schema)
    assert result["updateType"] == "full"
    update = await device.next()
    assert update["payload"]["schema"]["nodes"][0]["props"]["big"] == 2**70


class _SlowStore:
    """A store that answers asynchronously, as the Redis store does."""

    def __init__(self, fail=False):
        from twisted.internet import defer

        self.defer = defer
        self.fail = fail
        self.pending = []

    def load(self):
        return []

    def _write(self, *args):
        d = self.defer.Deferred()
        self.pending.append(d)
        return d

    create_session = save_session = commit_push = delete_session = _write

    def close(self):
        pass

    async def written(self, reactor):
        """Wait (bounded) until a write reaches the store."""
        from twisted.internet import task as t

        for _ in range(500):
            if self.pending:
                return
            await t.deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("no write reached the store")

    def settle(self):
        while self.pending:
            d = self.pending.pop(0)
            if self.fail:
                d.errback(ConnectionError("store gone"))
            else:
                d.callback(None)


@ensure
async def test_create_and_extend_answer_only_once_stored(daemon_factory, reactor):
    store = _SlowStore()
    daemon = await daemon_factory(store=store)
    answer = daemon.call("POST", "/session/new")
    await store.written(reactor)
    assert not answer.called  # waiting on the store
    store.settle()
    status, body = await answer
    assert status == 200
    answer = daemon.call("POST", f"/session/{body['sessionId']}/extend", {"seconds": 100})
    await store.written(reactor)
    assert not answer.called
    store.settle()
    status, _ = await answer
    assert status == 200


@ensure
async def test_create_answers_503_when_the_store_fails(daemon_factory, reactor, logged_failures):
    logged_failures.expect(ConnectionError)
    store = _SlowStore(fail=True)
    daemon = await daemon_factory(store=store)
    answer = daemon.call("POST", "/session/new")
    await store.written(reactor)
    store.settle()
    status, body = await answer
    assert status == 503 and body["code"] == "INTERNAL_ERROR"
    assert "could not be stored" in body["error"]


@ensure
async def test_a_session_created_over_http_skips_the_python_values_walk(daemon, monkeypatch):
    """A schema parsed from the request's JSON holds only JSON values: creating a session with it
    is not walked for NaN or datetimes, as a push over HTTP is not; one made in Python is."""
    walked = []
    check = schemas.check_json_values
    monkeypatch.setattr(schemas, "check_json_values", lambda s: walked.append(s) or check(s))
    sid = await daemon.new_session(make_schema())
    assert walked == [] and daemon.server.get_schema(sid) == make_schema()
    await daemon.push(sid, with_text(make_schema(), "next"))
    assert walked == []
    daemon.server.create_session(make_schema())
    assert len(walked) == 1
