"""`LumoraServer`: an in-process daemon for one test, and its misbehaviours.

    server = LumoraServer(heartbeat_interval=0.5)
    yield server.start()
    session_id = server.create_session()
    client = yield server.device(session_id)
    result = yield server.push(session_id, schema)
    yield client.wait_for_sequence(result.sequence_number)
    ...
    yield server.stop()

`stop` leaves the reactor as it found it: devices made by `device` are
stopped, the daemon closes the rest (1012), the port is closed, and the
Deferred fires once every connection is gone and none of the daemon's
timers is pending.

Every misbehaviour takes the session and, optionally, one device (a
`DeviceClient`, a ``deviceId`` or a ``connectionId``); without one it hits
every device of the session. Each docstring says what the protocol
(docs/protocol.md) expects a device client to do about it.
"""

import weakref

from twisted.internet import defer, endpoints, task

from lumora_reload import web
from lumora_reload.client import DeviceClient
from lumora_reload.server import HotReloadServer
from lumora_reload.testing import misbehave
from lumora_reload.testing.misbehave import WRONG_CHECKSUM  # noqa: F401  (its old home)

# how long `stop` waits for connections to go before it gives up
STOP_TIMEOUT = 5.0

# the started servers: one server's timers cannot be told from another's
_running: "weakref.WeakSet[LumoraServer]" = weakref.WeakSet()


class LumoraServer(misbehave.Misbehaviours):
    """One `HotReloadServer` (in-memory store) on 127.0.0.1, port chosen by
    the system (or `port`). `options` are `HotReloadServer` / `Config` options
    (``heartbeat_interval``, ``connection_timeout``, ``history_size``, ...)."""

    def __init__(self, reactor=None, port=0, **options):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self._port_number = port
        options.setdefault("heartbeat_interval", 30.0)
        self.server = HotReloadServer(reactor=reactor, **options)
        self.port = None
        self.url = None
        self.devices = []
        self._before = set()
        self.install_misbehaviours()

    # -- life ------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self):
        """Start the daemon and listen; a Deferred of this object."""
        if self in _running:
            raise RuntimeError("this LumoraServer is already started; stop it first")
        self._before = {id(c) for c in self.reactor.getDelayedCalls()}
        _running.add(self)
        self.server.startService()
        site = web.site(self.server, self.reactor)
        endpoint = endpoints.TCP4ServerEndpoint(self.reactor, self._port_number, interface="127.0.0.1")
        try:
            self.port = yield endpoint.listen(site)
        except Exception:
            # nothing listens: nothing of this start is left running
            _running.discard(self)
            yield self.server.stopService()
            raise
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        return self

    @defer.inlineCallbacks
    def stop(self):
        """Stop devices, daemon and port; fires when nothing is left."""
        _running.discard(self)
        clients, self.devices = self.devices, []
        yield defer.gatherResults([c.stop() for c in clients], consumeErrors=True)
        self.remove_misbehaviours()
        if self.server.running:
            yield self.server.stopService()
        if self.port is not None:
            port, self.port = self.port, None
            yield port.stopListening()
        yield self._quiet()

    @defer.inlineCallbacks
    def _quiet(self):
        """Wait until no device connection is left and no daemon or
        Autobahn timer they scheduled is pending (Trial's dirty-reactor
        check counts every one). While another server runs on the reactor
        its timers look the same: then only the connections are waited
        for, and the timers by the last server to stop."""
        deadline = self.reactor.seconds() + STOP_TIMEOUT
        while self.reactor.seconds() < deadline:
            alone = not any(s.reactor is self.reactor for s in _running)
            if not self.server.ws_factory.connections and not (alone and self.pending_calls()):
                return
            yield task.deferLater(self.reactor, 0.01, lambda: None)

    def pending_calls(self):
        """Daemon and Autobahn timers scheduled since `start` and still
        pending, this server's or another's (after `stop` of every server
        started since, a non-empty list is a leak)."""
        return [
            c for c in self.reactor.getDelayedCalls()
            if id(c) not in self._before and c.active() and _ours(c)
        ]

    # -- the daemon ------------------------------------------------------

    @property
    def hub(self):
        return self.server.hub

    def ws_url(self, session_id):
        return f"ws://127.0.0.1:{self.port.getHost().port}{self.server.ws_path}?session={session_id}"

    def create_session(self, schema=None, timeout_seconds=None):
        """Create a session (with a first schema, if given); its id."""
        return self.server.create_session(schema=schema, timeout_seconds=timeout_seconds).id

    def push(self, session_id, schema, preserve_state=True):
        """Push a schema, as ``POST /send/:id`` does: a Deferred of the
        `PushResult` (``.sequence_number``, ``.update_type``,
        ``.devices_updated``; ``.to_json()`` is the HTTP answer)."""
        return self.server.push_update(session_id, schema, preserve_state)

    def device(self, session_id, **options):
        """A `DeviceClient` on `session_id`, started; a Deferred firing
        with it once it has the server's ``connected``. `options` go to
        `DeviceClient` (``device_id``, ``client_version``,
        ``ping_interval``, ``backoff``, ...). `stop` stops it."""
        client = DeviceClient(self.ws_url(session_id), reactor=self.reactor, **options)
        self.devices.append(client)
        connected = client.when("connected")
        stopped = client.when("stopped")
        client.start()
        first = defer.DeferredList([connected, stopped], fireOnOneCallback=True, consumeErrors=True)

        def which(result):
            value, index = result
            if index == 1:
                if value.code is None:  # stopped here (`stop`, a test's end) before the server answered
                    raise ConnectionError("device stopped before it was connected")
                raise ConnectionError(f"device refused: {value.code} {value.reason}")
            return client

        return first.addCallback(which)

def _ours(call):
    """Whether a DelayedCall belongs to lumora-reload or Autobahn."""
    func = getattr(call, "func", None)
    owner = getattr(func, "__self__", None)
    for candidate in (func, owner, getattr(func, "f", None), getattr(owner, "f", None)):
        module = getattr(candidate, "__module__", "") or ""
        if module.startswith(("lumora_reload", "autobahn", "txaio")):
            return True
    return False

