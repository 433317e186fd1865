"""`--workers N`: N daemon processes serving one port, one per core.

The first process listens on `--port` as usual, then starts N-1 more
`twistd` processes with the same command line and hands each the listening
socket (inherited as file descriptor 3, named in `LISTEN_FD_ENV`). Each
process accepts its own connections from the shared socket and runs a whole
daemon; they share sessions through Redis (cluster mode), so a push made
through any of them reaches devices connected to any other.

A worker stops when the first process stops (it is sent SIGTERM) or dies
(the worker's stdin, a pipe from the first process, closes).
"""

import os
import signal
import socket
import sys

from twisted.application import service
from twisted.internet import defer, endpoints, protocol, stdio
from twisted.logger import Logger

LISTEN_FD_ENV = "LUMORA_RELOAD_LISTEN_FD"
_CHILD_FD = 3
_STOP_SECONDS = 10.0


def worker_argv(argv, tapname="lumora-reload"):
    """The command line of another worker: the same as `argv` (twistd's),
    in the foreground and without a pid file of its own."""
    args = list(argv[1:])
    at = args.index(tapname) if tapname in args else len(args)
    # twistd reads its own options before the plugin name, the last one winning
    args[at:at] = ["--nodaemon", "--pidfile="]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args]


class _Worker(protocol.ProcessProtocol):
    _log = Logger()

    def __init__(self, number):
        self.number = number
        self.ended = defer.Deferred()

    def processEnded(self, reason):
        code = getattr(reason.value, "exitCode", None)
        self._log.info("worker {n} ended ({code})", n=self.number, code=code)
        self.ended.callback(None)


class SharedPort(service.Service):
    """Listen on `description`, then start `workers - 1` more daemons on
    the same socket; stop them when this service stops."""

    _log = Logger()

    def __init__(self, reactor, description, factory, workers, argv=None):
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.workers = workers
        self.argv = argv if argv is not None else sys.argv
        self.port = None
        self.children = []

    def startService(self):
        super().startService()
        d = endpoints.serverFromString(self.reactor, self.description).listen(self.factory)
        d.addCallback(self._listening)
        d.addErrback(self._failed)

    def _failed(self, failure):
        self._log.failure("cannot listen on {port}", failure, port=self.description)
        self.reactor.stop()

    def _listening(self, port):
        self.port = port
        argv = worker_argv(self.argv)
        env = dict(os.environ, **{LISTEN_FD_ENV: str(_CHILD_FD)})
        for number in range(2, self.workers + 1):
            child = _Worker(number)
            transport = self.reactor.spawnProcess(
                child, argv[0], argv, env=env, childFDs={0: "w", 1: 1, 2: 2, _CHILD_FD: port.fileno()}
            )
            child.pid = transport.pid
            self.children.append((child, transport))
            self._log.info("worker {n} of {total} started (pid {pid})", n=number, total=self.workers,
                           pid=transport.pid)

    def stopService(self):
        super().stopService()
        waits = []
        for child, transport in self.children:
            if not child.ended.called:
                try:
                    transport.signalProcess("TERM")
                except Exception:
                    pass  # already gone
                waits.append(child.ended)
        d = defer.DeferredList(waits)
        if waits:
            timer = self.reactor.callLater(_STOP_SECONDS, self._kill)
            d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        if self.port is not None:
            d.addCallback(lambda _: self.port.stopListening())
        return d

    def _kill(self):
        for child, transport in self.children:
            if not child.ended.called:
                try:
                    transport.signalProcess("KILL")
                except Exception:
                    pass


class _ParentWatch(protocol.Protocol):
    """A worker's stdin: when the first process goes, so does the worker."""

    def __init__(self, reactor):
        self.reactor = reactor

    def connectionLost(self, reason):
        if self.reactor.running:
            os.kill(os.getpid(), signal.SIGTERM)  # the usual clean shutdown


class AdoptedPort(service.Service):
    """A worker's port: the socket the first process listens on."""

    def __init__(self, reactor, fd, factory):
        self.reactor = reactor
        self.fd = fd
        self.factory = factory
        self.port = None

    def startService(self):
        super().startService()
        sock = socket.socket(fileno=os.dup(self.fd))  # only to read the address family
        family = sock.family
        sock.close()
        self.port = self.reactor.adoptStreamPort(self.fd, family, self.factory)
        os.close(self.fd)
        # (a StandardIO writes nowhere here: keep it off the shared stdout)
        stdio.StandardIO(_ParentWatch(self.reactor), stdout=os.open(os.devnull, os.O_WRONLY), reactor=self.reactor)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()
        return None
