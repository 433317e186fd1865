"""Cluster mode (``--redis URL``): several daemons sharing sessions.

Session state (times, current schema, sequence number, update history)
lives in Redis; every daemon mirrors it in its hub and keeps only its own
device connections.

- A push is committed by one Lua script (`PUSH`) that checks the sequence
  number the daemon computed its delta from, writes schema + sequence +
  history entry, and PUBLISHes the update, all atomically. One state, one
  number, across daemons. On a conflict (another daemon pushed first) the
  daemon reloads the session from Redis, resyncs its late devices with a
  full update and computes the delta again.
- Distribution is Redis pub/sub on one channel per database. Because the
  publish happens inside the script, the channel carries the updates in
  sequence order. Each daemon applies an update when it is the next number,
  ignores numbers it already has (its own pushes, delivered at once), and
  on a gap reloads the session from Redis and sends its devices a full
  update. Pub/sub drops messages while the subscriber is disconnected: on
  every (re)subscribe the daemon reloads all sessions from Redis and resyncs
  the devices that are behind. Streams would replay instead; a full resync
  is one message per device and needs no per-daemon cursor or trimming.
- Redis unreachable: pushes fail with 503 ``INTERNAL_ERROR`` "Redis
  unavailable"; devices stay connected; both connections reconnect by
  themselves (txredisapi) and the resubscribe resyncs.

The views in ``/stats`` and ``/session/:id`` count this daemon's devices.
"""

import collections
import socket
import ssl
import uuid
from urllib.parse import unquote, urlsplit

import orjson
import txredisapi
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from zope.interface import implementer

from lumora_reload import errors
from lumora_reload.errors import LumoraError
from lumora_reload.sessions import HistoryEntry, Outgoing, PushResult, Session, short_id
from lumora_reload.store import ISessionStore

REPLY_TIMEOUT = 5.0

PUSH = """
local cur = redis.call('HGET', KEYS[1], 'sequence')
if not cur then return -2 end
if tonumber(cur) ~= tonumber(ARGV[1]) then return tonumber(cur) end
redis.call('HSET', KEYS[1], 'sequence', ARGV[2], 'schema', ARGV[3], 'checksum', ARGV[4],
           'preserve_state', ARGV[5], 'last_activity', ARGV[6])
redis.call('RPUSH', KEYS[2], ARGV[7])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[8]), -1)
redis.call('PUBLISH', ARGV[9], ARGV[10])
return -1
"""

SAVE = """
redis.call('HSET', KEYS[1], 'created_at', ARGV[1], 'timeout', ARGV[2], 'last_activity', ARGV[3])
if not redis.call('HGET', KEYS[1], 'sequence') then redis.call('HSET', KEYS[1], 'sequence', '0') end
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

RECORD = """
redis.call('HSET', KEYS[1], 'sequence', ARGV[1], 'schema', ARGV[2], 'checksum', ARGV[3],
           'preserve_state', ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"""

DELETE = """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


class ClusterError(Exception):
    """Redis cannot be used (bad URL, unreachable, refused password)."""


def unavailable():
    return LumoraError(errors.INTERNAL_ERROR, "Redis unavailable: the push was not stored", status=503)


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
                args = [b"AUTH"] + ([conf["username"].encode()] if conf["username"] else []) + [conf["password"].encode()]
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
    return orjson.dumps({
        "s": entry.sequence, "t": entry.update_type, "l": entry.legacy_ok,
        "p": entry.payload.decode() if entry.payload is not None else None,
    })


def _entry_from_json(raw):
    e = orjson.loads(raw)
    return HistoryEntry(e["s"], e["t"], e["l"], e["p"].encode() if e["p"] is not None else None)


@implementer(ISessionStore)
class RedisStore:
    """The session store and update bus of cluster mode. Use `open`."""

    durable = True
    _log = Logger()

    def __init__(self, conf, reactor):
        self.conf = conf
        self.reactor = reactor
        self.server = None
        self.node = uuid.uuid4().hex[:8]
        prefix = f"lumora:{conf['db']}"
        self.channel = f"{prefix}:events"
        self._ids = "lumora:ids"
        self._locks = collections.defaultdict(defer.DeferredLock)
        self._commands = None
        self._listener = None
        self._subscriber = None
        self._pending = set()
        self._closing = False

    @classmethod
    def open(cls, url, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        conf = parse_url(url)
        check_reachable(conf)
        return cls(conf, reactor)

    def attach(self, server):
        self.server = server

    @property
    def hub(self):
        return self.server.hub

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
            username=conf["username"], replyTimeout=REPLY_TIMEOUT, convertNumbers=False,
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

    def _redis(self):
        if not self.available():
            raise txredisapi.ConnectionError("Redis unavailable")
        return self._commands.handler

    def _track(self, d):
        """Writes still in flight; `close` waits for them."""
        self._pending.add(d)

        def done(result):
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    def _key(self, session_id):
        return f"lumora:{self.conf['db']}:s:{session_id}"

    def _history_key(self, session_id):
        return f"lumora:{self.conf['db']}:h:{session_id}"

    def _publish_args(self, event):
        return [self.channel, orjson.dumps(event).decode()]

    # -- ISessionStore -------------------------------------------------

    def load(self):
        """Sessions arrive once the subscription is up (`_subscribed`)."""
        self._connect()
        return []

    def save_session(self, session):
        event = {"t": "times", "id": session.id, "la": session.last_activity, "to": session.timeout,
                 "n": self.node}
        return self._track(self._redis().eval(
            SAVE, [self._key(session.id), self._ids],
            [session.created_at, repr(session.timeout), repr(session.last_activity), session.id,
             *self._publish_args(event)],
        ))

    def record_push(self, session, entry):
        event = {"t": "load", "id": session.id, "n": self.node}
        return self._track(self._redis().eval(
            RECORD, [self._key(session.id), self._history_key(session.id)],
            [session.sequence, orjson.dumps(session.schema).decode(), session.checksum or "",
             int(session.preserve_state), _entry_to_json(entry).decode(), *self._publish_args(event)],
        ))

    def delete_session(self, session_id):
        event = {"t": "delete", "id": session_id, "n": self.node}
        self._locks.pop(session_id, None)
        return self._track(self._redis().eval(
            DELETE, [self._key(session_id), self._history_key(session_id), self._ids],
            [session_id, *self._publish_args(event)],
        ))

    @defer.inlineCallbacks
    def close(self):
        self._closing = True
        if self._pending:
            pending = defer.DeferredList(list(self._pending), consumeErrors=True)
            yield pending.addTimeout(REPLY_TIMEOUT, self.reactor).addErrback(lambda _: None)
        for factory in (self._commands, self._listener):
            if factory is not None:
                yield factory.disconnect().addErrback(lambda _: None)

    # -- pushes --------------------------------------------------------

    def push(self, session_id, schema, preserve_state=True):
        """`HotReloadServer.push_update` in cluster mode."""
        if not self.available():
            return defer.fail(unavailable())
        if session_id in self.hub.sessions:
            return self._locks[session_id].run(self._push, session_id, schema, preserve_state)
        # created on another daemon a moment ago: look in Redis first
        d = self._locks[session_id].run(self._load, session_id)
        d.addCallback(lambda _: self._locks[session_id].run(self._push, session_id, schema, preserve_state))
        d.addErrback(self._as_unavailable)
        return d

    @staticmethod
    def _as_unavailable(failure):
        if failure.check(LumoraError):
            return failure
        raise unavailable()

    @defer.inlineCallbacks
    def _push(self, session_id, schema, preserve_state):
        hub = self.hub
        for _ in range(20):
            session = hub.get_session(session_id)
            saved = _snapshot(session)
            session, update = hub.prepare_push(session_id, schema, preserve_state)
            if update is None:
                return PushResult(True, 0, "none", session.sequence)
            entry = update["entry"]
            event = {
                "t": "push", "id": session_id, "n": self.node, "seq": update["sequence"],
                "ty": update["update_type"], "l": entry.legacy_ok, "c": session.checksum,
                "ps": preserve_state, "schema": session.schema_json(),
                "p": entry.payload.decode() if entry.payload is not None else None,
            }
            try:
                result = yield self._redis().eval(
                    PUSH, [self._key(session_id), self._history_key(session_id)],
                    [update["sequence"] - 1, update["sequence"], orjson.dumps(session.schema).decode(),
                     session.checksum, int(preserve_state), repr(session.last_activity),
                     _entry_to_json(entry).decode(), hub.limits.history_size, *self._publish_args(event)],
                )
            except Exception as e:
                _restore(session, saved)
                self._log.warn("push to session {id} not stored: {e}", id=short_id(session_id), e=e)
                raise unavailable()
            result = int(result)
            if result == -1:
                count = hub.deliver(session, update)
                return PushResult(True, count, update["update_type"], update["sequence"])
            _restore(session, saved)
            if result == -2:
                self._drop(session_id)
                raise errors.session_not_found()
            # another daemon got there first: catch up, then try again
            yield self._load(session_id)
        raise LumoraError(errors.INTERNAL_ERROR, "Too many concurrent pushes to this session", status=503)

    # -- the bus -------------------------------------------------------

    def _subscribed(self, protocol):
        self._subscriber = protocol
        self._log.info("subscribed to {channel}", channel=self.channel)
        self._load_all().addErrback(lambda f: self._log.warn("reload from Redis failed: {e}", e=f.value))

    def _unsubscribed(self, protocol):
        if self._subscriber is protocol:
            self._subscriber = None
            if not self._closing:
                self._log.warn("lost the Redis subscription; pushes answer 503 until it is back")

    @defer.inlineCallbacks
    def _load_all(self):
        """After a (re)subscribe: Redis is the truth; devices behind it get
        a full update."""
        ids = yield self._commands.handler.smembers(self._ids)
        ids = set(ids)
        for session_id in list(self.hub.sessions):
            if session_id not in ids:
                self._locks[session_id].run(self._drop, session_id)
        yield defer.DeferredList(
            [self._locks[i].run(self._load, i) for i in ids], consumeErrors=True
        )

    def _drop(self, session_id):
        if session_id in self.hub.sessions:
            try:
                self.hub.delete_session(session_id)
            except LumoraError:  # already expired here
                self.hub.sessions.pop(session_id, None)

    @defer.inlineCallbacks
    def _load(self, session_id):
        """Read one session from Redis into the hub (replacing the mirror's
        state, keeping the devices) and resync devices that are behind."""
        redis = self._commands.handler
        fields = yield redis.hgetall(self._key(session_id))
        if not fields or "created_at" not in fields:
            self._drop(session_id)
            return None
        history = yield redis.lrange(self._history_key(session_id), 0, -1)
        session = self.hub.sessions.get(session_id)
        if session is None:
            session = Session(
                id=session_id,
                created_at=int(fields["created_at"]),
                timeout=float(fields["timeout"]),
                last_activity=float(fields["last_activity"]),
            )
            self.hub.add_loaded(session)
        session.timeout = float(fields["timeout"])
        session.last_activity = max(session.last_activity, float(fields["last_activity"]))
        sequence = int(fields.get("sequence") or 0)
        if sequence != session.sequence or session.schema is None:
            session.schema = orjson.loads(fields["schema"]) if fields.get("schema") else None
            session.checksum = fields.get("checksum") or None
            session.sequence = sequence
            session.preserve_state = fields.get("preserve_state", "1") == "1"
            session.history = collections.deque(_entry_from_json(h) for h in history)
            session._full = None
            session.force_full = False
        for device in list(session.devices.values()):
            if device.sent_sequence != session.sequence:
                self.hub.resync_device(session, device)
        return session

    def _received(self, raw):
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        session_id = event.get("id")
        if not session_id:
            return
        kind = event.get("t")
        if kind == "delete":
            if event.get("n") != self.node:
                self._locks[session_id].run(self._drop, session_id)
            return
        d = self._locks[session_id].run(self._apply, event)
        d.addErrback(self._apply_failed, session_id)

    def _apply_failed(self, failure, session_id):
        if not self._closing:
            self._log.warn("update for session {id} failed: {e}", id=short_id(session_id), e=failure.value)

    def _apply(self, event):
        session_id = event["id"]
        session = self.hub.sessions.get(session_id)
        if session is None:
            return self._load(session_id)
        kind = event["t"]
        if kind == "times":
            session.timeout = event["to"]
            session.last_activity = max(session.last_activity, event["la"])
            return None
        if kind == "load":
            return self._load(session_id)
        # kind == "push"
        sequence = event["seq"]
        if sequence <= session.sequence:
            return None  # ours, or already reloaded
        if sequence != session.sequence + 1:
            return self._load(session_id)  # a gap: resync from Redis
        session.schema = event["schema"]
        session.checksum = event["c"]
        session.sequence = sequence
        session.preserve_state = event["ps"]
        session.force_full = False
        session._full = None
        if event["ty"] == "incremental":
            payload = event["p"].encode()
            outgoing = Outgoing(payload, sequence, "incremental")
            entry = HistoryEntry(sequence, "incremental", event["l"], payload)
        else:
            outgoing = self.hub.full_update(session)
            entry = HistoryEntry(sequence, "full")
        session.history.append(entry)
        while len(session.history) > self.hub.limits.history_size:
            session.history.popleft()
        self.hub.touch(session)
        self.hub.deliver(session, {
            "sequence": sequence, "update_type": event["ty"], "outgoing": outgoing, "entry": entry,
            "legacy_ok": event["ty"] == "full" or event["l"],
        })
        return None


def _snapshot(session):
    return (session.schema, session.checksum, session.sequence, session.preserve_state,
            session.force_full, session._full, collections.deque(session.history))


def _restore(session, saved):
    (session.schema, session.checksum, session.sequence, session.preserve_state,
     session.force_full, session._full, session.history) = saved
