"""Cluster mode (``--redis URL``): several daemons sharing sessions.

Session state (times, current schema, sequence number, update history)
lives in Redis; every daemon mirrors it in its hub and keeps only its own
device connections. `RedisStore` is an `ISharedStore`: the push pipeline
(plan -> commit -> apply, see lumora_reload.server) is the same as with
SQLite, and other daemons' changes come in through `IReplica`.

- A push is committed by one Lua script (`PUSH`) that checks the sequence
  number the daemon planned from, writes schema + sequence + history entry,
  and PUBLISHes the update, all atomically: one state, one number, across
  daemons. When another daemon committed first the script writes nothing,
  the daemon adopts the stored state (devices not on it get it in full) and
  plans again. No script ever re-creates a session that was deleted.
- A Redis reply that times out is resolved before the push is answered: the
  daemon re-reads the stored number once Redis answers again. It answers 200
  if the push landed, 503 only if it did not.
- Distribution is Redis pub/sub on one channel per database; because the
  publish happens inside the script, the channel carries the updates in
  sequence order. Each daemon applies an update when it is the next number,
  ignores numbers it already has (its own pushes, applied at commit), and on
  a gap reads the session from Redis. Pub/sub drops messages while the
  subscriber is disconnected: on every (re)subscribe the daemon reads every
  session from Redis and brings its devices up to date.
- Expiry is decided on the shared last activity: a daemon's sweep deletes a
  session only through the `EXPIRE` script, which checks the stored times,
  and daemons with devices keep refreshing them.
- Redis unreachable: pushes fail with 503 ``INTERNAL_ERROR`` "Redis
  unavailable"; devices stay connected; both connections reconnect by
  themselves (txredisapi) and the resubscribe brings everyone up to date.

The views in ``/stats`` and ``/session/:id`` count this daemon's devices.
"""

import socket
import ssl
import uuid
from urllib.parse import unquote, urlsplit

import orjson
import txredisapi
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger
from zope.interface import implementer

from lumora_reload import errors
from lumora_reload.messages import UPDATE_INCREMENTAL
from lumora_reload.model import EMPTY, HistoryEntry, Session, State, consecutive_history, short_id
from lumora_reload.store import ISharedStore, StoreConflict, StoreUnavailable

REPLY_TIMEOUT = 5.0
# how long a push whose reply was lost waits for Redis to answer again
RESOLVE_TIMEOUT = 10.0
RESOLVE_INTERVAL = 0.25
# after a resubscribe, sessions whose read failed are read again this many times
READ_ALL_ROUNDS = 30

# Results of PUSH: GONE (the session does not exist), DONE, or the stored
# sequence number when it is not the one the push was planned from.
GONE, DONE = -2, -1

PUSH = """
local cur = redis.call('HGET', KEYS[1], 'sequence')
if not cur then return -2 end
if tonumber(cur) ~= tonumber(ARGV[1]) then return tonumber(cur) end
redis.call('HSET', KEYS[1], 'sequence', ARGV[2], 'schema', ARGV[3], 'checksum', ARGV[4],
           'preserve_state', ARGV[5])
local la = tonumber(redis.call('HGET', KEYS[1], 'last_activity') or '0')
if tonumber(ARGV[6]) > la then redis.call('HSET', KEYS[1], 'last_activity', ARGV[6]) end
redis.call('RPUSH', KEYS[2], ARGV[7])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[8]), -1)
redis.call('PUBLISH', ARGV[9], ARGV[10])
return -1
"""

CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'created_at', ARGV[1], 'timeout', ARGV[2], 'last_activity', ARGV[3],
           'sequence', '0')
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"""

# TOUCH: a session deleted meanwhile stays deleted; last_activity never
# moves back; 'held:<node>' is this daemon's claim (it has devices) until then
TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local la = tonumber(redis.call('HGET', KEYS[1], 'last_activity') or '0')
if tonumber(ARGV[2]) > la then la = tonumber(ARGV[2]) end
redis.call('HSET', KEYS[1], 'timeout', ARGV[1], 'last_activity', tostring(la))
if tonumber(ARGV[5]) > 0 then
  redis.call('HSET', KEYS[1], 'held:' .. ARGV[6], ARGV[5])
else
  redis.call('HDEL', KEYS[1], 'held:' .. ARGV[6])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

DELETE = """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

EXPIRE = """
local t = redis.call('HMGET', KEYS[1], 'last_activity', 'timeout')
if not t[1] then return 1 end
local now = tonumber(ARGV[2])
if tonumber(t[1]) + tonumber(t[2]) >= now then return 0 end
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 5) == 'held:' and tonumber(fields[i + 1]) >= now then return 0 end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""


class ClusterError(Exception):
    """Redis cannot be used (bad URL, unreachable, refused password)."""


def parse_url(url):
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ClusterError(f"--redis '{url}' must start with redis:// or rediss://")
    try:
        port = parts.port or 6379
        db = int(parts.path.strip("/") or 0)
    except ValueError:
        raise ClusterError(f"--redis '{url}': bad port or database number")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": port,
        "db": db,
        "tls": parts.scheme == "rediss",
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }


def check_reachable(conf, timeout=3.0):
    """One blocking PING before the reactor runs, so that a daemon that
    cannot reach Redis refuses to start with one line."""
    where = f"{conf['host']}:{conf['port']}"
    try:
        sock = socket.create_connection((conf["host"], conf["port"]), timeout=timeout)
        if conf["tls"]:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname=conf["host"])
        with sock:
            command = b""
            if conf["password"]:
                user = [conf["username"].encode()] if conf["username"] else []
                args = [b"AUTH", *user, conf["password"].encode()]
                command += b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
            command += b"*1\r\n$4\r\nPING\r\n"
            sock.sendall(command)
            reply = b""
            while b"PONG" not in reply and not reply.startswith(b"-"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as e:
        raise ClusterError(f"cannot reach Redis at {where}: {e.strerror or e}")
    if b"PONG" not in reply:
        raise ClusterError(f"Redis at {where} refused: {reply.decode(errors='replace').strip()}")


class ReplyLost(StoreUnavailable):
    """A command was sent but its reply never came (timeout, dropped
    connection): Redis may or may not have run it."""


class _Factory(txredisapi.RedisFactory):
    initialDelay = 0.2
    maxDelay = 1.0



class _Listener(txredisapi.SubscriberProtocol):
    @defer.inlineCallbacks
    def connectionMade(self):
        yield super().connectionMade()
        if not self.connected:
            return
        yield self.subscribe(self.factory.store.channel)
        self.factory.store._subscribed(self)

    def connectionLost(self, why):
        self.factory.store._unsubscribed(self)
        super().connectionLost(why)

    def messageReceived(self, pattern, channel, message):
        self.factory.store._received(message)


def _entry_to_json(entry):
    # a full update travels as a marker: every push's event already carries
    # the new schema, and a full frame would send it over the bus twice
    payload = entry.payload if entry.update_type == UPDATE_INCREMENTAL else None
    return orjson.dumps({
        "sequence": entry.sequence,
        "updateType": entry.update_type,
        "legacyOk": entry.legacy_ok,
        "payload": payload.decode() if payload is not None else None,
        "checksum": entry.checksum,
    })


def _entry_from_dict(e):
    payload = e["payload"]
    return HistoryEntry(
        e["sequence"], e["updateType"], e["legacyOk"],
        payload.encode() if payload is not None else None, e.get("checksum"),
    )


@implementer(ISharedStore)
class RedisStore:
    """The session store and update bus of cluster mode. Use `open`."""

    _log = Logger()

    def __init__(self, conf, reactor, reply_timeout=REPLY_TIMEOUT):
        self.conf = conf
        self.reactor = reactor
        self.reply_timeout = reply_timeout
        self.replica = None
        self.hold_seconds = 120.0
        self.node = uuid.uuid4().hex[:8]
        prefix = f"lumora:{conf['db']}"
        self.channel = f"{prefix}:events"
        self._ids = "lumora:ids"
        self._commands = None
        self._listener = None
        self._subscriber = None
        self._pending = set()
        self._closing = False

    @classmethod
    def open(cls, url, reactor=None, reply_timeout=REPLY_TIMEOUT):
        if reactor is None:
            from twisted.internet import reactor
        conf = parse_url(url)
        check_reachable(conf)
        return cls(conf, reactor, reply_timeout)

    def bind(self, replica, hold_seconds=120.0):
        self.replica = replica
        self.hold_seconds = hold_seconds

    # -- connections ---------------------------------------------------

    def _endpoint(self):
        endpoint = endpoints.HostnameEndpoint(self.reactor, self.conf["host"], self.conf["port"], timeout=3)
        if self.conf["tls"]:
            from twisted.internet import ssl as tssl

            endpoint = endpoints.wrapClientTLS(tssl.CertificateOptions(verify=False), endpoint)
        return endpoint

    def _connect(self):
        conf = self.conf
        commands = _Factory(
            f"{conf['host']}:{conf['port']}", conf["db"], 1, isLazy=True, password=conf["password"],
            username=conf["username"], replyTimeout=self.reply_timeout, convertNumbers=False,
        )
        commands.startConnecting(self._endpoint())
        self._commands = commands
        listener = _Factory(None, None, 1, isLazy=True, password=conf["password"], username=conf["username"],
                            convertNumbers=False)
        listener.protocol = _Listener
        listener.store = self
        listener.startConnecting(self._endpoint())
        self._listener = listener

    def available(self):
        return bool(self._commands is not None and self._commands.size and self._subscriber is not None)

    def connection_state(self):
        return {
            "commands": bool(self._commands is not None and self._commands.size),
            "subscription": self._subscriber is not None,
        }

    def _redis(self):
        if not self.available():
            raise StoreUnavailable("Redis unavailable")
        return self._commands.handler

    def _call(self, script, keys, args):
        """Run a script; any Redis trouble becomes `StoreUnavailable`.
        Writes still in flight are tracked so that `close` waits for them."""
        try:
            d = self._redis().eval(script, keys, args)
        except StoreUnavailable as e:
            return defer.fail(e)
        self._pending.add(d)

        def done(result):
            self._pending.discard(d)
            return result

        d.addBoth(done)
        d.addErrback(self._as_unavailable)
        return d

    @staticmethod
    def _as_unavailable(failure):
        if failure.check(StoreUnavailable):
            return failure
        if failure.check(txredisapi.ConnectionError):
            raise ReplyLost(f"Redis unavailable ({failure.getErrorMessage()})")
        return failure

    def _key(self, session_id):
        return f"lumora:{self.conf['db']}:s:{session_id}"

    def _history_key(self, session_id):
        return f"lumora:{self.conf['db']}:h:{session_id}"

    def _event(self, kind, session_id, **fields):
        return orjson.dumps({"event": kind, "session": session_id, "node": self.node, **fields}).decode()

    # -- ISessionStore -------------------------------------------------

    def load(self):
        """Sessions arrive once the subscription is up (`_subscribed`)."""
        self._connect()
        return []

    def create_session(self, session):
        return self._call(
            CREATE, [self._key(session.id), self._ids],
            [session.created_at, repr(float(session.timeout)), repr(float(session.last_activity)), session.id],
        )

    def save_session(self, session):
        held = self.reactor.seconds() + self.hold_seconds if session.devices else 0
        event = self._event(
            "times", session.id, timeout=session.timeout, lastActivity=session.last_activity, heldUntil=held
        )
        return self._call(
            TOUCH, [self._key(session.id)],
            [repr(float(session.timeout)), repr(float(session.last_activity)), self.channel, event,
             repr(float(held)), self.node],
        )

    def commit_push(self, update):
        d = self._call(*self._push_args(update))
        d.addCallbacks(self._pushed, self._resolve, errbackArgs=(update,))
        return d

    def _push_args(self, update):
        state, entry = update.state, update.entry
        event = self._event(
            "push", update.session_id, entry=orjson.Fragment(_entry_to_json(entry)),
            schema=orjson.Fragment(state.wire_bytes()), preserveState=state.preserve_state,
        )
        return (
            PUSH, [self._key(update.session_id), self._history_key(update.session_id)],
            [update.base.sequence, state.sequence, state.wire_bytes(), state.checksum,
             int(state.preserve_state), repr(float(update.planned_at)), _entry_to_json(entry),
             len(state.history), self.channel, event],
        )

    @staticmethod
    def _pushed(result):
        result = int(result)
        if result == DONE:
            return None
        if result == GONE:
            raise errors.session_not_found()
        raise StoreConflict(result)

    @defer.inlineCallbacks
    def _resolve(self, failure, update):
        """The script's reply was lost (timeout, dropped connection): it may
        or may not have run. Wait for Redis to answer again, then read what
        it holds: our state (committed), the base (not stored) or another
        writer's (a conflict, which the caller resolves by reading it)."""
        failure.trap(ReplyLost)
        if self._closing:
            return failure
        deadline = self.reactor.seconds() + RESOLVE_TIMEOUT
        while self.reactor.seconds() < deadline:
            try:
                fields = yield self._redis().hmget(self._key(update.session_id), ["sequence", "checksum"])
            except (StoreUnavailable, txredisapi.ConnectionError):
                yield task.deferLater(self.reactor, RESOLVE_INTERVAL, lambda: None)
                continue
            sequence, checksum = fields
            if sequence is None:
                raise errors.session_not_found()
            sequence = int(sequence)
            if sequence == update.sequence and checksum == update.state.checksum:
                self._log.info("push {sequence} to session {session} landed although its reply was lost",
                               sequence=sequence, session=short_id(update.session_id))
                return None
            if sequence == update.base.sequence:
                break
            raise StoreConflict(sequence)
        raise StoreUnavailable("Redis unavailable: the push was not stored")

    def delete_session(self, session_id):
        return self._call(
            DELETE, [self._key(session_id), self._history_key(session_id), self._ids],
            [session_id, self.channel, self._event("delete", session_id)],
        )

    # shared: every expiry goes through `expire_if_idle`, which forgets the
    # session whole (its tombstone lives in each daemon's memory)
    expire_session = delete_session

    def expire_if_idle(self, session_id, now):
        d = self._call(
            EXPIRE, [self._key(session_id), self._history_key(session_id), self._ids],
            [session_id, repr(float(now)), self.channel, self._event("delete", session_id)],
        )
        return d.addCallback(lambda gone: int(gone) == 1)

    @defer.inlineCallbacks
    def close(self):
        self._closing = True
        if self._pending:
            pending = defer.DeferredList(list(self._pending), consumeErrors=True)
            yield pending.addTimeout(self.reply_timeout, self.reactor).addErrback(lambda _: None)
        for factory in (self._commands, self._listener):
            if factory is not None:
                yield factory.disconnect().addErrback(lambda _: None)

    # -- reading sessions ----------------------------------------------

    def fetch(self, session_id):
        try:
            redis = self._redis()
        except StoreUnavailable as e:
            return defer.fail(e)
        d = defer.gatherResults(
            [redis.hgetall(self._key(session_id)), redis.lrange(self._history_key(session_id), 0, -1)],
            consumeErrors=True,
        )
        d.addCallback(lambda both: self._snapshot(session_id, *both))
        d.addErrback(lambda f: self._as_unavailable(f.value.subFailure if f.check(defer.FirstError) else f))
        return d

    @staticmethod
    def _snapshot(session_id, fields, history):
        if not fields or "created_at" not in fields:
            return None
        sequence = int(fields.get("sequence") or 0)
        state = EMPTY
        if sequence:
            kept = consecutive_history((_entry_from_dict(orjson.loads(h)) for h in history), sequence)
            body = fields["schema"].encode() if isinstance(fields["schema"], str) else fields["schema"]
            state = State(
                sequence, orjson.loads(body), fields.get("checksum") or None,
                fields.get("preserve_state", "1") == "1", body, kept,
            )
        return Session(
            id=session_id,
            created_at=int(fields["created_at"]),
            timeout=float(fields["timeout"]),
            last_activity=float(fields["last_activity"]),
            state=state,
            held={k[5:]: float(v) for k, v in fields.items() if k.startswith("held:")},
        )

    # -- the bus -------------------------------------------------------

    def _subscribed(self, protocol):
        self._subscriber = protocol
        self._log.info("subscribed to {channel}", channel=self.channel)
        self._read_all().addErrback(lambda f: self._log.warn("reload from Redis failed: {e}", e=f.value))

    def _unsubscribed(self, protocol):
        if self._subscriber is protocol:
            self._subscriber = None
            if not self._closing:
                self._log.warn("lost the Redis subscription; pushes answer 503 until it is back")

    @defer.inlineCallbacks
    def _read_all(self):
        """After a (re)subscribe: Redis is the truth. Every session it has or
        this daemon has is read again, each inside its session's queue (so
        the read is never older than what this daemon committed); devices
        not on the stored state get it in full, sessions gone are dropped.
        A session whose read fails is read again a moment later, until every
        one has been read or the subscription is lost again."""
        subscriber = self._subscriber
        ids = set((yield self._commands.handler.smembers(self._ids)))
        waiting = ids | set(self.replica.known_sessions())
        for _ in range(READ_ALL_ROUNDS):
            if not waiting or self._closing or self._subscriber is not subscriber:
                break
            failed = set()
            for session_id in waiting:
                try:
                    yield self.replica.reread(session_id)
                except Exception as e:
                    failed.add(session_id)
                    self._log.warn(
                        "reading session {session} from Redis failed: {e}", session=short_id(session_id), e=e
                    )
            waiting = failed
            if waiting:
                yield task.deferLater(self.reactor, RESOLVE_INTERVAL * 4, lambda: None)

    def _received(self, raw):
        try:
            event = orjson.loads(raw)
            kind, session_id = event["event"], event["session"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if event.get("node") == self.node and kind != "push":
            return  # our own change, already applied here
        if kind == "delete":
            d = self.replica.received_delete(session_id)
        elif kind == "times":
            d = self.replica.received_times(
                session_id, event["timeout"], event["lastActivity"], event["node"], event.get("heldUntil", 0)
            )
        elif kind == "push":
            schema = event["schema"]
            d = self.replica.received_update(
                session_id, _entry_from_dict(event["entry"]), schema, orjson.dumps(schema),
                event["preserveState"],
            )
        else:
            return
        if isinstance(d, defer.Deferred):
            d.addErrback(self._apply_failed, session_id)

    def _apply_failed(self, failure, session_id):
        if not self._closing:
            self._log.warn("update for session {session} failed: {e}", session=short_id(session_id), e=failure.value)
