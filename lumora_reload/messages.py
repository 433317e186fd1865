"""The device wire protocol: parse and check incoming envelopes,
build outgoing ones.

Every message is a JSON object ``{"type", "sessionId", "timestamp",
"version", "payload"}``. Devices must send ``type`` and ``sessionId``;
``timestamp`` and ``version`` may be missing (the Flutter client omits
``version``). Parsing never raises anything but `LumoraError`, so the
WebSocket layer has one place that turns problems into error frames.
"""

import json

import orjson

from lumora_reload import errors
from lumora_reload.errors import LumoraError

SERVER_VERSION = "1.1.0"
SERVER_MAJOR = 1

# What a push sends: the `type` of an `update` payload, and "none" for a
# push that changed nothing (no update, no new sequence number).
UPDATE_FULL = "full"
UPDATE_INCREMENTAL = "incremental"
UPDATE_NONE = "none"

# Close codes
CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
CLOSE_BAD_REQUEST = 4400
CLOSE_AUTH = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_EXPIRED = 4410
CLOSE_REPLACED = 4409
CLOSE_UNSUPPORTED = 4426
CLOSE_RATE_LIMIT = 4429


def invalid(message, details=None):
    return LumoraError(errors.INVALID_MESSAGE, message, details=details)


def parse_version(text):
    """Return (major, minor) of a ``"1.2.3"``-style version, or None."""
    if not isinstance(text, str):
        return None
    parts = text.strip().split(".")
    try:
        major = int(parts[0])
        minor = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None
    return major, minor


def check_version(text, field):
    """Refuse a protocol version whose major differs from ours."""
    version = parse_version(text)
    if version is None:
        raise invalid(f"'{field}' must be a version string like \"1.1.0\"")
    if version[0] != SERVER_MAJOR:
        raise LumoraError(
            errors.UNSUPPORTED_VERSION,
            f"Protocol version {text} is not supported; this server speaks {SERVER_VERSION}",
            close_code=CLOSE_UNSUPPORTED,
            details={"serverVersion": SERVER_VERSION},
        )
    return version


_NUMBER = (int, float)

# type -> [(field, kinds, required)]
_PAYLOAD_FIELDS = {
    "connect": [
        ("deviceId", str, True),
        ("platform", str, True),
        ("deviceName", str, False),
        ("clientVersion", str, True),
        ("lastSequence", _NUMBER, False),
        ("lastChecksum", str, False),
        ("token", str, False),
    ],
    "ping": [("status", (str, dict), False)],
    "ack": [
        ("sequenceNumber", _NUMBER, True),
        ("success", bool, True),
        ("error", (str, dict), False),
        ("applyTime", _NUMBER, False),
    ],
    "reload": [("reason", str, False), ("error", (str, dict), False)],
    "log": [("level", str, True), ("message", str, True)],
    "error": [
        ("code", str, False),
        ("message", str, False),
        ("severity", str, False),
        ("details", object, False),
        ("recoverable", bool, False),
    ],
}


_WHAT = {kind: f"'{kind}' payload" for kind in _PAYLOAD_FIELDS}


def _checks(fields):
    out = []
    for name, kinds, required in fields:
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        # bool is an int subclass: a field not typed bool refuses true/false itself
        out.append((name, kinds, required, bool not in kinds))
    return tuple(out)


# type -> ((field, kinds, required, refuses true/false), ...), worked out
# once: every device message (an ack per update) is checked against them
_CHECKS = {kind: _checks(fields) for kind, fields in _PAYLOAD_FIELDS.items()}
_ABSENT = object()

# envelope versions already accepted (the check parses the string)
_GOOD_VERSIONS: set = set()


def _whole(value, name, what):
    """A whole number (JSON has one number type: 3.0 is 3)."""
    if isinstance(value, float):
        if not value.is_integer():
            raise invalid(f"'{name}' in {what} must be a whole number", details={"path": name})
        value = int(value)
    return value


def parse_envelope(data):
    """Decode one text frame (bytes or str) into ``(type, session_id, payload)``.

    Raises `LumoraError` (INVALID_MESSAGE or UNSUPPORTED_VERSION).
    """
    try:
        message = orjson.loads(data)
    except (orjson.JSONDecodeError, TypeError, ValueError):
        if isinstance(data, (bytes, bytearray, memoryview)):
            try:
                bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                raise invalid("Message is not valid UTF-8")
        raise invalid("Message is not valid JSON")
    plain = _plain_ack(message)
    if plain is not None:
        return plain
    return _checked(message)


def usual_ack(data):
    """``(session id, payload)`` when `data` is the text of an ack that
    `parse_envelope` takes as it is, else None (`parse_envelope` then
    decides, with its error). One step for what devices send most."""
    try:
        message = orjson.loads(data)
    except (TypeError, ValueError):  # orjson's JSONDecodeError is a ValueError
        return None
    plain = _plain_ack(message)
    return None if plain is None else plain[1:]


def _plain_ack(message):
    """``("ack", session id, payload)`` when `message` is an ack that every
    check of `_checked` passes as it is, else None (then `_checked` decides,
    with its error). A device sends one per update: the usual ack is told
    in a few exact type tests (orjson makes exact types)."""
    if type(message) is not dict:
        return None
    try:  # what an ack must have, read without a method call per field
        if message["type"] != "ack":
            return None
        payload = message["payload"]
        session_id = message["sessionId"]
        if (type(payload) is not dict or type(session_id) is not str
                or type(payload["sequenceNumber"]) is not int or type(payload["success"]) is not bool):
            return None
    except KeyError:
        return None
    timestamp = message.get("timestamp")
    version = message.get("version")
    if (not (timestamp is None or type(timestamp) is int or type(timestamp) is float)
            or not (version is None or (type(version) is str and version in _GOOD_VERSIONS))):
        return None
    error = payload.get("error")
    apply_time = payload.get("applyTime")
    if (error is None or type(error) is str or type(error) is dict) and (
            apply_time is None or type(apply_time) is int or type(apply_time) is float):
        return "ack", session_id, payload
    return None


def _checked(message):
    """`parse_envelope` of a decoded message: every check, in order."""
    if not isinstance(message, dict):
        raise invalid("Message must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise invalid("'type' is required and must be a string")
    session_id = message.get("sessionId")
    if not isinstance(session_id, str):
        raise invalid("'sessionId' is required and must be a string")
    timestamp = message.get("timestamp")
    if timestamp is not None and (not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool)):
        raise invalid("'timestamp' must be a number")
    version = message.get("version")
    if version is not None and not (type(version) is str and version in _GOOD_VERSIONS):
        check_version(version, "version")
        if type(version) is str and len(_GOOD_VERSIONS) < 64:
            _GOOD_VERSIONS.add(version)  # a device sends the same one every time
    if kind not in _PAYLOAD_FIELDS:
        raise invalid(f"Unknown message type '{kind[:64]}'")
    payload = message.get("payload")
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise invalid("'payload' must be an object")
    what = _WHAT[kind]
    for name, kinds, required, refuses_bool in _CHECKS[kind]:
        value = payload.get(name, _ABSENT)
        if value is _ABSENT:
            if required:
                raise invalid(f"'{name}' is required in {what}")
            continue
        if value is None and not required:
            continue
        if not isinstance(value, kinds) or (refuses_bool and type(value) is bool):
            raise invalid(f"'{name}' in {what} has the wrong type")
    if kind == "ack":
        payload["sequenceNumber"] = _whole(payload["sequenceNumber"], "sequenceNumber", what)
    if kind == "connect":
        check_version(payload["clientVersion"], "clientVersion")
        if not payload["deviceId"]:
            raise invalid("'deviceId' must not be empty")
    return kind, session_id, payload


def envelope(kind, session_id, now_ms, payload=None, version=SERVER_VERSION):
    message = {
        "type": kind,
        "sessionId": session_id,
        "timestamp": now_ms,
        "version": version,
    }
    if payload is not None:
        message["payload"] = payload
    return message


def encode(message):
    """Compact JSON bytes. orjson refuses integers beyond 64 bits, which
    JSON (and a pushed schema) may hold; the standard library takes those."""
    try:
        return orjson.dumps(message)
    except TypeError:
        return json.dumps(message, separators=(",", ":")).encode()


def error_payload(error):
    payload = {
        "code": error.code,
        "message": error.message,
        "severity": "fatal" if error.fatal else "error",
        "recoverable": not error.fatal,
    }
    if error.details is not None:
        payload["details"] = error.details
    return payload


# -- server -> device messages (encoded; key order is part of the bytes) ---


def connected_frame(session_id, now_ms, connection_id, sequence, resumed, initial=None):
    """`initial` is ``(schema, checksum)`` for a device that starts from
    the full schema, None for one that resumes (or a session without one)."""
    payload = {
        "connectionId": connection_id,
        "serverVersion": SERVER_VERSION,
        "sequenceNumber": sequence,
        "resumed": resumed,
        "capabilities": {
            "incrementalUpdates": True,
            "compression": False,
            "statePreservation": True,
            "resume": True,
        },
    }
    if initial is not None:
        payload["initialSchema"], payload["checksum"] = initial
    return encode(envelope("connected", session_id, now_ms, payload))


def _update_frame(session_id, now_ms, kind, body_key, body, preserve_state, sequence, checksum):
    payload = {
        "type": kind,
        body_key: body,
        "preserveState": preserve_state,
        "sequenceNumber": sequence,
        "checksum": checksum,
    }
    return encode(envelope("update", session_id, now_ms, payload))


def full_update_frame(session_id, now_ms, schema, preserve_state, sequence, checksum):
    return _update_frame(session_id, now_ms, UPDATE_FULL, "schema", schema, preserve_state, sequence, checksum)


def incremental_update_frame(session_id, now_ms, delta, preserve_state, sequence, checksum):
    return _update_frame(session_id, now_ms, UPDATE_INCREMENTAL, "delta", delta, preserve_state, sequence, checksum)


def pong_frame(session_id, now_ms, sequence):
    return encode(envelope("pong", session_id, now_ms, {"serverTime": now_ms, "sequenceNumber": sequence}))


def error_frame(session_id, now_ms, problem):
    """The error frame of a `LumoraError`."""
    return encode(envelope("error", session_id, now_ms, error_payload(problem)))
