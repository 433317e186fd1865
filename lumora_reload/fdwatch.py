"""One clear log line when the daemon runs out of file descriptors.

Every device holds a socket, so a busy daemon meets the per-process limit
on open files (`ulimit -n`, systemd's LimitNOFILE) before anything else.
Twisted already survives it: it refuses the waiting connections and keeps
serving the open ones. What it logs is three lines per refused connection,
none of which says what to do. `FdWatch` listens for those events and says
it once, then at most once a minute with the count refused meanwhile.
"""

import resource

from twisted.logger import Logger, globalLogPublisher

# the events of twisted.internet.tcp's accept loop that mean "out of files"
_SIGNS = (
    "EMFILE encountered; releasing reserved file descriptor.",
    "Could not accept new connection ({acceptError})",
)
_NO_FILES = {"EMFILE", "ENFILE"}


class FdWatch:
    _log = Logger()

    def __init__(self, clock, every=60.0, publisher=globalLogPublisher):
        self.clock = clock
        self.every = every
        self.publisher = publisher
        self.refused = 0  # since the last line
        self._last = None

    def start(self):
        self.publisher.addObserver(self)

    def stop(self):
        self.publisher.removeObserver(self)

    def __call__(self, event):
        fmt = event.get("log_format")
        if fmt not in _SIGNS:
            return
        if fmt == _SIGNS[1] and event.get("acceptError") not in _NO_FILES:
            return
        self.refused += 1
        now = self.clock.seconds()
        if self._last is not None and now - self._last < self.every:
            return
        self._last = now
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        refused, self.refused = self.refused, 0
        self._log.error(
            "out of file descriptors (EMFILE): the limit is {limit} open files per process; "
            "{refused} new connection(s) refused since the last report, open ones are still served. "
            "Raise LimitNOFILE (systemd) or ulimit -n",
            limit=soft,
            refused=refused,
        )
