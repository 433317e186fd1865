"""`watch SESSION PATH`: poll a schema file and push it whenever a burst of
changes has settled."""

import os
import time

from lumora_reload.cli.control import ApiError, session_info
from lumora_reload.cli.output import EXIT_ERROR, CliError
from lumora_reload.cli.push import parse_schema, push_line, push_raw, strip_bom


class Debouncer:
    """Says when a burst of changes has settled: `delay` seconds after the
    last `poke`. Time is passed in, so tests need no sleeping."""

    def __init__(self, delay):
        self.delay = delay
        self.last = None

    def poke(self, now):
        self.last = now

    def ready(self, now):
        if self.last is not None and now - self.last >= self.delay:
            self.last = None
            return True
        return False

    @property
    def pending(self):
        return self.last is not None


def file_signature(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Watch:
    """`watch SESSION PATH`: push the file whenever it settles after a change."""

    def __init__(self, api, out, session_id, path, debounce, poll=None):
        self.api = api
        self.out = out
        self.session_id = session_id
        self.path = path
        self.debouncer = Debouncer(debounce)
        self.poll = poll if poll is not None else max(0.01, min(0.05, debounce / 2))
        self.signature = file_signature(path)
        self.last_raw = None
        self.pushes = 0

    def stamp(self):
        return time.strftime("%H:%M:%S")

    def push_current(self):
        """Read, check and push the file. Returns False when the session is
        gone (watching is pointless), else True."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except OSError as e:
            self.out.event(
                f"{self.stamp()} {self.path}: {e.strerror or e} (not pushed)",
                event="error", file=self.path, error=str(e.strerror or e),
            )
            return True
        if raw == self.last_raw:
            return True
        try:
            parse_schema(raw, self.path)
        except CliError as e:
            self.out.event(
                self.out.paint(f"{self.stamp()} {e} (not pushed)", "warn"),
                event="invalid", file=self.path, error=str(e),
            )
            return True
        try:
            answer, ms = push_raw(self.api, self.session_id, strip_bom(raw), self.path)
        except ApiError as e:
            self.out.event(
                self.out.paint(f"{self.stamp()} {e} (not pushed)", "error"),
                event="rejected", file=self.path, error=str(e), code=e.code, path=e.path,
            )
            return e.code not in ("SESSION_NOT_FOUND", "SESSION_EXPIRED")
        except CliError as e:
            self.out.event(self.out.paint(f"{self.stamp()} {e}", "error"), event="error", file=self.path,
                           error=str(e))
            return True
        self.last_raw = raw
        self.pushes += 1
        self.out.event(
            f"{self.stamp()} pushed {self.path}: {push_line(answer, ms)}",
            event="push", file=self.path, latencyMs=round(ms, 2), **answer,
        )
        return True

    def step(self, now):
        """One poll; returns False when watching should end."""
        signature = file_signature(self.path)
        if signature != self.signature:
            self.signature = signature
            if signature is not None:
                self.debouncer.poke(now)
        if self.debouncer.ready(now):
            return self.push_current()
        return True

    def run(self, initial=True, monotonic=time.monotonic, sleep=time.sleep):
        self.out.event(
            f"watching {self.path} for session {self.session_id} (debounce "
            f"{self.debouncer.delay * 1000:.0f} ms; Ctrl-C to stop)",
            event="watching", file=self.path, sessionId=self.session_id,
        )
        if initial and self.signature is not None:
            if not self.push_current():
                return EXIT_ERROR
        while True:
            sleep(self.poll)
            if not self.step(monotonic()):
                return EXIT_ERROR


def cmd_watch(args, api, out):
    if args.debounce < 0:
        raise CliError("--debounce must be 0 or more milliseconds")
    # fail early and clearly on an unknown session or a daemon that is down
    session_info(api, args.session)
    watch = Watch(api, out, args.session, args.path, args.debounce / 1000.0)
    return watch.run(initial=not args.no_initial)
