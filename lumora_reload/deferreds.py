"""The service's Deferred helpers: one queue of work per session, the
Deferred a push returns, and reading an already-fired Deferred."""

from twisted.internet import defer
from twisted.python.failure import Failure

_RESULT_FIELDS = frozenset(("success", "devices_updated", "update_type", "sequence_number"))


class PushDeferred(defer.Deferred):
    """The Deferred `HotReloadServer.push_update` returns, firing with a
    `PushResult` or failing with `LumoraError`. Once it has fired (with the
    memory and SQLite stores, before the call returns) it also reads as
    its outcome, for code that does not wait: ``push_update(...).update_type``
    is the result's, and reading a field of a failed push raises its
    error."""

    def __getattr__(self, name):
        if name not in _RESULT_FIELDS:
            raise AttributeError(name)
        if not self.called:
            raise AttributeError(f"{name}: the push has not finished yet; wait for the Deferred")
        result = self.result
        if isinstance(result, Failure):
            result.raiseException()
        return getattr(result, name)


class SessionQueues:
    """Runs work for one session at a time, in order; sessions do not wait
    for each other. Holds an entry only while a session has work queued."""

    def __init__(self):
        self._locks = {}

    def run(self, key, f, *args):
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = defer.DeferredLock()
        d = lock.run(f, *args)

        def idle(result):
            if not lock.locked and not lock.waiting and self._locks.get(key) is lock:
                del self._locks[key]
            return result

        return d.addBoth(idle)

    def __len__(self):
        return len(self._locks)


def raise_if_failed(d):
    """The result of an already-fired Deferred (raising its failure), or
    None when it has not fired yet (an asynchronous store)."""
    box = []
    d.addBoth(box.append)
    if not box:
        return None
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]
