"""The per-connection state machine, driven by a Clock, a real hub and a
fake wire: no sockets, no Autobahn."""

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lumora_reload import errors, messages
from lumora_reload.connection import Connection, Flow, IWire, Phase
from lumora_reload.sessions import Hub, IDeviceLink, Limits
from tests.helpers import make_schema, with_text


@implementer(IWire)
class Wire:
    def __init__(self):
        self.frames = []
        self.closes = []

    def send_frame(self, outgoing):
        self.frames.append(orjson.loads(outgoing.payload))

    def send_close(self, code, reason):
        self.closes.append((code, reason))

    def types(self):
        return [f["type"] for f in self.frames]

    def errors(self):
        return [f["payload"]["code"] for f in self.frames if f["type"] == "error"]


def frame(kind, sid, payload=None):
    return messages.encode(messages.envelope(kind, sid, 0, payload))


def opened(hub, sid, clock, **settings):
    wire = Wire()
    connection = Connection(hub, wire, sid, clock, **settings)
    connection.opened()
    return connection, wire


def attached(hub, sid, clock, device_id="d", **settings):
    connection, wire = opened(hub, sid, clock, **settings)
    connection.received(
        frame("connect", sid, {"deviceId": device_id, "platform": "ios", "clientVersion": "1.1.0"})
    )
    assert connection.phase is Phase.ATTACHED
    return connection, wire


def push(hub, sid, schema):
    update = hub.plan_push(sid, schema)
    hub.apply_update(update)
    return update


def test_a_connection_is_a_device_link_on_a_wire(clock):
    hub = Hub(clock)
    connection, wire = opened(hub, hub.create_session().id, clock)
    assert verifyObject(IDeviceLink, connection) and verifyObject(IWire, wire)


def test_connect_attaches_the_device_and_answers_connected(clock):
    hub = Hub(clock)
    session = hub.create_session(make_schema())
    wire = Wire()
    connection = Connection(hub, wire, session.id, clock)
    assert connection.phase is Phase.NEW
    connection.opened()
    assert connection.phase is Phase.AWAITING_CONNECT and wire.frames == []
    connection.received(frame("connect", session.id, {"deviceId": "d", "platform": "ios", "clientVersion": "1.1.0"}))
    assert connection.phase is Phase.ATTACHED
    assert wire.types() == ["connected"]
    assert wire.frames[0]["payload"]["initialSchema"] == make_schema()
    assert [d.device_id for d in session.devices.values()] == ["d"]
    assert clock.getDelayedCalls() == []  # the connect timeout is gone


@pytest.mark.parametrize(
    "refusal, reason",
    [
        ("Origin 'https://evil' is not allowed", "Origin not allowed"),
        ("Host 'evil' is not allowed", "Host not allowed"),
    ],
)
def test_a_refused_upgrade_is_closed_4403(clock, refusal, reason):
    hub = Hub(clock)
    connection = Connection(hub, wire := Wire(), hub.create_session().id, clock)
    connection.opened(refusal)
    assert wire.closes == [(messages.CLOSE_FORBIDDEN, reason)]
    assert connection.phase is Phase.CLOSING and clock.getDelayedCalls() == []


def test_the_session_is_checked_when_the_socket_opens(clock):
    hub = Hub(clock)
    gone = hub.create_session(timeout_seconds=10).id
    clock.advance(11)  # idle past its expiry
    for sid, close in [
        (None, (messages.CLOSE_BAD_REQUEST, "Session ID required")),
        ("nope", (messages.CLOSE_NOT_FOUND, "Session not found")),
        (gone, (messages.CLOSE_EXPIRED, "Session expired")),
    ]:
        connection, wire = opened(hub, sid, clock)
        assert wire.closes == [close] and connection.phase is Phase.CLOSING
    assert clock.getDelayedCalls() == []


def test_no_connect_within_the_connection_timeout_is_closed_4401(clock):
    hub = Hub(clock, Limits(connection_timeout=10))
    connection, wire = opened(hub, hub.create_session().id, clock)
    clock.advance(9.9)
    assert wire.closes == []
    clock.advance(0.1)
    assert wire.errors() == [errors.AUTHENTICATION_FAILED]
    assert wire.closes == [(messages.CLOSE_AUTH, "No connect")]
    assert connection.phase is Phase.CLOSING


def test_anything_before_connect_is_closed_4401(clock):
    hub = Hub(clock)
    sid = hub.create_session().id
    connection, wire = opened(hub, sid, clock)
    connection.received(frame("ping", sid))
    assert wire.errors() == [errors.AUTHENTICATION_FAILED]
    assert wire.closes == [(messages.CLOSE_AUTH, "Send 'connect' first")]
    assert clock.getDelayedCalls() == []


def test_a_bad_message_is_answered_and_the_connection_stays(clock):
    hub = Hub(clock)
    sid = hub.create_session().id
    connection, wire = attached(hub, sid, clock)
    connection.received(b"\xff", binary=False)
    connection.received(b"{}", binary=True)
    connection.received(b"not json")
    assert wire.errors() == [errors.INVALID_MESSAGE] * 3 and wire.closes == []
    connection.received(frame("ping", sid))
    assert wire.types()[-1] == "pong" and connection.phase is Phase.ATTACHED


def test_rate_limit_warns_once_then_closes_after_more_than_a_burst_of_refusals(clock):
    hub = Hub(clock)
    sid = hub.create_session().id
    connection, wire = attached(hub, sid, clock, rate_limit=1, rate_burst=3)
    wire.frames.clear()
    for _ in range(2):  # `connect` took one of the three
        connection.received(frame("ping", sid))
    assert wire.types() == ["pong", "pong"]
    connection.received(frame("ping", sid))  # first refusal: told
    assert wire.errors() == [errors.RATE_LIMIT_EXCEEDED] and "slow down" in wire.frames[-1]["payload"]["message"]
    connection.received(frame("ping", sid))  # dropped quietly
    connection.received(frame("ping", sid))
    assert len(wire.frames) == 3 and wire.closes == []
    connection.received(frame("ping", sid))  # a fourth refusal, more than the burst
    assert wire.errors() == [errors.RATE_LIMIT_EXCEEDED] * 2
    assert wire.closes == [(messages.CLOSE_RATE_LIMIT, "Rate limit exceeded")]
    connection.received(frame("ping", sid))  # closing: ignored
    assert len(wire.frames) == 4


def test_rate_limit_closes_refusals_lasting_more_than_a_second_even_when_some_get_through(clock):
    hub = Hub(clock)
    sid = hub.create_session().id
    connection, wire = attached(hub, sid, clock, rate_limit=1, rate_burst=3)
    for _ in range(3):
        connection.received(frame("ping", sid))  # the third is refused: the episode starts
    for _ in range(3):
        clock.advance(0.5)
        connection.received(frame("ping", sid))  # refused, through, refused
    assert wire.types().count("pong") == 3
    assert wire.closes == [(messages.CLOSE_RATE_LIMIT, "Rate limit exceeded")]


def test_a_quiet_second_ends_a_refusal_episode(clock):
    hub = Hub(clock)
    sid = hub.create_session().id
    connection, wire = attached(hub, sid, clock, rate_limit=1, rate_burst=3)
    for _ in range(3):
        for _ in range(4):
            connection.received(frame("ping", sid))
        clock.advance(3.5)
    assert wire.errors() == [errors.RATE_LIMIT_EXCEEDED] * 3  # one warning per episode
    assert wire.closes == []


def test_acks_have_a_budget_of_their_own(clock):
    hub = Hub(clock)
    sid = hub.create_session(make_schema()).id
    connection, wire = attached(hub, sid, clock, rate_limit=1, rate_burst=2)
    for _ in range(15):
        connection.received(frame("ack", sid, {"sequenceNumber": 1, "success": True}))
    connection.received(frame("ping", sid))
    assert wire.errors() == [] and wire.types()[-1] == "pong"


def test_a_congested_device_gets_only_the_latest_state_when_it_drains(clock):
    hub = Hub(clock)
    schema = make_schema()
    sid = hub.create_session(schema).id
    connection, wire = attached(hub, sid, clock, max_buffer=1)
    connection.paused()
    assert connection.flow is Flow.PAUSED
    push(hub, sid, schema := with_text(schema, "one"))  # written, and past the buffer
    assert connection.flow is Flow.CONGESTED
    for text in ("two", "three", "four"):
        push(hub, sid, schema := with_text(schema, text))
    assert [f["payload"].get("sequenceNumber") for f in wire.frames if f["type"] == "update"] == [2]
    connection.resumed()
    assert connection.flow is Flow.FLOWING
    last = wire.frames[-1]["payload"]
    assert (last["type"], last["sequenceNumber"], last["schema"]) == (messages.UPDATE_FULL, 5, schema)
    assert len(wire.frames) == 3
    push(hub, sid, with_text(schema, "five"))
    assert wire.frames[-1]["payload"]["type"] == messages.UPDATE_INCREMENTAL  # flowing again


def test_the_buffer_count_starts_at_the_first_pause_only(clock):
    hub = Hub(clock)
    sid = hub.create_session(make_schema()).id
    size = len(hub.full_update(hub.get_session(sid)))
    connection, wire = attached(hub, sid, clock, max_buffer=size + size // 2)
    connection.paused()
    connection.received(frame("reload", sid))  # one full update queued
    connection.paused()  # transports repeat it on every write while full
    assert connection.flow is Flow.PAUSED
    connection.received(frame("reload", sid))  # a second one: past the buffer
    assert connection.flow is Flow.CONGESTED


def test_a_drain_without_missed_updates_sends_nothing(clock):
    hub = Hub(clock)
    sid = hub.create_session(make_schema()).id
    connection, wire = attached(hub, sid, clock)
    connection.paused()
    push(hub, sid, with_text(make_schema(), "one"))
    connection.resumed()
    assert wire.types() == ["connected", "update"]


def test_close_is_idempotent_and_ends_sending(clock):
    hub = Hub(clock)
    session = hub.create_session(make_schema())
    connection, wire = attached(hub, session.id, clock)
    connection.close(messages.CLOSE_NORMAL, "bye")
    connection.close(messages.CLOSE_RESTART, "Service restart")
    assert wire.closes == [(messages.CLOSE_NORMAL, "bye")]
    before = len(wire.frames)
    push(hub, session.id, with_text(make_schema(), "late"))
    connection.received(frame("ping", session.id))
    assert len(wire.frames) == before
    assert len(session.devices) == 1  # still there until the transport is gone
    connection.closed(1000)
    connection.closed(1000)
    connection.close(messages.CLOSE_NORMAL, "again")
    connection.resumed()
    assert connection.phase is Phase.CLOSED and session.devices == {}
    assert wire.closes == [(messages.CLOSE_NORMAL, "bye")] and len(wire.frames) == before


def test_a_connection_closed_before_connect_cancels_its_timer(clock):
    hub = Hub(clock)
    connection, wire = opened(hub, hub.create_session().id, clock)
    connection.closed(1006)
    assert connection.phase is Phase.CLOSED and clock.getDelayedCalls() == []


def test_a_second_connection_of_the_same_device_replaces_the_first(clock):
    hub = Hub(clock)
    sid = hub.create_session().id
    first, first_wire = attached(hub, sid, clock, device_id="p")
    second, _ = attached(hub, sid, clock, device_id="p")
    assert first_wire.closes == [(messages.CLOSE_REPLACED, "Replaced")] and first.phase is Phase.CLOSING
    first.closed(messages.CLOSE_REPLACED)
    assert [d.device_id for d in hub.get_session(sid).devices.values()] == ["p"]
    assert second.phase is Phase.ATTACHED


def test_a_pong_counts_as_liveness(clock):
    hub = Hub(clock)
    sid = hub.create_session().id
    connection, _ = attached(hub, sid, clock)
    clock.advance(30)
    connection.ponged()
    assert connection.device.last_seen == 30


def test_an_ack_is_checked_against_the_session_the_device_joined(clock):
    """An ack is measured against the device's own session, which it keeps
    alive; once the session is dropped (deleted, expired) the connection
    is closed and nothing it sends later is handled."""
    hub = Hub(clock)
    session = hub.create_session(make_schema(), timeout_seconds=10)
    push(hub, session.id, with_text(make_schema(), "one"))
    connection, wire = attached(hub, session.id, clock)
    clock.advance(60)  # far past the timeout: the attached device keeps the session in use
    connection.received(frame("ack", session.id, {"sequenceNumber": 2, "success": True}))
    assert connection.device.last_ack_sequence == 2 and wire.errors() == []
    connection.received(frame("ack", session.id, {"sequenceNumber": 3, "success": True}))
    assert wire.errors() == ["INVALID_MESSAGE"] and connection.device.last_ack_sequence == 2
    for drop in (lambda: hub.delete_session(session.id), lambda: hub.expire(session)):
        session = hub.create_session(make_schema())
        connection, wire = attached(hub, session.id, clock)
        drop()
        assert connection.phase is Phase.CLOSING and wire.closes
        connection.received(frame("ack", session.id, {"sequenceNumber": 1, "success": True}))
        assert wire.errors() == [] and connection.device.last_ack_sequence == 0


_SID = "0123456789abcdef0123456789abcdef"
# the usual ack, then at most two changes to it (each one a field that
# must be checked: a value of another type, out of range, or missing)
_CHANGES = st.sampled_from([
    ("type", "ping"), ("type", "log"), ("sessionId", "other"), ("sessionId", 5), ("timestamp", 1.5),
    ("timestamp", "now"), ("timestamp", None), ("version", "1.0"), ("version", "1.1"), ("version", "2.0"),
    ("version", 1), ("payload", None), ("payload", []), ("sequenceNumber", -1), ("sequenceNumber", 9),
    ("sequenceNumber", 2.0), ("sequenceNumber", 1.5), ("sequenceNumber", "2"), ("sequenceNumber", True),
    ("success", False), ("success", 1), ("success", None), ("error", "no"), ("error", {"why": "x"}),
    ("error", 3), ("applyTime", 3), ("applyTime", 2.5), ("applyTime", "soon"), ("extra", 1),
])


def _ack(sequence, changes):
    payload = {"sequenceNumber": sequence, "success": True}
    message = {"type": "ack", "sessionId": _SID, "timestamp": 1700000000000, "payload": payload}
    for field, value in changes:
        target = payload if field in ("sequenceNumber", "success", "error", "applyTime", "extra") else message
        if value is None:
            target.pop(field, None)
        elif isinstance(message.get("payload"), dict) or target is message:
            target[field] = value
    return orjson.dumps(message)


_ACKISH = st.builds(_ack, st.integers(0, 4), st.lists(_CHANGES, max_size=2))
_SENT = st.one_of(
    _ACKISH.map(lambda data: (data, False)),
    st.sampled_from([(b"{not json", False), (b"\xff", False), (b'{"type":"ack"}', True), (b"[]", False)]),
)


def _attached_twin(clock):
    hub = Hub(clock)
    schema = make_schema()
    hub.create_session(schema, session_id=_SID)
    for text in ("one", "two", "three"):
        push(hub, _SID, with_text(schema, text))
    return (hub,) + attached(hub, _SID, clock, rate_limit=1, rate_burst=2)


def _observed(hub, connection, wire):
    guard, session = connection._guard, hub.sessions.get(_SID)
    frames = [dict(f, payload=dict(f["payload"], connectionId=None)) if f["type"] == "connected" else f
              for f in wire.frames]  # connection ids are random
    return (frames, wire.closes, connection.phase, connection.device.last_ack_sequence,
            connection.device.last_seen, session and session.last_activity,
            guard.acks.tokens, guard.acks.stamp, guard.messages.tokens, guard._refused)


@given(st.lists(st.tuples(_SENT, st.sampled_from([0, 0, 0.01, 0.3, 2.0])), max_size=40))
def test_the_one_step_ack_ends_where_every_step_would(sent):
    """An attached device's usual ack is taken in one step; whatever it
    sends, the outcome (answers, closes, what it holds, liveness, the
    session's expiry, the rate budgets) is what the full steps give."""
    quick_clock, full_clock = task.Clock(), task.Clock()
    quick = _attached_twin(quick_clock)
    full = _attached_twin(full_clock)
    full[1]._usual_ack = lambda data: False
    for (data, binary), pause in sent:
        for clock, (_, connection, _) in ((quick_clock, quick), (full_clock, full)):
            clock.advance(pause)
            connection.received(data, binary)
        assert _observed(*quick) == _observed(*full)


def test_an_attached_devices_usual_ack_is_taken_in_one_step(clock, monkeypatch):
    """It never reaches the full parse; a failed ack still does."""
    _, connection, wire = _attached_twin(clock)
    parsed = []
    monkeypatch.setattr(messages, "parse_envelope", lambda data: parsed.append(data) or pytest.fail("every step"))
    connection.received(_ack(3, []))
    assert connection.device.last_ack_sequence == 3 and parsed == [] and wire.errors() == []
    with pytest.raises(pytest.fail.Exception):
        connection.received(_ack(4, [("success", False)]))


def test_an_ack_is_a_sign_of_life(clock):
    """A device that only acks is alive, and keeps its session from expiring."""
    hub = Hub(clock, Limits(connection_timeout=10))
    session = hub.create_session(make_schema(), timeout_seconds=10)
    push(hub, session.id, with_text(make_schema(), "one"))
    connection, _ = attached(hub, session.id, clock)
    clock.advance(9)
    connection.received(frame("ack", session.id, {"sequenceNumber": 2, "success": True}))
    assert connection.device.last_seen == 9 and session.last_activity == 9


def test_what_a_device_sent_is_shown_in_the_log_cut_to_a_line():
    """A failed ack's `error` may be megabytes: the log line takes a line's worth, ids cut, before
    anything scans it."""
    from lumora_reload.connection import LOG_LINE_LIMIT, _shown

    sid = "0123456789abcdef" * 2
    shown = _shown("ab" * 2**20 + sid)
    assert shown.startswith("abab") and shown.endswith(f"… [{2 * 2**20 + 32 - LOG_LINE_LIMIT} more characters]")
    assert len(shown) < LOG_LINE_LIMIT + 64
    assert _shown(f"joined ws://h/ws?session={sid}") == "joined ws://h/ws?session=012345..."
