"""Where sessions are kept between pushes and across restarts.

The hub (lumora_reload.sessions) owns live state; a store receives every
durable change and gives sessions back at start-up. Methods may return a
value or a Deferred; the service waits on either before it answers a
request, so "answered 200" always means "stored".

`MemoryStore` keeps nothing (``--in-memory``). The SQLite store lives in
lumora_reload.sqlite_store.
"""

from zope.interface import Interface, implementer


class ISessionStore(Interface):
    def load():
        """Return the stored, unexpired sessions (as `Session` objects with
        schema, sequence and history, no devices)."""

    def save_session(session):
        """Store a new session or its changed times."""

    def record_push(session, entry):
        """Store the session's new current schema, sequence number and the
        history entry of that push (a `HistoryEntry`)."""

    def delete_session(session_id):
        """Forget a session (deleted or expired)."""

    def close():
        """Flush and release the store."""


@implementer(ISessionStore)
class MemoryStore:
    """Keeps nothing: sessions live only as long as the process."""

    durable = False

    def load(self):
        return []

    def save_session(self, session):
        pass

    def record_push(self, session, entry):
        pass

    def delete_session(self, session_id):
        pass

    def close(self):
        pass
