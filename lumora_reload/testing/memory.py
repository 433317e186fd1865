"""Without sockets: a daemon and its devices on one `task.Clock`.

`MemoryNetwork` is the same `HotReloadServer` as `LumoraServer`, its
device connections carried by in-memory transport pairs (`MemoryLink`)
instead of TCP, and all its time -- the daemon's sweeps and ping sweep
and handshake timeouts, the clients' heartbeats and reconnect backoff --
taken from one `task.Clock`. Nothing runs until the test says so, so a
client's timeouts and backoff are tested in milliseconds, exactly:

    net = MemoryNetwork(heartbeat_interval=1.0, connection_timeout=3.0)
    session_id = net.create_session(schema)
    client = net.device(session_id, ping_interval=1.0)  # a started DeviceClient
    net.pump()                 # handshake, connect, connected: bytes move, time does not
    assert client.replica.sequence == 1
    net.push(session_id, other)  # the PushResult (the memory store answers at once)
    net.pump()
    net.advance(30)            # 30 s of clock time, every timer at its own moment
    net.stop()

`pump()` moves bytes both ways and runs what is due now, until nothing
moves; `advance(seconds)` steps the clock from one scheduled call to the
next, pumping in between, so each timer fires at its own time. No real
reactor is used: the clients' Autobahn timers are off
(`CLIENT_PROTOCOL_OPTIONS`) and the daemon's run on the clock. Every
misbehaviour of `LumoraServer` is here too; `MemoryLink` adds the
socket's side: a client that stops reading (``link.client.pauseProducing()``)
fills the daemon's send buffer (`MemoryLink.buffer_size` bytes), which
pauses the daemon's writes as a full kernel buffer would.
"""

from twisted.internet import defer, error, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

from lumora_reload import web
from lumora_reload.client import DeviceClient
from lumora_reload.server import HotReloadServer
from lumora_reload.testing import misbehave

# Autobahn's client timers use the global reactor: off on the Clock
CLIENT_PROTOCOL_OPTIONS = {
    "openHandshakeTimeout": 0,
    "closeHandshakeTimeout": 0,
    "serverConnectionDropTimeout": 0,
    "autoPingInterval": 0,
}

# pump() gives up after this many rounds: a loop that never settles is a bug
MAX_ROUNDS = 100_000


@implementer(ITransport, IConsumer, IPushProducer)
class MemoryTransport:
    """One end of a `MemoryLink`. Written bytes wait in `outgoing` until
    the link pumps them to the other end; `pauseProducing` stops this end
    reading (what is sent to it stays queued on the other side)."""

    def __init__(self, link, host, peer):
        self.link = link
        self.protocol = None  # read at every delivery: a WebSocket upgrade replaces it
        self.outgoing = []
        self.buffered = 0
        self.reading = True
        self.connected = True
        self.disconnecting = False
        self.aborted = False
        self.producer = None
        self.streaming = False
        self._producer_paused = False
        self._host, self._peer = host, peer

    # -- ITransport --------------------------------------------------------

    def write(self, data):
        if self.disconnecting or not self.connected:
            return
        self.outgoing.append(bytes(data))
        self.buffered += len(data)
        if self.buffered > self.link.buffer_size and self.producer is not None and self.streaming:
            # a full kernel buffer tells the writer on every write
            self._producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data):
        self.write(b"".join(data))

    def loseConnection(self):
        """Close once what was written has been delivered."""
        self.disconnecting = True

    def abortConnection(self):
        """Close now; what was not delivered is lost (no close frame)."""
        self.disconnecting = self.aborted = True
        self.outgoing, self.buffered = [], 0

    def getPeer(self):
        return self._peer

    def getHost(self):
        return self._host

    def setTcpNoDelay(self, enabled):
        pass

    def setTcpKeepAlive(self, enabled):
        pass

    # -- IConsumer: a writer that wants to hear about back-pressure --------

    def registerProducer(self, producer, streaming):
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self):
        self.producer = None

    # -- IPushProducer: this end's reading ---------------------------------

    def pauseProducing(self):
        self.reading = False

    def resumeProducing(self):
        self.reading = True

    def stopProducing(self):
        self.loseConnection()

    # -- the link's side ---------------------------------------------------

    def _take(self):
        data, self.outgoing, self.buffered = b"".join(self.outgoing), [], 0
        if self._producer_paused:
            self._producer_paused = False
            if self.producer is not None:
                self.producer.resumeProducing()
        return data


class MemoryLink:
    """One connection: a client protocol and a server protocol joined by
    two `MemoryTransport`s (`client` and `server`, the ends each protocol
    writes to)."""

    buffer_size = 64 * 1024  # what the "kernel" takes before the writer is paused

    def __init__(self, client_protocol, server_protocol, port=8080):
        self.client = MemoryTransport(
            self, IPv4Address("TCP", "127.0.0.1", 50000), IPv4Address("TCP", "127.0.0.1", port)
        )
        self.server = MemoryTransport(
            self, IPv4Address("TCP", "127.0.0.1", port), IPv4Address("TCP", "127.0.0.1", 50000)
        )
        self.client.protocol, self.server.protocol = client_protocol, server_protocol
        self.closed = False

    def start(self):
        self.server.protocol.makeConnection(self.server)
        self.client.protocol.makeConnection(self.client)

    def drop(self):
        """A dead network: both ends lose the connection, no close frame."""
        self.server.abortConnection()

    def pump(self):
        """Deliver what each end wrote (to an end that reads) and report a
        closed connection to both protocols; True when anything happened."""
        if self.closed:
            return False
        moved = False
        for source, target in ((self.client, self.server), (self.server, self.client)):
            if source.outgoing and target.reading and not self.closed:
                target.protocol.dataReceived(source._take())
                moved = True
        for side in (self.server, self.client):
            if side.disconnecting and (side.aborted or not side.outgoing) and not self.closed:
                self._close(side)
                return True
        return moved

    def _close(self, closer):
        self.closed = True
        other = self.client if closer is self.server else self.server
        for end in (closer, other):
            end.connected = False
            end.disconnecting = True
        if closer.aborted:
            reasons = {closer: error.ConnectionAborted(), other: error.ConnectionLost()}
        else:
            reasons = {closer: error.ConnectionDone(), other: error.ConnectionDone()}
        for end in (self.server, self.client):
            end.protocol.connectionLost(Failure(reasons[end]))


class MemoryEndpoint:
    """A client endpoint whose connections are `MemoryLink`s to a
    `MemoryNetwork`'s daemon (or refused while `network.refusing`)."""

    def __init__(self, network):
        self.network = network

    def connect(self, factory):
        return self.network.connect(factory)


class _ClockTimer:
    """Autobahn's batched timer on a Clock (its own uses the global reactor)."""

    def __init__(self, clock):
        self.clock = clock

    def call_later(self, delay, fun, *args, **kwargs):
        return _Call(self.clock.callLater(delay, fun, *args, **kwargs))


class _Call:
    def __init__(self, call):
        self.call = call

    def cancel(self):
        # Autobahn may cancel a call that already ran
        if self.call.active():
            self.call.cancel()


class MemoryNetwork(misbehave.Misbehaviours):
    """A `HotReloadServer` (in-memory store) whose devices connect
    through `MemoryLink`s, everything timed by `clock` (a new
    `task.Clock` unless given). `options` are `HotReloadServer` options."""

    host = "127.0.0.1"
    port = 8080  # only a name in URLs: nothing listens

    def __init__(self, clock=None, **options):
        self.clock = clock if clock is not None else task.Clock()
        options.setdefault("heartbeat_interval", 30.0)
        self.server = HotReloadServer(reactor=self.clock, clock=self.clock, **options)
        self.server.ws_factory._batched_timer = _ClockTimer(self.clock)
        self.site = web.site(self.server, self.clock)
        self.site.wrappedFactory.timeOut = None  # an idle HTTP timer of 12 hours, of no use here
        self.open_links = []
        self.buffer_size = MemoryLink.buffer_size  # of each new link
        self.devices = []
        self.refusing = False  # True: connections are refused, as by a daemon that is down
        self.connections_made = 0
        self.install_misbehaviours()
        self.server.startService()
        self.url = f"http://{self.host}:{self.port}"

    # -- connections -----------------------------------------------------

    def endpoint(self):
        """A client endpoint into this network (for `DeviceClient(endpoint=...)`
        or any Twisted client factory)."""
        return MemoryEndpoint(self)

    def connect(self, factory):
        """Connect a client protocol factory; a Deferred (already fired) of
        its protocol, or of ConnectionRefusedError while `refusing`."""
        if self.refusing or not self.server.running:
            return defer.fail(error.ConnectionRefusedError("refused by the memory network"))
        peer = IPv4Address("TCP", self.host, 50000 + len(self.open_links))
        client_protocol = factory.buildProtocol(IPv4Address("TCP", self.host, self.port))
        server_protocol = self.site.buildProtocol(peer)
        link = MemoryLink(client_protocol, server_protocol, self.port)
        link.buffer_size = self.buffer_size
        self.open_links.append(link)
        self.connections_made += 1
        link.start()
        return defer.succeed(client_protocol)

    def pump(self):
        """Move bytes and run what is due now until nothing moves."""
        for _ in range(MAX_ROUNDS):
            self.clock.advance(0)
            moved = False
            for link in list(self.open_links):
                if link.pump():
                    moved = True
            self.open_links = [link for link in self.open_links if not link.closed]
            if not moved and not self._due():
                return
        raise RuntimeError("the memory network did not settle")

    def _due(self):
        now = self.clock.seconds()
        return any(c.getTime() <= now for c in self.clock.getDelayedCalls())

    def advance(self, seconds):
        """Let `seconds` pass: every scheduled call runs at its own time,
        with the network pumped after each."""
        target = self.clock.seconds() + seconds
        self.pump()
        while True:
            times = [c.getTime() for c in self.clock.getDelayedCalls()]
            upcoming = min(times, default=None)
            if upcoming is None or upcoming > target:
                break
            self.clock.advance(max(0.0, upcoming - self.clock.seconds()))
            self.pump()
        self.clock.advance(max(0.0, target - self.clock.seconds()))
        self.pump()

    # -- the daemon ------------------------------------------------------

    @property
    def hub(self):
        return self.server.hub

    def ws_url(self, session_id):
        return f"ws://{self.host}:{self.port}{self.server.ws_path}?session={session_id}"

    def create_session(self, schema=None, timeout_seconds=None):
        """Create a session (with a first schema, if given); its id."""
        return self.server.create_session(schema=schema, timeout_seconds=timeout_seconds).id

    def push(self, session_id, schema, preserve_state=True):
        """Push a schema; the `PushResult` (raises `LumoraError` as the
        HTTP API would answer an error). Call `pump` to deliver it."""
        result = []
        self.server.push_update(session_id, schema, preserve_state).addBoth(result.append)
        if not result:
            raise RuntimeError("the push did not finish at once")
        if isinstance(result[0], Failure):
            result[0].raiseException()
        return result[0]

    def device(self, session_id, **options):
        """A `DeviceClient` on `session_id` through this network, on its
        clock, started (call `pump` to let it connect). `options` go to
        `DeviceClient`; its Autobahn timers are off."""
        protocol_options = dict(CLIENT_PROTOCOL_OPTIONS)
        protocol_options.update(options.pop("protocol_options", None) or {})
        client = DeviceClient(
            self.ws_url(session_id),
            reactor=self.clock,
            clock=self.clock,
            endpoint=self.endpoint,
            protocol_options=protocol_options,
            **options,
        )
        self.devices.append(client)
        client.start()
        return client

    def stop(self):
        """Stop the devices made by `device` and the daemon (the others are
        closed 1012), and run the network until every link is closed."""
        for client in self.devices:
            client.stop()
        self.pump()
        stopped = []
        if self.server.running:
            self.server.stopService().addBoth(stopped.append)
        self.pump()
        for link in self.open_links:
            link.drop()
        self.pump()
        self.remove_misbehaviours()
        self.advance(0)
        if stopped and isinstance(stopped[0], Failure):
            stopped[0].raiseException()
