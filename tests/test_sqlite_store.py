"""The SQLite session store: round trips, pruning, migrations, purge,
locking, refusals, and a push that cannot be stored."""

import os
import sqlite3
import stat

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.task import deferLater

from lumora_reload import sqlite_store
from lumora_reload.schema import encode_schema
from lumora_reload.server import HotReloadServer
from lumora_reload.model import EMPTY, TOMBSTONE_SECONDS
from lumora_reload.sessions import HistoryEntry, Outgoing, PreparedUpdate, Session, State
from lumora_reload.sqlite_store import SQLiteStore, StoreError
from tests.helpers import connected_device, make_schema, node, with_text


def open_store(path, clock=None):
    return SQLiteStore.open(str(path), clock=clock or task.Clock())


def session(session_id="s" * 32, last_activity=100.0, timeout=60.0, **extra):
    return Session(id=session_id, created_at=1700000000000, timeout=timeout, last_activity=last_activity, **extra)


def push(store, s, schema, update_type="incremental", history_size=64, preserve_state=True, at=0.0):
    """What the service does for one push: plan from the committed state (at
    `at` on the hub's clock), commit it to the store, then make it the
    session's state."""
    sequence = s.sequence + 1
    payload = f"frame-{sequence}".encode() if update_type == "incremental" else None
    entry = HistoryEntry(sequence, update_type, sequence % 2 == 0, payload, f"sum-{sequence}")
    history = (s.history + (entry,))[-history_size:]
    state = State(sequence, schema, f"sum-{sequence}", preserve_state, encode_schema(schema), history)
    store.commit_push(PreparedUpdate(s.id, s.state, state, update_type, Outgoing(b""), entry, True, at))
    s.state = state
    return entry


def rows(store, sql, *args):
    db = sqlite3.connect(store.path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_round_trip(tmp_path):
    store = open_store(tmp_path)
    assert store.load() == []
    s = session()
    store.save_session(s)
    schema = make_schema(big=2**70)  # beyond 64 bits: stored via plain JSON
    push(store, s, make_schema(), "full")
    push(store, s, schema, preserve_state=False)
    store.close()

    store = open_store(tmp_path)
    [back] = store.load()
    assert (back.id, back.created_at, back.timeout, back.last_activity) == (s.id, s.created_at, 60.0, 100.0)
    assert (back.schema, back.checksum, back.sequence) == (schema, "sum-2", 2)
    assert back.preserve_state is False
    assert list(back.history) == list(s.history)
    assert back.history[0] == HistoryEntry(1, "full", False, None, "sum-1")
    assert back.history[1] == HistoryEntry(2, "incremental", True, b"frame-2", "sum-2")
    assert back.devices == {}
    store.close()


def test_session_without_schema_round_trips(tmp_path):
    store = open_store(tmp_path)
    store.save_session(session())
    store.close()
    [back] = open_store(tmp_path).load()
    assert (back.schema, back.checksum, back.sequence, back.preserve_state) == (None, None, 0, True)
    assert list(back.history) == []


def test_history_is_pruned_to_what_the_session_keeps(tmp_path):
    store = open_store(tmp_path)
    s = session()
    store.save_session(s)
    for i in range(10):
        push(store, s, make_schema(n=i), history_size=3)
    assert rows(store, "SELECT sequence FROM history ORDER BY sequence") == [(8,), (9,), (10,)]
    store.close()
    [back] = open_store(tmp_path).load()
    assert [e.sequence for e in back.history] == [8, 9, 10]


def test_a_push_planned_from_another_state_is_refused_and_writes_nothing(tmp_path):
    from lumora_reload.store import StoreConflict

    store = open_store(tmp_path)
    s = session()
    store.save_session(s)
    push(store, s, make_schema())
    stale = session()  # planned from sequence 0 although 1 is stored
    with pytest.raises(StoreConflict) as e:
        push(store, stale, make_schema(n="stale"))
    assert e.value.current == 1
    store.close()
    [back] = open_store(tmp_path).load()
    assert back.sequence == 1 and back.schema == make_schema()


def test_extend_and_touch_are_stored_without_rewriting_the_schema(tmp_path):
    store = open_store(tmp_path)
    s = session()
    store.save_session(s)
    push(store, s, make_schema())
    db = store._db
    before = db.total_changes
    store.save_session(s)  # nothing changed: no write at all
    assert db.total_changes == before
    s.last_activity = 500.0
    store.save_session(s)
    assert db.total_changes == before + 1
    store.close()
    [back] = open_store(tmp_path).load()
    assert back.last_activity == 500.0 and back.sequence == 1


def test_a_push_stores_the_session_activity_and_never_moves_it_back(tmp_path):
    """After a crash a session's expiry counts from its last push (an
    extended expiry ahead of it stays)."""
    clock = task.Clock()
    store = open_store(tmp_path, clock)
    s = session(last_activity=500.0)  # extended ahead of the clock
    store.save_session(s)
    push(store, s, make_schema(), at=clock.seconds())
    clock.advance(700)
    push(store, s, with_text(make_schema(), "later"), at=clock.seconds())
    before = store._db.total_changes
    s.last_activity = 700.0  # the service touches the session as the push applies
    store.save_session(s)
    assert store._db.total_changes == before  # that row is already stored
    store.close()
    store = open_store(tmp_path, task.Clock())
    [s] = store.load()
    assert s.last_activity == 700.0 and s.sequence == 2
    push(store, s, with_text(make_schema(), "even later"))  # at 0: behind what is stored
    store.close()
    store = open_store(tmp_path)
    [back] = store.load()
    store.close()
    assert back.last_activity == 700.0 and back.sequence == 3


def test_a_push_is_stored_as_activity_on_the_daemons_clock(tmp_path):
    """The time stored with a push is the daemon's, as every other stored
    time is, whatever clock the store was opened with."""
    clock = task.Clock()
    clock.advance(100)
    hot = HotReloadServer(store=SQLiteStore.open(str(tmp_path)), clock=clock)  # the store on the wall clock
    hot.startService()
    session = hot.create_session(make_schema())
    clock.advance(250)
    assert hot.push_update(session.id, with_text(make_schema(), "two")).sequence_number == 2
    hot.store.close()
    store = open_store(tmp_path)
    [back] = store.load()
    store.close()
    assert back.last_activity == 350.0


def test_delete_removes_every_row(tmp_path):
    store = open_store(tmp_path)
    s, other = session("a" * 32), session("b" * 32)
    for x in (s, other):
        store.save_session(x)
        push(store, x, make_schema())
    store.delete_session(s.id)
    for table in ("sessions", "states", "history"):
        column = "id" if table == "sessions" else "session_id"
        assert rows(store, f"SELECT DISTINCT {column} FROM {table}") == [(other.id,)]
    store.close()
    assert [x.id for x in open_store(tmp_path).load()] == [other.id]


def test_load_keeps_an_expired_session_as_a_tombstone_for_a_day(tmp_path):
    """A session that expired (here while no daemon ran) loses its schema and history at once; its
    row stays a day, and `load` gives it back without a state, so that it still answers 410."""
    clock = task.Clock()
    store = open_store(tmp_path, clock)
    live, dead = session("l" * 32, last_activity=100.0), session("d" * 32, last_activity=10.0)
    for x in (live, dead):
        store.save_session(x)
        push(store, x, make_schema())
    store.close()
    clock.advance(100.0)  # dead expired at 70, live expires at 160
    store = open_store(tmp_path, clock)
    back = {x.id: x for x in store.load()}
    assert back[live.id].sequence == 1
    assert back[dead.id].state is EMPTY and back[dead.id].idle_past_expiry(clock.seconds())
    for table in ("states", "history"):
        assert rows(store, f"SELECT DISTINCT session_id FROM {table}") == [(live.id,)]
    store.close()
    clock.advance(TOMBSTONE_SECONDS + 100)  # over a day after both expired
    store = open_store(tmp_path, clock)
    assert store.load() == []
    assert rows(store, "SELECT id FROM sessions") == []
    store.close()


def test_an_expired_session_forgets_its_state_and_keeps_its_row(tmp_path):
    clock = task.Clock()
    store = open_store(tmp_path, clock)
    s = session()
    store.save_session(s)
    push(store, s, make_schema())
    store.expire_session(s.id)
    assert rows(store, "SELECT id FROM sessions") == [(s.id,)]
    assert rows(store, "SELECT * FROM states") == rows(store, "SELECT * FROM history") == []
    store.delete_session(s.id)  # a deleted session leaves nothing
    assert rows(store, "SELECT id FROM sessions") == []
    # expiring one purges the rows of those that expired over a day ago
    old, recent, now = session("o" * 32, last_activity=0.0), session("r" * 32, last_activity=100.0), session("n" * 32)
    for x in (old, recent, now):
        store.save_session(x)
    clock.advance(TOMBSTONE_SECONDS + 100)  # old expired at 60, recent at 160
    store.expire_session(now.id)
    assert sorted(rows(store, "SELECT id FROM sessions")) == [(now.id,), (recent.id,)]
    store.close()


@pytest_twisted.ensureDeferred
async def test_an_expired_session_answers_410_after_a_restart(daemon_factory, tmp_path):
    daemon = await daemon_factory(store=SQLiteStore.open(str(tmp_path)), cleanup_interval=0.05)
    sid = (await daemon.call("POST", "/session/new", {"schema": make_schema(), "timeoutSeconds": 0.1}))[1]["sessionId"]
    gone = await daemon.call("DELETE", f"/session/{(await daemon.new_session())}")
    assert gone[0] == 200
    while sid in daemon.server.hub.sessions:  # the sweep expires it
        await deferLater(daemon.reactor, 0.05)
    assert (await daemon.call("GET", f"/session/{sid}"))[0] == 410
    exposition = daemon.server.metrics.exposition().decode()
    assert 'lumora_reload_store_write_seconds_count{operation="expire_session"} 1.0' in exposition
    expired_at = daemon.server.hub.tombstones[sid]
    await daemon.stop()

    daemon = await daemon_factory(store=SQLiteStore.open(str(tmp_path)))
    status, body = await daemon.call("GET", f"/session/{sid}")
    assert (status, body["code"]) == (410, "SESSION_EXPIRED")
    # remembered from when it expired (a day from then), not from the restart
    assert daemon.server.hub.tombstones[sid] <= expired_at
    assert (await daemon.call("GET", "/stats"))[1]["sessions"] == 0


def test_migrations_are_versioned_and_idempotent(tmp_path):
    store = open_store(tmp_path)
    s = session()
    store.save_session(s)
    store.close()
    for _ in range(2):  # re-running the (already applied) migrations would fail
        store = open_store(tmp_path)
        assert [x.id for x in store.load()] == [s.id]
        store.close()
    assert rows(store, "PRAGMA user_version") == [(sqlite_store.VERSION,)]
    assert rows(store, "PRAGMA application_id") == [(sqlite_store.APPLICATION_ID,)]
    assert rows(store, "PRAGMA journal_mode") == [("wal",)]


def test_a_newer_format_is_refused(tmp_path):
    open_store(tmp_path).close()
    db = sqlite3.connect(tmp_path / sqlite_store.DB_NAME)
    db.execute(f"PRAGMA user_version = {sqlite_store.VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer lumora-reload"):
        open_store(tmp_path)


def test_a_foreign_database_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / sqlite_store.DB_NAME)
    db.execute("CREATE TABLE photos (id)")
    db.close()
    with pytest.raises(StoreError, match="did not write"):
        open_store(tmp_path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    (tmp_path / sqlite_store.DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a lumora-reload database or is damaged.*move it aside"):
        open_store(tmp_path)
    open_store(tmp_path / "elsewhere").close()  # the lock was released


def test_a_damaged_database_is_refused(tmp_path):
    store = open_store(tmp_path)
    for i in range(50):
        s = session(f"{i:032d}")
        store.save_session(s)
        push(store, s, make_schema(pad="x" * 3000))
    store.close()
    path = tmp_path / sqlite_store.DB_NAME
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    for at in range(3 * page, 20 * page, page):  # scribble over b-tree pages
        data[at:at + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as e:
        open_store(tmp_path)
    assert "damaged" in str(e.value) and "\n" not in str(e.value)


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="is not a directory"):
        open_store(tmp_path / "file")


def test_second_store_on_the_same_dir_is_refused(tmp_path):
    first = open_store(tmp_path)
    with pytest.raises(StoreError, match=rf"another lumora-reload \(pid {os.getpid()}\) is already using"):
        open_store(tmp_path)
    first.close()
    open_store(tmp_path).close()


def test_private_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        store = open_store(tmp_path / "state" / "lumora")
        store.load()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(store.data_dir).st_mode) == 0o700
    for name in os.listdir(store.data_dir):
        assert stat.S_IMODE(os.stat(os.path.join(store.data_dir, name)).st_mode) == 0o600, name
    store.close()


def full_disk(store):
    """Make the database unable to grow: SQLite answers SQLITE_FULL, as on
    a full disk."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def test_a_write_that_fails_raises_and_keeps_the_last_stored_state(tmp_path):
    store = open_store(tmp_path)
    s = session()
    store.save_session(s)
    push(store, s, make_schema(), "full")
    full_disk(store)
    with pytest.raises(StoreError, match="the disk is full.*free some space"):
        push(store, s, make_schema(pad="x" * 200_000))
    assert s.sequence == 1  # the caller never applied it
    store._db.execute("PRAGMA max_page_count = 1000000")
    push(store, s, make_schema(n=3))  # the store works again once there is room
    store.close()
    [back] = open_store(tmp_path).load()
    # the failed push took no number
    assert back.sequence == 2 and back.schema == make_schema(n=3)
    assert [e.sequence for e in back.history] == [1, 2]


# -- through the service -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_push_that_is_not_stored_answers_500_never_200(daemon_factory, tmp_path, logged_failures):
    logged_failures.expect(StoreError)
    store = SQLiteStore.open(str(tmp_path))
    daemon = await daemon_factory(store=store)
    schema = make_schema(pad="x" * 1000)
    sid = await daemon.new_session(schema)
    device, _ = await connected_device(daemon, sid)
    full_disk(store)
    lost = with_text(schema, "lost") | {"pad": "y" * 100_000}
    status, body = await daemon.call("POST", f"/send/{sid}", lost)
    assert status == 500
    assert body["code"] == "INTERNAL_ERROR" and "disk is full" in body["error"]
    # nothing the failed push planned is visible anywhere
    assert (await daemon.call("GET", f"/session/{sid}"))[1]["sequenceNumber"] == 1
    assert (await daemon.call("GET", f"/session/{sid}/schema"))[1] == schema
    late, info = await connected_device(daemon, sid, device_id="late")
    assert info["initialSchema"] == schema and info["sequenceNumber"] == 1
    store._db.execute("PRAGMA max_page_count = 1000000")
    result = await daemon.push(sid, with_text(schema, "kept"))
    # the failed push took no number, and devices still hold the stored
    # state, so the next one is the small delta from it
    assert result["sequenceNumber"] == 2 and result["updateType"] == "incremental"
    for d in (device, late):
        update = await d.next_of("update")
        assert update["payload"]["sequenceNumber"] == 2
        d.dropConnection()


@pytest_twisted.ensureDeferred
async def test_restart_in_process_restores_sessions_and_resumes(daemon_factory, tmp_path):
    daemon = await daemon_factory(store=SQLiteStore.open(str(tmp_path)), history_size=4)
    schema = make_schema(pad="x" * 2000)
    sid = await daemon.new_session(schema)
    deleted = await daemon.new_session()
    assert (await daemon.call("DELETE", f"/session/{deleted}"))[0] == 200
    status, extended = await daemon.call("POST", f"/session/{sid}/extend", {"seconds": 90000})
    assert status == 200
    device, info = await connected_device(daemon, sid)
    for i in range(3):
        result = await daemon.push(sid, with_text(schema, f"v{i}"))
        last = (await device.next_of("update"))["payload"]["sequenceNumber"]
    assert last == result["sequenceNumber"] == 4
    await daemon.stop()
    assert (await device.wait_closed())[0] == 1012

    daemon = await daemon_factory(store=SQLiteStore.open(str(tmp_path)), history_size=4)
    status, info = await daemon.call("GET", f"/session/{sid}")
    assert status == 200 and info["sequenceNumber"] == 4
    assert info["expiresAt"] >= extended["expiresAt"]
    assert (await daemon.call("GET", f"/session/{deleted}"))[0] == 404
    status, current = await daemon.call("GET", f"/session/{sid}/schema")
    assert current == with_text(schema, "v2")
    device, info = await connected_device(daemon, sid, lastSequence=2)
    assert info["resumed"] is True
    replay = [(await device.next_of("update"))["payload"]["sequenceNumber"] for _ in range(2)]
    assert replay == [3, 4]
    device.dropConnection()


def _leaves(text, edited=()):
    return make_schema([node("root", "View", [node(f"n{i}", text=text if i in edited else "x") for i in range(12)])])


async def _incremental_full_incremental(daemon_factory, tmp_path):
    """A session whose history holds an incremental, a full and an incremental update (2, 3, 4)."""
    daemon = await daemon_factory(store=SQLiteStore.open(str(tmp_path)))
    sid = await daemon.new_session(_leaves("x"))
    assert (await daemon.push(sid, _leaves("a", {0})))["updateType"] == "incremental"
    assert (await daemon.push(sid, _leaves("b", range(12))))["updateType"] == "full"
    assert (await daemon.push(sid, with_text(_leaves("b", range(12)), "c", "n3")))["updateType"] == "incremental"
    await daemon.stop()
    return sid


@pytest_twisted.ensureDeferred
async def test_after_a_restart_a_gap_across_a_full_update_is_replayed(daemon_factory, tmp_path):
    """The store keeps every update's frame, full ones too: after a restart a device that missed an
    incremental, a full and an incremental update gets each of them replayed."""
    sid = await _incremental_full_incremental(daemon_factory, tmp_path)
    daemon = await daemon_factory(store=SQLiteStore.open(str(tmp_path)))
    device, info = await connected_device(daemon, sid, lastSequence=1)
    assert info["resumed"] is True and "initialSchema" not in info
    replay = [(await device.next_of("update"))["payload"] for _ in range(3)]
    assert [(u["sequenceNumber"], u["type"]) for u in replay] == [(2, "incremental"), (3, "full"), (4, "incremental")]
    assert replay[1]["schema"] == _leaves("b", range(12))
    device.dropConnection()


@pytest_twisted.ensureDeferred
async def test_a_full_update_stored_without_its_frame_is_replayed_only_while_current(daemon_factory, tmp_path):
    """A database written before full frames were stored holds a full update as a marker: the
    current state's schema makes its frame again; once a push follows it, a gap across it gets
    the full schema."""
    sid = await _incremental_full_incremental(daemon_factory, tmp_path)
    db = sqlite3.connect(str(tmp_path / sqlite_store.DB_NAME))
    with db:
        db.execute("UPDATE history SET payload = NULL WHERE update_type = 'full'")
        db.execute("DELETE FROM history WHERE sequence = 4")
        db.execute("UPDATE states SET sequence = 3, checksum = (SELECT checksum FROM history WHERE sequence = 3), "
                   "schema = ?", (encode_schema(_leaves("b", range(12))),))
    db.close()

    daemon = await daemon_factory(store=SQLiteStore.open(str(tmp_path)))
    device, info = await connected_device(daemon, sid, lastSequence=1)
    assert info["resumed"] is True and "initialSchema" not in info
    replay = [(await device.next_of("update"))["payload"] for _ in range(2)]
    assert [(u["sequenceNumber"], u["type"]) for u in replay] == [(2, "incremental"), (3, "full")]
    assert replay[1]["schema"] == _leaves("b", range(12))
    device.dropConnection()
    await daemon.push(sid, with_text(_leaves("b", range(12)), "c", "n3"))
    device, info = await connected_device(daemon, sid, device_id="other", lastSequence=1)
    assert info["resumed"] is False and info["initialSchema"] == with_text(_leaves("b", range(12)), "c", "n3")
    device.dropConnection()


def test_make_store_reports_an_unusable_data_dir_in_one_line(tmp_path, capsys):
    from lumora_reload import tap

    (tmp_path / "file").write_text("")
    options = tap.Options()
    options.parseOptions(["--data-dir", str(tmp_path / "file")])
    with pytest.raises(SystemExit) as exit_info:
        tap.make_store(options)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("lumora-reload: --data-dir ") and err.count("\n") == 1


def test_make_store_opens_sqlite_unless_in_memory(tmp_path):
    from lumora_reload import tap
    from lumora_reload.store import MemoryStore

    options = tap.Options()
    options.parseOptions(["--data-dir", str(tmp_path)])
    store = tap.make_store(options)
    assert isinstance(store, SQLiteStore) and store.data_dir == str(tmp_path)
    store.close()
    options = tap.Options()
    options.parseOptions(["--data-dir", str(tmp_path), "--in-memory"])
    assert isinstance(tap.make_store(options), MemoryStore)


@pytest_twisted.ensureDeferred
async def test_a_restarted_daemon_holds_the_history_its_own_limits_allow(daemon_factory, tmp_path):
    """Limits lowered between runs bound the history read back, not only the next push's; the
    stored frame of the current full update is the one the daemon sends again."""
    daemon = await daemon_factory(store=SQLiteStore.open(str(tmp_path)))
    sid = await daemon.new_session(_leaves("x"))
    for text in "abcdef":
        assert (await daemon.push(sid, _leaves(text, range(12))))["updateType"] == "full"
    await daemon.stop()

    daemon = await daemon_factory(store=SQLiteStore.open(str(tmp_path)), history_size=3)
    session = daemon.server.hub.get_session(sid)
    assert [e.sequence for e in session.history] == [5, 6, 7]
    assert daemon.server.hub.full_update(session).payload is session.history[-1].payload
    await daemon.stop()

    daemon = await daemon_factory(store=SQLiteStore.open(str(tmp_path)), max_history_bytes=1)
    assert [e.sequence for e in daemon.server.hub.get_session(sid).history] == [7]


def _killed(data_dir, to):
    """The data dir as a SIGKILL now would leave it: the database and its
    WAL as written so far, nothing saved on the way out."""
    to.mkdir()
    for name in os.listdir(data_dir):
        if name.startswith(sqlite_store.DB_NAME):
            with open(os.path.join(data_dir, name), "rb") as src, open(to / name, "wb") as dst:
                dst.write(src.read())
    return to


@pytest_twisted.ensureDeferred
async def test_a_device_that_came_and_went_between_sweeps_keeps_the_session_alive_after_a_crash(
        daemon_factory, tmp_path):
    """A device's activity counts toward expiry in the store too, not only
    while the daemon runs: stored when the session's last device leaves,
    even if no cleanup sweep ran while it was connected."""
    clock = task.Clock()
    clock.advance(1_000_000)
    daemon = await daemon_factory(store=SQLiteStore.open(str(tmp_path / "state"), clock=clock), clock=clock,
                                  cleanup_interval=60)
    status, made = await daemon.call("POST", "/session/new", {"schema": make_schema(), "timeoutSeconds": 100})
    sid = made["sessionId"]
    clock.advance(50)  # no sweep yet (the first runs at 60)
    device, _ = await connected_device(daemon, sid)
    device.dropConnection()
    while daemon.server.hub.sessions[sid].devices:
        await deferLater(daemon.reactor, 0.01)
    expires = (await daemon.call("GET", f"/session/{sid}"))[1]["expiresAt"]
    assert expires == made["expiresAt"] + 50_000

    crashed = _killed(tmp_path / "state", tmp_path / "crashed")
    clock.advance(70)  # past the expiry at creation, before the one the device set
    store = SQLiteStore.open(str(crashed), clock=clock)
    [back] = store.load()
    store.close()
    assert not back.idle_past_expiry(clock.seconds())
    assert back.expires_at() == expires
