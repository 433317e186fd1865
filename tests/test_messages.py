"""The server -> device frames built in `messages`: exact bytes, key order
included (devices and tests compare frames)."""

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

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


_ABSENT = object()
# any JSON value, the borderline ones for these fields among them
_VALUES = st.sampled_from([_ABSENT, None, True, False, 0, -3, 2**53, 1.5, 3.0, "", "1.0", "1.1.0", "2.0", "x",
                           {}, {"k": 1}, [], [1]])


_OPTIONAL_NUMBER = st.sampled_from([_ABSENT, None, 0, 7, 7.5, -1e300])
_PAYLOAD = {
    "sequenceNumber": st.one_of(st.integers(0, 2**53), st.floats(0, 1e6)),
    "success": st.booleans(),
    "error": st.sampled_from([_ABSENT, None, "", "boom", {"code": "X"}]),
    "applyTime": _OPTIONAL_NUMBER,
    "other": _VALUES,  # not a field of an ack: anything goes
}
_ENVELOPE = {
    "type": st.just("ack"),
    "sessionId": st.text(max_size=4),
    "timestamp": _OPTIONAL_NUMBER,
    "version": st.sampled_from([_ABSENT, None, "1.1.0", "1.0"]),
}


@st.composite
def _ack_like(draw):
    """Acks as devices send them, and their near misses: one field (or
    none) absent or of another JSON type; and whether the envelope's
    version was seen before."""
    wrong = draw(st.sampled_from([None, "payload", *_PAYLOAD, *_ENVELOPE]))

    def fill(fields):
        out = {}
        for name, valid in fields.items():
            value = draw(_VALUES if name == wrong else valid)
            if value is not _ABSENT:
                out[name] = value
        return out

    message = fill(_ENVELOPE)
    message["payload"] = draw(_VALUES) if wrong == "payload" else fill(_PAYLOAD)
    if message["payload"] is _ABSENT:
        del message["payload"]
    return draw(st.permutations(list(message.items()))), draw(st.booleans())


def _outcome(parse, data):
    try:
        return parse(data)
    except LumoraError as e:
        return e.code, e.message


@given(_ack_like())
@settings(max_examples=1000, deadline=None)
@example(([("type", "ack"), ("sessionId", "s"), ("version", "1.1.0"), ("timestamp", 7),
           ("payload", {"sequenceNumber": 4, "success": True, "applyTime": 2.5})], True))
def test_the_quick_ack_check_agrees_with_every_check(case):
    """Every ack and near miss gets what every check, in order, gives it (the payload, or the same
    error), whether or not its version was seen before; the quick check never accepts another."""
    items, seen = case
    data = orjson.dumps(dict(items))
    saved = set(messages._GOOD_VERSIONS)
    try:
        messages._GOOD_VERSIONS.clear()
        expected = _outcome(lambda d: messages._checked(orjson.loads(d)), data)
        messages._GOOD_VERSIONS.clear()
        if seen:
            messages._GOOD_VERSIONS.update(("1.0", "1.1.0"))
        assert _outcome(messages.parse_envelope, data) == expected
        quick = messages._plain_ack(orjson.loads(data))
        assert quick is None or quick == expected
        usual = messages.usual_ack(data)
        assert usual is None if quick is None else ("ack",) + usual == expected
    finally:
        messages._GOOD_VERSIONS.clear()
        messages._GOOD_VERSIONS.update(saved)


@pytest.fixture
def version_cache():
    """The versions seen so far, put back as they were after the test."""
    saved = set(messages._GOOD_VERSIONS)
    yield messages._GOOD_VERSIONS
    messages._GOOD_VERSIONS.clear()
    messages._GOOD_VERSIONS.update(saved)


_USUAL_ACK = {"type": "ack", "sessionId": "s", "timestamp": 7, "version": "1.1.0",
              "payload": {"sequenceNumber": 4, "success": True, "applyTime": 2}}


@pytest.mark.parametrize("field, value", [
    ("sessionId", 5), ("timestamp", True), ("version", "2.0"), ("version", 1), ("payload", [1]),
    ("sequenceNumber", True), ("sequenceNumber", 4.5), ("success", 1), ("error", [1]), ("applyTime", False),
])
def test_an_ack_wrong_in_one_place_gets_its_error(field, value, version_cache):
    """An ack whose version was seen before, wrong in one field, gets the error every check gives it."""
    message = orjson.loads(orjson.dumps(_USUAL_ACK))
    (message["payload"] if field in message["payload"] or field == "error" else message)[field] = value
    data = orjson.dumps(message)
    expected = _outcome(lambda d: messages._checked(orjson.loads(d)), data)
    assert len(expected) == 2  # an error
    messages.parse_envelope(orjson.dumps(_USUAL_ACK))  # its version seen
    assert _outcome(messages.parse_envelope, data) == expected
    assert messages._plain_ack(orjson.loads(data)) is None


def test_the_usual_ack_takes_the_quick_check(version_cache, monkeypatch):
    """An ack as devices send it, its version seen, passes the quick check, and parse_envelope takes
    its answer without running every check."""
    version_cache.clear()
    messages.parse_envelope(orjson.dumps(_USUAL_ACK))
    assert "1.1.0" in version_cache
    assert messages._plain_ack(_USUAL_ACK) == ("ack", "s", _USUAL_ACK["payload"])
    monkeypatch.setattr(messages, "_checked", lambda message: pytest.fail("every check ran"))
    assert messages.parse_envelope(orjson.dumps(_USUAL_ACK)) == ("ack", "s", _USUAL_ACK["payload"])


@pytest.mark.parametrize("data", [b"{not json", b"\xff\xfe", b"", b"[]", b'{"type":"ping","sessionId":"s"}'])
def test_what_is_not_the_usual_ack_is_left_to_every_check(data, version_cache):
    """Text that is not JSON, not an object or not an ack is no usual ack: every check then says why."""
    assert messages.usual_ack(data) is None
