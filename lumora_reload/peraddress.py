"""The per-address connection limit: the factory every connection of the
daemon's port is built by, HTTP and WebSocket alike, around the Site. Its
per-connection wrapper writes straight to the socket (`directwrite`)."""

from twisted.internet.interfaces import IProtocolNegotiationFactory, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from zope.interface import implementer

from lumora_reload.directwrite import DirectWriteWrapper

_log = Logger()


@implementer(IProtocolNegotiationFactory)
class PerAddressLimit(WrappingFactory):
    """At most `limit` open connections from one remote address (HTTP and
    WebSocket alike); more are closed as soon as they are accepted."""

    noisy = False
    protocol = DirectWriteWrapper

    def acceptableProtocols(self):
        # On a TLS port the wrapper hides the Site from ALPN; without an
        # answer a client offering ALPN (every browser) fails the handshake.
        # The channel speaks HTTP/1.1 only, which WebSocket upgrades need.
        return [b"http/1.1"]

    def __init__(self, wrapped, limit):
        super().__init__(wrapped)
        self.limit = limit
        self.per_address = {}

    def logPrefix(self):
        # "Site starting on 8080", as without the limit
        return "Site"

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        if host is not None and self.per_address.get(host, 0) >= self.limit:
            _log.info(
                "refused a connection from {host}: {limit} already open",
                host=host, limit=self.limit, event="connection.refused",
            )
            # not None: a TLS port wraps whatever this returns, and None
            # there meant a finished handshake and three tracebacks
            return _Refused()
        protocol = super().buildProtocol(addr)
        if host is not None:
            self.per_address[host] = self.per_address.get(host, 0) + 1
            protocol._limited_host = host
        return protocol

    def unregisterProtocol(self, protocol):
        super().unregisterProtocol(protocol)
        host = getattr(protocol, "_limited_host", None)
        if host is not None:
            left = self.per_address[host] - 1
            if left:
                self.per_address[host] = left
            else:
                del self.per_address[host]


class _Refused(Protocol):
    """A connection over the per-address limit: closed as it opens. On a
    TLS port, cut (no handshake is finished for it)."""

    def connectionMade(self):
        if ISSLTransport.providedBy(self.transport):
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()
