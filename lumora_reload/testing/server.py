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

import orjson
from twisted.internet import defer, endpoints, task

from lumora_reload import messages, web
from lumora_reload.client import DeviceClient
from lumora_reload.schema import checksum as schema_checksum
from lumora_reload.server import HotReloadServer
from lumora_reload.sessions import Outgoing
from lumora_reload.testing import misbehave

WRONG_CHECKSUM = "0" * 64

# how long `stop` waits for connections to go before it gives up
STOP_TIMEOUT = 5.0


class LumoraServer:
    """One `HotReloadServer` (in-memory store) on 127.0.0.1, port chosen by
    the system. `options` are `HotReloadServer` / `Config` options
    (``heartbeat_interval``, ``connection_timeout``, ``history_size``, ...)."""

    def __init__(self, reactor=None, **options):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        options.setdefault("heartbeat_interval", 30.0)
        self.server = HotReloadServer(reactor=reactor, **options)
        self.port = None
        self.url = None
        self.devices = []
        self._taps = {}
        self._before = set()
        self._refuse_resume = {}  # session id -> connects left to refuse
        self._attach = self.server.hub.attach
        self.server.hub.attach = self._attached

    # -- life ------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self):
        """Start the daemon and listen; a Deferred of this object."""
        self._before = {id(c) for c in self.reactor.getDelayedCalls()}
        self.server.startService()
        site = web.site(self.server, self.reactor)
        endpoint = endpoints.TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self.port = yield endpoint.listen(site)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        return self

    @defer.inlineCallbacks
    def stop(self):
        """Stop devices, daemon and port; fires when nothing is left."""
        clients, self.devices = self.devices, []
        yield defer.gatherResults([c.stop() for c in clients], consumeErrors=True)
        for tap in list(self._taps.values()):
            tap.remove()
        self._taps.clear()
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
        check counts every one)."""
        deadline = self.reactor.seconds() + STOP_TIMEOUT
        while self.reactor.seconds() < deadline:
            if not self.server.ws_factory.connections and not self.pending_calls():
                return
            yield task.deferLater(self.reactor, 0.01, lambda: None)

    def pending_calls(self):
        """Daemon and Autobahn timers scheduled since `start` and still
        pending (after `stop`, a non-empty list is a leak)."""
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

    def session(self, session_id):
        return self.server.hub.get_session(session_id)

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
                raise ConnectionError(f"device refused: {value.code} {value.reason}")
            return client

        return first.addCallback(which)

    # -- choosing devices ------------------------------------------------

    def links(self, session_id, device=None):
        """The server side of the session's devices (`DeviceProtocol`s):
        all of them, or the one `device` names."""
        found = list(self.session(session_id).devices.values())
        if device is not None:
            key = getattr(device, "device_id", device)
            found = [d for d in found if key in (d.device_id, d.connection_id)]
            if not found:
                raise LookupError(f"no device {key!r} in session {session_id}")
        return [d.link for d in found]

    def _tap(self, link):
        tap = self._taps.get(link)
        if tap is None:
            tap = self._taps[link] = misbehave.Tap(link, self.server.clock)
        return tap

    def _taps_of(self, session_id, device):
        return [self._tap(link) for link in self.links(session_id, device)]

    # -- misbehaviour: closing -------------------------------------------

    def close_device(self, session_id, code, reason="", device=None):
        """Close with any close code and reason (a proper close frame).

        Expected (docs/protocol.md, close codes): 4400, 4401, 4403, 4404,
        4410, 4426 and 1009 are final -- stop, do not reconnect; 1000 is
        final unless the reason is "Connection timeout"; 1012 reconnects at
        once and resumes; 4409, 4429, 1013 and 1000 "Connection timeout"
        reconnect with backoff and resume (``lastSequence``)."""
        for link in self.links(session_id, device):
            link.close(code, reason)

    def drop_device(self, session_id, device=None):
        """Drop the TCP connection, no close frame (a dead network).

        Expected: the client sees 1006, reconnects with backoff and
        resumes with ``lastSequence`` (and ``lastChecksum``)."""
        for link in self.links(session_id, device):
            link.transport.abortConnection()

    def stall_device(self, session_id, device=None, reading=True, sending=True):
        """Stop reading from the device and/or stop sending to it; returns
        the `misbehave.Stall` objects (``.resume()`` each, or
        `resume_devices`).

        Expected: a client that hears nothing (no update, no ``pong``) for
        its receive timeout gives the connection up and reconnects,
        resuming; one that keeps it must end on the latest state once the
        server resumes. Autobahn's WebSocket pings still go out."""
        return [misbehave.Stall(tap, reading, sending) for tap in self._taps_of(session_id, device)]

    # -- misbehaviour: updates -------------------------------------------

    def send_update(self, session_id, payload, device=None):
        """Send a hand-made ``update`` payload, bypassing the hub."""
        session = self.session(session_id)
        frame = messages.encode(messages.envelope("update", session.id, self.server.hub.now_ms(), payload))
        for link in self.links(session_id, device):
            link.send(Outgoing(frame))

    def send_wrong_checksum(self, session_id, device=None):
        """A full update of the current schema and number whose checksum
        is wrong.

        Expected: the client does not take it (keeps what it had) and says
        so -- an ``ack`` with ``success: false`` or an ``error`` with
        ``CHECKSUM_MISMATCH``; the server answers with a full update and the
        client ends on the current schema with the right checksum."""
        session = self.session(session_id)
        if session.schema is None:
            raise ValueError("the session has no schema yet")
        self.send_update(
            session_id,
            {
                "type": "full",
                "schema": session.schema,
                "preserveState": session.preserve_state,
                "sequenceNumber": session.sequence,
                "checksum": WRONG_CHECKSUM,
            },
            device,
        )

    def send_duplicate(self, session_id, device=None):
        """Send the last update again (its incremental frame from the
        history, else the full update of the current state).

        Expected: nothing changes -- a client already at that number
        ignores it (an ``ack`` with ``success: true`` is fine)."""
        session = self.session(session_id)
        if session.schema is None:
            raise ValueError("the session has no schema yet")
        last = session.history[-1] if session.history else None
        if last is not None and last.sequence == session.sequence and last.payload is not None:
            outgoing = Outgoing(last.payload)
        else:
            outgoing = self.server.hub.full_update(session)
        for link in self.links(session_id, device):
            link.send(outgoing)

    def withhold_next_update(self, session_id, device=None):
        """The next update to the device is never sent: a gap in the
        sequence numbers.

        Expected: an incremental update that does not follow the number
        the client holds is not applied; the client acks it with
        ``success: false`` (or sends ``reload``) and gets a full update.
        If the withheld update was the last one, the next ``pong``'s
        ``sequenceNumber`` shows the client it is behind: it sends
        ``reload``."""
        for tap in self._taps_of(session_id, device):
            tap.rules.append(misbehave.Once({"update"}, lambda tap, outgoing: None))

    def reorder_next_updates(self, session_id, device=None):
        """The next two updates to the device arrive in the wrong order.

        Expected: the later one arrives first and does not follow the
        client's number: not applied, acked ``success: false``, a full
        update follows. The earlier one, arriving late, is applied if it
        follows what the client holds and ignored if it is older; either
        way the full update leaves the client on the latest state."""
        for tap in self._taps_of(session_id, device):
            tap.rules.append(misbehave.Reorder())

    # -- misbehaviour: liveness and resume ---------------------------------

    def delay_pongs(self, session_id, seconds, device=None, count=None):
        """Answer ``ping`` `seconds` late (`count` pongs, or all of them).

        Expected: a client tolerates a late ``pong`` up to its receive
        timeout; past it, it drops the connection and reconnects."""
        for tap in self._taps_of(session_id, device):
            tap.rules.append(misbehave.Delay({"pong"}, seconds, count))

    def refuse_resume(self, session_id, times=1):
        """The next `times` ``connect``s to the session get ``resumed:
        false`` with the full schema, whatever ``lastSequence`` says.

        Expected: the client drops what it held and starts over from
        ``initialSchema`` (and ``checksum``), acking that number."""
        self._refuse_resume[session_id] = self._refuse_resume.get(session_id, 0) + times

    def _attached(self, session_id, link, payload):
        session, device, outgoing = self._attach(session_id, link, payload)
        left = self._refuse_resume.get(session_id, 0)
        if left <= 0:
            return session, device, outgoing
        self._refuse_resume[session_id] = left - 1
        connected = orjson.loads(outgoing[0].payload)["payload"]
        connected["resumed"] = False
        if session.schema is not None:
            connected["initialSchema"] = session.schema
            connected["checksum"] = session.checksum or schema_checksum(session.schema)
        device.last_ack_sequence = 0
        frame = messages.encode(messages.envelope("connected", session.id, self.server.hub.now_ms(), connected))
        return session, device, [Outgoing(frame)]


def _ours(call):
    """Whether a DelayedCall belongs to lumora-reload or Autobahn."""
    func = getattr(call, "func", None)
    owner = getattr(func, "__self__", None)
    for candidate in (func, owner, getattr(func, "f", None), getattr(owner, "f", None)):
        module = getattr(candidate, "__module__", "") or ""
        if module.startswith(("lumora_reload", "autobahn", "txaio")):
            return True
    return False

