"""The push pipeline of `HotReloadServer` (plan -> commit -> apply) around
stores that answer at once, later, or fail: in process, on a Clock, with
fake device links."""

import gc

import pytest
from twisted.internet import defer, task
from zope.interface import implementer

from lumora_reload import errors
from lumora_reload.errors import LumoraError
from lumora_reload.server import HotReloadServer
from lumora_reload.store import ISessionStore, MemoryStore
from tests.helpers import make_schema, with_text
from tests.test_sessions import connect


@implementer(ISessionStore)
class LaterStore(MemoryStore):
    """Every write waits until the test answers it (`succeed`/`fail`)."""

    def __init__(self):
        self.waiting = []

    def _write(self, *args):
        d = defer.Deferred()
        self.waiting.append((args, d))
        return d

    create_session = save_session = commit_push = delete_session = _write

    def succeed(self):
        _, d = self.waiting.pop(0)
        d.callback(None)

    def fail(self, error=None):
        _, d = self.waiting.pop(0)
        d.errback(error or RuntimeError("write failed"))


def make_server(store=None):
    clock = task.Clock()
    server = HotReloadServer(clock=clock, store=store or MemoryStore(), heartbeat_interval=30.0)
    return server, clock


def results(d):
    box = []
    d.addBoth(box.append)
    return box


def test_with_a_synchronous_store_every_answer_is_there_on_return():
    server, _ = make_server()
    sid = server.create_session(make_schema()).id
    pushed = results(server.push_update(sid, with_text(make_schema(), "x")))
    assert pushed[0].sequence_number == 2
    deleted = results(server.delete_session(sid))
    assert deleted == [True]
    assert len(server._queues) == 0  # nothing left in the queue table


def test_nothing_is_seen_before_the_store_commits():
    store = LaterStore()
    server, _ = make_server(store)
    session = server.hub.create_session(make_schema())
    _, link = connect(server.hub, session.id)
    store.succeed()  # the session's activity, stored as its first device joins
    link.sent.clear()
    pushed = results(server.push_update(session.id, with_text(make_schema(), "x")))
    assert not pushed and not link.sent
    assert session.sequence == 1 and session.schema == make_schema()
    store.succeed()
    assert pushed[0].sequence_number == 2 and session.sequence == 2
    assert [o.sequence for o in link.sent] == [2]


def test_a_failed_commit_changes_nothing_and_the_next_push_takes_the_next_number(logged_failures):
    logged_failures.expect(RuntimeError)
    store = LaterStore()
    server, _ = make_server(store)
    session = server.hub.create_session(make_schema())
    _, link = connect(server.hub, session.id)
    store.succeed()  # the session's activity, stored as its first device joins
    link.sent.clear()
    before = (session.state, session.expires_at(), server.session_info(session.id))
    failed = results(server.push_update(session.id, with_text(make_schema(), "lost")))
    store.fail()
    assert failed[0].check(LumoraError) and failed[0].value.status == 500
    assert (session.state, session.expires_at(), server.session_info(session.id)) == before
    assert not link.sent
    pushed = results(server.push_update(session.id, with_text(make_schema(), "kept")))
    store.succeed()
    assert pushed[0].sequence_number == 2 and pushed[0].update_type == "incremental"


def test_two_pushes_in_flight_commit_and_deliver_in_order(logged_failures):
    store = LaterStore()
    server, _ = make_server(store)
    session = server.hub.create_session(make_schema())
    _, link = connect(server.hub, session.id)
    store.succeed()  # the session's activity, stored as its first device joins
    link.sent.clear()
    first = results(server.push_update(session.id, with_text(make_schema(), "one")))
    second = results(server.push_update(session.id, with_text(make_schema(), "two")))
    assert len(store.waiting) == 1  # the second waits for the first
    store.succeed()
    assert first[0].sequence_number == 2 and not second
    (update,), d = store.waiting[0]
    assert update.base is session.state  # planned from what the first committed
    store.succeed()
    assert second[0].sequence_number == 3
    assert [o.sequence for o in link.sent] == [2, 3]
    assert len(server._queues) == 0


def test_a_push_behind_a_failed_one_is_planned_from_the_committed_state(logged_failures):
    logged_failures.expect(RuntimeError)
    store = LaterStore()
    server, _ = make_server(store)
    session = server.hub.create_session(make_schema())
    base = session.state
    server.push_update(session.id, with_text(make_schema(), "lost")).addErrback(lambda _: None)
    second = results(server.push_update(session.id, with_text(make_schema(), "kept")))
    store.fail()
    (update,), _ = store.waiting[0]
    assert update.base is base and update.sequence == 2
    store.succeed()
    assert second[0].sequence_number == 2


def test_a_delete_the_store_refuses_keeps_the_session_and_its_devices(logged_failures):
    logged_failures.expect(RuntimeError)
    store = LaterStore()
    server, _ = make_server(store)
    session = server.hub.create_session(make_schema())
    _, link = connect(server.hub, session.id)
    store.succeed()  # the session's activity, stored as its first device joins
    deleted = results(server.delete_session(session.id))
    assert link.closed is None  # not before the store has it
    store.fail()
    assert deleted[0].value.status == 500
    assert server.get_session(session.id) is session and link.closed is None
    deleted = results(server.delete_session(session.id))
    store.succeed()
    assert deleted == [True] and link.closed == (1000, "Session closed")
    with pytest.raises(LumoraError) as e:
        server.get_session(session.id)
    assert e.value.code == errors.SESSION_NOT_FOUND


def test_an_extend_the_store_refuses_keeps_the_old_expiry(logged_failures):
    logged_failures.expect(RuntimeError)
    store = LaterStore()
    server, _ = make_server(store)
    session = server.hub.create_session()
    before = session.expires_at()
    answer = results(server.extend_session_stored(session.id, 3600))
    store.fail()
    assert answer[0].value.status == 500 and session.expires_at() == before


def test_activity_never_moves_an_extended_expiry_back():
    server, clock = make_server()
    sid = server.create_session(timeout_seconds=60).id
    extended = server.extend_session(sid, 3600)
    device, _ = connect(server.hub, sid)
    clock.advance(1)
    server.hub.seen(sid, device)  # any device message
    server.cleanup_expired_sessions()  # a sweep with a device connected
    assert server.get_session(sid).expires_at() == extended


def test_a_session_whose_first_state_is_not_stored_is_not_left_behind(logged_failures):
    logged_failures.expect(RuntimeError)
    store = LaterStore()
    server, _ = make_server(store)
    created = results(server.create_session_stored(make_schema()))
    store.succeed()  # the session row
    (update,), _ = store.waiting[0]
    store.fail()  # its first state
    (forgotten,), _ = store.waiting[0]
    assert forgotten == update.session_id  # the store is asked to forget it
    store.succeed()
    assert created[0].value.status == 500
    assert server.hub.sessions == {}


def test_a_fired_push_reads_as_its_result_and_a_failed_one_raises_its_error():
    """For code that does not wait: the push's Deferred, once fired, answers the result's fields."""
    server, _ = make_server()
    sid = server.create_session(make_schema()).id
    pushed = server.push_update(sid, with_text(make_schema(), "x"))
    assert isinstance(pushed, defer.Deferred)
    assert (pushed.success, pushed.devices_updated, pushed.update_type, pushed.sequence_number) == (
        True, 0, "incremental", 2)
    assert results(pushed)[0].sequence_number == 2  # and it is still the Deferred of the result
    failed = server.push_update("nope", make_schema())
    with pytest.raises(LumoraError) as raised:
        failed.success
    assert raised.value.code == errors.SESSION_NOT_FOUND
    del failed
    gc.collect()  # read, so handled: no "Unhandled error in Deferred" (the suite fails on logged failures)
    with pytest.raises(AttributeError):
        pushed.no_such_field
    pushed.addCallback(lambda _: "made into something else")
    assert pushed.sequence_number == 2  # the push's outcome, whatever later callbacks make of it


def test_cancelling_a_queued_push_cancels_the_push():
    store = LaterStore()
    server, _ = make_server(store)
    session = server.hub.create_session(make_schema())
    first = server.push_update(session.id, with_text(make_schema(), "one"))
    second = server.push_update(session.id, with_text(make_schema(), "two"))
    second.cancel()
    assert isinstance(results(second)[0].value, defer.CancelledError)
    store.succeed()
    assert first.sequence_number == 2
    assert not store.waiting and session.sequence == 2


def test_a_push_the_store_has_not_answered_yet_says_so():
    store = LaterStore()
    server, _ = make_server(store)
    session = server.hub.create_session(make_schema())
    pushed = server.push_update(session.id, with_text(make_schema(), "x"))
    with pytest.raises(AttributeError, match="has not finished yet"):
        pushed.sequence_number
    store.succeed()
    assert pushed.sequence_number == 2


def test_the_constructor_takes_the_typescript_servers_order_by_position():
    store = MemoryStore()
    server = HotReloadServer(task.Clock(), "/lumora/ws", 60, 5, 10, store)
    assert server.ws_path == "/lumora/ws" and server.store is store
    assert (server.config.session_timeout, server.config.heartbeat_interval, server.config.connection_timeout) == (
        60, 5, 10)
