"""The server -> device frames built in `messages`: exact bytes, key order
included (devices and tests compare frames)."""

import orjson

from lumora_reload import messages
from lumora_reload.errors import LumoraError

HEAD = b'{"type":"%s","sessionId":"s","timestamp":7,"version":"1.1.0","payload":'


def test_connected_frame_starting_from_the_schema():
    frame = messages.connected_frame("s", 7, "c_1", 3, False, (orjson.Fragment(b'{"a":1}'), "sum"))
    assert frame == HEAD % b"connected" + (
        b'{"connectionId":"c_1","serverVersion":"1.1.0","sequenceNumber":3,"resumed":false,'
        b'"capabilities":{"incrementalUpdates":true,"compression":false,"statePreservation":true,"resume":true},'
        b'"initialSchema":{"a":1},"checksum":"sum"}}'
    )


def test_connected_frame_of_a_resumed_device_has_no_schema():
    payload = orjson.loads(messages.connected_frame("s", 7, "c_1", 3, True))["payload"]
    assert payload["resumed"] is True and "initialSchema" not in payload and "checksum" not in payload


def test_update_frames():
    full = messages.full_update_frame("s", 7, {"a": 1}, True, 2, "sum")
    assert full == HEAD % b"update" + (
        b'{"type":"full","schema":{"a":1},"preserveState":true,"sequenceNumber":2,"checksum":"sum"}}'
    )
    incremental = messages.incremental_update_frame("s", 7, {"added": []}, False, 3, "sum")
    assert incremental == HEAD % b"update" + (
        b'{"type":"incremental","delta":{"added":[]},"preserveState":false,"sequenceNumber":3,"checksum":"sum"}}'
    )


def test_pong_and_error_frames():
    assert messages.pong_frame("s", 7, 4) == HEAD % b"pong" + b'{"serverTime":7,"sequenceNumber":4}}'
    error = messages.error_frame("s", 7, LumoraError("INVALID_MESSAGE", "bad", details={"path": "x"}))
    assert error == HEAD % b"error" + (
        b'{"code":"INVALID_MESSAGE","message":"bad","severity":"error","recoverable":true,"details":{"path":"x"}}}'
    )


def test_a_device_envelope_carries_the_device_version():
    message = messages.envelope("ping", "s", 7, version="1.0.3")
    assert messages.encode(message) == b'{"type":"ping","sessionId":"s","timestamp":7,"version":"1.0.3"}'


def _refusal(data):
    try:
        messages.parse_envelope(data)
    except LumoraError as e:
        return e.code, e.message
    raise AssertionError(f"{data!r} was accepted")


def test_a_frame_read_as_bytes_says_whether_its_utf8_or_its_json_is_wrong():
    """Frames go to the parser as bytes; the error still names what was wrong."""
    assert _refusal(b'{"type":"ping","sessionId":"s\xff"}') == ("INVALID_MESSAGE", "Message is not valid UTF-8")
    assert _refusal(b'{"type":"ping",') == ("INVALID_MESSAGE", "Message is not valid JSON")
    assert _refusal('{"type":"ping",') == ("INVALID_MESSAGE", "Message is not valid JSON")


def test_an_accepted_version_is_remembered_but_others_are_still_checked():
    """Each message's version is checked, whatever was accepted before, and any JSON value is refused cleanly."""
    ok = b'{"type":"ping","sessionId":"s","version":"1.1.0","payload":{}}'
    for _ in range(2):
        assert messages.parse_envelope(ok)[0] == "ping"
    assert _refusal(ok.replace(b"1.1.0", b"2.0.0"))[0] == "UNSUPPORTED_VERSION"
    for bad in (b"[1]", b'{"a":1}', b"1.1", b"true"):
        code, message = _refusal(ok.replace(b'"1.1.0"', bad))
        assert code == "INVALID_MESSAGE" and "version" in message


def test_payload_fields_absent_null_and_of_the_wrong_type():
    """A required field may not be absent or null; an optional one may be
    either; a number is never true/false, and a true/false field takes
    nothing else."""

    def ack(payload):
        return orjson.dumps({"type": "ack", "sessionId": "s", "payload": payload})

    def refused(payload):
        return _refusal(ack(payload))

    assert messages.parse_envelope(ack({"sequenceNumber": 3, "success": True}))[2]["sequenceNumber"] == 3
    assert messages.parse_envelope(ack({"sequenceNumber": 3.0, "success": False, "error": None,
                                        "applyTime": None}))[2]["sequenceNumber"] == 3
    assert type(messages.parse_envelope(ack({"sequenceNumber": 3.0, "success": True}))[2]["sequenceNumber"]) is int
    assert refused({"success": True}) == ("INVALID_MESSAGE", "'sequenceNumber' is required in 'ack' payload")
    # fields are checked in their documented order: the first wrong one is named
    assert refused({"success": 1})[1] == "'sequenceNumber' is required in 'ack' payload"
    assert refused({"sequenceNumber": "1", "success": 1})[1] == "'sequenceNumber' in 'ack' payload has the wrong type"
    for payload in ({"sequenceNumber": None, "success": True}, {"sequenceNumber": True, "success": True},
                    {"sequenceNumber": "3", "success": True}):
        assert refused(payload) == ("INVALID_MESSAGE", "'sequenceNumber' in 'ack' payload has the wrong type")
    for value in (1, None, "true"):
        assert refused({"sequenceNumber": 1, "success": value}) == (
            "INVALID_MESSAGE", "'success' in 'ack' payload has the wrong type")
    assert refused({"sequenceNumber": 1, "success": True, "applyTime": False})[1] == (
        "'applyTime' in 'ack' payload has the wrong type")
    assert refused({"sequenceNumber": 1.5, "success": True})[1] == (
        "'sequenceNumber' in 'ack' payload must be a whole number")
    # a field that takes any JSON value still refuses true/false, as it always has
    report = {"type": "error", "sessionId": "s", "payload": {"details": True}}
    assert _refusal(orjson.dumps(report))[1] == "'details' in 'error' payload has the wrong type"
    report["payload"]["details"] = [1]
    assert messages.parse_envelope(orjson.dumps(report))[2]["details"] == [1]
