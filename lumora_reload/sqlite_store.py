"""The durable session store: SQLite in ``--data-dir`` (docs/protocol.md, section 5).

What is kept, per session, and nothing that the daemon can recompute:

- ``sessions``: id, creation time (Unix ms), inactivity timeout and time of
  last activity (seconds; expiry is their sum). Small rows, rewritten when
  a session is touched or extended.
- ``states``: the current schema (JSON), its checksum, sequence number and
  ``preserveState`` flag. Written only by a push, in the same transaction
  as its history entry, so a session's sequence number always names the
  schema stored beside it. Kept apart from ``sessions`` so that extending
  a session does not rewrite a large schema.
- ``history``: the updates a reconnecting device may replay (each encoded
  update frame, full ones too, so that a resume after a restart can reach
  back across a full update), pruned to what the live session keeps. A
  full push therefore writes its schema twice (the state and the frame).
  Databases written before full frames were kept hold payload-less
  markers for them; they still load.

Every write is one transaction committed before the method returns, on
the calling (reactor) thread: "answered 200" means "in the WAL file". The
database runs in WAL mode with ``synchronous=NORMAL``: a committed push
survives the process being killed at any moment; a power cut or kernel
crash may lose the last pushes committed since the last checkpoint, but
never leaves a damaged database. ``synchronous="FULL"`` (a parameter of
`SQLiteStore.open`) makes every commit survive power loss as well, at the
price of an fsync per push.

The data dir is locked (``flock`` on ``data-dir/lock``) for the life of the
process, so a second daemon on the same dir refuses to start instead of
interleaving writes. Problems found at start-up raise `StoreError` with a
one-line message that says what is wrong and what to do; problems during
a write raise `StoreError` naming the cause (full disk, read-only file...),
which the service turns into a ``500 INTERNAL_ERROR`` answer.

The format is versioned with ``PRAGMA user_version``; `MIGRATIONS` lists
the steps from each version to the next, so a later release upgrades a data
dir in place. ``PRAGMA application_id`` marks the file as ours.
"""

import collections
import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import time

import orjson
from twisted.logger import Logger
from zope.interface import implementer

from lumora_reload.model import EMPTY, TOMBSTONE_SECONDS, HistoryEntry, Session, State, consecutive_history, short_id
from lumora_reload.store import ISessionStore, StoreConflict

DB_NAME = "sessions.sqlite3"
LOCK_NAME = "lock"
APPLICATION_ID = 0x4C554D52  # "LUMR"

# MIGRATIONS[n] brings a database from user_version n to n + 1. Append to
# this list; never edit a step that has shipped.
MIGRATIONS = [
    [
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            created_at INTEGER NOT NULL,    -- Unix ms
            timeout REAL NOT NULL,          -- seconds of inactivity
            last_activity REAL NOT NULL     -- Unix seconds; expiry = last_activity + timeout
        )""",
        """CREATE TABLE states (
            session_id TEXT PRIMARY KEY,
            sequence INTEGER NOT NULL,
            preserve_state INTEGER NOT NULL,
            checksum TEXT NOT NULL,
            schema BLOB NOT NULL            -- JSON
        )""",
        """CREATE TABLE history (
            session_id TEXT NOT NULL,
            sequence INTEGER NOT NULL,
            update_type TEXT NOT NULL,      -- 'incremental' | 'full'
            legacy_ok INTEGER NOT NULL,
            payload BLOB,                   -- the encoded update frame; NULL for 'full'
            PRIMARY KEY (session_id, sequence)
        )""",
    ],
    [
        # the checksum of the state each update leads to, so that a device
        # resuming at a number can be checked against the state it holds
        "ALTER TABLE history ADD COLUMN checksum TEXT",
    ],
    # (no migration: full updates' rows now hold their frames too; rows
    # written before, with NULL, still load as markers)
]
VERSION = len(MIGRATIONS)

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

# primary SQLite result codes (sqlite3 names them only from Python 3.11)
_PERM, _BUSY, _READONLY, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 3, 5, 8, 11, 13, 14, 26


class StoreError(Exception):
    """A one-line, human-readable account of what is wrong and what to do."""


class _WallClock:
    @staticmethod
    def seconds():
        return time.time()


def _load(data):
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


@implementer(ISessionStore)
class SQLiteStore:
    """Sessions in ``<data_dir>/sessions.sqlite3``. Use `SQLiteStore.open`."""

    durable = True
    _log = Logger()

    def __init__(self, data_dir, lock_fd, clock=None, synchronous="NORMAL"):
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, DB_NAME)
        self._lock_fd = lock_fd
        self._clock = clock if clock is not None else _WallClock()
        self._synchronous = synchronous
        self._db = None
        self._saved = {}  # session id -> the sessions row last written
        self.closed = False

    # -- opening ---------------------------------------------------------

    @classmethod
    def open(cls, data_dir, clock=None, synchronous="NORMAL"):
        """Create/lock the data dir, check and migrate the database.

        Raises `StoreError` (one line, says what to do) when the dir or the
        database cannot be used. The SQLite connection itself is opened
        again on first use, so the store can be opened before twistd forks
        into the background.
        """
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}")
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
        _make_dir(data_dir)
        lock_fd = _lock(data_dir)
        store = cls(data_dir, lock_fd, clock, synchronous.upper())
        try:
            store._connect()
            store._check()
        except BaseException:
            store.close()
            raise
        store._disconnect()
        return store

    def _connect(self):
        if self.closed:
            raise StoreError("the session store is closed")
        if self._db is not None:
            return self._db
        try:
            if not os.path.exists(self.path):
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            with open(self.path, "rb") as f:
                f.read(100)
            db = sqlite3.connect(self.path, isolation_level=None)
        except OSError as e:
            raise StoreError(
                f"cannot open {self.path}: {e.strerror}; make it readable and writable "
                f"by this user, or move it aside (its sessions will be lost)"
            ) from None
        except sqlite3.Error as e:
            raise StoreError(self._explain(e, "cannot open")) from None
        try:
            db.execute("PRAGMA busy_timeout = 0")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(
                    f"{self.path}: SQLite refused WAL mode (got {mode}); "
                    "put --data-dir on a local disk"
                )
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.Error as e:
            db.close()
            raise StoreError(self._explain(e, "cannot open")) from None
        except BaseException:
            db.close()
            raise
        self._db = db
        try:  # who holds the lock, for the refusal message of a second daemon
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        return db

    def _disconnect(self):
        if self._db is not None:
            self._db.close()
            self._db = None

    def _check(self):
        """Refuse a database that is damaged, foreign or too new; migrate an
        older one; prove we can write."""
        db = self._db
        try:
            result = db.execute("PRAGMA quick_check").fetchall()
            if [r[0] for r in result] != ["ok"]:
                raise StoreError(
                    f"{self.path} is damaged ({result[0][0]}); move it aside to start "
                    "afresh (its sessions will be lost) or restore it from a backup"
                )
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables):
                raise StoreError(
                    f"{self.path} is an SQLite database that lumora-reload did not write; "
                    "move it away or choose another --data-dir"
                )
            if version > VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer lumora-reload (format {version}, "
                    f"this one knows up to {VERSION}); upgrade lumora-reload or choose "
                    "another --data-dir"
                )
            with self._transaction("upgrade"):
                for step in range(version, VERSION):
                    for statement in MIGRATIONS[step]:
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {VERSION}")
            if version < VERSION:
                self._log.info(
                    "session store {path} at format {new} (was {old})",
                    path=self.path, new=VERSION, old=version,
                )
        except sqlite3.Error as e:
            raise StoreError(self._explain(e, "cannot use")) from None

    # -- ISessionStore ---------------------------------------------------

    def load(self):
        """Return the sessions, ready for the hub: an expired one without
        its state (dropped now), until a day after it expired."""
        db = self._connect()
        now = self._clock.seconds()
        with self._transaction("purge expired sessions from"):
            purged = self._purge(now - TOMBSTONE_SECONDS)
            for session_id, in db.execute(
                "SELECT id FROM sessions WHERE last_activity + timeout < ?", (now,)
            ).fetchall():
                self._forget_state(session_id)
            # rows whose session row is gone (never written by this version)
            for table in ("states", "history"):
                db.execute(f"DELETE FROM {table} WHERE session_id NOT IN (SELECT id FROM sessions)")
        self._log.info(
            "sessions are kept in {path} ({n} expired a day ago purged)", path=self.path, n=purged
        )
        histories = collections.defaultdict(collections.deque)
        for session_id, sequence, update_type, legacy_ok, payload, checksum in db.execute(
            "SELECT session_id, sequence, update_type, legacy_ok, payload, checksum "
            "FROM history ORDER BY session_id, sequence"
        ):
            histories[session_id].append(
                HistoryEntry(sequence, update_type, bool(legacy_ok), payload, checksum)
            )
        sessions = []
        for row in db.execute(
            "SELECT s.id, s.created_at, s.timeout, s.last_activity, "
            "t.sequence, t.preserve_state, t.checksum, t.schema "
            "FROM sessions s LEFT JOIN states t ON t.session_id = s.id ORDER BY s.created_at"
        ):
            session_id, created_at, timeout, last_activity, sequence, preserve, checksum, body = row
            try:
                schema = _load(body) if body is not None else None
            except ValueError as e:
                self._log.error(
                    "session {session}: stored schema unreadable ({e}); skipped", session=short_id(session_id), e=e
                )
                continue
            state = EMPTY
            if sequence:
                state = State(
                    sequence, schema, checksum, bool(preserve), bytes(body),
                    consecutive_history(histories.get(session_id, ()), sequence),
                )
            session = Session(
                id=session_id,
                created_at=created_at,
                timeout=timeout,
                last_activity=last_activity,
                state=state,
            )
            self._saved[session_id] = self._session_row(session)
            sessions.append(session)
        return sessions

    def create_session(self, session):
        self.save_session(session)

    def save_session(self, session):
        """Store a new session or its changed times (skipped when unchanged)."""
        row = self._session_row(session)
        if self._saved.get(session.id) == row:
            return
        self._connect()
        with self._transaction("save a session to"):
            self._write_session(row)
        self._saved[session.id] = row

    def commit_push(self, update):
        """Store a push's new state, its history entry and the session's
        activity in one transaction, after checking that the stored state
        is the one the push was planned from; returns once committed."""
        db = self._connect()
        state, entry = update.state, update.entry
        with self._transaction("store a push in"):
            row = db.execute(
                "SELECT sequence FROM states WHERE session_id = ?", (update.session_id,)
            ).fetchone()
            current = row[0] if row else 0
            if current != update.base.sequence:
                raise StoreConflict(current)
            db.execute(
                "INSERT OR REPLACE INTO states (session_id, sequence, preserve_state, checksum, schema) "
                "VALUES (?, ?, ?, ?, ?)",
                (update.session_id, state.sequence, int(state.preserve_state), state.checksum,
                 state.wire_bytes()),
            )
            db.execute(
                "INSERT OR REPLACE INTO history "
                "(session_id, sequence, update_type, legacy_ok, payload, checksum) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (update.session_id, entry.sequence, entry.update_type, int(entry.legacy_ok),
                 entry.payload, entry.checksum),
            )
            # keep exactly the history the new state keeps
            db.execute(
                "DELETE FROM history WHERE session_id = ? AND sequence < ?",
                (update.session_id, state.history[0].sequence),
            )
            # a push is activity: after a crash the expiry counts from it
            # (the hub's time, as every other time stored)
            now = float(update.planned_at)
            db.execute(
                "UPDATE sessions SET last_activity = MAX(last_activity, ?) WHERE id = ?",
                (now, update.session_id),
            )
        saved = self._saved.get(update.session_id)
        if saved is not None:
            self._saved[update.session_id] = (*saved[:3], max(saved[3], now))

    def delete_session(self, session_id):
        self._connect()
        with self._transaction("delete a session from"):
            self._delete(session_id)
        self._saved.pop(session_id, None)

    def expire_session(self, session_id):
        self._connect()
        with self._transaction("expire a session in"):
            self._forget_state(session_id)
            # and those that expired over a day ago: a daemon that runs for
            # weeks does not keep them all
            self._purge(self._clock.seconds() - TOMBSTONE_SECONDS)
        self._saved.pop(session_id, None)

    def close(self):
        """Close the database (SQLite checkpoints the WAL into it) and
        release the data dir's lock. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self._disconnect()
        finally:
            os.close(self._lock_fd)

    # -- helpers ---------------------------------------------------------

    @staticmethod
    def _session_row(session):
        return (session.id, session.created_at, float(session.timeout), float(session.last_activity))

    def _write_session(self, row):
        self._db.execute(
            "INSERT INTO sessions (id, created_at, timeout, last_activity) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET timeout = excluded.timeout, "
            "last_activity = excluded.last_activity",
            row,
        )

    def _purge(self, before):
        """Forget whole every session that expired before `before`; returns
        how many."""
        ids = [r[0] for r in self._db.execute(
            "SELECT id FROM sessions WHERE last_activity + timeout < ?", (before,)
        ).fetchall()]
        for session_id in ids:
            self._delete(session_id)
        return len(ids)

    def _delete(self, session_id):
        self._forget_state(session_id)
        self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def _forget_state(self, session_id):
        # the sessions row stays: its times say when it expired
        for table in ("history", "states"):
            self._db.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))

    @contextlib.contextmanager
    def _transaction(self, doing):
        """BEGIN IMMEDIATE ... COMMIT; on any error roll back and raise a
        `StoreError` saying what failed."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(e, sqlite3.Error):
                raise StoreError(self._explain(e, f"could not {doing}")) from e
            raise

    def _explain(self, error, doing):
        """One line: what went wrong with the database and what to do."""
        text = str(error)
        code = getattr(error, "sqlite_errorcode", None)
        code = code & 0xFF if code is not None else None
        if code == _FULL or "disk is full" in text:
            return f"{doing} {self.path}: the disk is full ({text}); free some space"
        if code == _NOTADB or "not a database" in text:
            return (
                f"{self.path} is not a lumora-reload database or is damaged ({text}); "
                "move it aside to start afresh (its sessions will be lost)"
            )
        if code == _CORRUPT or "malformed" in text:
            return (
                f"{self.path} is damaged ({text}); move it aside to start afresh "
                "(its sessions will be lost) or restore it from a backup"
            )
        if code in (_READONLY, _CANTOPEN, _PERM) or (
            "readonly" in text or "unable to open" in text
        ):
            return (
                f"{doing} {self.path}: {text}; the data dir {self.data_dir} and its files must be "
                "readable and writable by this user (or choose another --data-dir, or --in-memory)"
            )
        if code == _BUSY or "locked" in text:
            return f"{doing} {self.path}: {text}; another program is using it"
        return f"{doing} {self.path}: {text}"


def _make_dir(data_dir):
    """Create the data dir private to this user (0700) if it is missing."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise StoreError(
            f"--data-dir {data_dir} is not a directory; point --data-dir at a directory "
            "(or use --in-memory)"
        )
    if not os.path.isdir(data_dir):
        try:
            os.makedirs(data_dir, mode=0o700)
            os.chmod(data_dir, 0o700)  # makedirs' mode is filtered by the umask
        except OSError as e:
            raise StoreError(
                f"cannot create --data-dir {data_dir}: {e.strerror}; create it, or choose "
                "another --data-dir (or use --in-memory)"
            ) from None


def _lock(data_dir):
    """Take the data dir's lock; a second daemon gets a clear refusal."""
    path = os.path.join(data_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StoreError(
            f"--data-dir {data_dir} is not writable ({e.strerror}); make it writable by "
            "this user, or choose another --data-dir (or use --in-memory)"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        try:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            pid = ""
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            who = f"(pid {pid}) " if pid.isdigit() else ""
            raise StoreError(
                f"another lumora-reload {who}is already using --data-dir {data_dir}; stop it, "
                "or start this one with another --data-dir"
            ) from None
        raise StoreError(f"cannot lock --data-dir {data_dir}: {e.strerror}") from None
    return fd
