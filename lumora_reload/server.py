"""`HotReloadServer`: the embeddable daemon.

One object owns the hub (sessions and devices), the store, the periodic
sweeps and the WebSocket factory, and hands out a twisted.web resource
(REST API + device WebSocket) to mount in any `Site`. The twistd plugin is
built from this same object (lumora_reload.tap).
"""

from urllib.parse import urlsplit

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from lumora_reload import errors, messages, web
from lumora_reload.access import AccessPolicy
from lumora_reload.config import Config
from lumora_reload.deferreds import PushDeferred, SessionQueues, raise_if_failed
from lumora_reload.errors import LumoraError
from lumora_reload.fdwatch import FdWatch
from lumora_reload.liveness import Sweeps
from lumora_reload.metrics import Metrics
from lumora_reload.model import restored
from lumora_reload.sessions import Hub, Limits, PushResult, short_id
from lumora_reload.store import ISharedStore, MemoryStore, StoreConflict, StoreUnavailable
from lumora_reload.websocket import DeviceFactory

_UNSET = object()  # a constructor argument not given (None is a value Config refuses)


class HotReloadServer(service.Service):
    _log = Logger()

    def __init__(self, reactor=None, ws_path=_UNSET, session_timeout=_UNSET, heartbeat_interval=_UNSET,
                 connection_timeout=_UNSET, store=None, *, clock=None, config=None, **options):
        """`config` is a `Config`; keyword `options` are its fields, and
        override it when both are given (the four named ones may also come
        by position, in the TypeScript server's order). Invalid values
        raise ValueError."""
        named = {"ws_path": ws_path, "session_timeout": session_timeout,
                 "heartbeat_interval": heartbeat_interval, "connection_timeout": connection_timeout}
        options.update((k, v) for k, v in named.items() if v is not _UNSET)
        if config is None:
            config = Config(**options)
        elif options:
            config = attrs.evolve(config, **options)
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.ws_path = "/" + "/".join(part for part in config.ws_path.split("/") if part)  # as it is routed
        self.public_url = config.public_url.rstrip("/") if config.public_url else None
        self.secure = config.secure
        self.verbose = config.verbose
        self.max_body_size = config.max_body_size
        self.max_connections_per_address = config.max_connections_per_address
        self.store = store if store is not None else MemoryStore()
        self.hub = Hub(
            self.clock,
            Limits(
                session_timeout=config.session_timeout,
                connection_timeout=config.connection_timeout,
                incremental_threshold=config.incremental_threshold,
                history_size=config.history_size,
                history_bytes=config.max_history_bytes,
                max_sessions=config.max_sessions,
                max_devices_per_session=config.max_devices_per_session,
                max_ack_lag=config.max_ack_lag,
                log_bytes=config.max_log_bytes,
            ),
        )
        self.policy = AccessPolicy(
            config.api_token, config.allowed_hosts, config.allowed_origins, config.public_url
        )
        self.ws_factory = DeviceFactory(
            self.hub,
            self.policy,
            reactor,
            clock=self.clock,
            max_message_size=config.max_message_size,
            rate_limit=config.rate_limit,
            rate_burst=config.rate_burst,
            max_buffer=config.max_buffer,
            auto_ping_interval=config.auto_ping_interval or config.heartbeat_interval,
            max_pending_bytes=config.max_pending_bytes,
            max_name_length=config.max_name_length,
        )
        heartbeat_interval, cleanup_interval = config.heartbeat_interval, config.cleanup_interval
        self.sweeps = Sweeps(
            self.hub, self._forget, self.clock, heartbeat_interval, cleanup_interval,
            on_active=self._save_times, expire=self._expire,
        )
        self._resource = None
        self.loopback_only = None  # set by the daemon's listener; unknown when embedded
        self.fd_watch = FdWatch(self.clock)
        self._queues = SessionQueues()
        self.shared = ISharedStore.providedBy(self.store)
        self.metrics = Metrics(self.hub, self.ws_factory.connections, self.store if self.shared else None,
                               config.max_ack_lag)
        self.ws_factory.events = self.metrics
        self.hub.on_resume = self.metrics.resumed
        # a session's first device and its last leaving: the activity they
        # brought is stored, even with no sweep while they were connected
        self.hub.on_devices_changed = self._save_times
        if self.shared:  # cluster mode: other daemons' changes come in here
            # a daemon holding devices of a session claims it for twice its
            # sweep interval, renewed at every sweep: no other daemon expires it
            self.store.bind(self, hold_seconds=2 * cleanup_interval)
            self.ws_factory.lookup = self.lookup

    # -- IService --------------------------------------------------------

    def startService(self):
        loaded = self.store.load()
        now = self.hub.now()
        live, expired = [], []
        for session in loaded:
            (expired if session.idle_past_expiry(now) else live).append(session)
        # kept by the store to answer 410 until a day after it expired
        for session in sorted(expired, key=lambda s: s.expires_at_seconds):
            self.hub.expire(session)
            self.hub.tombstones[session.id] = session.expires_at_seconds
        for session in live:
            session.state = restored(session.state, self.hub.limits)
            self.hub.add_session(session)
        if self.hub.sessions:
            self._log.info("restored {n} session(s)", n=len(self.hub.sessions), event="sessions.restored")
        self.sweeps.start()
        self.fd_watch.start()
        super().startService()

    @defer.inlineCallbacks
    def stopService(self):
        """Save state, then close devices with 1012 so they reconnect and
        resume as soon as the daemon is back."""
        super().stopService()
        self.sweeps.stop()
        self.fd_watch.stop()
        for session in list(self.hub.sessions.values()):
            self._save_times(session)
        yield self.ws_factory.close_all(messages.CLOSE_RESTART, "Service restart")
        yield defer.maybeDeferred(self.store.close)

    def resource(self):
        """The twisted.web resource (REST API + device WebSocket at
        `ws_path`) to mount in a Site."""
        if self._resource is None:
            self._resource = web.build_root(self, self.ws_factory)
        return self._resource

    # -- URLs ------------------------------------------------------------

    def ws_url(self, session_id, request=None):
        """The URL a device joins `session_id` at: from `--public-url` (where
        this resource is reached from outside), else from the `request`'s
        Host, below the path the resource is mounted at."""
        if self.public_url:
            parts = urlsplit(self.public_url)
            scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
            base = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        else:
            host = None
            if request is not None:
                raw = request.getHeader(b"host")
                host = raw.decode("latin-1") if raw else None
                secure = request.isSecure()
            else:
                secure = self.secure
            host = host or "localhost"
            base = f"{'wss' if secure else 'ws'}://{host}{getattr(request, 'lumora_mount', '')}"
        return f"{base}{self.ws_path}?session={session_id}"

    # -- the embedding API: the daemon's operations, snake_case ----------

    def create_session(self, schema=None, timeout_seconds=None):
        """Create a session. With a synchronous store (memory, SQLite) it is
        stored and registered when this returns; with Redis it is
        registered once Redis has it (`create_session_stored` says when)."""
        session, d = self._create_session(schema, timeout_seconds)
        raise_if_failed(d)
        return session

    def create_session_stored(self, schema=None, timeout_seconds=None, fresh=False):
        """`create_session`, as a Deferred that fires with the session once
        the store holds it (the REST API answers only then, so another
        daemon already knows it); `fresh` as for `push_update`."""
        try:
            return self._create_session(schema, timeout_seconds, fresh)[1]
        except LumoraError as e:
            return defer.fail(e)

    def _create_session(self, schema, timeout_seconds, fresh=False):
        session, update = self.hub.new_session(schema=schema, timeout_seconds=timeout_seconds, fresh=fresh)
        d = self.metrics.store_write("create_session", self.store.create_session, session)
        if update is not None:

            def commit_first_state(_):
                committed = self.metrics.store_write("commit_push", self.store.commit_push, update)

                def undo(failure):
                    # the session must not stay behind without its schema
                    forget = self.metrics.store_write("delete_session", self.store.delete_session, session.id)
                    forget.addErrback(lambda f: self._log.warn(
                        "removing half-created session {session} failed: {e}", session=short_id(session.id),
                        e=f.getErrorMessage()))
                    return forget.addBoth(lambda _: failure)

                return committed.addErrback(undo)

            d.addCallback(commit_first_state)

        def stored(_):
            if update is not None:
                session.state = update.state
            self.hub.add_session(session)
            self._log.info("session {session} created", session=short_id(session.id), event="session.created")
            return session

        d.addCallbacks(stored, self._not_stored, errbackArgs=("create the session",))
        return session, d

    def get_session(self, session_id):
        return self.hub.get_session(session_id)

    def get_schema(self, session_id):
        """The session's current schema (404 before the first push)."""
        session = self.hub.get_session(session_id)
        if session.schema is None:
            raise errors.not_found("No schema has been pushed to this session yet")
        return session.schema

    def reload_all(self, session_id):
        """Send every device of the session the full current schema.
        Returns ``(devices updated, the session's sequence number)``."""
        session, count = self.hub.reload_all(session_id)
        return count, session.sequence

    def get_logs(self, session_id):
        """The session's log lines, oldest first."""
        return list(self.hub.get_session(session_id).logs)

    def get_health(self):
        health = {"status": "ok", "sessions": len(self.hub.sessions), "totalDevices": self.hub.total_devices()}
        if self.loopback_only is not None:  # tools that print LAN URLs warn when only loopback works
            health["loopbackOnly"] = self.loopback_only
        return health

    def session_info(self, session_id):
        session = self.hub.get_session(session_id)
        return {
            "sessionId": session.id,
            "createdAt": session.created_at,
            "expiresAt": session.expires_at(),
            "sequenceNumber": session.sequence,
            "connectedDevices": len(session.devices),
            "devices": [d.to_json() for d in session.devices.values()],
        }

    def delete_session(self, session_id):
        """Delete a session: stored first, then its devices are closed. A
        Deferred firing True (already fired with a synchronous store); a
        store that fails leaves the session and its devices as they were."""
        return self._queues.run(session_id, self._delete, session_id)

    def _delete(self, session_id):
        self.hub.get_session(session_id)  # 404 / 410 before touching the store
        d = self.metrics.store_write("delete_session", self.store.delete_session, session_id)

        def stored(_):
            session = self.hub.sessions.get(session_id)
            if session is not None:
                self.hub.drop(session, messages.CLOSE_NORMAL, "Session closed")
            self._log.info("session {session} deleted", session=short_id(session_id), event="session.deleted")
            return True

        return d.addCallbacks(stored, self._not_stored, errbackArgs=("delete the session",))

    def push_update(self, session_id, schema, preserve_state=True, fresh=False):
        """Store and send a new schema. Returns a Deferred firing with a
        `PushResult` once every device's connection has the update, or
        failing with `LumoraError` -- and then nothing changed (`fresh`:
        see `Hub.plan_push`).

        Pushes to one session run one at a time, each planned from the
        state the previous one committed; sessions do not wait for each
        other. With a synchronous store the Deferred has fired on return.
        """
        run, started = self._queues.run, self.clock.seconds()
        return PushDeferred(self.metrics.timed_push(
            run, session_id, self._push, session_id, schema, preserve_state, started, fresh))

    @defer.inlineCallbacks
    def _push(self, session_id, schema, preserve_state, started, fresh=False):
        yield self._known(session_id)
        for _ in range(MAX_CONFLICTS):
            update = self.hub.plan_push(session_id, schema, preserve_state, fresh)
            if update is None:
                session = self.hub.get_session(session_id)
                self.hub.touch(session)
                self._save_times(session)
                return PushResult(True, 0, messages.UPDATE_NONE, session.sequence)
            try:
                yield self.metrics.store_write("commit_push", self.store.commit_push, update)
            except StoreConflict:
                if not self.shared:  # a single writer cannot lose a race
                    self._not_stored(Failure(), "store the push")
                # another daemon committed first: adopt its state, plan again
                yield self._refresh(session_id)
                continue
            except Exception:
                self._not_stored(Failure(), "store the push")
            count = self.hub.apply_update(update)
            if count is None:  # deleted meanwhile
                raise errors.session_not_found()
            if self.verbose:
                self._log.info(
                    "push {sequence} ({kind}) to {n} device(s) of session {session} in {latency_ms} ms",
                    event="push", sequence=update.sequence, kind=update.update_type, n=count,
                    session=short_id(session_id), latency_ms=round((self.clock.seconds() - started) * 1000, 3),
                )
            return PushResult(True, count, update.update_type, update.sequence)
        raise LumoraError(errors.INTERNAL_ERROR, "Too many concurrent pushes to this session", status=503)

    def push_update_to_device(self, session_id, connection_id):
        session, device = self.hub.find_device(session_id, connection_id)
        return self.hub.resync_device(session, device)

    def get_connected_devices(self, session_id):
        return list(self.hub.get_session(session_id).devices.values())

    def get_device(self, session_id, connection_id):
        try:
            return self.hub.find_device(session_id, connection_id)[1]
        except LumoraError:
            return None

    def is_device_healthy(self, session_id, connection_id):
        session, device = self.hub.find_device(session_id, connection_id)
        return self.hub.is_healthy(session, device)

    def disconnect_device(self, session_id, connection_id, reason=None):
        self.hub.disconnect_device(session_id, connection_id, reason)
        return True

    def extend_session(self, session_id, seconds=None):
        """Move the session's expiry to `seconds` from now (never earlier
        than it was); returns the new expiry (Unix ms)."""
        return raise_if_failed(self.extend_session_stored(session_id, seconds))

    def extend_session_stored(self, session_id, seconds=None):
        """`extend_session`, as a Deferred that fires once it is stored;
        a failed write leaves the expiry as it was."""
        try:
            session = self.hub.get_session(session_id)
        except LumoraError as e:
            return defer.fail(e)
        target = self.hub.extended_activity(session, seconds)
        extended = attrs.evolve(session, last_activity=target)
        d = self.metrics.store_write("save_session", self.store.save_session, extended)

        def stored(_):
            session.active_until(target)
            return session.expires_at()

        return d.addCallbacks(stored, self._not_stored, errbackArgs=("extend the session",))

    def get_session_health(self, session_id):
        session = self.hub.get_session(session_id)
        devices = [self.hub.device_health(session, d) for d in session.devices.values()]
        healthy = sum(1 for d in devices if d["healthy"])
        return {
            "sessionId": session.id,
            "sequenceNumber": session.sequence,
            "totalDevices": len(devices),
            "healthyDevices": healthy,
            "unhealthyDevices": len(devices) - healthy,
            "devices": devices,
        }

    def get_unacknowledged_devices(self, session_id, sequence_number):
        session = self.hub.get_session(session_id)
        return [d for d in session.devices.values() if d.last_ack_sequence < sequence_number]

    def cleanup_stale_connections(self):
        return self.sweeps.sweep_devices()

    def cleanup_expired_sessions(self):
        return self.sweeps.sweep_sessions()

    def get_stats(self):
        return self.hub.stats()

    # -- IReplica: changes other daemons made (cluster mode) -------------

    def received_update(self, session_id, entry, schema, schema_bytes, preserve_state):
        return self._queues.run(
            session_id, self._received_update, session_id, entry, schema, schema_bytes, preserve_state
        )

    def _received_update(self, session_id, entry, schema, schema_bytes, preserve_state):
        session = self.hub.sessions.get(session_id)
        if session is None or entry.sequence != session.sequence + 1:
            if session is not None and entry.sequence <= session.sequence:
                return None  # ours, or already read from the store
            return self._refresh(session_id)  # unknown here, or a gap
        update = self.hub.plan_received(session_id, entry, schema, schema_bytes, preserve_state)
        self.hub.apply_update(update)
        return None

    def received_delete(self, session_id):
        def drop():
            session = self.hub.sessions.get(session_id)
            if session is not None:
                self.hub.drop(session, messages.CLOSE_NORMAL, "Session closed")
        return self._queues.run(session_id, drop)

    def known_sessions(self):
        return list(self.hub.sessions)

    def received_times(self, session_id, timeout, last_activity, node=None, held_until=0):
        session = self.hub.sessions.get(session_id)
        if session is not None:
            session.timeout = timeout
            session.active_until(last_activity)
            if node is not None:
                if held_until:
                    session.held[node] = held_until
                else:
                    session.held.pop(node, None)

    def _adopt(self, session_id, snapshot):
        """Make the hub's record of a session the store's (keeping this
        daemon's devices); devices not on the adopted state get it full."""
        session = self.hub.sessions.get(session_id)
        if snapshot is None:
            if session is not None:
                self.hub.drop(session, messages.CLOSE_NORMAL, "Session closed")
            return None
        if session is None:
            self.hub.add_session(snapshot)
            return snapshot
        session.timeout = snapshot.timeout
        session.active_until(snapshot.last_activity)
        session.held = snapshot.held
        if (snapshot.sequence, snapshot.checksum) != (session.sequence, session.checksum):
            self.hub.replace_state(session, snapshot.state)
        return session

    def _refresh(self, session_id):
        """Read a session from the shared store into the hub (inside the
        session's queue)."""
        d = self.store.fetch(session_id)
        d.addCallback(lambda snapshot: self._adopt(session_id, snapshot))
        d.addErrback(self._not_stored, "read the session")
        return d

    def _known(self, session_id):
        """Fires once the hub knows the session, if any store does: a
        session created on another daemon a moment ago is read from the
        shared store before anyone is told 404."""
        if not self.shared or session_id in self.hub.sessions:
            return defer.succeed(None)
        return self._refresh(session_id)

    def lookup(self, session_id):
        """`_known`, in the session's queue: for the device handshake."""
        if not self.shared or session_id in self.hub.sessions:
            return defer.succeed(None)
        return self._queues.run(session_id, self._known, session_id)

    # -- helpers ---------------------------------------------------------

    def _expire(self, session):
        """The sweep found `session` idle past its expiry."""
        if not self.shared:
            self.hub.expire(session)
            self._forget(session)
            return
        # other daemons may hold its devices: the shared activity decides
        d = self.store.expire_if_idle(session.id, self.hub.now())

        def decided(gone):
            if gone:
                if self.hub.sessions.get(session.id) is session:
                    self.hub.expire(session)
                self._log.info("session {session} expired", session=short_id(session.id), event="session.expired")
                return None
            return self.reread(session.id)

        d.addCallback(decided)
        d.addErrback(lambda f: self._log.warn("expiry of session {session} not decided: {e}",
                                              session=short_id(session.id), e=f.getErrorMessage()))

    def reread(self, session_id):
        """IReplica: read the session from the shared store again, inside
        its queue (never older than what this daemon committed), and adopt it."""
        return self._queues.run(session_id, self._refresh, session_id)

    def _forget(self, session):
        self._log.info("session {session} expired", session=short_id(session.id), event="session.expired")
        try:
            # a store made for an interface without expire_session forgets it whole
            forget = getattr(self.store, "expire_session", self.store.delete_session)
            d = self.metrics.store_write("expire_session", forget, session.id)
        except Exception:  # pragma: no cover - store_write catches
            d = defer.fail()
        d.addErrback(
            lambda f: self._log.failure("forgetting session {session} failed", f, session=short_id(session.id))
        )

    def _save_times(self, session):
        """Store a session's times; a failure is logged, not raised (times
        are saved again at the next sweep)."""
        d = self.metrics.store_write("save_session", self.store.save_session, session)
        d.addErrback(lambda f: self._log.warn(
            "saving session {session} failed: {e}", session=short_id(session.id), e=f.getErrorMessage()
        ))
        return d

    def _not_stored(self, failure, doing):
        """Turn a store failure into the error the caller answers with."""
        if failure.check(LumoraError):
            failure.raiseException()
        if failure.check(StoreUnavailable, ConnectionError, TimeoutError):
            self._log.warn("could not {doing}: {e}", doing=doing, e=failure.getErrorMessage())
            raise LumoraError(
                errors.INTERNAL_ERROR,
                f"Session state could not be stored ({failure.getErrorMessage()}); nothing changed, try again",
                status=503,
            )
        self._log.failure("could not {doing}", failure, doing=doing)
        raise LumoraError(
            errors.INTERNAL_ERROR,
            f"Session state could not be stored ({failure.getErrorMessage()}); nothing changed",
            status=500,
        )


MAX_CONFLICTS = 20
