"""A push is a transaction, seen from the outside: a real `twistd -n
lumora-reload` on a temporary data dir, real HTTP and WebSocket devices, one
test per defect found (cluster mode aside, see tests/test_cluster.py):

- a push whose SQLite write fails (the database locked by another program)
  answers 500 and changes nothing: number, schema, `initialSchema`, devices;
  the next push takes the next number, and after SIGKILL a device resumes
  at the last stored number with the right state;
- schemas that cannot travel (nesting past `MAX_DEPTH`, ``1e400``, a lone
  surrogate) are refused with 400 and the path, and use up no number; a
  schema exactly `MAX_DEPTH` deep is accepted and updated incrementally;
- a device claiming a number the daemon is not at, or a checksum that is not
  the one of that number, is not resumed: it gets the full schema;
- extending a session is not undone by a device's activity;
- a `DELETE` that cannot be stored answers 500 and closes nothing.
"""

import signal
import sqlite3

import orjson
import pytest_twisted
from twisted.internet import defer

from lumora_reload import schema as schemas
from lumora_reload.sqlite_store import DB_NAME
from tests.helpers import make_schema, node, with_text
from tests.test_durability import base_schema, spawn, stop  # noqa: F401 (spawn is a fixture)


class Locked:
    """Another program holding the write lock of the daemon's database
    (the daemon's busy_timeout is 0: its writes fail at once)."""

    def __init__(self, data_dir):
        self.db = sqlite3.connect(str(data_dir / DB_NAME), isolation_level=None)
        self.db.execute("BEGIN EXCLUSIVE")

    def release(self):
        if self.db is not None:
            self.db.execute("ROLLBACK")
            self.db.close()
            self.db = None


async def quiet(device):
    """Prove that nothing reached `device` since its last message: a ping
    is answered in order, so the next message must be the pong."""
    device.send("ping", {})
    which, result = await defer.race([device.next(), device.wait_closed()])
    assert which == 0, f"the device was closed: {result}"
    assert result["type"] == "pong", result


async def state(remote, sid):
    """(sequence number, schema) as the REST API shows them."""
    status, info = await remote.call("GET", f"/session/{sid}")
    assert status == 200, info
    status, schema = await remote.call("GET", f"/session/{sid}/schema")
    assert status == 200, schema
    return info["sequenceNumber"], schema


async def refused(remote, sid, path, *, body=None, raw=None):
    """POST /send is answered 400 SCHEMA_VALIDATION_FAILED naming `path`."""
    headers = {"Content-Type": "application/json"} if raw is not None else None
    status, result = await remote.call("POST", f"/send/{sid}", body, headers=headers, data=raw)
    assert status == 400, result
    assert result["code"] == "SCHEMA_VALIDATION_FAILED", result
    assert result["path"] == path, result


class Replica:
    """What a device holds, built only from what it was sent."""

    def __init__(self, hello):
        self.sequence = hello["sequenceNumber"]
        self.schema = hello.get("initialSchema")
        assert self.schema is None or schemas.checksum(self.schema) == hello["checksum"]

    def apply(self, update):
        p = update["payload"]
        if p["type"] == "full":
            self.schema = p["schema"]
        else:
            assert p["sequenceNumber"] == self.sequence + 1, p
            self.schema = schemas.apply_delta(self.schema, p["delta"])
        assert schemas.checksum(self.schema) == p["checksum"], "replica and daemon disagree"
        self.sequence = p["sequenceNumber"]
        return p


# -- (i) a store write that fails ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_push_to_a_locked_database_changes_nothing(spawn, tmp_path):
    data_dir = tmp_path / "state"
    proc, remote = await spawn(data_dir)
    schema = base_schema()
    sid = await remote.new_session(schema)
    v2 = with_text(schema, "v2")
    assert (await remote.push(sid, v2))["sequenceNumber"] == 2
    device = await remote.device(sid)
    hello = await device.hello(device_id="phone")
    assert hello["sequenceNumber"] == 2

    lock = Locked(data_dir)
    try:
        status, result = await remote.call("POST", f"/send/{sid}", with_text(schema, "never stored"))
        assert status == 500, result
        assert await state(remote, sid) == (2, v2)
        late = await remote.device(sid)
        late_hello = await late.hello(device_id="tablet")
        assert (late_hello["sequenceNumber"], late_hello["initialSchema"]) == (2, v2)
        await quiet(device)
    finally:
        lock.release()

    v3 = with_text(schema, "v3")
    assert (await remote.push(sid, v3))["sequenceNumber"] == 3  # no gap
    for d in (device, late):
        update = (await d.next_of("update"))["payload"]
        assert (update["sequenceNumber"], update["checksum"]) == (3, schemas.checksum(v3))

    proc.signal("KILL")
    assert await proc.ended == -signal.SIGKILL
    proc, remote = await spawn(data_dir)
    assert await state(remote, sid) == (3, v3)
    back = await remote.device(sid)
    hello = await back.hello(device_id="phone", lastSequence=3, lastChecksum=schemas.checksum(v3))
    assert (hello["resumed"], hello["sequenceNumber"]) == (True, 3)
    # the number after the refused push names the schema pushed after it
    assert (await remote.push(sid, with_text(schema, "v4")))["sequenceNumber"] == 4
    assert (await back.next_of("update"))["payload"]["sequenceNumber"] == 4
    for d in (device, late, back):
        d.dropConnection()
    await stop(proc)


# -- (ii) nesting depth --------------------------------------------------------


def nested(levels, text="deep"):
    """A valid schema whose JSON nests exactly `levels` deep (the schema
    object is level 1; a chain of nodes, the innermost with empty props)."""
    assert levels % 2 == 0 and levels >= 4
    inner = {"id": "n0", "type": "View", "props": {}, "children": []}
    leaf = inner
    for i in range(1, (levels - 2) // 2):
        inner = {"id": f"n{i}", "type": "View", "children": [inner]}
    leaf["props"]["text"] = text
    return make_schema([inner])


def depth(value):
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


@pytest_twisted.ensureDeferred
async def test_too_deep_a_schema_is_refused_with_its_path(spawn, tmp_path):
    proc, remote = await spawn(tmp_path / "state")
    schema = base_schema()
    sid = await remote.new_session(schema)
    too_deep = nested(480)
    assert depth(too_deep) == 480
    status, result = await remote.call("POST", f"/send/{sid}", too_deep)
    assert status == 400, result
    assert result["code"] == "SCHEMA_VALIDATION_FAILED" and result["path"].startswith("nodes[0].children[0]")
    status, result = await remote.call("POST", f"/send/{sid}", nested(schemas.MAX_DEPTH + 2))
    assert status == 400, result
    assert await state(remote, sid) == (1, schema)
    assert (await remote.push(sid, with_text(schema, "next")))["sequenceNumber"] == 2  # no number used
    await stop(proc)


@pytest_twisted.ensureDeferred
async def test_a_schema_at_the_maximum_depth_travels(spawn, tmp_path):
    proc, remote = await spawn(tmp_path / "state")
    deepest = nested(schemas.MAX_DEPTH)
    assert depth(deepest) == schemas.MAX_DEPTH
    sid = await remote.new_session()
    device = await remote.device(sid)
    replica = Replica(await device.hello(device_id="phone"))
    assert (await remote.push(sid, deepest))["sequenceNumber"] == 1
    replica.apply(await device.next_of("update"))
    assert replica.schema == deepest
    for i, text in enumerate(["deeper", "deepest"], start=2):
        changed = nested(schemas.MAX_DEPTH, text)
        result = await remote.push(sid, changed)
        assert (result["sequenceNumber"], result["updateType"]) == (i, "incremental")
        assert replica.apply(await device.next_of("update"))["type"] == "incremental"
        assert replica.schema == changed
    assert await state(remote, sid) == (3, nested(schemas.MAX_DEPTH, "deepest"))
    late = await remote.device(sid)
    hello = await late.hello(device_id="tablet", lastSequence=1)  # replays 2 and 3, or starts afresh
    late_replica = Replica({"sequenceNumber": 1, "initialSchema": deepest,
                            "checksum": schemas.checksum(deepest)})
    if not hello["resumed"]:
        late_replica = Replica(hello)
    else:
        for _ in range(2):
            late_replica.apply(await late.next_of("update"))
    assert (late_replica.sequence, late_replica.schema) == (3, replica.schema)
    for d in (device, late):
        d.dropConnection()
    await stop(proc)


# -- (iii) values JSON cannot carry to a device --------------------------------


@pytest_twisted.ensureDeferred
async def test_unencodable_values_are_refused_with_their_path(spawn, tmp_path):
    proc, remote = await spawn(tmp_path / "state")
    schema = base_schema()
    sid = await remote.new_session(schema)
    body = orjson.dumps(make_schema([node("root", "View", [node("title", text="@")])]))
    await refused(remote, sid, "nodes[0].children[0].props.text", raw=body.replace(b'"@"', b'"\\ud800"'))
    await refused(remote, sid, "nodes[0].children[0].props.text", raw=body.replace(b'"@"', b"1e400"))
    await refused(remote, sid, "nodes[0].children[0].props.text", raw=body.replace(b'"@"', b"-1e400"))
    with_key = body.replace(b'"text":"@"', b'"\\udc00":1')
    await refused(remote, sid, "nodes[0].children[0].props.\\udc00", raw=with_key)  # the path is JSON too
    assert await state(remote, sid) == (1, schema)
    device = await remote.device(sid)
    hello = await device.hello(device_id="phone")
    assert (hello["sequenceNumber"], hello["initialSchema"]) == (1, schema)
    assert (await remote.push(sid, with_text(schema, "ok")))["sequenceNumber"] == 2
    device.dropConnection()
    await stop(proc)


# -- (iv) claims the daemon must not believe -------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_device_ahead_or_on_another_state_starts_afresh(spawn, tmp_path):
    """The data dir is restored from a backup taken at number 2 after the
    daemon reached 4: number 3 then names another schema than the one a
    device saw as 3, and 4 does not exist yet."""
    data_dir = tmp_path / "state"
    backup = tmp_path / "backup"
    proc, remote = await spawn(data_dir)
    schema = base_schema()
    sid = await remote.new_session(schema)
    v2 = with_text(schema, "v2")
    await remote.push(sid, v2)
    await stop(proc)
    backup.mkdir()
    (backup / DB_NAME).write_bytes((data_dir / DB_NAME).read_bytes())

    proc, remote = await spawn(data_dir)
    device = await remote.device(sid)
    replica = Replica(await device.hello(device_id="phone"))
    old3, v4 = with_text(schema, "v3 before the restore"), with_text(schema, "v4")
    await remote.push(sid, old3)
    await remote.push(sid, v4)
    for _ in range(2):
        replica.apply(await device.next_of("update"))
    seen3 = schemas.checksum(old3)
    await stop(proc)

    (data_dir / DB_NAME).write_bytes((backup / DB_NAME).read_bytes())
    for suffix in ("-wal", "-shm"):
        (data_dir / (DB_NAME + suffix)).unlink(missing_ok=True)
    proc, remote = await spawn(data_dir)
    assert await state(remote, sid) == (2, v2)
    ahead = await remote.device(sid)
    hello = await ahead.hello(device_id="phone", lastSequence=4, lastChecksum=replica_checksum(replica))
    assert (hello["resumed"], hello["sequenceNumber"], hello["initialSchema"]) == (False, 2, v2)
    ahead_plain = await remote.device(sid)
    hello = await ahead_plain.hello(device_id="watch", lastSequence=4)
    assert (hello["resumed"], hello["initialSchema"]) == (False, v2)

    new3 = with_text(schema, "v3 after the restore")
    assert (await remote.push(sid, new3))["sequenceNumber"] == 3
    other = await remote.device(sid)
    hello = await other.hello(device_id="tablet", lastSequence=3, lastChecksum=seen3)
    assert (hello["resumed"], hello["sequenceNumber"], hello["initialSchema"]) == (False, 3, new3)
    assert hello["checksum"] == schemas.checksum(new3)
    # the right checksum for the number resumes (so the refusals above are about the claim)
    right = await remote.device(sid)
    hello = await right.hello(device_id="laptop", lastSequence=3, lastChecksum=schemas.checksum(new3))
    assert (hello["resumed"], hello["sequenceNumber"]) == (True, 3)
    for d in (device, ahead, ahead_plain, other, right):
        d.dropConnection()
    await stop(proc)


def replica_checksum(replica):
    return schemas.checksum(replica.schema)


# -- (v) extend --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_device_activity_does_not_undo_an_extend(spawn, tmp_path):
    proc, remote = await spawn(tmp_path / "state", "--session-timeout", "60")
    sid = await remote.new_session(base_schema())
    status, result = await remote.call("POST", f"/session/{sid}/extend", {"seconds": 3600})
    assert status == 200, result
    extended = result["expiresAt"]
    device = await remote.device(sid)
    await device.hello(device_id="phone")
    await quiet(device)  # a ping: device activity
    device.send("log", {"level": "info", "message": "hello"})
    await quiet(device)
    status, info = await remote.call("GET", f"/session/{sid}")
    assert info["expiresAt"] >= extended, (info["expiresAt"], extended)
    device.sendClose()
    await device.wait_closed()
    await remote.push(sid, with_text(base_schema(), "a push is activity too"))
    status, info = await remote.call("GET", f"/session/{sid}")
    assert info["expiresAt"] >= extended, (info["expiresAt"], extended)
    status, stats = await remote.call("GET", "/stats")
    [details] = stats["sessionDetails"]
    assert details["expiresAt"] >= extended
    await stop(proc)


# -- (vi) delete -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delete_that_cannot_be_stored_closes_nothing(spawn, tmp_path):
    data_dir = tmp_path / "state"
    proc, remote = await spawn(data_dir)
    schema = base_schema()
    sid = await remote.new_session(schema)
    device = await remote.device(sid)
    await device.hello(device_id="phone")

    lock = Locked(data_dir)
    try:
        status, result = await remote.call("DELETE", f"/session/{sid}")
        assert status == 500, result
        await quiet(device)  # still connected
        assert await state(remote, sid) == (1, schema)
        status, info = await remote.call("GET", f"/session/{sid}")
        assert info["connectedDevices"] == 1
    finally:
        lock.release()

    # still a working session
    assert (await remote.push(sid, with_text(schema, "v2")))["sequenceNumber"] == 2
    assert (await device.next_of("update"))["payload"]["sequenceNumber"] == 2

    status, result = await remote.call("DELETE", f"/session/{sid}")
    assert status == 200, result
    code, reason = await device.wait_closed()
    assert code == 1000, (code, reason)
    status, _ = await remote.call("GET", f"/session/{sid}")
    assert status == 404

    proc.signal("KILL")
    assert await proc.ended == -signal.SIGKILL
    proc, remote = await spawn(data_dir)
    status, _ = await remote.call("GET", f"/session/{sid}")
    assert status == 404, "a deleted session came back after a restart"
    await stop(proc)
