"""A device client for lumora-reload, for Twisted programs.

`DeviceClient` is what a phone does, in Python: it connects to
``ws://HOST:PORT/ws?session=ID``, sends ``connect``, keeps a local replica of
the session's schema (full updates replace it, incremental ones are applied
with `lumora_reload.schema.apply_delta`), checks every update against its
``checksum``, acks each one (``success: false`` with the reason when it cannot
apply or verify it, so the server sends the full schema), pings on a timer,
and reconnects with exponential backoff and jitter, resuming with
``lastSequence``. The ``lumora-reload device`` command, the tests and the
benchmarks are built on it.

    client = DeviceClient("ws://127.0.0.1:8080/ws?session=ID", device_name="bench")
    client.subscribe("schema", lambda schema, sequence: print(sequence))
    client.start()
    ...
    yield client.stop()

Events (``client.subscribe(name, callback)``; ``client.when(name)`` gives a
Deferred of the next one):

``connected(payload)``   the server's ``connected`` payload, replica set up
``update(UpdateEvent)``  after every update, applied or not
``schema(schema, seq)``  the replica changed
``pong(payload)``        the server answered a ping
``error(payload)``       the server sent an ``error`` frame
``closed(Closed)``       a connection ended (``retry_in`` says what follows)
``stopped(Closed)``      the client gave up or was stopped; `done` fires too

Time comes from an injected `clock` (pings, backoff); the network from an
injected `reactor`. Neither defaults to anything but the global reactor, and
only when not given.

Close codes: 4400, 4401, 4403, 4404, 4410, 4426 are final, as are
1009 and a 1000 other than "Connection timeout" (the session was closed or
the device was disconnected on purpose). 1012 "Service restart" reconnects
at once (with up to `Backoff.initial` of jitter, so a restarted daemon is not
hit by every device in the same millisecond); everything else (1000
"Connection timeout", 4409, 4429, 1006, refused connections) reconnects with
backoff.
"""

import collections
import random as _random
import secrets
import time
from urllib.parse import parse_qs, urlsplit

import orjson
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, task
from twisted.logger import Logger

from lumora_reload import __version__, messages
from lumora_reload.replica import (  # noqa: F401  (public names of this module too)
    FINAL_CLOSE_CODES,
    RESTART,
    RETRY,
    STOP,
    Backoff,
    Closed,
    Replica,
    UpdateError,
    UpdateEvent,
    close_action,
)

CLIENT_VERSION = "1.1.0"


class _Protocol(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.client._opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.client._received(self, payload, isBinary)

    def onClose(self, wasClean, code, reason):
        self.factory.client._lost(self, code, reason)


class DeviceClient:
    """One simulated device in one session; see the module docstring."""

    _log = Logger()

    def __init__(
        self,
        url,
        device_id=None,
        platform="python",
        device_name=None,
        client_version=CLIENT_VERSION,
        token=None,
        reactor=None,
        clock=None,
        ping_interval=20.0,
        receive_timeout=None,
        backoff=Backoff(),
        random=_random.random,
        verify=True,
        connect_timeout=10.0,
        max_message_size=64 * 1024 * 1024,
        endpoint=None,
        protocol_options=None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.url = url
        parts = urlsplit(url)
        self.session_id = (parse_qs(parts.query).get("session") or [""])[0]
        self.device_id = device_id or "py-" + secrets.token_hex(4)
        self.platform = platform
        self.device_name = device_name
        self.client_version = client_version
        self.token = token
        self.ping_interval = ping_interval
        self.receive_timeout = receive_timeout if receive_timeout is not None else 3 * ping_interval
        self.backoff = backoff
        self._random = random
        self._connect_timeout = connect_timeout
        self._endpoint = endpoint
        major_minor = tuple(client_version.split(".")[:2])
        self.replica = Replica(legacy=major_minor == ("1", "0"), verify=verify)
        self.connection_id = None
        self.connected = False
        self.attempts = 0  # consecutive failed attempts since the last `connected`
        self.connections = 0  # successful `connected` so far
        self.done = defer.Deferred()
        self._observers = collections.defaultdict(list)
        self._protocol = None
        self._connecting = None
        self._retry = None
        self._running = False
        self._stopping = False
        self._finished = False
        self._last_received = 0.0
        self._failed_full = None  # sequence of a full update that failed to verify
        self._reload_asked = None
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = self.clock
        self._factory = WebSocketClientFactory(
            url, reactor=reactor, useragent=f"lumora-reload-client/{__version__}"
        )
        self._factory.protocol = _Protocol
        self._factory.client = self
        self._factory.setProtocolOptions(
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            openHandshakeTimeout=connect_timeout,
            closeHandshakeTimeout=2,
        )
        if protocol_options:
            # Autobahn's own options, last word: e.g. its timers off
            # (handshake timeouts 0, autoPingInterval 0) where the client
            # runs on a task.Clock without a reactor
            self._factory.setProtocolOptions(**protocol_options)

    # -- observers -------------------------------------------------------

    def subscribe(self, event, callback):
        """Call `callback` on every `event`; returns a function that
        unsubscribes it."""
        self._observers[event].append(callback)

        def unsubscribe():
            if callback in self._observers[event]:
                self._observers[event].remove(callback)

        return unsubscribe

    def when(self, event, predicate=None):
        """A Deferred firing with the next `event`'s argument (a tuple when
        it has several) for which `predicate` holds."""
        d = defer.Deferred()

        def seen(*args):
            value = args[0] if len(args) == 1 else args
            if predicate is None or predicate(value):
                unsubscribe()
                d.callback(value)

        unsubscribe = self.subscribe(event, seen)
        return d

    def wait_for_sequence(self, sequence):
        """A Deferred firing once the replica is at `sequence` or later."""
        if self.replica.synced and self.replica.sequence >= sequence:
            return defer.succeed(self.replica.sequence)
        d = defer.Deferred()

        def check(*_):
            if self.replica.synced and self.replica.sequence >= sequence and not d.called:
                for u in unsubscribers:
                    u()
                d.callback(self.replica.sequence)

        unsubscribers = [self.subscribe("connected", check), self.subscribe("update", check)]
        return d

    def _emit(self, event, *args):
        for callback in list(self._observers.get(event, ())):
            try:
                callback(*args)
            except Exception:
                self._log.failure("{event} observer failed", event=event)

    # -- control ---------------------------------------------------------

    def start(self):
        """Connect (and keep reconnecting until stopped or refused for good)."""
        if self._running:
            return
        self._running = True
        self._connect()

    def stop(self):
        """Close the connection and stop reconnecting; the Deferred (also
        `done`) fires with the final `Closed` once the connection is gone."""
        if self._finished or self._stopping:
            return self._done_copy()
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._protocol is not None:
            protocol = self._protocol
            if protocol.state == protocol.STATE_OPEN:
                protocol.sendClose(code=messages.CLOSE_NORMAL, reason="Client stopping")
            else:
                protocol.dropConnection(abort=True)
        elif self._connecting is not None:
            self._connecting.cancel()
        else:
            self._finish(Closed(None, "stopped", None))
        return self._done_copy()

    def _done_copy(self):
        d = defer.Deferred()

        def relay(result):
            d.callback(result)
            return result

        self.done.addBoth(relay)
        return d

    def send(self, kind, payload=None):
        """Send one message in the device's envelope; False when not open."""
        protocol = self._protocol
        if protocol is None or protocol.state != protocol.STATE_OPEN:
            return False
        now_ms = int(self.clock.seconds() * 1000)
        message = messages.envelope(kind, self.session_id, now_ms, payload, version=self.client_version)
        protocol.sendMessage(messages.encode(message))
        return True

    def log(self, level, message):
        """Send a line to the session's log (`lumora-reload logs`)."""
        return self.send("log", {"level": level, "message": message})

    def request_reload(self, reason="requested"):
        return self.send("reload", {"reason": reason})

    def ping(self):
        return self.send("ping", {"status": "ok"})

    # -- connecting ------------------------------------------------------

    def _make_endpoint(self):
        if self._endpoint is not None:
            return self._endpoint()
        import ipaddress

        from twisted.internet import endpoints, ssl

        parts = urlsplit(self.url)
        secure = parts.scheme == "wss"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if secure else 80)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is None:
            endpoint = endpoints.HostnameEndpoint(self.reactor, host, port, timeout=self._connect_timeout)
        elif address.version == 4:
            endpoint = endpoints.TCP4ClientEndpoint(self.reactor, host, port, timeout=self._connect_timeout)
        else:
            endpoint = endpoints.TCP6ClientEndpoint(self.reactor, host, port, timeout=self._connect_timeout)
        if secure:
            endpoint = endpoints.wrapClientTLS(ssl.optionsForClientTLS(host), endpoint)
        return endpoint

    def _connect(self):
        self._retry = None
        if self._stopping:
            return
        try:
            d = self._make_endpoint().connect(self._factory)
        except Exception as e:
            self._log.info("cannot connect to {url}: {error}", url=self.url, error=e)
            self._schedule(None, str(e))
            return
        self._connecting = d

        def failed(failure):
            self._connecting = None
            if self._stopping:
                self._finish(Closed(None, "stopped", None))
                return
            self._schedule(None, failure.getErrorMessage())

        def connected(protocol):
            self._connecting = None
            self._protocol = protocol

        d.addCallbacks(connected, failed)

    def _schedule(self, code, reason, restart=False):
        if restart:
            delay = self.backoff.initial * self._random()
            self.attempts = 0
        else:
            delay = self.backoff.delay(self.attempts, self._random())
        self.attempts += 1
        closed = Closed(code, reason, delay)
        self._log.debug(
            "connection ended ({code} {reason}); retrying in {delay:.2f}s", code=code, reason=reason, delay=delay
        )
        self._retry = self.clock.callLater(delay, self._connect)
        self._emit("closed", closed)

    def _finish(self, closed):
        if self._finished:
            return
        self._finished = True
        self._running = False
        self._stop_heartbeat()
        self._emit("closed", closed)
        self._emit("stopped", closed)
        self.done.callback(closed)

    # -- protocol events -------------------------------------------------

    def _opened(self, protocol):
        self._protocol = protocol
        self._last_received = self.clock.seconds()
        payload = {
            "deviceId": self.device_id,
            "platform": self.platform,
            "clientVersion": self.client_version,
        }
        if self.device_name:
            payload["deviceName"] = self.device_name
        if self.replica.synced:
            payload["lastSequence"] = self.replica.sequence
            if self.replica.checksum is not None:
                # lets the daemon refuse to resume a number it reused for
                # another schema (e.g. after losing its last pushes)
                payload["lastChecksum"] = self.replica.checksum
        if self.token:
            payload["token"] = self.token
        self.send("connect", payload)

    def _lost(self, protocol, code, reason):
        if protocol is not self._protocol and self._protocol is not None:
            return
        self._protocol = None
        self._connecting = None
        self.connected = False
        self.connection_id = None
        self._stop_heartbeat()
        if self._stopping or not self._running:
            self._finish(Closed(code, reason, None))
            return
        action = close_action(code, reason)
        if action == STOP:
            self._log.info("closed for good: {code} {reason}", code=code, reason=reason)
            self._finish(Closed(code, reason, None, final=True))
            return
        self._schedule(code, reason, restart=action == RESTART)

    def _received(self, protocol, data, is_binary):
        self._last_received = self.clock.seconds()
        if is_binary:
            return
        try:
            message = orjson.loads(data)
            kind = message["type"]
            payload = message.get("payload") or {}
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            self._log.warn("unreadable message from the server")
            return
        handler = getattr(self, "_on_" + str(kind), None)
        if handler is None:
            self._log.debug("ignoring message of type {kind}", kind=kind)
            return
        handler(payload)

    def _on_connected(self, payload):
        self.connection_id = payload.get("connectionId")
        self.connected = True
        self.attempts = 0
        self.connections += 1
        self._failed_full = None
        self._reload_asked = None
        sequence = payload.get("sequenceNumber") or 0
        changed = False
        if not payload.get("resumed"):
            initial = payload.get("initialSchema")
            try:
                self.replica.reset(initial, sequence, payload.get("checksum"))
                changed = initial is not None
            except UpdateError as e:
                # keep what we had; the failed ack makes the server send a full update
                self.replica.synced = True
                self.send("ack", {"sequenceNumber": sequence, "success": False, "error": e.message})
            else:
                if initial is not None:
                    self.send("ack", {"sequenceNumber": sequence, "success": True})
        self._start_heartbeat()
        if changed:
            self._emit("schema", self.replica.schema, self.replica.sequence)
        self._emit("connected", payload)

    def _on_update(self, payload):
        started = time.perf_counter()
        sequence = payload.get("sequenceNumber")
        kind = payload.get("type")
        try:
            changed = self.replica.apply(payload)
        except UpdateError as e:
            apply_ms = (time.perf_counter() - started) * 1000
            if kind == messages.UPDATE_FULL and self._failed_full == sequence:
                # the server already resent this state and it still fails:
                # asking again would loop forever
                self._log.warn("full update {seq} failed again: {error}", seq=sequence, error=e.message)
            else:
                if kind == messages.UPDATE_FULL:
                    self._failed_full = sequence
                self.send(
                    "ack",
                    {
                        "sequenceNumber": sequence if isinstance(sequence, int) else 0,
                        "success": False,
                        "error": e.message,
                        "applyTime": apply_ms,
                    },
                )
            self._emit(
                "update",
                UpdateEvent(sequence, kind, False, False, apply_ms, self.replica.checksum, e.message, e.code),
            )
            return
        apply_ms = (time.perf_counter() - started) * 1000
        self._failed_full = None
        self.send("ack", {"sequenceNumber": sequence, "success": True, "applyTime": apply_ms})
        if changed:
            self._emit("schema", self.replica.schema, self.replica.sequence)
        self._emit("update", UpdateEvent(sequence, kind, True, changed, apply_ms, self.replica.checksum))

    def _on_pong(self, payload):
        current = payload.get("sequenceNumber")
        if (
            isinstance(current, int)
            and current > self.replica.sequence
            and self._reload_asked != current
        ):
            # an update went missing (or is being skipped): ask for the full schema
            self._reload_asked = current
            self.request_reload("missed update")
        self._emit("pong", payload)

    def _on_error(self, payload):
        self._log.info(
            "server error {code}: {message}", code=payload.get("code"), message=payload.get("message")
        )
        self._emit("error", payload)

    # -- heartbeat -------------------------------------------------------

    def _start_heartbeat(self):
        if self.ping_interval and not self._heartbeat.running:
            self._heartbeat.start(self.ping_interval, now=False)

    def _stop_heartbeat(self):
        if self._heartbeat.running:
            self._heartbeat.stop()

    def _beat(self):
        try:
            protocol = self._protocol
            if protocol is None:
                return
            if self.clock.seconds() - self._last_received > self.receive_timeout:
                self._log.info("no word from the server for {s:.0f}s; reconnecting", s=self.receive_timeout)
                protocol.dropConnection(abort=True)
                return
            self.ping()
        except Exception:
            self._log.failure("heartbeat failed")
