"""The service's Deferred helpers: one queue of work per session, the
Deferred a push returns, and reading an already-fired Deferred."""

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from lumora_reload.model import PushResult

_RESULT_FIELDS = frozenset(field.name for field in attrs.fields(PushResult))
_PENDING = object()


class PushDeferred(defer.Deferred):
    """The Deferred `HotReloadServer.push_update` returns, firing with a
    `PushResult` or failing with `LumoraError`; cancelling it cancels the
    push (`push` is the push's own Deferred). Once it has fired (with the
    memory and SQLite stores, before the call returns) it also reads as the
    push's outcome, for code that does not wait: ``push_update(...).update_type``
    is the result's, and reading a field of a failed push raises its error
    (the failure then counts as handled)."""

    def __init__(self, push):
        super().__init__(lambda _: push.cancel())
        self._outcome = _PENDING
        self.addBoth(self._keep)
        push.chainDeferred(self)

    def _keep(self, outcome):
        self._outcome = outcome
        return outcome

    def __getattr__(self, name):
        if name not in _RESULT_FIELDS:
            raise AttributeError(name)
        outcome = self._outcome
        if outcome is _PENDING:
            raise AttributeError(f"{name}: the push has not finished yet; wait for the Deferred")
        if isinstance(outcome, Failure):
            if self._debugInfo is not None and self._debugInfo.failResult is outcome:
                self._debugInfo.failResult = None  # read: nobody needs to hear of it when collected
            outcome.raiseException()
        return getattr(outcome, name)


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
