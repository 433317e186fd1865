"""The daemon's log output: one line per event, as text or as JSON.

`twist` and `twistd -n` each pick their own format (`twist` writes JSON
records whenever its output is not a terminal, which journald shows as
noise). `take_over` makes the daemon's `--log-format` decide instead: it
hands the runner's `beginLoggingTo` our observer in place of the runner's,
writing to the same place the runner would have written.

Our own events carry stable keys, copied as they are into JSON lines:
`event` (a dotted name such as ``device.joined``), `session` (short id),
`device`, `sequence`, `latency_ms`.
"""

import sys
from datetime import datetime, timezone

import orjson
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogBeginner
from zope.interface import implementer

FORMATS = ("text", "json")
FIELDS = ("event", "session", "device", "sequence", "latency_ms")
_PRIORITY = {LogLevel.debug: 0, LogLevel.info: 1, LogLevel.warn: 2, LogLevel.error: 3, LogLevel.critical: 4}


def _stamp(event):
    when = datetime.fromtimestamp(event.get("log_time") or 0, timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ours(event):
    return (event.get("log_namespace") or "").startswith("lumora_reload")


def _message(event):
    # A line written to a file-like logger (the access log, a print): its
    # text as it is, what formatEvent gives, without parsing "{log_io}" for
    # it on every request.
    if event.get("log_format") == "{log_io}":
        text = event.get("log_io")
        if type(text) is str:
            return text
    return formatEvent(event)


def text_line(event):
    """`2026-11-30T20:21:03.512Z info  lumora_reload.server: session 3f0c8e created`."""
    level = event.get("log_level", LogLevel.info).name
    line = f"{_stamp(event)} {level:<5} {event.get('log_namespace', '-')}: {_message(event)}\n"
    failure = event.get("log_failure")
    if failure is not None:
        line += failure.getTraceback()
    return line


def json_line(event):
    """One JSON object: `time`, `level`, `namespace`, `message`, our stable
    fields when the event has them, and `error`/`traceback` for a failure."""
    record = {
        "time": _stamp(event),
        "level": event.get("log_level", LogLevel.info).name,
        "namespace": event.get("log_namespace", "-"),
        "message": _message(event),
    }
    if _ours(event):
        record.update((name, event[name]) for name in FIELDS if event.get(name) is not None)
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = failure.getErrorMessage()
        record["traceback"] = failure.getTraceback()
    return orjson.dumps(record, default=str).decode() + "\n"


@implementer(ILogObserver)
class LineObserver:
    """Writes events at or above `level` to `stream`, one line each."""

    def __init__(self, stream, log_format="text", level=LogLevel.info):
        if log_format not in FORMATS:
            raise ValueError(f"--log-format must be one of {', '.join(FORMATS)}, not {log_format!r}")
        self.stream = stream
        self.format = json_line if log_format == "json" else text_line
        self.threshold = _PRIORITY.get(level, 1)

    def __call__(self, event):
        if _PRIORITY.get(event.get("log_level"), 1) < self.threshold:
            return
        try:
            self.stream.write(self.format(event))
            self.stream.flush()
        except Exception:  # a log line that cannot be written must not stop the daemon
            pass


def runner_stream(runner_options):
    """Where the runner that parsed `runner_options` would write its log,
    when that is a stream we can write to: `twist`'s log file, or standard
    output for `twistd -n`. None for a daemonizing twistd and for twistd's
    `--logger`/`--syslog`: twistd's own log stays then."""
    if runner_options is None:
        return None
    if "fileLogObserverFactory" in runner_options:  # twist
        return runner_options.get("logFile")
    if "nodaemon" in runner_options:  # twistd
        if runner_options.get("logger") or runner_options.get("syslog"):
            return None
        if runner_options.get("nodaemon") and runner_options.get("logfile") in (None, "-"):
            return sys.stdout  # captured now: twistd redirects sys.stdout into the log later
    return None


def runner_level(runner_options, verbose):
    if verbose:
        return LogLevel.debug
    level = runner_options.get("logLevel") if runner_options is not None else None
    return level if level in _PRIORITY else LogLevel.info


def take_over(options, beginner=globalLogBeginner):
    """Make the runner begin logging to our observer (once). `options` are
    the daemon's parsed options; their `parent` is the runner's. Returns
    the observer, or None when the runner keeps its own logging."""
    runner = getattr(options, "parent", None)
    stream = runner_stream(runner)
    if stream is None:
        return None
    observer = LineObserver(stream, options["log-format"], runner_level(runner, options["verbose"]))
    if "beginLoggingTo" in vars(beginner):
        return None  # already taken over
    original = beginner.beginLoggingTo

    def begin(observers, *args, **kwargs):
        del beginner.beginLoggingTo  # one shot: the class's method again
        return original([observer], *args, **kwargs)

    beginner.beginLoggingTo = begin
    return observer
