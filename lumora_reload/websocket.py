"""The device WebSocket: a thin adapter from Autobahn to `connection.Connection`.

Wire protocol, in short:

  URL      ws://HOST:PORT/ws?session=ID
           not an upgrade, or another version than 13 -> HTTP 426 (web.py);
           a malformed upgrade -> HTTP 400; both JSON, BAD_REQUEST
           no session -> close 4400 "Session ID required"
           unknown    -> close 4404 "Session not found"
           expired    -> close 4410 "Session expired"
           bad Host/Origin -> close 4403
  frames   JSON text, envelope {type, sessionId, timestamp, version, payload}
  device   connect (first!) | ping | ack | reload | log | error
  server   connected | update | pong | error
  errors   INVALID_MESSAGE (recoverable, connection stays),
           AUTHENTICATION_FAILED -> 4401, sessionId mismatch -> 4400,
           UNSUPPORTED_VERSION -> 4426, RATE_LIMIT_EXCEEDED then 4429,
           oversize message -> 1009 (Autobahn), replaced device -> 4409,
           daemon stopping -> 1012 "Service restart",
           partial messages of all devices over their total -> 1013
  liveness WebSocket pings every --heartbeat-interval (one `PingSweep`
           for all devices, not a timer each); a device is dropped only by
           the liveness sweep, after --connection-timeout of silence (a
           pong or any message counts)

Outgoing updates arrive as `Outgoing` objects shared by every device of a
broadcast; the frame is prepared once (`prepareMessage`) and cached on the
object, so per-device work is one buffer write. Per-message compression is
not offered: it would defeat that sharing.

Per-connection state (awaiting `connect`, attached, closing; rate limit,
back-pressure and the connect timeout) lives in `connection.Connection`,
which knows nothing of Autobahn; `DeviceProtocol` feeds it Autobahn's
events and carries out its two requests (write a frame, send a close). A
push producer registered on the transport reports when the kernel stopped
taking our bytes and when it drained.
"""

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web import http, server
from zope.interface import implementer

from lumora_reload import errors, messages
from lumora_reload.accesslog import log_text, redact_ids
from lumora_reload.connection import Connection, IWire, Phase
from lumora_reload.metrics import NO_EVENTS
from lumora_reload.wsbase import LeanServerProtocol, PingSweep


class _BufferWatch:
    """Push producer registered on the transport: tells the connection
    when the kernel stopped taking its bytes and when it drained."""

    __slots__ = ("connection",)

    def __init__(self, connection):
        self.connection = connection

    def pauseProducing(self):
        self.connection.paused()

    def resumeProducing(self):
        self.connection.resumed()

    def stopProducing(self):
        pass


@implementer(IWire)
class DeviceProtocol(LeanServerProtocol):
    # thousands of these stay open all day: no instance dict for our state
    __slots__ = ("connection", "_session_id", "_refusal", "_pending", "_on_refused", "_unread")
    _log = Logger()

    def __init__(self):
        super().__init__()
        self.connection = None  # a Connection once the handshake is done
        self._session_id = None
        self._refusal = None
        self._unread = False  # cluster mode: the session could not be read from Redis
        self._pending = 0  # bytes of the message being received
        self._on_refused = None  # told (status, body length) of a refused handshake

    def makeConnection(self, transport):
        # On a TLS port the per-address limit's ProtocolWrapper sits between
        # the TLS transport and us, claiming its interfaces; Autobahn looks
        # for TLS details on the transport itself and fails on the wrapper.
        # Talk to the TLS transport directly: the wrapper stays in the chain
        # (it feeds us data and counts the connection when it ends).
        inner = getattr(transport, "transport", None)
        if isinstance(transport, ProtocolWrapper) and isinstance(inner, TLSMemoryBIOProtocol):
            transport = inner
        # the HTTP request being upgraded, when the site hands one over:
        # a refused handshake is logged as its answer
        self._on_refused = getattr(self.factory, "upgrading", None)
        super().makeConnection(transport)

    @property
    def device(self):
        """The hub's `Device` once the device sent `connect`, else None."""
        return None if self.connection is None else self.connection.device

    # -- Autobahn callbacks --------------------------------------------

    def onConnect(self, request):
        self._session_id = (request.params.get("session") or [None])[0] or None
        policy, headers = self.factory.policy, request.headers
        if policy.token_ok(headers.get("authorization")):
            self._refusal = None  # a browser page cannot know the token
        else:
            self._refusal = policy.check_browser(
                headers.get("host"), headers.get("origin"), getattr(self.transport.getHost(), "host", None)
            )
        if self._refusal is None and self._session_id and self.factory.lookup is not None:
            # cluster mode: a session created on another daemon a moment
            # ago is read from the shared store before anyone hears 4404
            d = self.factory.lookup(self._session_id)
            d.addErrback(lambda _: setattr(self, "_unread", True))
            return d.addBoth(lambda _: None)
        return None

    def failHandshake(self, reason, code=400, responseHeaders=None):
        # Autobahn answers a bare status line whose phrase is its reason;
        # this answer is JSON, as every other answer on the port
        status, extra = code, b""
        if any(name.lower() == "sec-websocket-version" for name, _ in responseHeaders or ()):
            status = 426  # RFC 6455 4.4: name the version this server speaks
        if status == 426:
            extra = b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
        if status >= 500:
            message, code_name = _INTERNAL, errors.INTERNAL_ERROR
        else:
            message, code_name = handshake_problem(reason), errors.BAD_REQUEST
        shown = redact_ids(log_text(message.encode("utf-8")))
        self.wasNotCleanReason = shown  # logged by Autobahn as it drops the connection
        self._log.info("refused a device handshake: {why}", why=shown, event="device.refused")
        body = orjson.dumps({"error": message, "code": code_name})
        self.sendData(_http_answer(status, extra, body))
        on_refused, self._on_refused = self._on_refused, None
        if on_refused is not None:
            on_refused(status, len(body))
        self.dropConnection(abort=False)

    def onOpen(self):
        self._on_refused = None
        factory = self.factory
        self.connection = Connection(
            factory.hub,
            self,
            self._session_id,
            factory.clock,
            rate_limit=factory.rate_limit,
            rate_burst=factory.rate_burst,
            max_buffer=factory.max_buffer,
            max_name_length=factory.max_name_length,
            events=factory.events,
        )
        factory.opened(self)
        self.connection.opened(self._refusal, unread=self._unread)
        if self.connection.phase is Phase.AWAITING_CONNECT:
            self._watch_buffer()

    def onMessage(self, payload, isBinary):
        if self.connection is not None and self.state == self.STATE_OPEN:
            self.connection.received(payload, isBinary)

    def onMessageFrameData(self, payload):
        # Partial messages are held in memory until complete: count them
        # against one total for all connections.
        if self.failedByMe:
            return  # closing: Autobahn drops the rest unread
        factory = self.factory
        self._pending += len(payload)
        factory.pending_bytes += len(payload)
        if factory.pending_bytes > factory.max_pending_bytes:
            self._log.info(
                "closing a device sending a large message: {total} bytes of partial messages held",
                event="device.busy",
                total=factory.pending_bytes,
            )
            self._release_pending()
            self._fail_connection(messages.CLOSE_TRY_AGAIN, "Server busy; try again later")
            return
        super().onMessageFrameData(payload)

    def onMessageEnd(self):
        self._release_pending()
        super().onMessageEnd()

    def _release_pending(self):
        self.factory.pending_bytes -= self._pending
        self._pending = 0

    def onPong(self, payload):
        if self.connection is not None:
            self.connection.ponged()

    def onClose(self, wasClean, code, reason):
        self._release_pending()
        if self.connection is not None:
            self.connection.closed(code)
        self.factory.closed(self)

    # -- IWire -----------------------------------------------------------

    def send_frame(self, outgoing):
        if self.state != self.STATE_OPEN:
            return
        prepared = outgoing.cache.get("ws")
        if prepared is None:
            prepared = outgoing.cache["ws"] = self.factory.prepareMessage(outgoing.payload)
        self.send_prepared(prepared)

    def send_close(self, code, reason):
        if self.state != self.STATE_OPEN:
            return
        # sendClose() refuses 1012; the frame itself is fine by RFC 6455
        self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:120], isReply=False)

    # -- helpers ---------------------------------------------------------

    def _watch_buffer(self):
        transport = self.transport
        # behind the per-address limit the socket is wrapped
        socket = getattr(transport, "transport", transport)
        if hasattr(socket, "SEND_LIMIT"):
            # Twisted writes at most 128 KiB per wake-up; a 500 KB update
            # would cost every device four wake-ups and epoll changes.
            socket.SEND_LIMIT = 1 << 20
        try:
            if getattr(transport, "producer", None) is not None:
                transport.unregisterProducer()
            transport.registerProducer(_BufferWatch(self.connection), True)
        except Exception:
            # Not every transport supports producers (e.g. test doubles);
            # then we simply never see back-pressure.
            self._log.debug("transport does not accept a producer")


_INTERNAL = "Internal error; the daemon's log has the details"
# characters of Autobahn's reason (which repeats what the client sent) in an answer
_SHOWN = 200


def handshake_problem(reason):
    """Autobahn's reason for refusing a handshake as a sentence for the
    client: no "HTTP " in front, a capital first letter, and at most
    `_SHOWN` characters of it."""
    text = reason.strip()
    if text.startswith("HTTP "):
        text = text[5:]
    text = text[:1].upper() + text[1:]
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _http_answer(status, extra_headers, body):
    # twisted.web knows no phrase for 426
    phrase = b"Upgrade Required" if status == 426 else http.RESPONSES.get(status, b"Error")
    return (
        b"HTTP/1.1 %d %s\r\nserver: %s\r\ndate: %s\r\n%scontent-type: application/json\r\n"
        b"cache-control: no-store\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
        % (status, phrase, server.version, http.datetimeToString(), extra_headers, len(body), body)
    )


class DeviceFactory(WebSocketServerFactory):
    """Holds what every device connection shares: the hub, the access
    policy, limits, and the set of open connections."""

    protocol = DeviceProtocol

    def __init__(
        self,
        hub,
        policy,
        reactor,
        clock=None,
        url=None,
        max_message_size=10 * 1024 * 1024,
        rate_limit=100.0,
        rate_burst=200,
        max_buffer=4 * 1024 * 1024,
        auto_ping_interval=None,
        max_pending_bytes=128 * 1024 * 1024,
        max_name_length=256,
    ):
        super().__init__(url=url, reactor=reactor)
        self.hub = hub
        self.policy = policy
        self.clock = clock if clock is not None else reactor
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.max_buffer = max_buffer
        self.max_pending_bytes = max_pending_bytes
        self.max_name_length = max_name_length
        self.pending_bytes = 0  # of partial messages, all connections
        self.connections = set()
        self._waiting = []
        # session_id -> Deferred; set by the server in cluster mode
        self.lookup = None
        # while the site hands an HTTP request over to a new connection: a
        # callable told (status, body length) if its handshake is refused
        self.upgrading = None
        # what connections report (the server's metrics)
        self.events = NO_EVENTS
        options = dict(
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            # we decode ourselves so bad UTF-8 is INVALID_MESSAGE, not a close
            utf8validateIncoming=False,
            # fail with a close frame (1009 etc.) the device can read, not a bare drop
            failByDrop=False,
            openHandshakeTimeout=30,
            closeHandshakeTimeout=2,
            # our policy refuses Origin 'null' with close 4403, which a
            # page can read; Autobahn's own refusal is an HTTP 400
            allowNullOrigin=True,
        )
        # Pings keep NAT mappings open and their pongs count as liveness;
        # only the liveness sweep drops a silent device, after
        # --connection-timeout. Autobahn's own auto-ping stays off: it arms
        # a timer per connection, and its ping timeout, measured from the
        # ping, raced the sweep and dropped devices without the
        # "Connection timeout" close they can act on.
        self.pings = PingSweep(self.clock, auto_ping_interval) if auto_ping_interval else None
        self.setProtocolOptions(**options)

    def setProtocolOptions(self, **options):
        super().setProtocolOptions(**options)
        # connections read the options from their class, not a copy each
        self.protocol = DeviceProtocol.options_class(self)

    def opened(self, protocol):
        self.connections.add(protocol)
        if self.pings is not None:
            self.pings.add(protocol)

    def closed(self, protocol):
        self.connections.discard(protocol)
        if self.pings is not None:
            self.pings.remove(protocol)
        if not self.connections:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def close_all(self, code, reason, timeout=3.0):
        """Close every connection; the Deferred fires when all are gone or
        after `timeout` seconds, whichever comes first."""
        if not self.connections:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        for protocol in list(self.connections):
            protocol.connection.close(code, reason)
        timer = self.reactor.callLater(timeout, lambda: d.called or d.callback(None))
        d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return d
