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
