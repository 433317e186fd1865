"""The epoll reactor's loop without a log context per ready socket.

Twisted's epoll reactor runs each ready socket's read or write inside
`twisted.python.log.callWithLogger`: it asks the connection for its log
prefix, copies the current log context into a new dict, pushes it on the
context stack and pops it afterwards. That context is read only by
old-style `twisted.python.log` calls, to name the connection in the line.
Our logging, Autobahn's and twisted.web's go through `twisted.logger`,
which never reads it. Yet it costs 3-4 µs per event, and every ack of
every device is an event. In the throughput benchmark (100 devices acking
every push) the daemon used about a fifth less CPU per push without it
(benchmarks/RESULTS.md).

`install` gives one reactor the same loop without the context. The same
reads and writes happen, in the same order, through the reactor's own
`_doReadOrWrite`, which still logs and drops a connection whose read or
write raises. What changes is the system field of such a line in twistd's
own log format: ``[-]`` instead of the connection's prefix (such as
``[Channel (DirectWriteWrapper),12,127.0.0.1]``). The traceback is
unchanged.

Only Twisted's own `EPollReactor` gets it, and only while its `doPoll`
is the one this loop was copied from (`DO_POLL_FINGERPRINT`); any other
reactor, or a Twisted whose loop has changed, keeps its own loop.
"""

import errno
import hashlib
import inspect
import types

from twisted.python import log

_PARTS = ("_poller", "_selectables", "_doReadOrWrite")

# sha256 of the source of `EPollReactor.doPoll` (Twisted 23.10 to 26.10)
DO_POLL_FINGERPRINT = "09b62ae68ef01b4b"


def _lean_poll(self, timeout):
    """`EPollReactor.doPoll` minus `callWithLogger`."""
    if timeout is None:
        timeout = -1  # wait until something happens
    try:
        # as many events as there are sockets, as Twisted asks
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = self._selectables
    handle = self._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue  # removed by an earlier event of this batch
        try:
            handle(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            # what callWithLogger would do: log it, go on with the batch
            log.err(system=_prefix(selectable))


def _prefix(selectable):
    try:
        return selectable.logPrefix()
    except BaseException:
        return "(buggy logPrefix method)"


def install(reactor):
    """Give `reactor` the lean loop if it is Twisted's epoll reactor;
    return whether it now has it."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return False
    if type(reactor) is not EPollReactor:
        return False
    if not all(hasattr(reactor, part) for part in _PARTS) or fingerprint(EPollReactor) != DO_POLL_FINGERPRINT:
        return False  # a Twisted whose loop is not the one copied here
    reactor.doIteration = types.MethodType(_lean_poll, reactor)
    return True


def fingerprint(reactor_class):
    """The first 16 hex digits of the sha256 of `reactor_class.doPoll`'s
    source, or None when the source cannot be read."""
    try:
        source = inspect.getsource(reactor_class.doPoll)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def installed(reactor):
    """Whether `reactor` runs the lean loop."""
    method = reactor.__dict__.get("doIteration")
    return getattr(method, "__func__", None) is _lean_poll


def uninstall(reactor):
    """Back to the reactor's own loop."""
    if installed(reactor):
        del reactor.doIteration
