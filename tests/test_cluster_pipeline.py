"""Cluster mode keeps the push pipeline's promises: nothing is seen before
Redis has it, one number names one state on every daemon, a deleted session
stays deleted, and expiry follows activity on every daemon.

Daemons are `twistd` subprocesses or in-process `HotReloadServer`s on a real
`redis-server` (tests/test_cluster.py has the fixtures).
"""

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.web import server as web_server

from lumora_reload import cluster as redis_store, schema as schemas
from lumora_reload.client import Replica
from lumora_reload.server import HotReloadServer
from tests.helpers import Daemon, connected_device, make_schema, with_text
from tests.test_cluster import base_schema, cluster as cluster_fixture, redis, shared_session, until, visible  # noqa: F401

pytestmark = pytest.mark.skipif(
    __import__("shutil").which("redis-server") is None, reason="redis-server is not installed"
)
cluster = cluster_fixture


class Watched:
    """A device whose every update is applied to a replica and recorded."""

    def __init__(self, device, info):
        self.device = device
        self.replica = Replica()
        self.replica.reset(info.get("initialSchema"), info["sequenceNumber"], info.get("checksum"))
        self.seen = {}  # sequence -> checksum

    async def until(self, sequence):
        while self.replica.sequence < sequence:
            payload = (await self.device.next_of("update"))["payload"]
            self.replica.apply(payload)  # raises on a checksum mismatch
            self.seen[payload["sequenceNumber"]] = payload["checksum"]


@pytest_twisted.ensureDeferred
async def test_concurrent_pushes_on_two_daemons_one_state_per_number(reactor, cluster):
    """2 daemons x 20 concurrent pushes x 3 devices each."""
    _, a, _, b, base, sid = await shared_session(cluster, reactor)
    watched = []
    for remote in (a, b):
        for i in range(3):
            device, info = await connected_device(remote, sid, device_id=f"{remote.url[-5:]}-{i}")
            watched.append((remote, Watched(device, info)))
    schemas_sent = [with_text(base, f"edit {i}") for i in range(20)]
    results = await defer.gatherResults(
        [[a, b][i % 2].push(sid, schema) for i, schema in enumerate(schemas_sent)]
    )
    numbers = sorted(r["sequenceNumber"] for r in results)
    assert numbers == list(range(2, 22))  # unique and consecutive
    by_number = {r["sequenceNumber"]: s for r, s in zip(results, schemas_sent)}
    last = by_number[21]
    for remote, w in watched:
        await w.until(21)
        assert w.replica.schema == last and w.replica.checksum == schemas.checksum(last)
        # whatever a device was told about a number names the schema committed under it
        for sequence, checksum in w.seen.items():
            assert checksum == schemas.checksum(by_number[sequence]), (remote.url, sequence)
    for remote in (a, b):
        status, stored = await remote.call("GET", f"/session/{sid}/schema")
        assert status == 200 and stored == last
    for _, w in watched:
        w.device.dropConnection()


@pytest_twisted.ensureDeferred
async def test_a_device_on_the_other_daemon_right_after_create_is_never_told_4404(reactor, cluster):
    _, a = await cluster()
    _, b = await cluster()
    for i in range(12):
        sid = await a.new_session(make_schema())
        device = await b.device(sid)
        info = await device.hello(device_id=f"early-{i}")
        assert info["sequenceNumber"] == 1 and info["initialSchema"] == make_schema()
        device.dropConnection()


@pytest_twisted.ensureDeferred
async def test_a_session_whose_devices_are_on_another_daemon_does_not_expire(reactor, cluster):
    _, a = await cluster("--cleanup-interval", "0.1")
    _, b = await cluster("--cleanup-interval", "5")  # B saves its times rarely
    sid = await a.new_session(make_schema(), timeoutSeconds=1)
    await visible(b, sid, reactor)
    device, _ = await connected_device(b, sid)
    # A sweeps twenty times past the session's own timeout
    await task.deferLater(reactor, 2, lambda: None)
    status, _ = await a.call("GET", f"/session/{sid}")
    assert status == 200 and not device.closed.called
    device.dropConnection()

    async def expired_everywhere():
        answers = [(await r.call("GET", f"/session/{sid}"))[0] for r in (a, b)]
        return all(s in (404, 410) for s in answers)

    await until(expired_everywhere, reactor)


# -- in-process daemons: the store's own seams --------------------------


class _InProcess(Daemon):
    def __init__(self, reactor, store, **options):
        self.reactor = reactor
        options.setdefault("heartbeat_interval", 30.0)
        self.server = HotReloadServer(reactor=reactor, store=store, **options)
        self.port = None


@pytest.fixture
def in_process(reactor, redis):
    started = []

    async def start(store_class=redis_store.RedisStore):
        store = store_class.open(redis.url, reactor=reactor)
        daemon = _InProcess(reactor, store)
        await daemon.start()
        started.append(daemon)
        await until(store.available, reactor)
        return daemon

    yield start
    for daemon in started:
        pytest_twisted.blockon(daemon.stop())


class _LosesOneReply(redis_store.RedisStore):
    """Redis runs the next push (or not, with `run=False`), but its reply
    is lost, as when the connection drops or the reply times out."""

    lose = False
    run = True

    def commit_push(self, update):
        if not self.lose:
            return super().commit_push(update)
        self.lose = False
        if self.run:
            d = super()._call(*self._push_args(update))
        else:
            d = defer.succeed(None)
        d.addBoth(lambda _: defer.fail(redis_store.ReplyLost("Redis unavailable (reply lost)")))
        d.addCallbacks(self._pushed, self._resolve, errbackArgs=(update,))
        return d


@pytest_twisted.ensureDeferred
async def test_a_push_whose_reply_was_lost_answers_200_when_it_landed(in_process):
    daemon = await in_process(_LosesOneReply)
    sid = await daemon.new_session(make_schema())
    device, _ = await connected_device(daemon, sid)
    daemon.server.store.lose = True
    result = await daemon.push(sid, with_text(make_schema(), "landed"))
    assert result["sequenceNumber"] == 2
    update = await device.next_of("update")
    assert update["payload"]["sequenceNumber"] == 2
    assert (await daemon.call("GET", f"/session/{sid}/schema"))[1] == with_text(make_schema(), "landed")
    device.dropConnection()


@pytest_twisted.ensureDeferred
async def test_a_push_whose_reply_was_lost_answers_503_when_it_did_not_land(in_process):
    daemon = await in_process(_LosesOneReply)
    sid = await daemon.new_session(make_schema())
    daemon.server.store.lose, daemon.server.store.run = True, False
    status, body = await daemon.call("POST", f"/send/{sid}", with_text(make_schema(), "lost"))
    assert status == 503 and body["code"] == "INTERNAL_ERROR", body
    status, info = await daemon.call("GET", f"/session/{sid}")
    assert info["sequenceNumber"] == 1
    assert (await daemon.push(sid, with_text(make_schema(), "next")))["sequenceNumber"] == 2


@pytest_twisted.ensureDeferred
async def test_a_deleted_session_is_never_brought_back_by_a_late_save(in_process):
    daemon = await in_process()
    store = daemon.server.store
    sid = await daemon.new_session(make_schema())
    session = daemon.server.get_session(sid)
    await store.delete_session(sid)
    # another daemon's sweep, still holding the session, saves its times
    assert int(await store.save_session(session)) == 0
    assert await store.fetch(sid) is None
    # and a push planned before the delete finds nothing to write to
    update = daemon.server.hub.plan_push(sid, with_text(make_schema(), "late"))
    with pytest.raises(Exception) as e:
        await store.commit_push(update)
    assert getattr(e.value, "code", None) == "SESSION_NOT_FOUND"
    assert await store.fetch(sid) is None


@pytest_twisted.ensureDeferred
async def test_a_device_a_daemon_cannot_look_up_yet_is_told_to_try_again_not_4404(reactor, in_process, redis):
    """A daemon that has not reached Redis yet (just started, or Redis is
    down) cannot know a session created elsewhere: its device is closed
    with 1013, which devices retry, never with 4404, which they take as
    the session being gone for good."""
    a = await in_process()
    sid = await a.new_session(make_schema())
    redis.stop()
    b = _InProcess(reactor, redis_store.RedisStore(redis_store.parse_url(redis.url), reactor))
    await b.start()
    try:
        device = await b.device(sid)
        code, reason = await device.wait_closed()
        assert (code, reason) == (1013, "Session store unavailable; try again later")
        redis.start()
        await until(b.server.store.available, reactor)
        device, hello = await connected_device(b, sid)
        assert hello["sequenceNumber"] == 1
        device.dropConnection()
    finally:
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_every_call_about_a_session_created_on_another_daemon_reads_it_from_redis(in_process, redis):
    """A session made on one daemon without a schema is news to the others
    (nothing was published): asked about it, they read it from Redis, so
    a delete or an extend sent to them is not lost with a 404."""
    a, b = await in_process(), await in_process()
    sid = await a.new_session()
    device, _ = await connected_device(a, sid)
    status, info = await b.call("GET", f"/session/{sid}")
    assert (status, info["sequenceNumber"]) == (200, 0), info
    status, extended = await b.call("POST", f"/session/{sid}/extend", {"seconds": 90000})
    assert status == 200, extended
    assert (await a.call("GET", f"/session/{sid}"))[1]["expiresAt"] == extended["expiresAt"]
    other = await a.new_session()
    status, body = await b.call("DELETE", f"/session/{other}")
    assert status == 200, body
    assert (await a.call("GET", f"/session/{other}"))[0] == 404
    assert (await b.call("GET", f"/session/{'f' * 32}"))[0] == 404
    unknown = await a.new_session()
    redis.stop()
    await until(lambda: not b.server.store.available(), b.reactor)
    status, body = await b.call("GET", f"/session/{unknown}/health")
    assert (status, body["code"]) == (503, "INTERNAL_ERROR"), body
    redis.start()
    device.dropConnection()
