"""A leaner Autobahn server protocol, and one ping timer for all devices.

An idle device is mostly its protocol object. Autobahn's
`WebSocketServerProtocol` keeps about a hundred attributes per connection
in an instance dict (over 3 KB), copies every protocol option from the
factory onto each instance, allocates a send queue, a UTF-8 validator and
traffic counters it rarely or never uses, keeps the handshake's headers and
raw text for the life of the connection, and arms a timer per connection
for its automatic pings. `LeanServerProtocol` is the same protocol with
that per-connection state trimmed:

- the options live on a per-factory subclass (`options_class`), so
  Autobahn finds them on the class and copies (and logs) nothing;
- the attributes Autobahn sets on every connection are `__slots__`;
- the send queue is a small list until something is queued (Autobahn only
  queues for synchronous or chopped sends, which we do not use), the
  validator is not created (incoming UTF-8 is not validated by Autobahn
  here), traffic counters are not kept;
- the handshake's request and response text is dropped once open;
- a prepared frame goes straight to the socket when nothing is queued
  (`send_prepared`);
- whole, small, unfragmented data frames are read in one step
  (`dataReceived`): a device's ack is one frame, and Autobahn's general
  frame machine (a frame object, an unmasker object, five callbacks, a
  debug line whose arguments are formatted on every read) cost over half
  of the daemon's CPU when 100 devices acked every push. Anything else
  (control frames, fragments, partial frames, large or over-limit frames,
  compression, RSV bits, an unmasked frame) goes through Autobahn as
  before, in order. So does every frame when an option or an observer
  asks Autobahn to do more per frame (UTF-8 checks of incoming text,
  Autobahn's own auto-ping, frame or octet logging, `on("message", ...)`); the
  daemon's devices use none of them.

`PingSweep` sends the WebSocket pings: one timer for every connection,
each pinged once per interval, a slice of them per tick so that ten
thousand pings do not land in one reactor turn.
"""

from typing import ClassVar

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet import task
from twisted.logger import Logger

from lumora_reload.directwrite import write_now

# What Autobahn sets on every server connection (autobahn 26.x), other than
# the protocol options and names its base classes already define.
AUTOBAHN_SLOTS = (
    "_isMessageCompressed", "_perMessageCompress", "_transport_details", "_wskey",
    "autoPingPending", "autoPingPendingCall", "autoPingPendingSent", "autoPingPendingSeq",
    "autoPingTimeoutCall", "closeHandshakeTimeoutCall", "closedByMe", "control_frame_data",
    "current_frame", "current_frame_masker", "data", "droppedByMe", "failedByMe", "frame_data",
    "frame_length", "http_headers", "http_request_data", "http_request_host", "http_request_params",
    "http_request_path", "http_request_uri", "http_response_data", "http_status_line",
    "inside_message", "is_closed", "is_open", "localCloseCode", "localCloseReason", "message_data",
    "message_data_total_length", "message_is_binary", "openHandshakeTimeoutCall", "remoteCloseCode",
    "remoteCloseReason", "send_queue", "send_state", "state", "trackedTimings", "trafficStats",
    "triggered", "utf8validateIncomingCurrentMessage", "utf8validator", "wasClean",
    "wasCloseHandshakeTimeout", "wasMaxFramePayloadSizeExceeded", "wasMaxMessagePayloadSizeExceeded",
    "wasNotCleanReason", "wasOpenHandshakeTimeout", "wasServerConnectionDropTimeout",
    "wasServingFlashSocketPolicyFile", "websocket_extensions", "websocket_extensions_in_use",
    "websocket_origin", "websocket_protocol_in_use", "websocket_protocols", "websocket_version",
)

# held by the request and response of the opening handshake only
_HANDSHAKE_ONLY = ("http_headers", "http_request_data", "http_response_data", "http_status_line",
                   "http_request_params", "websocket_extensions", "websocket_protocols")


class _SendQueue(list):
    """Autobahn's send queue as a list: empty, it costs a tenth of a deque."""

    __slots__ = ()

    def popleft(self):
        return self.pop(0)


class _NoStats:
    """Traffic counters nobody reads: every increment is dropped."""

    __slots__ = ()

    def __getattr__(self, name):
        return 0

    def __setattr__(self, name, value):
        pass


_NO_STATS = _NoStats()


def unmask(payload, mask):
    """`payload` XOR the repeated 4-byte `mask` (RFC 6455 5.3), as one
    big-integer XOR: fast for the small frames the fast path takes."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


# the largest payload read by the fast path: a 16-bit length field
_FAST_MAX = 0xFFFF


def fast_limit(options):
    """The largest payload `_whole_frames` reads itself under these
    protocol options; 0 when it reads none: unmasked frames expected, or
    an option that makes Autobahn do more for each data frame (check the
    UTF-8 of text, cancel a pending auto-ping timeout, log the frame or
    its bytes)."""
    if (not options.applyMask or options.utf8validateIncoming or options.autoPingInterval
            or options.logFrames or options.logOctets):
        return 0
    limit = _FAST_MAX
    if options.maxFramePayloadSize:
        limit = min(limit, options.maxFramePayloadSize)
    if options.maxMessagePayloadSize:
        limit = min(limit, options.maxMessagePayloadSize)
    return limit


class LeanServerProtocol(WebSocketServerProtocol):
    __slots__ = AUTOBAHN_SLOTS + ("_ping_slot",)

    # `fast_limit` of the options, worked out once by `options_class`:
    # options are fixed once that class is built (the factory's
    # setProtocolOptions builds a new one). None: worked out from the
    # connection's options on every read.
    _fast_limit: ClassVar[int | None] = None

    @classmethod
    def options_class(cls, factory):
        """A subclass carrying `factory`'s protocol options as class
        attributes, so no connection copies them."""
        # a function option (perMessageCompressionAccept) stays a plain
        # function: as a class attribute it would become a bound method
        options = {
            name: staticmethod(value) if callable(value) else value
            for name, value in ((n, getattr(factory, n)) for n in WebSocketServerProtocol.CONFIG_ATTRS)
        }
        # an empty CONFIG_ATTRS: nothing to copy, and Autobahn's connect
        # skips pretty-printing every option for a debug line (an eighth
        # of the CPU of a connect storm)
        options_class = type(cls.__name__, (cls,), {"__slots__": (), "__module__": cls.__module__,
                                                    "CONFIG_ATTRS": (), **options})
        options_class._fast_limit = fast_limit(options_class)
        return options_class

    def _connectionMade(self):
        super()._connectionMade()
        self.send_queue = _SendQueue()
        if not self.utf8validateIncoming:
            self.utf8validator = None  # never consulted
        self.trafficStats = _NO_STATS

    def _onOpen(self):
        for name in _HANDSHAKE_ONLY:
            setattr(self, name, None)
        super()._onOpen()

    def dataReceived(self, data):
        # observers of "message" (`on("message", ...)`) are fired by
        # Autobahn's own path only
        listeners = self._listeners
        if (self.state == self.STATE_OPEN and not self.data and self.current_frame is None
                and not self.inside_message and self._perMessageCompress is None
                and (not listeners or not listeners.get("message"))):
            data = self._whole_frames(data)
            if not data:
                return
        self._dataReceived(data)

    def _whole_frames(self, data):
        """Deliver the complete data frames at the start of `data` that
        need none of Autobahn's general handling; return the rest."""
        limit = self._fast_limit
        if limit is None:
            limit = fast_limit(self)
        if not limit:
            return data
        n = len(data)
        pos = 0  # walk by index: no copy of the rest per frame
        while True:
            if n - pos < 6:
                break
            first = data[pos]
            # FIN set, RSV clear, text (1) or binary (2); masked
            if (first != 0x81 and first != 0x82) or not data[pos + 1] & 0x80:
                break
            size = data[pos + 1] & 0x7F
            if size < 126:
                start = pos + 6
            elif size == 126 and n - pos >= 8:
                size = (data[pos + 2] << 8) | data[pos + 3]
                if size < 126:
                    break  # not minimally encoded: Autobahn fails it
                start = pos + 8
            else:
                break
            end = start + size
            if size > limit or n < end:
                break
            payload = unmask(data[start:end], data[start - 4:start])
            pos = end
            self.onMessage(payload, first == 0x82)
            if self.state != self.STATE_OPEN or self.failedByMe:
                break
        return data[pos:] if pos else data

    def send_prepared(self, prepared):
        """`sendPreparedMessage`, written straight to the socket when
        nothing is waiting to go out (as asyncio does): no epoll
        registration and no extra reactor turn per device for the usual
        case. Whatever the kernel does not take goes through the
        transport, which keeps order and reports back-pressure."""
        if self._perMessageCompress is not None or self.send_queue:
            self.sendPreparedMessage(prepared)
            return
        # through the wrapper or TLS layer if there is one: they decide
        write_now(self.transport, prepared.payloadHybi)

    def ping(self):
        """Send a WebSocket ping if open (the sweep's tick)."""
        if self.state == self.STATE_OPEN:
            self.sendPing()


class PingSweep:
    """Pings every registered connection once per `interval` from one
    LoopingCall on `clock`, running only while there are connections.

    The interval is cut into ticks; a connection joins the slice pinged at
    the tick just past, so its first ping comes one interval after it
    joined (as Autobahn's own auto-ping would) and the next every interval.
    """

    _log = Logger()

    def __init__(self, clock, interval):
        self.clock = clock
        self.interval = interval
        ticks = max(1, min(30, int(interval)))
        self._slices = [set() for _ in range(ticks)]
        self._next = 0  # the slice the next tick pings
        self._count = 0
        self._loop = None

    def add(self, protocol):
        slot = (self._next - 1) % len(self._slices)
        self._slices[slot].add(protocol)
        protocol._ping_slot = slot
        self._count += 1
        if self._loop is None:
            # a busy reactor makes a LoopingCall skip ticks; withCount says
            # how many passed, so no slice misses its ping
            self._loop = task.LoopingCall.withCount(self._tick)
            self._loop.clock = self.clock
            self._loop.start(self.interval / len(self._slices), now=False)

    def remove(self, protocol):
        slot = getattr(protocol, "_ping_slot", None)
        if slot is None or protocol not in self._slices[slot]:
            return
        self._slices[slot].discard(protocol)
        protocol._ping_slot = None
        self._count -= 1
        if not self._count and self._loop is not None:
            self._loop.stop()
            self._loop = None

    def _tick(self, ticks):
        due = []
        for _ in range(min(ticks, len(self._slices))):
            due.extend(self._slices[self._next])
            self._next = (self._next + 1) % len(self._slices)
        for protocol in due:
            try:
                protocol.ping()
            except Exception:
                # one broken connection must not stop everyone's pings
                self._log.failure("pinging a device failed")
