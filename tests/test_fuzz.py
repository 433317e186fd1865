"""Hostile input: hypothesis throws random and mutated frames at
one live connection of a real daemon on loopback.

After every frame the test checks what docs/protocol.md (section 2) promises:
- anything unparseable, a binary frame, an unknown type, a field of the
  wrong type gets ``error INVALID_MESSAGE`` (recoverable) and the
  connection stays open (a ping right after gets its pong);
- a ``sessionId`` of another session gets ``SESSION_NOT_FOUND`` and close
  4400; another protocol major gets ``UNSUPPORTED_VERSION`` and close 4426;
  a message over the size limit is closed with 1009;
- a well-formed frame gets its normal answer (pong; a full update for
  ``reload``, a failed ack or ``CHECKSUM_MISMATCH``; nothing otherwise);
- nothing is logged as a failure, and a device of *another* session still
  receives a push.

`expected()` is the oracle: it reads the frame the way docs/protocol.md (section 2) describes
and returns the outcomes allowed (a frame with several faults may be
reported by any one of them).

Runs 200 examples by default; ``HYPOTHESIS_PROFILE=slow`` runs thousands.
"""

import json

import greenlet
import orjson
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.python import failure

from tests.helpers import DeviceClient, make_schema, open_device_as, with_text

MAX_MESSAGE = 256 * 1024

# Field table of docs/protocol.md (section 2) (types as the server checks them).
STR, NUM, BOOL, STR_OR_OBJ, ANY = "str", "num", "bool", "str|obj", "any"
FIELDS = {
    "connect": {
        "deviceId": (STR, True),
        "platform": (STR, True),
        "deviceName": (STR, False),
        "clientVersion": (STR, True),
        "lastSequence": (NUM, False),
        "token": (STR, False),
    },
    "ping": {"status": (STR_OR_OBJ, False)},
    "ack": {
        "sequenceNumber": (NUM, True),
        "success": (BOOL, True),
        "error": (STR_OR_OBJ, False),
        "applyTime": (NUM, False),
    },
    "reload": {"reason": (STR, False), "error": (STR_OR_OBJ, False)},
    "log": {"level": (STR, True), "message": (STR, True)},
    "error": {
        "code": (STR, False),
        "message": (STR, False),
        "severity": (STR, False),
        "details": (ANY, False),
        "recoverable": (BOOL, False),
    },
}

VALID_PAYLOADS = {
    "connect": {"deviceId": "fuzz", "platform": "ios", "clientVersion": "1.1.0", "deviceName": "F", "lastSequence": 1, "token": "t"},
    "ping": {"status": "idle"},
    "ack": {"sequenceNumber": 1, "success": True, "applyTime": 3},
    "reload": {"reason": "fuzz"},
    "log": {"level": "info", "message": "hello"},
    "error": {"code": "RENDER", "message": "m", "severity": "error", "details": {"k": [1]}, "recoverable": True},
}

# protocol versions and what docs/protocol.md says about them (None: accepted)
VERSIONS = {
    "1.1.0": None,
    "1.0": None,
    "1": None,
    "1.9.9": None,
    " 1.2 ": None,
    "1.0.0-beta": None,
    "2.0.0": "close:4426",
    "0.9": "close:4426",
    "10.1": "close:4426",
    "": "invalid",
    "abc": "invalid",
    "1.x": "invalid",
    "x.1": "invalid",
}

INVALID_UTF8 = [b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\xf4\x90\x80\x80"]

DEEP = "__deep__"

ensure = pytest_twisted.ensureDeferred


# -- the oracle --------------------------------------------------------------


def _kind_ok(value, kind):
    if kind == ANY:
        return True
    if kind == STR:
        return isinstance(value, str)
    if kind == NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == BOOL:
        return isinstance(value, bool)
    return isinstance(value, (str, dict))


def _version_faults(value):
    """(faults, sure): `sure` is False for a version string this table does
    not classify; the server may then accept it or refuse it."""
    if not isinstance(value, str):
        return {"invalid"}, True
    if value in VERSIONS:
        fault = VERSIONS[value]
        return ({fault} if fault else set()), True
    if not any(c.isdigit() for c in value):
        return {"invalid"}, True  # no number in it at all
    return set(), False


def expected(data, binary, session_id):
    """The outcomes docs/protocol.md (section 2) allows for one frame sent by a connected device."""
    if len(data) > MAX_MESSAGE:
        return {"close:1009"}
    if binary:
        return {"invalid"}
    try:
        message = orjson.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, orjson.JSONDecodeError):
        return {"invalid"}
    if not isinstance(message, dict):
        return {"invalid"}
    faults, unsure = set(), False

    def version(value):
        nonlocal unsure
        found, sure = _version_faults(value)
        faults.update(found)
        unsure |= not sure

    kind, sid = message.get("type"), message.get("sessionId")
    if not isinstance(kind, str) or not isinstance(sid, str):
        faults.add("invalid")
    timestamp = message.get("timestamp")
    if timestamp is not None and not _kind_ok(timestamp, NUM):
        faults.add("invalid")
    if message.get("version") is not None:
        version(message["version"])
    payload = message.get("payload")
    if payload is None:
        payload = {}
    if not isinstance(kind, str) or kind not in FIELDS or not isinstance(payload, dict):
        faults.add("invalid")
    else:
        for name, (field_kind, required) in FIELDS[kind].items():
            value = payload.get(name)
            if value is None:
                if required:
                    faults.add("invalid")
            elif not _kind_ok(value, field_kind):
                faults.add("invalid")
        if kind == "connect":
            if isinstance(payload.get("clientVersion"), str):
                version(payload["clientVersion"])
            if payload.get("deviceId") == "":
                faults.add("invalid")
    if isinstance(sid, str) and sid != session_id:
        faults.add("close:4400")
    if unsure:
        faults |= {"invalid", "close:4426"}
        if faults == {"invalid", "close:4426"}:  # only the version is in doubt
            faults.add(_answer(kind, payload))
    return faults or {_answer(kind, payload)}


def _answer(kind, payload):
    """The answer to a well-formed frame from an already connected device."""
    if kind == "connect":
        return "invalid"  # 'connect' is sent once
    if kind == "ping":
        return "ok+pong"
    if kind == "reload":
        return "ok+update"
    if kind == "ack" and payload.get("success") is False:
        return "ok+update"
    if kind == "error" and payload.get("code") == "CHECKSUM_MISMATCH":
        return "ok+update"
    return "ok"


# -- frame strategies --------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
huge_string = st.sampled_from([1_000, 60_000, 200_000, 300_000]).map(lambda n: "\u00e9" * (n // 2))
deep_nesting = st.just(DEEP)
field_value = (
    json_value
    | st.sampled_from(sorted(VERSIONS))
    | st.sampled_from(["CHECKSUM_MISMATCH", "ping", "log", "connect", "1e999"])
    | huge_string
    | deep_nesting
)
envelope_keys = st.sampled_from(["type", "sessionId", "timestamp", "version", "payload"]) | st.text(max_size=8)
payload_keys = st.sampled_from(sorted({k for f in FIELDS.values() for k in f})) | st.text(max_size=8)
mutation = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(["envelope", "payload"]), envelope_keys | payload_keys),
    st.tuples(st.just("set"), st.just("envelope"), envelope_keys, field_value),
    st.tuples(st.just("set"), st.just("payload"), payload_keys, field_value),
    st.tuples(st.just("type"), st.sampled_from(sorted(FIELDS) + ["update", "connected", "warp", ""])),
    st.tuples(st.just("set"), st.just("envelope"), st.just("version"), st.sampled_from(sorted(VERSIONS))),
    st.tuples(st.just("set"), st.just("payload"), st.just("clientVersion"), st.sampled_from(sorted(VERSIONS))),
    st.tuples(st.just("set"), st.just("envelope"), st.just("sessionId"), st.text(max_size=40)),
)


@st.composite
def mutated_frames(draw, session_id):
    kind = draw(st.sampled_from(sorted(FIELDS)))
    message = {"type": kind, "sessionId": session_id, "timestamp": 1, "version": "1.1.0"}
    message["payload"] = dict(VALID_PAYLOADS[kind])
    depth = draw(st.sampled_from([3, 100, 1000, 1100, 50_000]))
    own_fields = st.sampled_from(sorted(FIELDS[kind]))
    own = st.tuples(st.just("set"), st.just("payload"), own_fields, field_value) | st.tuples(
        st.just("drop"), st.just("payload"), own_fields
    )
    for op in draw(st.lists(mutation | own, min_size=0, max_size=3)):
        if op[0] == "type":
            message["type"] = op[1]
            continue
        target = message if op[1] == "envelope" else message.get("payload")
        if not isinstance(target, dict):
            continue
        if op[0] == "drop":
            target.pop(op[2], None)
        else:
            target[op[2]] = op[3]
    text = json.dumps(message, ensure_ascii=draw(st.booleans()))
    text = text.replace(f'"{DEEP}"', "[" * depth + "]" * depth)
    data = text.encode("utf-8")
    damage = draw(st.sampled_from(["none", "none", "none", "utf8", "truncate", "binary"]))
    if damage == "utf8":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(INVALID_UTF8)) + data[at:]
    elif damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    return data, damage == "binary"


def frames(session_id):
    random_json = json_value.map(lambda v: (json.dumps(v).encode(), False))
    nested = st.tuples(st.sampled_from("[{"), st.integers(1, 100_000)).map(
        lambda t: (("[" * t[1] + "]" * t[1]) if t[0] == "[" else ('{"a":' * t[1] + "1" + "}" * t[1])).encode()
    )
    return st.one_of(
        mutated_frames(session_id),
        mutated_frames(session_id),
        mutated_frames(session_id),
        random_json,
        st.binary(max_size=300).map(lambda b: (b, False)),
        st.binary(max_size=300).map(lambda b: (b, True)),
        nested.map(lambda b: (b, False)),
    )


# -- the rig: one daemon, one fuzzed connection, one bystander ----------------


class FuzzDevice(DeviceClient):
    def onClose(self, wasClean, code, reason):
        super().onClose(wasClean, code, reason)
        self.inbox.put({"type": "__closed__", "code": code})


class Rig:
    def __init__(self, daemon, logged_failures):
        self.daemon = daemon
        self.logged_failures = logged_failures
        self.schema = make_schema()
        self.device = None
        self.pushes = 0

    async def start(self):
        self.sid = await self.daemon.new_session(self.schema)
        self.other_sid = await self.daemon.new_session(self.schema)
        self.bystander = await self._open(self.other_sid, "bystander")
        await self._connect()
        return self

    async def _open(self, sid, device_id):
        device = await open_device_as(FuzzDevice, self.daemon.reactor, f"{self.daemon.ws}?session={sid}")
        await device.hello(device_id=device_id)
        return device

    async def _connect(self):
        self.device = await self._open(self.sid, "fuzz")

    async def check(self, data, binary):
        allowed = expected(data, binary, self.sid)
        if self.device.closed.called:
            await self._connect()
        device = self.device
        device.sendMessage(data, isBinary=binary)
        device.send("ping", {})  # the probe
        # The daemon answers in order: whatever the frame caused comes
        # before the probe's pong. An accepted ping has a pong of its own.
        pongs_wanted = 2 if (not binary and _claims_type(data) == "ping") else 1
        seen = []
        while True:
            message = await device.next()
            seen.append(message)
            if message["type"] == "__closed__":
                break
            if message["type"] == "error" and pongs_wanted == 2:
                pongs_wanted = 1  # refused: only the probe's pong follows
            if message["type"] == "pong" and sum(m["type"] == "pong" for m in seen) == pongs_wanted:
                break
        outcome = _outcome(seen)
        assert outcome in allowed, (outcome, allowed, seen[:4], data[:200])
        assert not device.inbox.pending, device.inbox.pending[:3]
        await self._bystander_still_served()
        assert not self.logged_failures.unexpected()

    async def _bystander_still_served(self):
        self.pushes += 1
        result = await self.daemon.push(self.other_sid, with_text(self.schema, f"push {self.pushes}"))
        update = await self.bystander.next_of("update")
        assert update["payload"]["sequenceNumber"] == result["sequenceNumber"]


def _claims_type(data):
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return message.get("type") if isinstance(message, dict) else None


def _outcome(seen):
    errors = [m["payload"] for m in seen if m["type"] == "error"]
    updates = [m for m in seen if m["type"] == "update"]
    pongs = sum(m["type"] == "pong" for m in seen)
    if seen[-1]["type"] == "__closed__":
        code = seen[-1]["code"]
        fatal = {4400: "SESSION_NOT_FOUND", 4426: "UNSUPPORTED_VERSION"}.get(code)
        if fatal is not None:
            assert [e["code"] for e in errors] == [fatal], errors
            assert errors[0]["severity"] == "fatal" and errors[0]["recoverable"] is False
        return f"close:{code}"
    if not errors:
        if updates:
            assert len(updates) == 1 and updates[0]["payload"]["type"] == "full", updates
            return "ok+update"
        return "ok+pong" if pongs == 2 else "ok"
    if [e["code"] for e in errors] == ["INVALID_MESSAGE"] and not updates and pongs == 1:
        assert errors[0]["recoverable"] is True and errors[0]["severity"] == "error"
        return "invalid"
    return f"unexpected: {errors} {len(updates)} updates {pongs} pongs"


async def _rig(daemon_factory, logged_failures):
    daemon = await daemon_factory(max_message_size=MAX_MESSAGE, rate_limit=1e6, rate_burst=10**6)
    return await Rig(daemon, logged_failures).start()


@settings(
    max_examples=max(200, settings().max_examples),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def _fuzz(rig, data):
    frame, binary = data.draw(frames(rig.sid), label="frame")
    pytest_twisted.blockon(defer.ensureDeferred(rig.check(frame, binary)))


def run_blocking(reactor, function, *args):
    """Run `function` (which may `pytest_twisted.blockon`) in a greenlet
    of its own, so an async test can wait for it: hypothesis runs its
    examples synchronously, the daemon needs the reactor in between."""
    done = defer.Deferred()

    def body():
        try:
            function(*args)
        except BaseException:
            outcome = failure.Failure()
            reactor.callLater(0, done.errback, outcome)
        else:
            reactor.callLater(0, done.callback, None)

    greenlet.greenlet(body).switch()
    return done


@ensure
async def test_hostile_frames_get_the_specified_answer(daemon_factory, logged_failures):
    rig = await _rig(daemon_factory, logged_failures)
    await run_blocking(rig.daemon.reactor, _fuzz, rig)

