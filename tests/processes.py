"""Programs in child processes (the daemon under `twist` or `twistd -n`, the
examples), read as they print: tests wait for a line matching a pattern,
never for a length of time."""

import contextlib
import os
import re
import signal
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, protocol

from tests.helpers import Daemon

BIN = os.path.dirname(sys.executable)
TWIST = os.path.join(BIN, "twist")
TWISTD = os.path.join(BIN, "twistd")
SITE_STARTED = rb"Site starting on (\d+)"
START_TIMEOUT = 60


class Child(protocol.ProcessProtocol):
    """A running program: `output` is everything it printed (stdout and
    stderr), `ended` fires with its exit code (or -signal)."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.output = b""
        self.ended = defer.Deferred()
        self._waiting = []

    def childDataReceived(self, fd, data):
        self.output += data
        for pattern, d in list(self._waiting):
            found = re.search(pattern, self.output)
            if found:
                self._waiting.remove((pattern, d))
                d.callback(found)

    def processEnded(self, reason):
        code = reason.value.exitCode
        if code is None:
            code = -reason.value.signal
        for pattern, d in self._waiting:
            d.errback(RuntimeError(f"exited ({code}) before printing {pattern!r}:\n{self.output.decode()}"))
        self._waiting = []
        self.ended.callback(code)

    def wait_for(self, pattern, timeout=START_TIMEOUT):
        """A Deferred firing with the first match of `pattern` (bytes regex)
        in the output, now or later."""
        found = re.search(pattern, self.output)
        if found:
            return defer.succeed(found)
        if self.ended.called:
            return defer.fail(RuntimeError(f"exited before printing {pattern!r}:\n{self.output.decode()}"))
        d = defer.Deferred()
        self._waiting.append((pattern, d))
        return d.addTimeout(timeout, self.reactor)

    def signal(self, name):
        with contextlib.suppress(Exception):
            self.transport.signalProcess(name)

    async def stop(self):
        """SIGTERM, then the exit status: twist and twistd re-raise the
        signal after a clean shutdown, so a clean stop is -SIGTERM."""
        self.signal("TERM")
        code = await self.ended
        assert code == -signal.SIGTERM, self.output.decode()
        assert b"Traceback" not in self.output, self.output.decode()


class Remote(Daemon):
    """The helpers' Daemon client methods, pointed at a daemon in another process."""

    def __init__(self, reactor, base_url, ws_path="/ws"):
        self.reactor = reactor
        self.server = None
        self.port = None
        self.url = base_url
        self.ws = base_url.replace("http", "ws", 1) + ws_path


@pytest.fixture
def spawn_child(reactor):
    """``child = spawn_child(argv, env=..., child_fds=...)``; children still
    running at the end of the test are killed."""
    running = []

    def spawn(argv, env=None, child_fds=None, path=None):
        child = Child(reactor)
        fds = {0: "w", 1: "r", 2: "r"}
        fds.update(child_fds or {})
        reactor.spawnProcess(child, argv[0], argv, env=env if env is not None else dict(os.environ),
                             childFDs=fds, path=path)
        running.append(child)
        return child

    yield spawn
    for child in running:
        if not child.ended.called:
            child.signal("KILL")
            pytest_twisted.blockon(child.ended)


@pytest.fixture
def start_daemon(reactor, spawn_child):
    """``child, remote = await start_daemon(runner, *options)``: the daemon
    under `twist` or `twistd -n` on an ephemeral loopback port, in memory."""

    async def start(runner, *options, env=None):
        head = [TWIST] if runner == "twist" else [TWISTD, "-n", "--pidfile="]
        argv = [*head, "lumora-reload", "--port", "tcp:0:interface=127.0.0.1", *options]
        if "--data-dir" not in options:
            argv.append("--in-memory")
        child = spawn_child(argv, env=env)
        port = int((await child.wait_for(SITE_STARTED)).group(1))
        return child, Remote(reactor, f"http://127.0.0.1:{port}")

    return start
