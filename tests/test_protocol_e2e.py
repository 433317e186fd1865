"""The device protocol (docs/protocol.md, section 2) against a real daemon on loopback, with a
real WebSocket client."""

import pytest
import pytest_twisted
from twisted.internet import task

from lumora_reload import schema as schemas
from tests.helpers import connected_device, make_schema, node, with_text

ensure = pytest_twisted.ensureDeferred


@ensure
async def test_url_without_session_is_closed_4400(daemon):
    device = await daemon.device(query="")
    assert await device.wait_closed() == (4400, "Session ID required")


@ensure
async def test_unknown_session_is_closed_4404(daemon):
    device = await daemon.device("0" * 32)
    assert await device.wait_closed() == (4404, "Session not found")


@ensure
async def test_expired_session_is_closed_4410(daemon_factory):
    clock = task.Clock()
    clock.advance(1_700_000_000)
    daemon = await daemon_factory(clock=clock)
    sid = await daemon.new_session(timeoutSeconds=0.2)
    clock.advance(1)
    device = await daemon.device(sid)
    assert await device.wait_closed() == (4410, "Session expired")
    daemon.server.cleanup_expired_sessions()
    device = await daemon.device(sid)
    assert await device.wait_closed() == (4410, "Session expired")


@ensure
async def test_connect_gets_connected_with_initial_schema(daemon):
    schema = make_schema()
    sid = await daemon.new_session(schema)
    device, info = await connected_device(daemon, sid, deviceName="Pixel")
    assert info["initialSchema"] == schema
    assert info["sequenceNumber"] == 1
    assert info["resumed"] is False
    assert info["serverVersion"] == "1.1.0"
    assert info["connectionId"]
    assert info["capabilities"] == {
        "incrementalUpdates": True,
        "compression": False,
        "statePreservation": True,
        "resume": True,
    }
    connected = device.received[0]
    assert set(connected) == {"type", "sessionId", "timestamp", "version", "payload"}
    assert connected["sessionId"] == sid and connected["version"] == "1.1.0"


@ensure
async def test_flutter_client_shape_is_accepted(daemon):
    """The Flutter client omits `version` and `timestamp` and sends a token."""
    sid = await daemon.new_session()
    device = await daemon.device(sid)
    device.send_json(
        {
            "type": "connect",
            "sessionId": sid,
            "payload": {"deviceId": "f1", "platform": "android", "clientVersion": "1.0.0", "token": "abc"},
        }
    )
    message = await device.next()
    assert message["type"] == "connected"
    assert "initialSchema" not in message["payload"]


@ensure
async def test_message_before_connect_is_closed_4401(daemon):
    sid = await daemon.new_session()
    device = await daemon.device(sid)
    device.send("ping", {})
    error = await device.next()
    assert error["type"] == "error"
    assert error["payload"]["code"] == "AUTHENTICATION_FAILED"
    assert error["payload"]["severity"] == "fatal" and error["payload"]["recoverable"] is False
    code, _ = await device.wait_closed()
    assert code == 4401


@ensure
async def test_other_major_version_is_refused_4426(daemon):
    sid = await daemon.new_session()
    device = await daemon.device(sid)
    device.send("connect", {"deviceId": "d", "platform": "ios", "clientVersion": "2.0.0"}, version="2.0.0")
    error = await device.next()
    assert error["payload"]["code"] == "UNSUPPORTED_VERSION"
    code, _ = await device.wait_closed()
    assert code == 4426


@ensure
async def test_minor_version_difference_is_accepted(daemon):
    sid = await daemon.new_session()
    device = await daemon.device(sid)
    device.send("connect", {"deviceId": "d", "platform": "ios", "clientVersion": "1.7.2"}, version="1.7.2")
    assert (await device.next())["type"] == "connected"


@ensure
async def test_session_id_mismatch_is_closed_4400(daemon):
    sid = await daemon.new_session()
    other = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    device.send("ping", {}, session_id=other)
    error = await device.next()
    assert error["payload"]["code"] == "SESSION_NOT_FOUND"
    code, _ = await device.wait_closed()
    assert code == 4400


@ensure
async def test_ping_gets_pong_with_sequence_number(daemon):
    sid = await daemon.new_session(make_schema())
    device, _ = await connected_device(daemon, sid)
    device.send("ping", {"status": "idle"})
    pong = await device.next()
    assert pong["type"] == "pong"
    assert pong["payload"]["sequenceNumber"] == 1
    assert isinstance(pong["payload"]["serverTime"], int)


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b"[1,2,3]",
        b'{"sessionId":"x"}',
        b'{"type":"warp","sessionId":"SID"}',
        b'{"type":"ack","sessionId":"SID","payload":{"sequenceNumber":"one","success":true}}',
        b'{"type":"ack","sessionId":"SID","payload":{"sequenceNumber":1,"success":"yes"}}',
        b'{"type":"log","sessionId":"SID","payload":{"level":3,"message":"x"}}',
        b'{"type":"ping","sessionId":"SID","payload":[1]}',
        b'{"type":"ping","sessionId":"SID","timestamp":"now"}',
        b'\xff\xfe{"type"',
    ],
)
@ensure
async def test_malformed_frames_get_invalid_message_and_connection_stays(daemon, frame):
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    device.sendMessage(frame.replace(b"SID", sid.encode()))
    error = await device.next()
    assert error["type"] == "error"
    assert error["payload"]["code"] == "INVALID_MESSAGE"
    assert error["payload"]["recoverable"] is True
    device.send("ping", {})
    assert (await device.next())["type"] == "pong"


@ensure
async def test_binary_frame_gets_invalid_message(daemon):
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    device.sendMessage(b'{"type":"ping"}', isBinary=True)
    error = await device.next()
    assert error["payload"]["code"] == "INVALID_MESSAGE"
    device.send("ping", {})
    assert (await device.next())["type"] == "pong"


@ensure
async def test_full_then_incremental_push(daemon):
    schema = make_schema()
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    result = await daemon.push(sid, schema)
    assert result == {
        "success": True,
        "clientsUpdated": 1,
        "devicesUpdated": 1,
        "updateType": "full",
        "sequenceNumber": 1,
    }
    update = await device.next()
    assert update["type"] == "update"
    assert update["payload"]["type"] == "full"
    assert update["payload"]["schema"] == schema
    assert update["payload"]["sequenceNumber"] == 1
    assert len(update["payload"]["checksum"]) == 64

    result = await daemon.push(sid, with_text(schema, "Bye"))
    assert result["updateType"] == "incremental" and result["sequenceNumber"] == 2
    update = await device.next()
    assert update["payload"]["type"] == "incremental"
    assert update["payload"]["sequenceNumber"] == 2
    assert [n["id"] for n in update["payload"]["delta"]["modified"]] == ["title"]


@ensure
async def test_ack_is_monotonic_and_failed_ack_resyncs(daemon):
    schema = make_schema()
    sid = await daemon.new_session(schema)
    device, _ = await connected_device(daemon, sid)
    await daemon.push(sid, with_text(schema, "2"))
    await device.next()
    device.send("ack", {"sequenceNumber": 2, "success": True, "applyTime": 3})
    device.send("ack", {"sequenceNumber": 1, "success": True})
    device.send("ping", {})
    await device.next_of("pong")
    _, info = await daemon.call("GET", f"/session/{sid}")
    assert info["devices"][0]["lastAckSequence"] == 2
    device.send("ack", {"sequenceNumber": 2, "success": False, "error": "boom"})
    update = await device.next()
    assert update["payload"]["type"] == "full"
    assert update["payload"]["sequenceNumber"] == 2
    _, info = await daemon.call("GET", f"/session/{sid}")
    assert info["sequenceNumber"] == 2  # a one-device resync does not advance


@ensure
async def test_reload_and_checksum_mismatch_get_full_update(daemon):
    schema = make_schema()
    sid = await daemon.new_session(schema)
    device, _ = await connected_device(daemon, sid)
    device.send("reload", {"reason": "user"})
    update = await device.next()
    assert update["payload"]["type"] == "full" and update["payload"]["schema"] == schema
    device.send("error", {"code": "CHECKSUM_MISMATCH", "message": "bad"})
    update = await device.next()
    assert update["payload"]["type"] == "full" and update["payload"]["sequenceNumber"] == 1


@ensure
async def test_log_lines_are_kept_per_session(daemon):
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid, deviceName="Pixel 8")
    device.send("log", {"level": "warn", "message": "slow frame"})
    device.send("ping", {})
    await device.next_of("pong")
    status, logs = await daemon.call("GET", f"/session/{sid}/logs")
    assert status == 200
    assert logs["sessionId"] == sid
    (line,) = logs["lines"]
    assert line["deviceName"] == "Pixel 8" and line["level"] == "warn" and line["message"] == "slow frame"
    assert line["deviceId"] == "phone-1" and isinstance(line["time"], int)


@ensure
async def test_same_device_id_replaces_old_connection(daemon):
    sid = await daemon.new_session()
    first, _ = await connected_device(daemon, sid, device_id="p")
    second, _ = await connected_device(daemon, sid, device_id="p")
    assert await first.wait_closed() == (4409, "Replaced")
    _, info = await daemon.call("GET", f"/session/{sid}")
    assert info["connectedDevices"] == 1
    second.send("ping", {})
    assert (await second.next())["type"] == "pong"


@ensure
async def test_oversize_message_closes_1009(daemon_factory):
    daemon = await daemon_factory(max_message_size=1024)
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    device.sendMessage(b'{"type":"log","sessionId":"' + b"x" * 2000 + b'"}')
    code, _ = await device.wait_closed()
    assert code == 1009


@ensure
async def test_flood_gets_rate_limited_then_closed_4429(daemon_factory):
    daemon = await daemon_factory(rate_limit=5, rate_burst=5)
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    for _ in range(40):
        device.send("ping", {})
    codes = []
    while True:
        message = await device.next()
        if message["type"] == "error":
            codes.append(message["payload"]["code"])
            if message["payload"]["recoverable"] is False:
                break
    assert codes[0] == "RATE_LIMIT_EXCEEDED"
    code, _ = await device.wait_closed()
    assert code == 4429


@ensure
async def test_devices_per_session_limit(daemon_factory):
    daemon = await daemon_factory(max_devices_per_session=1)
    sid = await daemon.new_session()
    await connected_device(daemon, sid, device_id="a")
    device = await daemon.device(sid)
    device.send("connect", {"deviceId": "b", "platform": "ios", "clientVersion": "1.1.0"})
    error = await device.next()
    assert error["payload"]["code"] == "RATE_LIMIT_EXCEEDED"
    code, _ = await device.wait_closed()
    assert code == 4429


@ensure
async def test_foreign_origin_upgrade_is_closed_4403(daemon):
    sid = await daemon.new_session()
    device = await daemon.device(sid, headers={"Origin": "http://evil.example"})
    assert await device.wait_closed() == (4403, "Origin not allowed")


@ensure
async def test_an_upgrade_with_the_api_token_passes_the_origin_check(daemon_factory):
    """As on the REST API, a bearer token a browser page cannot know lets an upgrade in from any Origin."""
    daemon = await daemon_factory(api_token="sesame")
    sid = await daemon.new_session()
    device = await daemon.device(sid, headers={"Origin": "http://evil.example", "Authorization": "Bearer sesame"})
    assert "connectionId" in await device.hello()
    device.dropConnection()
    device = await daemon.device(sid, headers={"Origin": "http://evil.example", "Authorization": "Bearer wrong"})
    assert await device.wait_closed() == (4403, "Origin not allowed")


@ensure
async def test_legacy_client_gets_full_unless_top_level_append(daemon):
    schema = make_schema()
    sid = await daemon.new_session(schema)
    old, _ = await connected_device(daemon, sid, device_id="old", client_version="1.0.3")
    new, _ = await connected_device(daemon, sid, device_id="new")
    nested = with_text(schema, "changed")
    nested["nodes"][0]["children"].insert(0, node("inner", text="x"))
    result = await daemon.push(sid, nested)
    assert result["updateType"] == "incremental"
    assert (await new.next())["payload"]["type"] == "incremental"
    assert (await old.next())["payload"]["type"] == "full"
    appended = dict(nested, nodes=nested["nodes"] + [node("footer", text="f")])
    await daemon.push(sid, appended)
    assert (await new.next())["payload"]["type"] == "incremental"
    update = await old.next()
    assert update["payload"]["type"] == "incremental"
    assert update["payload"]["sequenceNumber"] == 3


@ensure
async def test_delete_session_closes_devices_1000(daemon):
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    status, body = await daemon.call("DELETE", f"/session/{sid}")
    assert (status, body) == (200, {"success": True})
    assert await device.wait_closed() == (1000, "Session closed")
    status, body = await daemon.call("GET", f"/session/{sid}")
    assert status == 404 and body["code"] == "SESSION_NOT_FOUND"


@ensure
async def test_stop_closes_devices_1012(daemon):
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    await daemon.server.stopService()
    assert await device.wait_closed() == (1012, "Service restart")


@ensure
async def test_silent_device_is_disconnected_by_liveness_sweep(daemon_factory):
    clock = task.Clock()
    daemon = await daemon_factory(clock=clock, heartbeat_interval=1, connection_timeout=3)
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    clock.advance(2)
    device.send("ping", {})
    await device.next_of("pong")
    clock.advance(2)  # 2 s since the ping: still alive
    assert not device.closed.called
    clock.advance(2)  # 4 s of silence
    assert await device.wait_closed() == (1000, "Connection timeout")
    _, stats = await daemon.call("GET", "/stats")
    assert stats["totalDevices"] == 0


@ensure
async def test_resume_replays_missed_updates(daemon):
    schema = make_schema()
    schema["nodes"][0]["children"].append(node("blob", text="x" * 4000))
    sid = await daemon.new_session(schema)
    device, _ = await connected_device(daemon, sid)
    device.dropConnection()
    await device.wait_closed()
    current = schema
    for i in range(3):
        current = with_text(current, f"v{i}")
        await daemon.push(sid, current)
    again, info = await connected_device(daemon, sid, lastSequence=1)
    assert info["resumed"] is True and "initialSchema" not in info
    seqs = [(await again.next())["payload"]["sequenceNumber"] for _ in range(3)]
    assert seqs == [2, 3, 4]


@ensure
async def test_resume_replays_every_missed_update_full_ones_and_all(daemon):
    """Whatever the missed updates weigh and whichever kind they are, a device whose gap the
    history covers is resumed and gets each of them, in order, and ends on the pushed schema."""
    def leaves(text, edited=()):
        return make_schema([node("root", "View", [
            node(f"n{i}", text=text if i in edited else "x") for i in range(12)])])

    schema = leaves("x")
    sid = await daemon.new_session(schema)
    device, _ = await connected_device(daemon, sid)
    device.dropConnection()
    await device.wait_closed()
    # twelve nodes changed at once are more than a delta carries: a full update
    pushes = [leaves("a", {0}), leaves("b", range(12))]
    pushes += [with_text(pushes[-1], "c", "n3")]
    pushes += [with_text(pushes[-1], "d", "n5")]
    kinds = [(await daemon.push(sid, body))["updateType"] for body in pushes]
    assert kinds == ["incremental", "full", "incremental", "incremental"]
    again, info = await connected_device(daemon, sid, lastSequence=1)
    assert info["resumed"] is True and "initialSchema" not in info
    held = schema
    for sequence, kind in zip(range(2, 6), kinds):
        update = (await again.next())["payload"]
        assert (update["sequenceNumber"], update["type"]) == (sequence, kind)
        held = update["schema"] if kind == "full" else schemas.apply_delta(held, update["delta"])
        assert schemas.checksum(held) == update["checksum"]
    assert held == pushes[-1]


@ensure
async def test_resume_outside_history_gets_full_schema(daemon_factory):
    daemon = await daemon_factory(history_size=2)
    schema = make_schema()
    sid = await daemon.new_session(schema)
    current = schema
    for i in range(4):
        current = with_text(current, f"v{i}")
        await daemon.push(sid, current)
    device, info = await connected_device(daemon, sid, lastSequence=1)
    assert info["resumed"] is False and info["initialSchema"] == current
    current_device, info = await connected_device(daemon, sid, device_id="b", lastSequence=5)
    assert info["resumed"] is True and "initialSchema" not in info


@ensure
async def test_acks_have_their_own_budget(daemon_factory):
    daemon = await daemon_factory(rate_limit=5, rate_burst=5)
    sid = await daemon.new_session(make_schema())
    device, _ = await connected_device(daemon, sid)
    for _ in range(30):  # six times the message budget, all acks
        device.send("ack", {"sequenceNumber": 1, "success": True})
    device.send("log", {"level": "info", "message": "after the acks"})
    device.send("ping", {})
    assert (await device.next())["type"] == "pong"


@ensure
async def test_websocket_pong_counts_as_liveness(daemon_factory):
    clock = task.Clock()
    daemon = await daemon_factory(clock=clock, connection_timeout=10)
    sid = await daemon.new_session()
    device, info = await connected_device(daemon, sid)
    clock.advance(8)
    (protocol,) = daemon.server.ws_factory.connections
    protocol.onPong(b"")  # what Autobahn calls when the device answers a ping
    clock.advance(8)
    assert daemon.server.cleanup_stale_connections() == 0
    clock.advance(3)
    assert daemon.server.cleanup_stale_connections() == 1


@ensure
async def test_nested_ws_path(daemon_factory):
    daemon = await daemon_factory(ws_path="/lumora/ws")
    sid = await daemon.new_session(make_schema())
    assert daemon.ws.endswith("/lumora/ws")
    device, info = await connected_device(daemon, sid)
    assert info["sequenceNumber"] == 1
    status, body = await daemon.call("GET", "/ws")
    assert status == 404 and body["code"] == "NOT_FOUND"


@ensure
async def test_verbose_logs_every_push(daemon_factory):
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        quiet = await daemon_factory()
        loud = await daemon_factory(verbose=True)
        for daemon in (quiet, loud):
            sid = await daemon.new_session()
            await daemon.push(sid, make_schema())
    finally:
        globalLogPublisher.removeObserver(events.append)
    pushes = [e for e in events if e.get("event") == "push"]
    assert len(pushes) == 1 and pushes[0]["kind"] == "full"
