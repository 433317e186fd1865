"""Where sessions are kept between pushes and across restarts.

The hub (lumora_reload.sessions) owns live state; a store makes every
change durable *before* the hub shows it (plan -> commit -> apply, see
`HotReloadServer.push_update`), and gives sessions back at start-up.
Methods may return a value or a Deferred; a raised exception or a failed
Deferred means "not stored", and then nothing observable changes.

`MemoryStore` keeps nothing (``--in-memory``). The SQLite store lives in
lumora_reload.sqlite_store; the Redis store of cluster mode, which also
carries other daemons' changes to this one, in lumora_reload.cluster.
"""

from zope.interface import Attribute, Interface, implementer


class StoreConflict(Exception):
    """The store's current sequence number is not the one the update was
    planned from: another writer committed first. Nothing was written."""

    def __init__(self, current):
        super().__init__(f"the stored session is at sequence {current}")
        self.current = current


class StoreUnavailable(Exception):
    """The store cannot be reached now; nothing was written (the REST API
    answers 503: try again)."""


class ISessionStore(Interface):
    def load():
        """Return the stored sessions (as `Session` objects with their
        committed `State`, no devices). A session that expired less than a
        day ago may come back past its expiry and without a state, so that
        it still answers as expired."""

    def create_session(session):
        """Store a new session (no schema yet: its first state, if any,
        follows through `commit_push`)."""

    def save_session(session):
        """Store a session's changed times (timeout, last
        activity). Never re-creates a session that was deleted meanwhile
        by another writer."""

    def commit_push(update):
        """Make a `PreparedUpdate` durable: the new state, its history
        entry and the session's activity as of ``update.planned_at`` (never
        moved back), at once. Raise (or fail with) `StoreConflict` when the
        stored sequence number is not ``update.base.sequence``."""

    def delete_session(session_id):
        """Forget a session (deleted, or expired in a shared store)."""

    def expire_session(session_id):
        """Forget an expired session's state; a durable store keeps its id
        and times for a day (see `load`)."""

    def close():
        """Flush and release the store."""


class IReplica(Interface):
    """What a shared store calls on the daemon when another daemon changed
    a session (`HotReloadServer` implements it)."""

    def received_update(session_id, entry, schema, schema_bytes, preserve_state):
        """Another daemon committed the update `entry` (a `HistoryEntry`)."""

    def known_sessions():
        """The ids of the sessions this daemon holds."""

    def received_delete(session_id):
        """Another daemon deleted or expired the session."""

    def received_times(session_id, timeout, last_activity, node, held_until):
        """Daemon `node` stored new times of the session; it holds devices
        of the session until `held_until` (0: it holds none)."""

    def reread(session_id):
        """Read the session from the store again, in the session's queue,
        and adopt what it holds (None: the session is gone); devices not on
        the stored state get it in full. Returns a Deferred."""


class ISharedStore(ISessionStore):
    """A store that several daemons share (cluster mode)."""

    node = Attribute("This daemon's name among the daemons sharing the store.")

    def bind(replica, hold_seconds):
        """Deliver other daemons' changes to `replica` (an `IReplica`).
        `save_session` of a session with devices claims it for
        `hold_seconds`: no daemon expires a session another one holds."""

    def fetch(session_id):
        """A Deferred firing with the stored record of a session (a
        `Session` without devices) or None when the store has none."""

    def expire_if_idle(session_id, now):
        """Delete the session only if its shared last activity says it
        expired; a Deferred firing True when it was deleted."""

    def connection_state():
        """Each connection to the shared store by name, True while it is up."""


@implementer(ISessionStore)
class MemoryStore:
    """Keeps nothing: sessions live only as long as the process."""

    def load(self):
        return []

    def create_session(self, session):
        pass

    def save_session(self, session):
        pass

    def commit_push(self, update):
        pass

    def delete_session(self, session_id):
        pass

    def expire_session(self, session_id):
        pass

    def close(self):
        pass
