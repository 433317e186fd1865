"""The Redis store's two recovery loops, on a `task.Clock` with a fake Redis:
a push whose reply was lost is resolved within its deadline, and a
resubscribe reads every session again, retrying the ones whose read failed
for a bounded number of rounds."""

from types import SimpleNamespace

from twisted.internet import defer, task
from twisted.python.failure import Failure

from lumora_reload import cluster
from lumora_reload.store import StoreUnavailable


class _FakeRedis:
    """The few commands the recovery loops use; `hmget` answers from a list
    of scripted replies (an exception is raised, a value returned)."""

    def __init__(self, replies=(), members=()):
        self.replies = list(replies)
        self.members = set(members)
        self.hmget_calls = 0

    def hmget(self, key, fields):
        self.hmget_calls += 1
        reply = self.replies.pop(0) if self.replies else StoreUnavailable("still down")
        if isinstance(reply, Exception):
            raise reply
        return defer.succeed(reply)

    def smembers(self, key):
        return defer.succeed(set(self.members))


def _store(clock, redis, replica=None):
    store = cluster.RedisStore({"db": 0}, clock)
    store._commands = SimpleNamespace(size=1, handler=redis)
    store._subscriber = object()
    store.replica = replica
    return store


def _update(sequence=5, checksum="c5"):
    return SimpleNamespace(
        session_id="s1", sequence=sequence,
        state=SimpleNamespace(checksum=checksum), base=SimpleNamespace(sequence=sequence - 1),
    )


def _lost():
    return Failure(cluster.ReplyLost("reply lost"))


def test_a_lost_reply_that_landed_resolves_as_stored():
    """Redis answering again with our number and checksum means the push landed."""
    clock = task.Clock()
    redis = _FakeRedis([StoreUnavailable("down"), ["5", "c5"]])
    d = _store(clock, redis)._resolve(_lost(), _update())
    clock.advance(cluster.RESOLVE_INTERVAL)
    assert d.called and d.result is None
    assert redis.hmget_calls == 2


def test_a_lost_reply_that_did_not_land_is_unavailable():
    """Redis still holding the base number means the push was not stored: 503, not 200."""
    clock = task.Clock()
    d = _store(clock, _FakeRedis([["4", "c4"]]))._resolve(_lost(), _update())
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(StoreUnavailable)


def test_a_lost_reply_gives_up_at_its_deadline_while_redis_stays_down():
    """With Redis never answering, the push fails once RESOLVE_TIMEOUT has passed, not before."""
    clock = task.Clock()
    redis = _FakeRedis()
    d = _store(clock, redis)._resolve(_lost(), _update())
    failures = []
    d.addErrback(failures.append)
    clock.pump([cluster.RESOLVE_INTERVAL] * int(cluster.RESOLVE_TIMEOUT / cluster.RESOLVE_INTERVAL - 2))
    assert not failures, "gave up before the deadline"
    clock.pump([cluster.RESOLVE_INTERVAL] * 4)
    assert failures and failures[0].check(StoreUnavailable)
    assert not clock.getDelayedCalls()


class _Replica:
    def __init__(self, failures_before_success, known=()):
        self.failures_before_success = dict(failures_before_success)
        self.known = list(known)
        self.reads = []

    def known_sessions(self):
        return self.known

    def reread(self, session_id):
        self.reads.append(session_id)
        left = self.failures_before_success.get(session_id, 0)
        if left:
            self.failures_before_success[session_id] = left - 1
            return defer.fail(StoreUnavailable("read failed"))
        return defer.succeed(None)


def test_a_resubscribe_reads_again_every_session_whose_read_failed():
    """A session whose read fails twice is read a third time; the others once."""
    clock = task.Clock()
    replica = _Replica({"a": 2}, known=["local-only"])
    d = _store(clock, _FakeRedis(members={"a", "b"}), replica)._read_all()
    clock.pump([cluster.RESOLVE_INTERVAL * 4] * 3)
    assert d.called
    assert replica.reads.count("a") == 3
    assert replica.reads.count("b") == 1 and replica.reads.count("local-only") == 1


def test_a_resubscribe_stops_retrying_after_its_rounds():
    """A session that can never be read is tried READ_ALL_ROUNDS times, then left; no timer remains."""
    clock = task.Clock()
    replica = _Replica({"a": 10**6})
    d = _store(clock, _FakeRedis(members={"a"}), replica)._read_all()
    clock.pump([cluster.RESOLVE_INTERVAL * 4] * (cluster.READ_ALL_ROUNDS + 2))
    assert d.called
    assert replica.reads.count("a") == cluster.READ_ALL_ROUNDS
    assert not clock.getDelayedCalls()


def test_a_resubscribe_stops_when_the_subscription_is_lost_again():
    """Retries end as soon as the subscription they belong to is gone."""
    clock = task.Clock()
    replica = _Replica({"a": 10**6})
    store = _store(clock, _FakeRedis(members={"a"}), replica)
    d = store._read_all()
    store._subscriber = None
    clock.pump([cluster.RESOLVE_INTERVAL * 4] * 3)
    assert d.called
    assert replica.reads.count("a") == 1
