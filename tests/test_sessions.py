"""The hub and the sweeps, driven by a Clock and fake device links."""

import collections
import dataclasses
import datetime
import enum
import json
import os
import pathlib
import subprocess
import sys
import uuid

import attrs
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import task
from zope.interface import implementer

from lumora_reload import errors
from lumora_reload import schema as schemas
from lumora_reload.errors import LumoraError
from lumora_reload.liveness import Sweeps
from lumora_reload.replica import Replica, UpdateError
from lumora_reload.sessions import Hub, IDeviceLink, Limits
from tests.helpers import make_schema, node, with_text
from tests.test_checksum import scanned_lengths
from tests.test_schema import SETTINGS, edits, walk


@implementer(IDeviceLink)
class Link:
    def __init__(self):
        self.sent = []
        self.closed = None

    def send(self, outgoing):
        self.sent.append(outgoing)

    def close(self, code, reason):
        self.closed = (code, reason)


def connect(hub, sid, device_id="d", **extra):
    link = Link()
    payload = {"deviceId": device_id, "platform": "ios", "clientVersion": "1.1.0"}
    payload.update(extra)
    _, device, outgoing = hub.attach(sid, link, payload)
    link.sent.extend(outgoing)
    return device, link


def push(hub, sid, schema):
    """Plan and apply, as the server does around a store that always commits."""
    update = hub.plan_push(sid, schema)
    if update is None:
        return None
    hub.apply_update(update)
    return update


def test_session_ids_are_128_bit_hex(clock):
    hub = Hub(clock)
    ids = {hub.create_session().id for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 32 for i in ids)


def test_sequence_numbers_are_gapless_per_state(clock):
    hub = Hub(clock)
    sid = hub.create_session().id
    schema = make_schema()
    assert push(hub, sid, schema).sequence == 1
    assert push(hub, sid, schema) is None  # same state, no number
    assert push(hub, sid, with_text(schema, "a")).sequence == 2
    session = hub.get_session(sid)
    device, link = connect(hub, sid)
    hub.resync_device(session, device)
    assert session.sequence == 2  # a one-device resync does not advance
    assert push(hub, sid, with_text(schema, "b")).sequence == 3


def test_sliding_expiry_and_tombstones(clock):
    hub = Hub(clock, Limits(session_timeout=10))
    sid = hub.create_session().id
    clock.advance(8)
    push(hub, sid, make_schema())  # a push is activity
    clock.advance(8)
    assert hub.get_session(sid)
    clock.advance(3)
    with pytest.raises(LumoraError) as e:
        hub.get_session(sid)
    assert e.value.code == errors.SESSION_EXPIRED


def test_an_expired_session_answers_expired_for_a_day_and_a_deleted_one_not_found_at_once(clock):
    hub = Hub(clock, Limits(session_timeout=10))
    expiring, deleted = hub.create_session().id, hub.create_session().id
    hub.delete_session(deleted)
    clock.advance(11)
    for session in hub.expired_sessions():
        hub.expire(session)
    codes = []
    for when in (0, 86400 - 12, 20):  # just short of a day after it expired, then past it
        clock.advance(when)
        hub.expired_sessions()  # the sweep prunes what is older than a day
        for sid in (expiring, deleted):
            with pytest.raises(LumoraError) as e:
                hub.get_session(sid)
            codes.append(e.value.code)
    assert codes == [errors.SESSION_EXPIRED, errors.SESSION_NOT_FOUND] * 2 + [errors.SESSION_NOT_FOUND] * 2


def test_connected_device_keeps_session_alive(clock):
    hub = Hub(clock, Limits(session_timeout=10))
    sid = hub.create_session().id
    connect(hub, sid)
    clock.advance(100)
    assert hub.expired_sessions() == []
    assert hub.get_session(sid)


def test_expiry_sweep_closes_and_forgets(clock):
    hub = Hub(clock, Limits(session_timeout=5))
    forgotten = []
    sweeps = Sweeps(hub, forgotten.append, clock, heartbeat_interval=1, cleanup_interval=2)
    sweeps.start()
    sid = hub.create_session().id
    clock.advance(4)
    assert not forgotten
    clock.advance(2)
    assert [s.id for s in forgotten] == [sid]
    with pytest.raises(LumoraError) as e:
        hub.get_session(sid)
    assert e.value.code == errors.SESSION_EXPIRED
    sweeps.stop()


def test_liveness_sweep_closes_silent_devices(clock):
    hub = Hub(clock, Limits(connection_timeout=3))
    sweeps = Sweeps(hub, lambda s: None, clock, heartbeat_interval=1, cleanup_interval=60)
    sweeps.start()
    sid = hub.create_session().id
    quiet, quiet_link = connect(hub, sid, "quiet")
    chatty, chatty_link = connect(hub, sid, "chatty")
    for _ in range(5):
        clock.advance(1)
        hub.seen(sid, chatty)
    assert quiet_link.closed == (1000, "Connection timeout")
    assert chatty_link.closed is None
    assert list(hub.get_session(sid).devices.values()) == [chatty]
    sweeps.stop()


def test_sweep_survives_an_exception(clock, logged_failures):
    hub = Hub(clock)
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("boom")

    hub.stale_devices = broken
    logged_failures.expect(RuntimeError)
    sweeps = Sweeps(hub, lambda s: None, clock, heartbeat_interval=1, cleanup_interval=60)
    sweeps.start()
    clock.advance(1)
    clock.advance(1)
    assert len(calls) == 2  # still running after the first failure
    sweeps.stop()


def test_replacement_leaves_one_device(clock):
    hub = Hub(clock)
    sid = hub.create_session().id
    _, first = connect(hub, sid, "same")
    connect(hub, sid, "same")
    assert first.closed == (4409, "Replaced")
    assert len(hub.get_session(sid).devices) == 1


def test_other_daemons_hear_of_a_session_only_when_it_gains_its_first_device_or_loses_its_last(clock):
    """A device joining a session that has devices needs no store write (a connect storm made one each)."""
    hub = Hub(clock)
    sid = hub.create_session().id
    changes = []
    hub.on_devices_changed = lambda session: changes.append(len(session.devices))
    devices = [connect(hub, sid, f"d{i}")[0] for i in range(3)]
    connect(hub, sid, "d1")  # a replaced device: still three
    assert changes == [1]
    for device in devices[:2]:
        hub.detach(sid, device)
    assert changes == [1]
    session = hub.get_session(sid)
    for device in list(session.devices.values()):
        hub.detach(sid, device)
    assert changes == [1, 0]
    connect(hub, sid, "again")
    assert changes == [1, 0, 1]


def test_delete_closes_devices(clock):
    hub = Hub(clock)
    sid = hub.create_session().id
    _, link = connect(hub, sid)
    hub.delete_session(sid)
    assert link.closed == (1000, "Session closed")
    with pytest.raises(LumoraError) as e:
        hub.get_session(sid)
    assert e.value.code == errors.SESSION_NOT_FOUND


def test_ack_never_moves_backwards(clock):
    hub = Hub(clock)
    sid = hub.create_session().id
    device, _ = connect(hub, sid)
    session = hub.get_session(sid)
    hub.acked(session, device, 5)
    hub.acked(session, device, 3)
    assert device.last_ack_sequence == 5


def test_ack_lag_marks_device_unhealthy(clock):
    hub = Hub(clock, Limits(max_ack_lag=2))
    sid = hub.create_session().id
    device, _ = connect(hub, sid)
    session = hub.get_session(sid)
    schema = make_schema()
    for i in range(4):
        schema = with_text(schema, str(i))
        push(hub, sid, schema)
    health = hub.device_health(session, device)
    assert health["healthy"] is False and health["ackLag"] == 4
    hub.acked(session, device, 4)
    assert hub.device_health(session, device)["healthy"] is True


def test_one_serialization_per_broadcast(clock):
    hub = Hub(clock)
    sid = hub.create_session(make_schema()).id
    links = [connect(hub, sid, f"d{i}")[1] for i in range(5)]
    push(hub, sid, with_text(make_schema(), "x"))
    last = {id(link.sent[-1]) for link in links}
    assert len(last) == 1  # the same Outgoing object went to everyone


def test_an_incremental_push_after_a_plain_state_scans_only_its_delta(clock):
    """The checksum of a one-leaf push is found by scanning the delta, not
    the whole schema, once the state it starts from had a plain checksum."""
    hub = Hub(clock)
    sid = hub.create_session().id
    first = push(hub, sid, big_schema())
    assert first.update_type == "full" and first.state.checksum_plain
    edited = with_text(big_schema(), "y")
    with scanned_lengths() as scanned:
        second = push(hub, sid, edited)
    assert second.update_type == "incremental" and second.state.checksum_plain
    assert second.state.checksum == schemas.checksum(edited)
    assert scanned and max(scanned) < 1000  # the schema itself is over 4 KB


def test_an_update_from_another_daemon_is_never_taken_as_plain(clock):
    """A state planned from another daemon's update was not scanned here:
    its next push scans the whole text."""
    hub = Hub(clock)
    sid = hub.create_session().id
    first = push(hub, sid, big_schema())
    other = Hub(clock)  # the daemon that committed the next update
    other_sid = other.create_session().id
    push(other, other_sid, big_schema())
    committed = push(other, other_sid, with_text(big_schema(), "y"))
    assert committed.state.checksum_plain
    received = hub.plan_received(sid, committed.entry, committed.state.schema, committed.state.schema_bytes, True)
    assert received.base is first.state and received.state.checksum_plain is False


def test_a_value_javascript_formats_differently_ends_the_plain_run(clock):
    """A pushed 1.0 (JavaScript writes 1) makes the state's checksum not
    plain; while it stays, each push scans the whole text; once it is gone,
    the state is plain again."""
    hub = Hub(clock)
    sid = hub.create_session().id
    push(hub, sid, big_schema())
    odd = with_text(big_schema(), 1.0)
    update = push(hub, sid, odd)
    assert update.update_type == "incremental"
    assert not update.state.checksum_plain
    assert update.state.checksum == schemas.checksum(odd)
    still = with_text(odd, "other", node_id="blob")  # the 1.0 stays
    update = push(hub, sid, still)
    assert not update.state.checksum_plain
    assert update.state.checksum == schemas.checksum(still)
    plain = with_text(big_schema(), "z")
    again = push(hub, sid, plain)
    assert again.state.checksum_plain and again.state.checksum == schemas.checksum(plain)


def test_a_push_turning_true_into_1_is_stored_and_sent(clock):
    """true -> 1 is equal to Python, not to JSON: the push is not taken for
    "no change"; it is stored and every device gets the full schema."""
    hub = Hub(clock)
    sid = hub.create_session().id
    push(hub, sid, make_schema([node("root", "View", [node("title", flag=True)])]))
    device, link = connect(hub, sid)
    changed = make_schema([node("root", "View", [node("title", flag=1)])])
    update = push(hub, sid, changed)
    assert update is not None and update.update_type == "full"
    assert type(hub.get_session(sid).state.schema["nodes"][0]["children"][0]["props"]["flag"]) is int
    assert link.sent[-1] is update.outgoing


def test_true_turned_into_1_beside_another_edit_heals_through_the_checksum(clock):
    """The delta cannot see true -> 1 (== in Python) when another node
    changes too; the update's checksum is the new schema's, so a checking
    device refuses the delta and its resync brings the exact schema."""
    hub = Hub(clock)
    sid = hub.create_session().id
    first = make_schema([node("root", "View", [node("title", text="a"), node("flag", on=True)])])
    push(hub, sid, first)
    device, link = connect(hub, sid)
    replica = Replica()
    replica.reset(first, 1, hub.get_session(sid).checksum)
    changed = make_schema([node("root", "View", [node("title", text="b"), node("flag", on=1)])])
    update = push(hub, sid, changed)
    assert update.update_type == "incremental"
    with pytest.raises(UpdateError) as refused:
        replica.apply(json.loads(link.sent[-1].payload)["payload"])
    assert refused.value.code == "CHECKSUM_MISMATCH"
    session = hub.get_session(sid)
    hub.resync_device(session, device)  # what an ack with success: false does
    assert replica.apply(json.loads(link.sent[-1].payload)["payload"])
    assert type(replica.schema["nodes"][0]["children"][1]["props"]["on"]) is int
    assert replica.checksum == session.checksum


def big_schema():
    """A schema with a large leaf."""
    schema = make_schema()
    schema["nodes"][0]["children"].append(node("blob", text="x" * 4000))
    return schema


def test_resume_replays_or_falls_back(clock):
    hub = Hub(clock, Limits(history_size=3))
    schema = big_schema()
    sid = hub.create_session(schema).id
    for i in range(5):
        schema = with_text(schema, str(i))
        push(hub, sid, schema)
    _, link = connect(hub, sid, "a", lastSequence=4)
    assert [o.sequence for o in link.sent[1:]] == [5, 6]
    _, link = connect(hub, sid, "b", lastSequence=2)  # 3 is gone from history
    assert len(link.sent) == 1 and b"initialSchema" in link.sent[0].payload
    _, link = connect(hub, sid, "c", lastSequence=6)
    assert len(link.sent) == 1 and b'"resumed":true' in link.sent[0].payload
    _, link = connect(hub, sid, "d", lastSequence=99)  # from a previous life
    assert b'"resumed":false' in link.sent[0].payload


def test_a_full_update_read_back_from_a_store_ends_what_can_be_replayed(clock):
    """In memory a full update's frame stays in the history and is replayed like any other; a
    history read back with it as a marker without its frame (as Redis keeps it) does not resume a
    gap reaching back past it."""
    hub = Hub(clock)
    schema = many_leaves(12)
    sid = hub.create_session(schema).id
    for text in ("a", "b"):
        push(hub, sid, with_text(schema, text, "n1"))
    full = hub.plan_push(sid, many_leaves(12, text="c"))  # twelve nodes: more than a delta carries
    assert full.update_type == "full" and full.entry.payload
    hub.apply_update(full)
    push(hub, sid, with_text(many_leaves(12, text="c"), "d", "n1"))
    _, link = connect(hub, sid, "a", lastSequence=1)
    assert [(o.sequence, o.payload) for o in link.sent[1:]] == [
        (e.sequence, e.payload) for e in hub.get_session(sid).history if e.sequence > 1]
    assert b'"type":"full"' in link.sent[3].payload
    _, link = connect(hub, sid, "old", lastSequence=1, clientVersion="1.0.0")  # a full update suits 1.0 too
    assert [o.sequence for o in link.sent[1:]] == [2, 3, 4, 5]
    session = hub.get_session(sid)
    session.state = attrs.evolve(session.state, history=tuple(
        attrs.evolve(e, payload=None) if e.update_type == "full" else e for e in session.state.history))
    _, link = connect(hub, sid, "b", lastSequence=1)
    assert b'"resumed":false' in link.sent[0].payload
    _, link = connect(hub, sid, "c", lastSequence=4)  # after the full update: replayed
    assert [o.sequence for o in link.sent[1:]] == [5]


def test_session_limit(clock):
    hub = Hub(clock, Limits(max_sessions=2))
    hub.create_session()
    hub.create_session()
    with pytest.raises(LumoraError) as e:
        hub.create_session()
    assert e.value.code == errors.RATE_LIMIT_EXCEEDED and e.value.status == 429


def test_expiry_sweep_reports_sessions_kept_alive_by_devices(clock):
    hub = Hub(clock, Limits(session_timeout=5))
    active = []
    sweeps = Sweeps(hub, lambda s: None, clock, heartbeat_interval=100, cleanup_interval=2, on_active=active.append)
    sweeps.start()
    busy = hub.create_session().id
    hub.create_session()
    connect(hub, busy)
    clock.advance(2)
    assert [s.id for s in active] == [busy]
    sweeps.stop()


def count_serializations(monkeypatch):
    """Record each compact serialization of a whole schema: the hub's own
    (encode_schema) and choose_update's size check (looked up in
    schema.choose)."""
    calls = []
    encode, size_check = schemas.encode_schema, schemas.choose._orjson_bytes
    monkeypatch.setattr(schemas, "encode_schema", lambda s, *args, **kw: calls.append("encode") or encode(s, *args, **kw))
    monkeypatch.setattr(schemas.choose, "_orjson_bytes", lambda s: calls.append("size") or size_check(s))
    return calls


def many_leaves(count, text="x"):
    return make_schema([node("root", "View", [node(f"n{i}", text=text) for i in range(count)])])


def test_an_incremental_push_serializes_the_schema_when_asked_once(clock, monkeypatch):
    hub = Hub(clock)
    base = many_leaves(40)
    sid = hub.create_session(base).id
    calls = count_serializations(monkeypatch)
    new = with_text(base, "changed", "n7")
    update = hub.plan_push(sid, new)
    # the delta goes out; nothing needed the whole schema's JSON yet
    assert update.update_type == "incremental" and calls == []
    assert update.state.schema_bytes is None
    # a full update (a device joining, a resync) serializes it, once
    full = hub._full_update(sid, update.state).payload
    wire = update.state.wire_bytes()
    assert calls == ["encode"] and wire == orjson.dumps(new) and wire in full
    assert hub._full_update(sid, update.state).payload is full
    assert update.state.wire_bytes() is wire and calls == ["encode"]


def test_a_resent_or_replayed_update_keeps_the_timestamp_it_was_made_with(clock):
    hub = Hub(clock)
    sid = hub.create_session(many_leaves(12)).id
    device, link = connect(hub, sid, "a")
    clock.advance(5)
    made = push(hub, sid, many_leaves(12, text="c"))  # twelve nodes: full
    assert made.update_type == "full"
    stamp = orjson.loads(made.outgoing.payload)["timestamp"]
    clock.advance(30)
    hub.resync_device(hub.get_session(sid), device)  # a `reload`
    _, replayed = connect(hub, sid, "b", lastSequence=1)
    for frame in (link.sent[-1].payload, replayed.sent[-1].payload):
        update = orjson.loads(frame)
        assert update["payload"]["sequenceNumber"] == 2 and update["timestamp"] == stamp


def test_a_full_push_serializes_the_schema_once(clock, monkeypatch):
    hub = Hub(clock)
    base = many_leaves(40)
    sid = hub.create_session(base).id
    calls = count_serializations(monkeypatch)
    update = hub.plan_push(sid, many_leaves(40, text="all of them"))
    assert update.update_type == "full" and calls == ["encode"]
    assert orjson.loads(update.state.schema_bytes) == update.state.schema
    assert update.state.schema_bytes in hub._full_update(sid, update.state).payload


def test_when_the_node_count_cannot_settle_the_size_check_the_bytes_made_for_it_are_kept(clock, monkeypatch):
    # one node: a delta carrying it whole is about as long as the schema
    hub = Hub(clock)
    sid = hub.create_session(make_schema([node("only", text="a" * 50)])).id
    calls = count_serializations(monkeypatch)
    update = hub.plan_push(sid, make_schema([node("only", text="b" * 50)]))
    assert calls == ["size"]
    assert update.state.schema_bytes == orjson.dumps(update.state.schema)


def nest(levels):
    value = "deep"
    for _ in range(levels):
        value = [value]
    return value


def set_prop(value):
    return lambda s: s["nodes"][0]["children"][7]["props"].update(bad=value)


def set_generated_at(value):
    return lambda s: s["metadata"].update(generatedAt=value)


@pytest.mark.parametrize(
    "edit, make_bad, path",
    [
        # keys JSON cannot have: the checksum's reference serializer trips first
        (True, lambda s: s["nodes"][0]["children"][7]["props"].update({1: "one"}), "nodes[0].children[7].props"),
        # what only the reference serializer takes: the checksum is not plain
        (True, set_prop("\ud800"), "nodes[0].children[7].props.bad"),
        (True, set_prop(2**1100), "nodes[0].children[7].props.bad"),
        # below 2**1024, yet it rounds past the largest double (a device reads Infinity)
        (True, set_prop(-(2**1024 - 2**970)), "nodes[0].children[7].props.bad"),
        (True, set_prop(nest(300)), "nodes[0].children[7].props.bad" + "[0]" * 248),
        # the one value the checksum (and the delta) leaves out
        (True, set_generated_at("\ud800"), "metadata.generatedAt"),
        (False, set_generated_at("\ud800"), "metadata.generatedAt"),
        (False, set_generated_at(2**1100), "metadata.generatedAt"),
    ],
)
def test_a_schema_json_cannot_carry_is_refused_with_its_path_whatever_the_update(clock, edit, make_bad, path):
    hub = Hub(clock)
    base = many_leaves(40)
    sid = hub.create_session(base).id
    bad = with_text(base, "changed", "n7") if edit else json.loads(json.dumps(base))
    make_bad(bad)
    with pytest.raises(LumoraError) as e:
        hub.plan_push(sid, bad)
    assert e.value.code == errors.SCHEMA_VALIDATION_FAILED
    assert e.value.details["path"] == path


class Colour(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    LARGE = 3


@dataclasses.dataclass
class Point:
    x: int


# values orjson writes without refusing them, so that a device would get
# something else than the session holds: NaN and the infinities become
# null, the rest is turned into strings or objects
NOT_JSON = [
    (float("nan"), "number nan is not finite"),
    (float("inf"), "number inf is not finite"),
    (float("-inf"), "number -inf is not finite"),
    (datetime.datetime(2024, 1, 1), "datetime is not a JSON value"),
    (uuid.UUID(int=7), "UUID is not a JSON value"),
    (Colour.RED, "Colour is not a JSON value"),
    (Point(1), "Point is not a JSON value"),
]


@pytest.mark.parametrize("value, message", NOT_JSON)
@pytest.mark.parametrize("edit", [True, False])
def test_a_value_orjson_would_change_is_refused_with_its_path(clock, value, message, edit):
    hub = Hub(clock)
    base = many_leaves(40)
    sid = hub.create_session(base).id
    bad = with_text(base, "changed", "n7") if edit else json.loads(json.dumps(base))
    set_prop(value)(bad)
    with pytest.raises(LumoraError) as e:
        hub.plan_push(sid, bad)
    assert e.value.code == errors.SCHEMA_VALIDATION_FAILED and e.value.status == 400
    assert e.value.details == {"path": "nodes[0].children[7].props.bad", "message": message}
    assert hub.get_session(sid).sequence == 1
    # a session cannot start with one either
    with pytest.raises(LumoraError) as e:
        hub.create_session(bad)
    assert e.value.details["path"] == "nodes[0].children[7].props.bad"


class Level(int, enum.Enum):  # its str() is "Level.HIGH", not "5"
    HIGH = 5


def test_subclasses_of_json_types_and_tuples_are_taken_as_their_values(clock):
    hub = Hub(clock)
    base = many_leaves(40)
    sid = hub.create_session(base).id
    schema = json.loads(json.dumps(base))
    # 1e-7 makes the checksum take its exact serializer, which must write
    # the subclass's value as the wire does
    set_prop([Size.LARGE, Level.HIGH, collections.OrderedDict(a=1), (1, 2), 1e-7])(schema)
    update = hub.plan_push(sid, schema)
    wire = orjson.loads(update.state.wire_bytes())
    assert wire["nodes"][0]["children"][7]["props"]["bad"] == [3, 5, {"a": 1}, [1, 2], 1e-7]
    assert not update.state.checksum_plain
    assert schemas.checksum(wire) == update.state.checksum  # what a device computes


def test_a_schema_that_holds_itself_is_refused_not_walked_forever(clock):
    hub = Hub(clock)
    sid = hub.create_session(many_leaves(3)).id
    schema = many_leaves(3)
    loop = {}
    loop["again"] = loop
    schema["nodes"][0]["children"][1]["props"]["loop"] = loop
    with pytest.raises(LumoraError) as e:
        hub.plan_push(sid, schema)
    assert e.value.details["message"] == "nested deeper than 254 levels of objects and arrays"
    assert e.value.details["path"].startswith("nodes[0].children[1].props.loop.again.again")


def test_a_proxy_claiming_a_json_type_is_refused_by_its_real_type(clock):
    class Pretender:
        @property
        def __class__(self):
            return str

    hub = Hub(clock)
    sid = hub.create_session(many_leaves(3)).id
    schema = many_leaves(3)
    schema["nodes"][0]["children"][1]["props"]["bad"] = Pretender()
    with pytest.raises(LumoraError) as e:
        hub.plan_push(sid, schema)
    assert e.value.details == {"path": "nodes[0].children[1].props.bad", "message": "Pretender is not a JSON value"}


def test_the_values_pass_is_one_quick_pass_and_left_out_for_parsed_schemas(clock, monkeypatch):
    hub = Hub(clock)
    base = many_leaves(40)
    sid = hub.create_session(base).id
    walked, checked = [], []
    walk, check = schemas.encode.find_unencodable, schemas.check_json_values
    monkeypatch.setattr(schemas.encode, "find_unencodable", lambda s: walked.append(1) or walk(s))
    monkeypatch.setattr(schemas, "check_json_values", lambda s: checked.append(1) or check(s))
    hub.apply_update(hub.plan_push(sid, with_text(base, "made in Python", "n7")))
    assert checked == [1] and walked == []  # plain JSON types: no path kept
    hub.apply_update(hub.plan_push(sid, json.loads(json.dumps(with_text(base, "parsed", "n7"))), fresh=True))
    assert checked == [1] and walked == []


@pytest.mark.parametrize("value, message", NOT_JSON)
@pytest.mark.parametrize("where, path", [
    ("added", "nodes[0].children[40].props.bad"),
    ("top-level", "extra.bad"),
    ("metadata", "metadata.bad"),
])
def test_a_delta_bringing_a_value_json_does_not_have_is_refused_with_its_path(clock, value, message, where, path):
    hub = Hub(clock)
    base = many_leaves(40)
    sid = hub.create_session(base).id
    bad = json.loads(json.dumps(base))
    if where == "added":
        bad["nodes"][0]["children"].append(node("n40", text="new"))
        bad["nodes"][0]["children"][40]["props"]["bad"] = value
    elif where == "top-level":
        bad["extra"] = {"bad": value}
    else:
        bad["metadata"]["bad"] = value
    with pytest.raises(LumoraError) as e:
        hub.plan_push(sid, bad)
    assert e.value.details == {"path": path, "message": message}
    assert hub.get_session(sid).sequence == 1


ODD_VALUES = [v for v, _ in NOT_JSON] + [Size.LARGE, Level.HIGH, (1, "a"), collections.OrderedDict(a=1), 1e300]


@SETTINGS
@given(edits(), st.data())
def test_a_push_made_in_python_is_refused_exactly_when_a_value_is_not_jsons(pair, data):
    """Whatever the edit and wherever an odd value lands, a push made in Python is refused when and
    only when the walk of the whole tree finds a value JSON lacks, at the same path; one accepted
    becomes the state its wire JSON and checksum say."""
    old, new = pair
    if data.draw(st.booleans()):
        places = [new, new["metadata"]] + [n.setdefault("props", {}) for n in walk(new["nodes"])]
        place = places[data.draw(st.integers(0, len(places) - 1))]
        place[data.draw(st.sampled_from(["odd", "text", "extra"]))] = data.draw(st.sampled_from(ODD_VALUES))
    hub = Hub(task.Clock())
    sid = hub.create_session(old).id
    problem = schemas.find_unencodable(new)
    try:
        update = hub.plan_push(sid, new)
    except LumoraError as e:
        assert problem is not None and e.details == {"path": problem[0], "message": problem[1]}
        return
    assert problem is None
    if update is not None:
        wire = orjson.loads(update.state.wire_bytes())
        assert schemas.checksum(wire) == update.state.checksum


def test_a_non_finite_generated_at_is_refused_though_the_delta_leaves_it_out(clock):
    """The delta (and the checksum) read generatedAt as if it were 0: its value is checked anyway."""
    hub = Hub(clock)
    base = many_leaves(3)
    sid = hub.create_session(base).id
    for edit in (True, False):
        new = with_text(base, "changed", "n1") if edit else json.loads(json.dumps(base))
        new["metadata"]["generatedAt"] = float("nan")
        with pytest.raises(LumoraError) as e:
            hub.plan_push(sid, new)
        assert e.value.details == {"path": "metadata.generatedAt", "message": "number nan is not finite"}


def test_tuples_nested_past_any_limit_are_refused_before_a_serializer_sees_them():
    """orjson bounds the nesting of lists and objects but not of tuples: thousands of nested tuples
    crash the process inside it. A push made in Python is walked for depth before any serializer
    runs (in a child process: a crash must fail this test, not end the run)."""
    code = (
        "from twisted.internet import task\n"
        "from lumora_reload.errors import LumoraError\n"
        "from lumora_reload.sessions import Hub\n"
        "from tests.helpers import make_schema, node, with_text\n"
        "hub = Hub(task.Clock())\n"
        "base = make_schema([node('root', 'View', [node('a', text='x')])])\n"
        "sid = hub.create_session(base).id\n"
        "value = 1\n"
        "for _ in range(10000):\n"
        "    value = (value,)\n"
        "for made in (lambda s: hub.plan_push(sid, s), hub.create_session):\n"
        "    new = with_text(base, 'y', 'a')\n"
        "    new['nodes'][0]['children'][0]['props']['deep'] = value\n"
        "    try:\n"
        "        made(new)\n"
        "    except LumoraError as e:\n"
        "        print(e.details['message'])\n"
    )
    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(root)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["nested deeper than 254 levels of objects and arrays"] * 2


def test_depth_counts_from_the_schema_root_through_nodes_and_tuples(clock):
    """A leaf 100 nodes down (about 200 levels) holding 60 nested tuples is past 254 levels, though
    the leaf alone is not."""
    def chain(text):
        current = node("leaf", text=text)
        for i in range(100):
            current = node(f"c{i}", "View", [current])
        return make_schema([current])

    hub = Hub(clock)
    sid = hub.create_session(chain("x")).id
    new = chain("y")
    leaf = new["nodes"][0]
    while leaf["children"]:
        leaf = leaf["children"][0]
    value = 1
    for _ in range(60):
        value = (value,)
    leaf["props"]["deep"] = value
    with pytest.raises(LumoraError) as e:
        hub.plan_push(sid, new)
    assert e.value.details["message"] == "nested deeper than 254 levels of objects and arrays"


def test_a_modified_node_nested_too_deep_is_refused_after_a_checked_state(clock):
    hub = Hub(clock)
    base = many_leaves(3)
    sid = hub.create_session(base).id
    deep = json.loads(json.dumps(base))
    value = 1
    for _ in range(260):
        value = [value]
    deep["nodes"][0]["children"][1]["props"]["deep"] = value
    with pytest.raises(LumoraError) as e:
        hub.plan_push(sid, deep)
    assert e.value.details["message"] == "nested deeper than 254 levels of objects and arrays"
    assert hub.get_session(sid).sequence == 1


@pytest.mark.parametrize("value, message", NOT_JSON)
def test_encode_schema_refuses_what_json_does_not_have_unless_told_the_values_are_jsons(value, message):
    schema = many_leaves(3)
    set_prop_of = schema["nodes"][0]["children"][1]["props"]
    set_prop_of["bad"] = value
    with pytest.raises(schemas.SchemaError) as e:
        schemas.encode_schema(schema)
    assert (e.value.path, e.value.message) == ("nodes[0].children[1].props.bad", message)
    # parsed from JSON text, a schema cannot hold such a value: no second look
    assert schemas.encode_schema(schema, json_values=True) == orjson.dumps(schema)


def test_the_leak_check_sees_our_timers_and_not_others(reactor, clock):
    """tests/conftest.py's dirty-reactor check: a sweep left running on the
    reactor is reported (and cancelled); a third-party timer is not."""
    from tests.conftest import leaked_timers

    before = set(map(id, reactor.getDelayedCalls()))
    sweeps = Sweeps(Hub(clock), lambda s: None, reactor, heartbeat_interval=60, cleanup_interval=60)
    sweeps.start()
    other = reactor.callLater(60, print)
    leaked = leaked_timers(reactor, before)
    assert len(leaked) == 2 and not any(c.active() for c in leaked)
    assert other.active()
    other.cancel()


def test_a_seed_is_replayed_from_the_option_or_the_environment():
    from tests.conftest import choose_seed

    assert choose_seed(7, {"LUMORA_SEED": "9"}) == 7
    assert choose_seed(None, {"LUMORA_SEED": "9"}) == 9
    assert 0 <= choose_seed(None, {}) < 2**32


def test_only_the_gapless_run_up_to_the_state_is_replayable_history():
    from lumora_reload.model import HistoryEntry, consecutive_history

    entries = [HistoryEntry(n, "incremental", True, b"x") for n in (1, 2, 4, 5, 6)]
    assert [e.sequence for e in consecutive_history(entries, 6)] == [4, 5, 6]
    assert consecutive_history(entries, 7) == ()  # the state itself is missing
    assert consecutive_history((), 3) == ()


def count_validations(monkeypatch):
    """Record each validation of a whole tree (with or without its index)."""
    calls = []
    for name in ("validate", "node_index"):
        whole = getattr(schemas, name)
        monkeypatch.setattr(schemas, name, lambda s, whole=whole: calls.append(1) or whole(s))
    return calls


def push_fresh(hub, sid, schema):
    """A push of a schema parsed for it, as the HTTP layer makes."""
    update = hub.plan_push(sid, json.loads(json.dumps(schema)), fresh=True)
    hub.apply_update(update)
    return update


def test_a_fresh_push_validates_only_what_changed_and_keeps_the_tree_index(clock, monkeypatch):
    hub = Hub(clock)
    base = many_leaves(200)
    sid = hub.create_session(base).id
    calls = count_validations(monkeypatch)
    edits = [
        lambda s: s["nodes"][0]["children"][7]["props"].update(text="changed"),
        lambda s: s["nodes"][0]["children"].append(node("extra", text="new")),
        lambda s: s["nodes"][0]["children"].pop(3),
        lambda s: s["nodes"].append(s["nodes"][0]["children"].pop(0)),  # moved to the top
    ]
    first = push_fresh(hub, sid, with_text(base, "first", "n1"))
    # the state it came from was not made by a fresh push: validated whole, and indexed
    assert calls == [1] and first.state.index == schemas.validation.node_index(first.state.schema)
    schema = first.state.schema
    for edit in edits:
        schema = json.loads(json.dumps(schema))
        edit(schema)
        update = push_fresh(hub, sid, schema)
        assert update.update_type == "incremental"
        assert update.state.index == schemas.validation.node_index(schema)  # (not counted)
    assert calls == [1]  # the committed tree stood for everything the deltas did not touch


def test_a_push_of_objects_the_caller_holds_is_validated_whole(clock, monkeypatch):
    hub = Hub(clock)
    schema = many_leaves(20)
    sid = hub.create_session(schema).id
    push_fresh(hub, sid, with_text(schema, "indexed", "n1"))
    calls = count_validations(monkeypatch)
    mine = with_text(schema, "mine", "n1")
    update = push(hub, sid, mine)
    assert calls == [1] and update.state.index is None
    # changed in place after the push: still refused, though a delta would see nothing
    mine["nodes"][0]["children"][2]["id"] = "n1"
    with pytest.raises(LumoraError) as refused:
        push(hub, sid, mine)
    assert refused.value.details["path"] == "nodes[0].children[2]"
    assert "duplicate node id 'n1'" in refused.value.message


@pytest.mark.parametrize(
    "break_it",
    [
        lambda s: s["nodes"][0]["children"].append(dict(s["nodes"][0]["children"][150])),  # a pasted copy
        lambda s: s["nodes"][0]["children"][7].update(id="n150"),  # an id held far away
        lambda s: s["nodes"][0]["children"][7].update(id=7),
        lambda s: s["nodes"][0]["children"][7].pop("type"),
        lambda s: s["nodes"][0]["children"][7].update(props=[]),
        lambda s: s["nodes"][0]["children"][7].update(children={"n": 1}),
        lambda s: s["nodes"][0]["children"].insert(5, "not a node"),
        lambda s: s["nodes"][0]["children"][7].update(children=[{"id": "x"}]),
        lambda s: s.update(version=2),
    ],
)
def test_a_push_the_delta_cannot_vouch_for_is_refused_as_validation_refuses_it(clock, break_it):
    hub = Hub(clock)
    base = many_leaves(200)
    sid = hub.create_session(base).id
    committed = push_fresh(hub, sid, with_text(base, "indexed", "n9")).state
    assert committed.index is not None
    bad = with_text(base, "changed", "n9")
    break_it(bad)
    with pytest.raises(LumoraError) as expected:
        Hub.validate(bad)
    with pytest.raises(LumoraError) as refused:
        hub.plan_push(sid, bad, fresh=True)
    assert (refused.value.code, refused.value.message, refused.value.details) == (
        expected.value.code, expected.value.message, expected.value.details)
    assert refused.value.code == errors.SCHEMA_VALIDATION_FAILED
    # nothing changed: the next good push is planned from the same state
    assert hub.get_session(sid).state is committed
    assert push_fresh(hub, sid, with_text(base, "fine", "n9")).base is committed
