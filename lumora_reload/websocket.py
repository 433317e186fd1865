"""The device WebSocket: a thin adapter between Autobahn and the hub.

Wire protocol, in short:

  URL      ws://HOST:PORT/ws?session=ID
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
  liveness WebSocket pings every --heartbeat-interval; a device is dropped
           only by the liveness sweep, after --connection-timeout of
           silence (a pong or any message counts)

Outgoing updates arrive as `Outgoing` objects shared by every device of a
broadcast; the frame is prepared once (`prepareMessage`) and cached on the
object, so per-device work is one buffer write. Per-message compression is
not offered: it would defeat that sharing.

Slow devices: we register a push producer on the transport. While the
transport says "pause" (its buffer is full) we count what we still queue;
past `max_buffer` bytes we stop queueing updates for that device and, once
it drains, send it one full update of the latest state (latest wins).
"""

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from lumora_reload import errors, messages
from lumora_reload.errors import LumoraError
from lumora_reload.sessions import IDeviceLink, Outgoing, short_id


# characters of one device `log` line that are kept and logged
LOG_LINE_LIMIT = 8192


# A device refused for longer than this without a pause is closed 4429.
RATE_GRACE_SECONDS = 1.0


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

    def __init__(self, rate, burst, clock):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.stamp = clock.seconds()

    def take(self):
        now = self.clock.seconds()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _BufferWatch:
    """Push producer registered on the transport: tells the protocol when
    the kernel stopped taking its bytes and when it drained."""

    def __init__(self, protocol):
        self.protocol = protocol

    def pauseProducing(self):
        self.protocol._transport_paused()

    def resumeProducing(self):
        self.protocol._transport_resumed()

    def stopProducing(self):
        pass


@implementer(IDeviceLink)
class DeviceProtocol(WebSocketServerProtocol):
    _log = Logger()

    _session_id = None
    _device = None
    _refusal = None
    _open = False
    _paused = False
    _queued_while_paused = 0
    _congested = False
    _missed = False
    _guard = None
    _hello_timer = None
    _pending = 0  # bytes of the message being received

    # -- Autobahn callbacks --------------------------------------------

    def onConnect(self, request):
        self._session_id = (request.params.get("session") or [None])[0] or None
        local = self.transport.getHost()
        self._refusal = self.factory.policy.check_browser(
            request.headers.get("host"),
            request.headers.get("origin"),
            getattr(local, "host", None),
        )
        if self._refusal is None and self._session_id and self.factory.lookup is not None:
            # cluster mode: a session created on another daemon a moment
            # ago is read from the shared store before anyone hears 4404
            return self.factory.lookup(self._session_id).addBoth(lambda _: None)
        return None

    def onOpen(self):
        self._open = True
        self.factory.opened(self)
        if self._refusal is not None:
            self._log.info("refused device upgrade: {why}", why=self._refusal)
            origin_problem = self._refusal.startswith("Origin")
            self._close(messages.CLOSE_FORBIDDEN, "Origin not allowed" if origin_problem else "Host not allowed")
            return
        if not self._session_id:
            self._close(messages.CLOSE_BAD_REQUEST, "Session ID required")
            return
        try:
            self.factory.hub.get_session(self._session_id)
        except LumoraError as e:
            if e.code == errors.SESSION_EXPIRED:
                self._close(messages.CLOSE_EXPIRED, "Session expired")
            else:
                self._close(messages.CLOSE_NOT_FOUND, "Session not found")
            return
        factory = self.factory
        self._guard = RateGuard(factory.rate_limit, factory.rate_burst, factory.clock)
        self._watch_buffer()
        # a socket that never says who it is must not stay forever: the
        # liveness sweep only sees devices that sent `connect`
        self._hello_timer = self.factory.clock.callLater(
            self.factory.hub.limits.connection_timeout, self._no_hello
        )

    def onMessage(self, payload, isBinary):
        if not self._open or self.state != self.STATE_OPEN:
            return
        hub = self.factory.hub
        if self._device is not None:
            hub.seen(self._session_id, self._device)
        # parse once, then budget on the parsed type
        try:
            kind, session_id, body = self._parse(payload, isBinary)
            problem = None
        except LumoraError as e:
            kind, problem = None, e
        if self._guard is not None:
            verdict = self._guard.admit(kind)
            if verdict != Verdict.PASS:
                self._rate_limited(verdict)
                return
        try:
            if problem is not None:
                raise problem
            if session_id != self._session_id:
                raise LumoraError(
                    errors.SESSION_NOT_FOUND,
                    "sessionId does not match the session of this connection",
                    close_code=messages.CLOSE_BAD_REQUEST,
                )
            if self._device is None and kind != "connect":
                raise LumoraError(
                    errors.AUTHENTICATION_FAILED,
                    "Send 'connect' first",
                    close_code=messages.CLOSE_AUTH,
                )
            getattr(self, "handle_" + kind)(body)
        except LumoraError as e:
            self._send_error(e)
            if e.close_code is not None:
                self._close(e.close_code, e.message)
        except Exception:
            self._log.failure("handling a device message failed")
            self._send_error(LumoraError(errors.INTERNAL_ERROR, "Internal error"))

    @staticmethod
    def _parse(payload, isBinary):
        if isBinary:
            raise messages.invalid("Binary frames are not supported; send JSON text")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise messages.invalid("Message is not valid UTF-8")
        return messages.parse_envelope(text)

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
        # an answered WebSocket ping is liveness too
        if self._device is not None:
            self.factory.hub.seen(self._session_id, self._device)

    def onClose(self, wasClean, code, reason):
        self._open = False
        self._release_pending()
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        if self._device is not None:
            self._log.info(
                "device {device} left session {session} ({code})",
                device=self._device.device_name or self._device.device_id,
                session=short_id(self._session_id),
                code=code,
            )
            self.factory.hub.detach(self._session_id, self._device)
        self.factory.closed(self)

    # -- message handlers ----------------------------------------------

    def handle_connect(self, payload):
        if self._device is not None:
            raise messages.invalid("Already connected; 'connect' is sent once")
        limit = self.factory.max_name_length
        for name in ("deviceId", "deviceName", "platform", "clientVersion"):
            if len(payload.get(name) or "") > limit:
                raise messages.invalid(f"'{name}' is longer than {limit} characters", details={"path": name})
        try:
            session, device, outgoing = self.factory.hub.attach(self._session_id, self, payload)
        except LumoraError as e:
            if e.code == errors.SESSION_EXPIRED:
                e.close_code = messages.CLOSE_EXPIRED
            elif e.code == errors.SESSION_NOT_FOUND:
                e.close_code = messages.CLOSE_NOT_FOUND
            raise
        self._device = device
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._log.info(
            "device {device} ({platform}, {version}) joined session {session}",
            device=device.device_name or device.device_id,
            platform=device.platform,
            version=device.client_version,
            session=short_id(session.id),
        )
        for item in outgoing:
            self.send(item)

    def handle_ping(self, payload):
        session = self.factory.hub.get_session(self._session_id)
        self._send_message(
            "pong",
            {"serverTime": self.factory.hub.now_ms(), "sequenceNumber": session.sequence},
        )

    def handle_ack(self, payload):
        hub = self.factory.hub
        session = hub.get_session(self._session_id)
        sequence = payload["sequenceNumber"]
        if not 0 <= sequence <= session.sequence:
            # an ack ahead of the session would show the device healthy
            # (and a huge one could not be encoded in /health)
            raise messages.invalid(
                f"'sequenceNumber' must be between 0 and the session's {session.sequence}",
                details={"path": "sequenceNumber"},
            )
        hub.ack(self._device, payload)
        if not payload["success"]:
            self._log.info(
                "device {device} failed to apply update {seq}: {error}; sending full schema",
                device=self._device.device_name or self._device.device_id,
                seq=payload["sequenceNumber"],
                error=payload.get("error"),
            )
            self._resync()

    def handle_reload(self, payload):
        self._resync()

    def handle_log(self, payload):
        session = self.factory.hub.get_session(self._session_id)
        message = payload["message"]
        if len(message) > LOG_LINE_LIMIT:
            # the ring buffer keeps 1000 lines: 10 MiB each would be 10 GB
            message = message[:LOG_LINE_LIMIT] + f"… [{len(message) - LOG_LINE_LIMIT} more characters]"
        line = self.factory.hub.add_log(session, self._device, payload["level"][:32], message)
        level = payload["level"].lower()
        emit = {
            "error": self._log.error,
            "fatal": self._log.error,
            "warn": self._log.warn,
            "warning": self._log.warn,
            "debug": self._log.debug,
            "trace": self._log.debug,
        }.get(level, self._log.info)
        emit("[{device}] {message}", device=line["deviceName"] or line["deviceId"], message=line["message"])

    def handle_error(self, payload):
        self._log.warn(
            "device {device} reported {code}: {message}",
            device=self._device.device_name or self._device.device_id,
            code=(payload.get("code") or "")[:64],
            message=(payload.get("message") or "")[:LOG_LINE_LIMIT],
        )
        if payload.get("code") == errors.CHECKSUM_MISMATCH:
            self._resync()

    # -- IDeviceLink ----------------------------------------------------

    def send(self, outgoing):
        if not self._open or self.state != self.STATE_OPEN:
            return
        if self._congested:
            self._missed = True
            return
        prepared = outgoing.cache.get("ws")
        if prepared is None:
            prepared = outgoing.cache["ws"] = self.factory.prepareMessage(outgoing.payload)
        self.sendPreparedMessage(prepared)
        if self._paused:
            self._queued_while_paused += len(outgoing.payload)
            if self._queued_while_paused > self.factory.max_buffer:
                self._congested = True

    def close(self, code, reason):
        self._close(code, reason)

    # -- helpers ---------------------------------------------------------

    def _close(self, code, reason):
        if self.state != self.STATE_OPEN:
            return
        # sendClose() refuses 1012; the frame itself is fine by RFC 6455
        self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:120], isReply=False)

    def _send_message(self, kind, payload):
        self.send(
            Outgoing(
                messages.encode(
                    messages.envelope(kind, self._session_id or "", self.factory.hub.now_ms(), payload)
                )
            )
        )

    def _send_error(self, error):
        self._send_message("error", messages.error_payload(error))

    def _resync(self):
        hub = self.factory.hub
        session = hub.get_session(self._session_id)
        if not hub.resync_device(session, self._device):
            self._send_error(LumoraError(errors.UPDATE_FAILED, "No schema has been pushed yet"))

    def _rate_limited(self, verdict):
        if verdict == Verdict.WARN:
            self._send_error(
                LumoraError(
                    errors.RATE_LIMIT_EXCEEDED,
                    f"More than {self.factory.rate_limit:g} messages/s; slow down",
                )
            )
        elif verdict == Verdict.CLOSE:
            self._send_error(
                LumoraError(
                    errors.RATE_LIMIT_EXCEEDED,
                    "Rate limit exceeded repeatedly; closing",
                    close_code=messages.CLOSE_RATE_LIMIT,
                )
            )
            self._close(messages.CLOSE_RATE_LIMIT, "Rate limit exceeded")

    def _no_hello(self):
        if self._device is None and self.state == self.STATE_OPEN:
            timeout = self.factory.hub.limits.connection_timeout
            self._send_error(
                LumoraError(
                    errors.AUTHENTICATION_FAILED,
                    f"No 'connect' within {timeout:g} s",
                    close_code=messages.CLOSE_AUTH,
                )
            )
            self._close(messages.CLOSE_AUTH, "No connect")

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
            transport.registerProducer(_BufferWatch(self), True)
        except Exception:
            # Not every transport supports producers (e.g. test doubles);
            # then we simply never see back-pressure.
            self._log.debug("transport does not accept a producer")

    def _transport_paused(self):
        # The transport calls this on every write while its buffer is
        # full, not once: only the first call starts the count.
        if not self._paused:
            self._paused = True
            self._queued_while_paused = 0

    def _transport_resumed(self):
        self._paused = False
        self._queued_while_paused = 0
        if self._congested:
            self._congested = False
            if self._missed and self._device is not None:
                self._missed = False
                self._log.info(
                    "device {device} drained; sending the latest state",
                    device=self._device.device_name or self._device.device_id,
                )
                session = self.factory.hub.sessions.get(self._session_id)
                if session is not None:
                    self.factory.hub.resync_device(session, self._device)


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
        if auto_ping_interval:
            # Pings keep NAT mappings open and their pongs count as
            # liveness; only the liveness sweep drops a silent device, after
            # --connection-timeout. Autobahn's own ping timeout stays off:
            # measured from the ping, it raced the sweep and dropped devices
            # without the "Connection timeout" close they can act on.
            options.update(autoPingInterval=auto_ping_interval, autoPingTimeout=0)
        self.setProtocolOptions(**options)

    def opened(self, protocol):
        self.connections.add(protocol)

    def closed(self, protocol):
        self.connections.discard(protocol)
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
            protocol._close(code, reason)
        timer = self.reactor.callLater(timeout, lambda: d.called or d.callback(None))
        d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return d
