"""Promises of the README's control API, device protocol and "Choices worth
knowing" that no other test pins, each on a live daemon over real HTTP and
WebSocket on loopback."""

import pytest_twisted

from tests.helpers import connected_device, make_schema

ensure = pytest_twisted.ensureDeferred

DAY = 24 * 3600


@ensure
async def test_extend_without_seconds_gives_the_session_timeout_from_now(daemon_factory, clock):
    """`extend` sets the expiry to `seconds` (default: the session timeout) from now."""
    daemon = await daemon_factory(clock=clock)
    sid = await daemon.new_session(timeoutSeconds=600)
    clock.advance(100)
    status, body = await daemon.call("POST", f"/session/{sid}/extend")
    assert (status, body) == (200, {"success": True, "expiresAt": int((100 + 600) * 1000)})


@ensure
async def test_extend_never_shortens_the_expiry(daemon_factory, clock):
    daemon = await daemon_factory(clock=clock)
    sid = await daemon.new_session(timeoutSeconds=600)
    _, before = await daemon.call("GET", f"/session/{sid}")
    status, body = await daemon.call("POST", f"/session/{sid}/extend", {"seconds": 10})
    assert status == 200 and body["expiresAt"] == before["expiresAt"] == 600_000
    _, after = await daemon.call("GET", f"/session/{sid}")
    assert after["expiresAt"] == 600_000


@ensure
async def test_extend_takes_at_most_30_days(daemon):
    sid = await daemon.new_session()
    status, body = await daemon.call("POST", f"/session/{sid}/extend", {"seconds": 30 * DAY + 1})
    assert status == 400 and body["code"] == "BAD_REQUEST" and body["path"] == "seconds"
    status, _ = await daemon.call("POST", f"/session/{sid}/extend", {"seconds": 30 * DAY})
    assert status == 200


@ensure
async def test_reload_without_a_schema_is_404_not_found(daemon):
    """A session without a schema is at 0; reloading it answers 404 NOT_FOUND."""
    sid = await daemon.new_session()
    _, info = await daemon.call("GET", f"/session/{sid}")
    assert info["sequenceNumber"] == 0
    status, body = await daemon.call("POST", f"/session/{sid}/reload")
    assert status == 404 and body["code"] == "NOT_FOUND"


@ensure
async def test_a_schema_given_at_creation_is_state_1(daemon):
    sid = await daemon.new_session(make_schema())
    _, info = await daemon.call("GET", f"/session/{sid}")
    assert info["sequenceNumber"] == 1


@ensure
async def test_a_second_connect_is_invalid_message_and_the_device_stays(daemon):
    sid = await daemon.new_session(make_schema())
    device, _ = await connected_device(daemon, sid)
    device.send("connect", {"deviceId": "phone-1", "platform": "ios", "clientVersion": "1.1.0"})
    error = await device.next_of("error")
    assert error["payload"]["code"] == "INVALID_MESSAGE"
    device.send("ping", {})
    pong = await device.next_of("pong")
    assert pong["payload"]["sequenceNumber"] == 1
