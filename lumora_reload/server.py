"""`HotReloadServer`: the embeddable daemon (SPEC §6).

One object owns the hub (sessions and devices), the store, the periodic
sweeps and the WebSocket factory, and hands out a twisted.web resource
(REST API + device WebSocket) to mount in any `Site`. The twistd plugin is
built from this same object (lumora_reload.tap).
"""

from urllib.parse import urlsplit

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from lumora_reload import errors, messages, web
from lumora_reload.access import AccessPolicy
from lumora_reload.errors import LumoraError
from lumora_reload.liveness import Sweeps
from lumora_reload.sessions import HistoryEntry, Hub, Limits, PushResult, short_id
from lumora_reload.store import MemoryStore
from lumora_reload.websocket import DeviceFactory

MiB = 1024 * 1024


class HotReloadServer(service.Service):
    _log = Logger()

    def __init__(
        self,
        reactor=None,
        ws_path="/ws",
        session_timeout=28800.0,
        heartbeat_interval=30.0,
        connection_timeout=60.0,
        cleanup_interval=60.0,
        incremental_threshold=10,
        store=None,
        history_size=64,
        max_sessions=10000,
        max_devices_per_session=10000,
        max_message_size=10 * MiB,
        max_body_size=10 * MiB,
        rate_limit=100.0,
        rate_burst=200,
        max_buffer=4 * MiB,
        max_ack_lag=10,
        api_token=None,
        public_url=None,
        allowed_hosts=(),
        allowed_origins=(),
        auto_ping_interval=None,
        secure=False,
        verbose=False,
        clock=None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.ws_path = "/" + ws_path.strip("/")
        self.public_url = public_url.rstrip("/") if public_url else None
        self.secure = secure
        self.verbose = verbose
        self.max_body_size = max_body_size
        self.store = store if store is not None else MemoryStore()
        self.hub = Hub(
            self.clock,
            Limits(
                session_timeout=session_timeout,
                connection_timeout=connection_timeout,
                incremental_threshold=incremental_threshold,
                history_size=history_size,
                max_sessions=max_sessions,
                max_devices_per_session=max_devices_per_session,
                max_ack_lag=max_ack_lag,
            ),
        )
        self.policy = AccessPolicy(api_token, allowed_hosts, allowed_origins, public_url)
        if auto_ping_interval is None:
            auto_ping_interval = heartbeat_interval
        self.ws_factory = DeviceFactory(
            self.hub,
            self.policy,
            reactor,
            clock=self.clock,
            max_message_size=max_message_size,
            rate_limit=rate_limit,
            rate_burst=rate_burst,
            max_buffer=max_buffer,
            auto_ping_interval=auto_ping_interval,
            auto_ping_timeout=connection_timeout,
        )
        self.sweeps = Sweeps(
            self.hub, self._forget, self.clock, heartbeat_interval, cleanup_interval,
            on_active=lambda session: self._store("save_session", session),
        )
        self._resource = None
        if hasattr(self.store, "attach"):  # cluster mode (lumora_reload.cluster)
            self.store.attach(self)

    # -- IService --------------------------------------------------------

    def startService(self):
        for session in self.store.load():
            self.hub.add_loaded(session)
        if self.hub.sessions:
            self._log.info("restored {n} session(s)", n=len(self.hub.sessions))
        self.sweeps.start()
        super().startService()

    @defer.inlineCallbacks
    def stopService(self):
        """Save state, then close devices with 1012 so they reconnect and
        resume as soon as the daemon is back."""
        super().stopService()
        self.sweeps.stop()
        for session in list(self.hub.sessions.values()):
            try:
                self.store.save_session(session)
            except Exception:
                self._log.failure("saving session {id} failed", id=short_id(session.id))
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
            base = f"{'wss' if secure else 'ws'}://{host}"
        return f"{base}{self.ws_path}?session={session_id}"

    # -- the seed's API, snake_case (SPEC §6) ----------------------------

    def create_session(self, schema=None, timeout_seconds=None):
        return self._create_session(schema, timeout_seconds)[0]

    def create_session_stored(self, schema=None, timeout_seconds=None):
        """`create_session`, as a Deferred that fires once the store holds
        the session (a Redis store writes asynchronously; the REST API
        answers only after that, so another daemon already knows it)."""
        try:
            session, writes = self._create_session(schema, timeout_seconds)
        except LumoraError as e:
            return defer.fail(e)
        return _all_stored(writes).addCallback(lambda _: session)

    def _create_session(self, schema, timeout_seconds):
        session = self.hub.create_session(schema=schema, timeout_seconds=timeout_seconds)
        if schema is not None:
            session.history.clear()
        writes = [self._store("save_session", session, wait=True)]
        if schema is not None:
            writes.append(self._store("record_push", session, HistoryEntry(session.sequence, "full"), wait=True))
        self._log.info("session {id} created", id=short_id(session.id))
        return session, writes

    def get_session(self, session_id):
        return self.hub.get_session(session_id)

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
        self.hub.delete_session(session_id)
        self._store("delete_session", session_id)
        self._log.info("session {id} deleted", id=short_id(session_id))
        return True

    def push_update(self, session_id, schema, preserve_state=True):
        """Store and send a new schema. Returns a Deferred firing with a
        `PushResult` once every device's connection has the update, or
        failing with `LumoraError`."""
        if hasattr(self.store, "push"):  # cluster mode: sequence allocated in Redis
            return self.store.push(session_id, schema, preserve_state)
        try:
            session, update = self.hub.prepare_push(session_id, schema, preserve_state)
        except LumoraError as e:
            return defer.fail(e)
        if update is None:
            self._store("save_session", session)
            return defer.succeed(PushResult(True, 0, "none", session.sequence))
        d = defer.maybeDeferred(self.store.record_push, session, update["entry"])

        def stored(_):
            count = self.hub.deliver(session, update)
            if self.verbose:
                self._log.info(
                    "push {seq} ({kind}) to {n} device(s) of session {id}",
                    seq=update["sequence"], kind=update["update_type"], n=count, id=short_id(session.id),
                )
            return PushResult(True, count, update["update_type"], update["sequence"])

        def not_stored(failure):
            # devices never saw this state; make the next push a full one
            session.force_full = True
            session.history.clear()
            self._log.failure("push to session {id} was not stored", failure, id=short_id(session.id))
            raise LumoraError(
                errors.INTERNAL_ERROR,
                f"The push was not stored: {failure.getErrorMessage()}",
                status=500,
            )

        d.addCallbacks(stored, not_stored)
        return d

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
        session = self.hub.extend_session(session_id, seconds)
        self._store("save_session", session)
        return session.expires_at()

    def extend_session_stored(self, session_id, seconds=None):
        """`extend_session`, as a Deferred that fires once it is stored."""
        try:
            session = self.hub.extend_session(session_id, seconds)
            write = self._store("save_session", session, wait=True)
        except LumoraError as e:
            return defer.fail(e)
        return _all_stored([write]).addCallback(lambda _: session.expires_at())

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

    # -- helpers ---------------------------------------------------------

    def _forget(self, session):
        self._log.info("session {id} expired", id=short_id(session.id))
        self._store("delete_session", session.id)

    def _store(self, method, *args, wait=False):
        """Call the store; a failure here is logged and raised so the
        caller's request fails rather than pretending it was stored. With
        `wait`, an asynchronous failure reaches the caller's Deferred as a
        503 (the store is unavailable); otherwise it is only logged."""
        try:
            result = getattr(self.store, method)(*args)
        except Exception as e:
            self._log.failure("store.{method} failed", method=method)
            raise LumoraError(errors.INTERNAL_ERROR, f"Session state could not be stored: {e}", status=500)
        if isinstance(result, defer.Deferred):

            def failed(failure):
                self._log.failure("store.{method} failed", failure, method=method)
                if wait:
                    raise LumoraError(
                        errors.INTERNAL_ERROR,
                        f"Session state could not be stored: {failure.getErrorMessage()}",
                        status=503,
                    )

            result.addErrback(failed)
        return result


def _all_stored(writes):
    """One Deferred for the store's answers (values or Deferreds); fails
    with the first error, as a LumoraError."""
    pending = [w for w in writes if isinstance(w, defer.Deferred)]
    if not pending:
        return defer.succeed(None)
    d = defer.gatherResults(pending, consumeErrors=True)
    d.addErrback(lambda f: f.value.subFailure if f.check(defer.FirstError) else f)
    return d
