"""Bytes straight to the socket when nothing is queued.

Twisted's TCP transport never writes in `write()`: it buffers the bytes,
registers the socket for writability (an ``epoll_ctl``), and sends them on
a later reactor turn, then unregisters (another ``epoll_ctl``). When a
thousand devices connect at once, that later turn comes only after every
other ready connection was served, so each answer (a ``/health`` reply, a
handshake's ``101``, a push's ``200``) waits a whole busy turn. asyncio
instead tries the socket at once when its buffer is empty; `write_now`
does the same, and hands the transport only what the kernel did not take,
so order and back-pressure stay the transport's.

twisted.web writes an HTTP answer's head and body apart; the site's
requests (`web.CorkedRequest`) cork the wrapper around their first write
so that both leave in one send. Later body writes go on their own;
twisted.web turns Nagle off on its connections (through the wrapper,
which carries the TCP transport's interfaces), so they are not held back
waiting for the peer's ACK.
"""

from twisted.internet import tcp
from twisted.protocols.policies import ProtocolWrapper


def write_now(transport, data):
    """Write `data` to `transport`, straight to its socket when it is a
    plain TCP connection with nothing queued; otherwise (TLS, bytes
    pending, closing) through the transport, as usual."""
    if type(transport) is DirectWriteWrapper:
        # its write is this function on its transport: skip the hop (a
        # device's every frame passes the per-address limit's wrapper)
        transport = transport.transport
    if (type(data) is not bytes or type(transport) is not tcp.Server or transport.TLS
            or not transport.connected or transport.disconnecting or transport._aborting
            or transport._writeDisconnected or transport.dataBuffer or transport._tempDataBuffer):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except OSError:
        # full (EAGAIN) or broken: the transport queues it, and finds out
        # on its own turn if the connection is gone
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])


class DirectWriteWrapper(ProtocolWrapper):
    """The per-connection wrapper of a `WrappingFactory`, writing with
    `write_now`. Reads go straight to the wrapped protocol, not through the
    wrapper's own `dataReceived`. Between `cork` and `uncork` writes are
    held and then leave as one (what ``TCP_CORK`` does in the kernel): an
    HTTP answer's head and body in one send."""

    _held = None
    _wrapped = None

    @property
    def wrappedProtocol(self):
        return self._wrapped

    @wrappedProtocol.setter
    def wrappedProtocol(self, protocol):
        # reads go to the protocol's own dataReceived, not through the
        # wrapper's (a device's every ack is a read). Autobahn swaps the
        # protocol here when a request upgrades to a WebSocket. A
        # dataReceived the protocol sets on itself later is not seen: none
        # of the protocols served here does (Twisted's own WebSocket
        # upgrade of HTTPChannel would, and is not used).
        self._wrapped = protocol
        if protocol is None:
            self.__dict__.pop("dataReceived", None)
        else:
            self.dataReceived = protocol.dataReceived

    def write(self, data):
        if self._held is not None:
            self._held.append(data)
            return
        write_now(self.transport, data)

    def writeSequence(self, data):
        if self._held is not None:
            self._held.extend(data)
            return
        write_now(self.transport, b"".join(data))

    def cork(self):
        if self._held is None:
            self._held = []

    def uncork(self):
        held, self._held = self._held, None
        if held:
            write_now(self.transport, b"".join(held))
