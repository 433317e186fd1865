"""Misbehaviour at the level of one device's connection.

A `Tap` sits in front of a device link's ``send`` (the `IDeviceLink`
method the hub and the protocol send every message through) and can hold,
drop, reorder or delay messages on their way out. `LumoraServer` puts one
on a link the first time a misbehaviour needs it and takes it off when it
stops; these classes are its parts and are not needed directly.
"""

import orjson


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


class Stall:
    """A device the server stopped serving: nothing read from it, nothing
    sent to it (what the server would send is kept, in order, for
    `resume`). WebSocket-level pings are Autobahn's and still go out."""

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
