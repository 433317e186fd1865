"""`watch SESSION PATH`: push a schema file whenever a burst of changes
has settled; and `Pusher`, the part `dev` shares: one push at a time, the
latest content wins, and a save made while the daemon cannot be reached is
pushed as soon as it answers again.

Runs on the reactor: file events come from `watcher.FileWatcher`, HTTP
calls (blocking urllib) run in the reactor's thread pool."""

import math
import os
import shlex
import time

from lumora_reload.cli.control import ApiError, session_info
from lumora_reload.cli.output import EXIT_ERROR, CliError
from lumora_reload.cli.push import parse_schema, push_line, push_raw, strip_bom
from lumora_reload.cli.watcher import Debouncer, FileWatcher

RETRY_SECONDS = 1.0  # how often a push waiting for the daemon is tried again
GONE = ("SESSION_NOT_FOUND", "SESSION_EXPIRED")


def stamp():
    return time.strftime("%H:%M:%S")


class ConverterError(CliError):
    """A converter that failed: its exit status and what it wrote on stderr."""

    def __init__(self, message, stderr=""):
        super().__init__(message)
        self.stderr = stderr


def read_file(path):
    """The bytes of a schema file, as ``(raw, source)``."""
    try:
        with open(path, "rb") as f:
            return f.read(), path
    except OSError as e:
        raise CliError(f"{path}: {e.strerror or e}")


def run_converter(reactor, command, path):
    """Run ``command`` (``{file}`` replaced by `path`, shell-quoted) in a
    shell; a Deferred of ``(stdout, source)``, or a `ConverterError` when
    it exits non-zero or is killed."""
    from twisted.internet import utils

    line = command.replace("{file}", shlex.quote(path)) if path else command
    d = utils.getProcessOutputAndValue("/bin/sh", ["-c", line], env=dict(os.environ), reactor=reactor)
    source = f"`{line}`"

    def finished(result):
        out, err, code = result
        if code != 0:
            raise ConverterError(f"converter failed (exit status {code}): {line}", err.decode("utf-8", "replace"))
        return out, source

    def killed(failure):
        out, err, signal = failure.value.args
        raise ConverterError(f"converter killed by signal {signal}: {line}", err.decode("utf-8", "replace"))

    return d.addCallbacks(finished, killed)


class Pusher:
    """Pushes the latest schema from a source to one session.

    `submit(produce)` runs `produce()` (a Deferred of ``(raw bytes,
    source name)``, or a `CliError` to report) and pushes the result. One
    push at a time: what is submitted meanwhile runs next, and only the
    newest such submission. When the daemon cannot be reached the content
    is kept and tried again every `retry` seconds until it answers (a newer
    submission replaces it). `on_gone(message)` is called when the session
    no longer exists."""

    def __init__(self, reactor, api, out, session_id, on_gone=None, retry=RETRY_SECONDS, clock=None, push=None):
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        # push(raw, source) -> Deferred of (answer, ms); by default HTTP in the reactor's thread pool
        self.push = push if push is not None else self._push_in_thread
        self.api = api
        self.out = out
        self.session_id = session_id
        self.on_gone = on_gone
        self.retry = retry
        self.pushes = 0
        self.last_raw = None
        self.busy = False
        self._next = None
        self._waiting = None  # (raw, source) the daemon has not had yet
        self._retry_call = None

    def submit(self, produce):
        if self.busy:
            self._next = produce
            return
        self._cancel_retry()
        self._waiting = None
        self.busy = True
        from twisted.internet import defer

        d = defer.maybeDeferred(produce)
        d.addCallback(self._check)
        d.addErrback(self._report)
        d.addBoth(self._idle)

    def stop(self):
        self._cancel_retry()
        self._next = None

    def _idle(self, _):
        self.busy = False
        if self._next is not None:
            produce, self._next = self._next, None
            self.submit(produce)

    def _check(self, produced):
        raw, source = produced
        raw = strip_bom(raw)
        try:
            parse_schema(raw, source)
        except CliError as e:
            self.out.event(self.out.paint(f"{stamp()} {e} (not pushed)", "warn"), event="invalid", file=source,
                           error=str(e))
            return None
        if raw == self.last_raw:
            return None
        return self._send(raw, source)

    def _push_in_thread(self, raw, source):
        from twisted.internet import threads

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), push_raw, self.api,
                                         self.session_id, raw, source)

    def _send(self, raw, source):
        d = self.push(raw, source)
        return d.addCallbacks(self._pushed, self._failed, callbackArgs=(raw, source), errbackArgs=(raw, source))

    def _pushed(self, result, raw, source):
        answer, ms = result
        if self._waiting is not None:
            self.out.event(self.out.paint(f"{stamp()} the daemon answers again", "ok"), event="reachable")
        self._waiting = None
        self.last_raw = raw
        self.pushes += 1
        self.out.event(
            f"{stamp()} pushed {source}: {push_line(answer, ms)}",
            event="push", file=source, latencyMs=round(ms, 2), **answer,
        )

    def _failed(self, failure, raw, source):
        e = failure.value
        if isinstance(e, ApiError):
            self.out.event(
                self.out.paint(f"{stamp()} {e} (not pushed)", "error"),
                event="rejected", file=source, error=str(e), code=e.code, path=e.path,
            )
            if e.code in GONE and self.on_gone is not None:
                self.on_gone(str(e))
            return
        if not isinstance(e, CliError):
            return failure
        # the daemon cannot be reached: keep the content, try again
        if self._waiting is None:
            self.out.event(
                self.out.paint(f"{stamp()} {e}; {source} is pushed when it answers", "error"),
                event="unreachable", file=source, error=str(e),
            )
        self._waiting = (raw, source)
        self._retry_call = self.clock.callLater(self.retry, self._again)

    def _again(self):
        self._retry_call = None
        if self._waiting is None or self.busy:
            return
        raw, source = self._waiting
        self.busy = True
        self._send(raw, source).addErrback(self._report).addBoth(self._idle)

    def _cancel_retry(self):
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None

    def _report(self, failure):
        e = failure.value
        if isinstance(e, ConverterError):
            self.out.event(self.out.paint(f"{stamp()} {e} (not pushed)", "error"), event="converter",
                           error=str(e), stderr=e.stderr)
            for line in e.stderr.rstrip().splitlines()[-20:]:
                if not self.out.as_json:
                    self.out.line(self.out.paint(f"    {line}", "error"))
            return None
        if isinstance(e, CliError):
            self.out.event(self.out.paint(f"{stamp()} {e} (not pushed)", "warn"), event="error", error=str(e))
            return None
        return failure


class Watch:
    """`watch SESSION PATH`: the file is pushed at start (unless told not
    to) and after each burst of changes. `start` returns a Deferred that
    fires with an exit status when the session is gone."""

    def __init__(self, reactor, api, out, session_id, path, debounce, initial=True):
        from twisted.internet import defer

        self.reactor = reactor
        self.out = out
        self.path = path
        self.session_id = session_id
        self.initial = initial
        self.finished = defer.Deferred()
        self.pusher = Pusher(reactor, api, out, session_id, on_gone=self._gone)
        self.debouncer = Debouncer(reactor, debounce, self.push)
        self.watcher = FileWatcher(reactor, path, self._changed)

    def start(self):
        self.out.event(
            f"watching {self.path} for session {self.session_id} (debounce "
            f"{self.debouncer.delay * 1000:.0f} ms; Ctrl-C to stop)",
            event="watching", file=self.path, sessionId=self.session_id,
        )
        self.watcher.start()
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        if not os.path.exists(self.path):
            self._missing()
        elif self.initial:
            self.push()
        return self.finished

    def stop(self):
        self.watcher.stop()
        self.debouncer.cancel()
        self.pusher.stop()

    def push(self):
        if not os.path.exists(self.path):
            self._missing("was deleted")
            return
        self.pusher.submit(lambda: read_file(self.path))

    def _missing(self, what="does not exist yet"):
        self.out.event(
            self.out.paint(f"{stamp()} {self.path} {what}; waiting for it", "warn"),
            event="missing", file=self.path,
        )

    def _changed(self, kind, path):
        # a deletion too waits for the burst to settle: an editor that
        # renames the file away and writes a new one has saved it
        self.debouncer.poke()

    def _gone(self, message):
        self.stop()
        if not self.finished.called:
            self.finished.callback(EXIT_ERROR)


def check_debounce(milliseconds):
    """--debounce: a finite number of milliseconds, 0 or more (NaN would
    stop every push, infinity hold them all)."""
    if not 0 <= milliseconds < math.inf:
        raise CliError("--debounce must be 0 or more milliseconds")


def check_watchable(path):
    """A path whose folder does not exist cannot be waited for."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"{path}: folder {folder} does not exist")


def cmd_watch(args, api, out):
    from lumora_reload.cli.device import run_reactor

    check_debounce(args.debounce)
    check_watchable(args.path)
    # fail early and clearly on an unknown session or a daemon that is down
    session_info(api, args.session)
    return run_reactor(
        lambda reactor: Watch(reactor, api, out, args.session, args.path, args.debounce / 1000.0,
                              initial=not args.no_initial).start()
    )
