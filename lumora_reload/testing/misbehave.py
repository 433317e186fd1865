"""Misbehaviour at the level of one device's connection.

`Misbehaviours` holds the calls a test makes (``close_device``,
``send_wrong_checksum``, ``delay_pongs``, ...); `LumoraServer` (real
sockets) and `MemoryNetwork` (no sockets) both have them.

Underneath, a `Tap` sits in front of a device link's ``send`` (the
`IDeviceLink` method the hub and the protocol send every message through)
and can hold, drop, reorder or delay messages on their way out. A
misbehaviour puts one on a link the first time it needs it;
`remove_misbehaviours` takes them off.
"""

import orjson

from lumora_reload import messages
from lumora_reload.schema import checksum as schema_checksum
from lumora_reload.sessions import Outgoing

WRONG_CHECKSUM = "0" * 64


def message_type(outgoing):
    """The `type` of one outgoing frame, read from its bytes."""
    try:
        return orjson.loads(outgoing.payload).get("type")
    except (orjson.JSONDecodeError, AttributeError):
        return None


class Tap:
    """Intercepts what the server sends to one device.

    `rules` are callables ``rule(tap, outgoing, kind) -> bool``; the first
    that returns True has taken the message (held, dropped or scheduled).
    `deliver` sends for real; `later` sends after `seconds` on the clock.
    """

    def __init__(self, link, clock):
        self.link = link
        self.clock = clock
        self.rules = []
        self._calls = []
        self._send = link.send
        self._own = link.__dict__.get("send")  # someone else's wrapper, kept on removal
        link.send = self.send  # an instance attribute: shadows the method

    def send(self, outgoing):
        kind = message_type(outgoing)
        for rule in list(self.rules):
            if rule(self, outgoing, kind):
                return
        self._send(outgoing)

    def deliver(self, outgoing):
        self._send(outgoing)

    def later(self, seconds, outgoing):
        self._calls = [c for c in self._calls if c.active()]
        self._calls.append(self.clock.callLater(seconds, self._send, outgoing))

    def remove(self):
        """Cancel what is scheduled and give the link its own `send` back."""
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []
        self.rules = []
        if self.link.__dict__.get("send") == self.send:
            if self._own is not None:
                self.link.send = self._own
            else:
                del self.link.send


class Once:
    """Take the next message of a kind out of the stream with `action`."""

    def __init__(self, kinds, action):
        self.kinds = kinds
        self.action = action

    def __call__(self, tap, outgoing, kind):
        if kind not in self.kinds:
            return False
        tap.rules.remove(self)
        self.action(tap, outgoing)
        return True


class Reorder:
    """Hold the next update; send it right after the one that follows."""

    def __init__(self):
        self.held = None

    def __call__(self, tap, outgoing, kind):
        if kind != "update":
            return False
        if self.held is None:
            self.held = outgoing
            return True
        tap.rules.remove(self)
        tap.deliver(outgoing)
        tap.deliver(self.held)
        return True


class Delay:
    """Send messages of some kinds `seconds` late (`count` of them, or all)."""

    def __init__(self, kinds, seconds, count=None):
        self.kinds = kinds
        self.seconds = seconds
        self.count = count

    def __call__(self, tap, outgoing, kind):
        if kind not in self.kinds:
            return False
        if self.count is not None:
            self.count -= 1
            if self.count <= 0:
                tap.rules.remove(self)
        tap.later(self.seconds, outgoing)
        return True


class PingStall:
    """The daemon's WebSocket pings held back on one connection (the
    factory's ping sweep leaves it out until `resume`)."""

    def __init__(self, protocol):
        self.protocol = protocol
        self.sweep = protocol.factory.pings
        self.active = True
        if self.sweep is not None:
            self.sweep.remove(protocol)

    def resume(self):
        """Ping again, now and then every interval."""
        if not self.active:
            return
        self.active = False
        protocol = self.protocol
        if self.sweep is not None and protocol.state == protocol.STATE_OPEN:
            protocol.ping()
            self.sweep.add(protocol)


class Stall:
    """A device the server stopped serving: nothing read from it, nothing
    sent to it (what the server would send is kept, in order, for
    `resume`). The daemon's WebSocket pings (its ping sweep) still go out."""

    def __init__(self, tap, reading=True, sending=True):
        self.tap = tap
        self.reading = reading
        self.sending = sending
        self.queued = []
        self.active = True
        if sending:
            tap.rules.insert(0, self._hold)
        transport = tap.link.transport
        if reading and transport is not None:
            transport.pauseProducing()

    def _hold(self, tap, outgoing, kind):
        self.queued.append(outgoing)
        return True

    def resume(self):
        """Read and send again; what was held goes out first."""
        if not self.active:
            return
        self.active = False
        if self.sending and self._hold in self.tap.rules:
            self.tap.rules.remove(self._hold)
        transport = self.tap.link.transport
        if self.reading and transport is not None and transport.connected:
            transport.resumeProducing()
        queued, self.queued = self.queued, []
        for outgoing in queued:
            self.tap.deliver(outgoing)


class Misbehaviours:
    """The misbehaviours of a test server, for one device (a
    `DeviceClient`, a ``deviceId`` or a ``connectionId``) or every device
    of a session. Mixed into `LumoraServer` and `MemoryNetwork`; needs
    ``self.server`` (a `HotReloadServer`) and `install_misbehaviours`
    called once."""

    def install_misbehaviours(self):
        self._taps = {}
        self._refuse_resume = {}  # session id -> connects left to refuse
        self._attach = self.server.hub.attach
        self.server.hub.attach = self._attached

    def remove_misbehaviours(self):
        for tap in list(self._taps.values()):
            tap.remove()
        self._taps.clear()

    def session(self, session_id):
        return self.server.hub.get_session(session_id)

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
            tap = self._taps[link] = Tap(link, self.server.clock)
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
        the `Stall` objects (``.resume()`` each).

        Expected: a client that hears nothing (no update, no ``pong``) for
        its receive timeout gives the connection up and reconnects,
        resuming; one that keeps it must end on the latest state once the
        server resumes. The daemon's WebSocket pings still go out."""
        return [Stall(tap, reading, sending) for tap in self._taps_of(session_id, device)]

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
            tap.rules.append(Once({"update"}, lambda tap, outgoing: None))

    def reorder_next_updates(self, session_id, device=None):
        """The next two updates to the device arrive in the wrong order.

        Expected: the later one arrives first and does not follow the
        client's number: not applied, acked ``success: false``, a full
        update follows. The earlier one, arriving late, is applied if it
        follows what the client holds and ignored if it is older; either
        way the full update leaves the client on the latest state."""
        for tap in self._taps_of(session_id, device):
            tap.rules.append(Reorder())

    # -- misbehaviour: liveness and resume ---------------------------------

    def delay_pongs(self, session_id, seconds, device=None, count=None):
        """Answer ``ping`` `seconds` late (`count` pongs, or all of them),
        on the device's present connection only: after a reconnect pongs
        are on time again.

        Expected: a client tolerates a late ``pong`` up to its receive
        timeout; past it, it drops the connection and reconnects."""
        for tap in self._taps_of(session_id, device):
            tap.rules.append(Delay({"pong"}, seconds, count))

    def stall_pings(self, session_id, device=None):
        """Stop the daemon's WebSocket pings (its ping sweep, every
        ``heartbeat_interval``) on the device's present connection;
        returns the `PingStall` objects (``.resume()`` each). Messages still
        flow.

        Expected: a client that watches the daemon's WebSocket pings as its
        heartbeat gives the connection up once they stop for its timeout,
        and reconnects; the new connection is pinged again."""
        return [PingStall(link.wire) for link in self.links(session_id, device)]

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
