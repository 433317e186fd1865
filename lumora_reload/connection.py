"""One device connection as a state machine, with no transport in it.

A `Connection` takes the events of one WebSocket (opened, a message
received, the transport paused or resumed, closed) and time from an
injected clock; it decides what happens and carries it out through the hub
(the domain) and an `IWire` (the socket: write a frame, send a close).
`websocket.DeviceProtocol` only translates Autobahn's callbacks into these
events, so everything below is tested with a `task.Clock` and fake wires.

Where a connection is (`Phase`):

  NEW --opened--> AWAITING_CONNECT --connect--> ATTACHED
  AWAITING_CONNECT or ATTACHED --close(code)--> CLOSING --closed--> CLOSED
  (a refused upgrade, or no such session, goes from NEW straight to CLOSING;
  a transport that ends by itself goes to CLOSED from any phase)

Only AWAITING_CONNECT and ATTACHED read messages and send frames. Flow is
kept apart from the phase because a socket can fill up before `connect`
as well as after it. How the socket keeps up (`Flow`):

  FLOWING --transport paused--> PAUSED --more than max_buffer queued--> CONGESTED
  PAUSED or CONGESTED --transport resumed--> FLOWING

While CONGESTED, updates are not queued (latest wins): when the socket
drains, an attached device gets one full update of the current state.

Rate limit: messages are budgeted on their parsed type (`RateGuard`);
refusals come in episodes, the first tells the device, an episode longer
than a second or with more than a burst of refusals closes 4429. A socket
that sends no `connect` within the connection timeout is closed 4401.
"""

import enum

from twisted.logger import Logger
from zope.interface import Interface, implementer

from lumora_reload import errors, messages
from lumora_reload.accesslog import redact_ids
from lumora_reload.errors import LumoraError
from lumora_reload.metrics import NO_EVENTS
from lumora_reload.sessions import IDeviceLink, Outgoing, short_id

# characters of one device `log` line that are kept and logged
LOG_LINE_LIMIT = 8192

# A device refused for longer than this without a pause is closed 4429.
RATE_GRACE_SECONDS = 1.0


class IWire(Interface):
    """What a `Connection` asks of its transport."""

    def send_frame(outgoing):
        """Write one `Outgoing` message to the socket (never blocks)."""

    def send_close(code, reason):
        """Start the closing handshake; the transport reports the end as
        `Connection.closed`."""


class Phase(enum.Enum):
    NEW = "new"
    AWAITING_CONNECT = "awaiting connect"
    ATTACHED = "attached"
    CLOSING = "closing"
    CLOSED = "closed"


class Flow(enum.Enum):
    FLOWING = "flowing"
    PAUSED = "paused"  # the transport's buffer is full: count what we queue
    CONGESTED = "congested"  # past max_buffer: updates are dropped, latest wins


_OPEN = (Phase.AWAITING_CONNECT, Phase.ATTACHED)
_ATTACHED = Phase.ATTACHED
# read on every frame sent: on Python 3.11 a module global is found ten
# times faster than a member looked up on its Enum class
_PAUSED, _CONGESTED = Flow.PAUSED, Flow.CONGESTED


class Verdict:
    PASS = "pass"
    WARN = "warn"  # first refusal of an episode: tell the device
    DROP = "drop"
    CLOSE = "close"


class RateGuard:
    """The message budget of one connection, decided on parsed types.

    Acks answer our own updates, so they get a budget of their own (10x): a
    device acking a fast push stream must not lose its acks. Refusals come
    in episodes that end after a second without one; an episode longer than
    a second, or with more than `burst` refusals, closes the connection, so
    a steady flood is closed however many of its messages get through.
    """

    __slots__ = ("messages", "acks", "burst", "clock", "_refused", "_since", "_last")

    def __init__(self, rate, burst, clock):
        self.messages = TokenBucket(rate, burst, clock)
        self.acks = TokenBucket(rate * 10, burst * 10, clock)
        self.burst = burst
        self.clock = clock
        self._refused = 0
        self._since = None
        self._last = None

    def admit(self, kind):
        bucket = self.acks if kind == "ack" else self.messages
        if bucket.take():
            return Verdict.PASS
        now = self.clock.seconds()
        if self._last is None or now - self._last > RATE_GRACE_SECONDS:
            self._since, self._refused = now, 0
        self._last = now
        self._refused += 1
        if self._refused > self.burst or now - self._since > RATE_GRACE_SECONDS:
            return Verdict.CLOSE
        return Verdict.WARN if self._refused == 1 else Verdict.DROP


class TokenBucket:
    """`rate` messages per second sustained, `burst` at once."""

    __slots__ = ("rate", "burst", "tokens", "clock", "stamp")

    def __init__(self, rate, burst, clock):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.stamp = clock.seconds()

    def take(self):
        now = self.clock.seconds()
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False


@implementer(IDeviceLink)
class Connection:
    """The state of one device connection; the hub's link to the device."""

    # one per open device, thousands at once: slots, and an instance dict
    # only once something (lumora_reload.testing's tap) shadows a method
    __slots__ = ("__dict__", "hub", "wire", "session_id", "clock", "rate_limit", "rate_burst", "max_buffer",
                 "max_name_length", "phase", "flow", "device", "_session", "_guard", "_hello_timer",
                 "_queued", "_missed", "events")
    _log = Logger()

    def __init__(
        self,
        hub,
        wire,
        session_id,
        clock,
        rate_limit=100.0,
        rate_burst=200,
        max_buffer=4 * 1024 * 1024,
        max_name_length=256,
        events=NO_EVENTS,
    ):
        self.hub = hub
        self.events = events
        self.wire = wire
        self.session_id = session_id
        self.clock = clock
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.max_buffer = max_buffer
        self.max_name_length = max_name_length
        self.phase = Phase.NEW
        self.flow = Flow.FLOWING
        self.device = None
        self._session = None
        self._guard = None
        self._hello_timer = None
        self._queued = 0  # bytes queued since the transport paused
        self._missed = False  # an update was dropped while congested

    @property
    def transport(self):
        """The wire's own transport, if it has one. Nothing here uses it;
        `lumora_reload.testing` reaches a device's socket through its link
        to stall or drop it."""
        return getattr(self.wire, "transport", None)

    # -- events ----------------------------------------------------------

    def opened(self, refusal=None, unread=False):
        """The WebSocket handshake completed. `refusal` says why the
        request's Host or Origin is not accepted (None: accepted); `unread`:
        the shared store could not be asked about a session unknown here."""
        if self.phase is not Phase.NEW:
            return
        if refusal is not None:
            # the refusal repeats the Host or Origin the client sent
            self._log.info("refused device upgrade: {why}", why=redact_ids(refusal), event="device.refused")
            origin_problem = refusal.startswith("Origin")
            self.events.refused("websocket", "origin" if origin_problem else "host")
            self.close(messages.CLOSE_FORBIDDEN, "Origin not allowed" if origin_problem else "Host not allowed")
            return
        if not self.session_id:
            self.close(messages.CLOSE_BAD_REQUEST, "Session ID required")
            return
        try:
            self.hub.get_session(self.session_id)
        except LumoraError as e:
            if e.code == errors.SESSION_EXPIRED:
                self.close(messages.CLOSE_EXPIRED, "Session expired")
            elif unread:  # it may well exist: the device must come back
                self.close(messages.CLOSE_TRY_AGAIN, "Session store unavailable; try again later")
            else:
                self.close(messages.CLOSE_NOT_FOUND, "Session not found")
            return
        self.phase = Phase.AWAITING_CONNECT
        self._guard = RateGuard(self.rate_limit, self.rate_burst, self.clock)
        # a socket that never says who it is must not stay forever: the
        # liveness sweep only sees devices that sent `connect`
        self._hello_timer = self.clock.callLater(self.hub.limits.connection_timeout, self._no_hello)

    def received(self, data, binary=False):
        """One complete message arrived."""
        if self.phase is _ATTACHED and not binary and self._usual_ack(data):
            return
        if self.phase not in _OPEN:
            return
        if self.device is not None:
            self.hub.seen(self.session_id, self.device)
        # parse once, then budget on the parsed type
        try:
            kind, session_id, body = _parse(data, binary)
            problem = None
        except LumoraError as e:
            kind, problem = None, e
        verdict = self._guard.admit(kind)
        if verdict != Verdict.PASS:
            self._rate_limited(verdict)
            return
        try:
            if problem is not None:
                raise problem
            if session_id != self.session_id:
                raise LumoraError(
                    errors.SESSION_NOT_FOUND,
                    "sessionId does not match the session of this connection",
                    close_code=messages.CLOSE_BAD_REQUEST,
                )
            if self.device is None and kind != "connect":
                raise LumoraError(errors.AUTHENTICATION_FAILED, "Send 'connect' first", close_code=messages.CLOSE_AUTH)
            if kind == "ack":  # one per update per device
                self.handle_ack(body)
            else:
                getattr(self, "handle_" + kind)(body)
        except LumoraError as e:
            self._send_error(e)
            if e.close_code is not None:
                self.close(e.close_code, e.message)
        except Exception:
            self._log.failure("handling a device message failed")
            self._send_error(LumoraError(errors.INTERNAL_ERROR, "Internal error"))

    def _usual_ack(self, data):
        """Take `data` in one step if it is what an attached device sends
        most: an ack of an update it applied, which the steps of `received`
        would take as it is (valid, of this session, a success, within the
        session's sequence and the ack budget). Returns whether it did;
        anything else is left to those steps, unchanged but for the ack
        budget brought up to now (which they then read the same)."""
        usual = messages.usual_ack(data)
        if usual is None or usual[0] != self.session_id:
            return False
        payload = usual[1]
        sequence, session = payload["sequenceNumber"], self._session
        if not payload["success"] or not 0 <= sequence <= session.state.sequence or not self._guard.acks.take():
            return False
        self.hub.acked(session, self.device, sequence)
        return True

    def ponged(self):
        """The device answered a WebSocket ping: liveness too."""
        if self.device is not None and self.phase in _OPEN:
            self.hub.seen(self.session_id, self.device)

    def paused(self):
        """The transport's buffer is full. Transports say so on every write
        while it stays full, not once: only the first call starts the count."""
        if self.flow is Flow.FLOWING:
            self.flow = Flow.PAUSED
            self._queued = 0

    def resumed(self):
        """The transport's buffer drained."""
        was, self.flow, self._queued = self.flow, Flow.FLOWING, 0
        if was is Flow.CONGESTED and self._missed and self.phase is Phase.ATTACHED:
            self._missed = False
            self._log.info(
                "device {device} drained; sending the latest state", device=_name(self.device), event="device.drained"
            )
            self.hub.resync_device(self._session, self.device)

    def closed(self, code=None):
        """The transport is gone (idempotent)."""
        if self.phase is Phase.CLOSED:
            return
        self.phase = Phase.CLOSED
        self._cancel_hello()
        if self.device is not None:
            self._log.info(
                "device {device} left session {session} ({code})",
                event="device.left",
                device=_name(self.device),
                session=short_id(self.session_id),
                code=code,
            )
            self.hub.detach(self.session_id, self.device)

    # -- IDeviceLink -----------------------------------------------------

    def send(self, outgoing):
        if self.phase not in _OPEN:
            return
        if self.flow is _CONGESTED:
            self._missed = True
            return
        self.wire.send_frame(outgoing)
        size = len(outgoing.payload)
        self.events.frame_sent(size)
        if self.flow is _PAUSED:
            self._queued += size
            if self._queued > self.max_buffer:
                self.flow = _CONGESTED
                self.events.congested()

    def close(self, code, reason):
        """Close with a WebSocket close code (idempotent)."""
        if self.phase in (Phase.CLOSING, Phase.CLOSED):
            return
        self.phase = Phase.CLOSING
        self._cancel_hello()
        self.wire.send_close(code, reason)

    # -- message handlers ------------------------------------------------

    def handle_connect(self, payload):
        if self.device is not None:
            raise messages.invalid("Already connected; 'connect' is sent once")
        limit = self.max_name_length
        for name in ("deviceId", "deviceName", "platform", "clientVersion"):
            if len(payload.get(name) or "") > limit:
                raise messages.invalid(f"'{name}' is longer than {limit} characters", details={"path": name})
        try:
            session, device, outgoing = self.hub.attach(self.session_id, self, payload)
        except LumoraError as e:
            if e.code == errors.SESSION_EXPIRED:
                e.close_code = messages.CLOSE_EXPIRED
            elif e.code == errors.SESSION_NOT_FOUND:
                e.close_code = messages.CLOSE_NOT_FOUND
            raise
        self._session, self.device = session, device
        if self.phase is Phase.AWAITING_CONNECT:
            self.phase = Phase.ATTACHED
        self._cancel_hello()
        self._log.info(
            "device {device} ({platform}, {version}) joined session {session}",
            event="device.joined",
            device=_name(device),
            platform=device.platform,
            version=device.client_version,
            session=short_id(session.id),
        )
        for item in outgoing:
            self.send(item)

    def handle_ping(self, payload):
        session = self.hub.get_session(self.session_id)
        self.send(Outgoing(messages.pong_frame(self.session_id, self.hub.now_ms(), session.sequence)))

    def handle_ack(self, payload):
        # the session this device joined, not looked up again: acks come
        # one per update per device. While the device is attached the
        # session cannot expire (the device keeps it alive), and dropping
        # the session closes this connection before any later message.
        session = self._session
        sequence = payload["sequenceNumber"]
        if not 0 <= sequence <= session.sequence:
            # an ack ahead of the session would show the device healthy
            # (and a huge one could not be encoded in /health)
            raise messages.invalid(
                f"'sequenceNumber' must be between 0 and the session's {session.sequence}",
                details={"path": "sequenceNumber"},
            )
        self.hub.acked(session, self.device, sequence)
        if not payload["success"]:
            self._log.info(
                "device {device} failed to apply update {sequence}: {error}; sending full schema",
                event="device.failed",
                device=_name(self.device),
                sequence=payload["sequenceNumber"],
                error=_shown(payload.get("error")),
            )
            self._resync()

    def handle_reload(self, payload):
        self._resync()

    def handle_log(self, payload):
        session = self.hub.get_session(self.session_id)
        message = payload["message"]
        if len(message) > LOG_LINE_LIMIT:
            # the ring buffer keeps 1000 lines: 10 MiB each would be 10 GB
            message = message[:LOG_LINE_LIMIT] + f"… [{len(message) - LOG_LINE_LIMIT} more characters]"
        line = self.hub.add_log(session, self.device, payload["level"][:32], message)
        emit = {
            "error": self._log.error,
            "fatal": self._log.error,
            "warn": self._log.warn,
            "warning": self._log.warn,
            "debug": self._log.debug,
            "trace": self._log.debug,
        }.get(payload["level"].lower(), self._log.info)
        emit(
            "[{device}] {message}", event="device.log", device=_shown(line["deviceName"] or line["deviceId"]),
            message=_shown(line["message"]), session=short_id(self.session_id),
        )

    def handle_error(self, payload):
        self._log.warn(
            "device {device} reported {code}: {message}",
            event="device.error",
            device=_name(self.device),
            code=(payload.get("code") or "")[:64],
            message=_shown((payload.get("message") or "")[:LOG_LINE_LIMIT]),
        )
        if payload.get("code") == errors.CHECKSUM_MISMATCH:
            self._resync()

    # -- helpers ---------------------------------------------------------

    def _send_error(self, error):
        self.send(Outgoing(messages.error_frame(self.session_id or "", self.hub.now_ms(), error)))

    def _resync(self):
        session = self.hub.get_session(self.session_id)
        if not self.hub.resync_device(session, self.device):
            self._send_error(LumoraError(errors.UPDATE_FAILED, "No schema has been pushed yet"))

    def _rate_limited(self, verdict):
        if verdict == Verdict.WARN:
            self._send_error(
                LumoraError(errors.RATE_LIMIT_EXCEEDED, f"More than {self.rate_limit:g} messages/s; slow down")
            )
        elif verdict == Verdict.CLOSE:
            self._send_error(
                LumoraError(
                    errors.RATE_LIMIT_EXCEEDED,
                    "Rate limit exceeded repeatedly; closing",
                    close_code=messages.CLOSE_RATE_LIMIT,
                )
            )
            self.close(messages.CLOSE_RATE_LIMIT, "Rate limit exceeded")
            self.events.rate_limit_closed()

    def _no_hello(self):
        self._hello_timer = None
        if self.phase is Phase.AWAITING_CONNECT:
            timeout = self.hub.limits.connection_timeout
            self._send_error(
                LumoraError(
                    errors.AUTHENTICATION_FAILED,
                    f"No 'connect' within {timeout:g} s",
                    close_code=messages.CLOSE_AUTH,
                )
            )
            self.close(messages.CLOSE_AUTH, "No connect")

    def _cancel_hello(self):
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None


def _parse(data, binary):
    if binary:
        raise messages.invalid("Binary frames are not supported; send JSON text")
    # orjson reads (and checks) the UTF-8 itself; the error says which it was
    return messages.parse_envelope(data)


def _name(device):
    return _shown(device.device_name or device.device_id)


def _shown(value):
    """What a device sent, for a log line: at most a log line's length (a
    message may be 10 MiB), and a session id in it cut (a device may well
    log the URL it connected to)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) > _SHOWN_LIMIT:
        text = text[:LOG_LINE_LIMIT] + f"… [{len(text) - LOG_LINE_LIMIT} more characters]"
    return redact_ids(text)


# a log message already cut to LOG_LINE_LIMIT, with its note, is shown whole
_SHOWN_LIMIT = LOG_LINE_LIMIT + 64
