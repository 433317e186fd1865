"""`dev [PATH]`: the whole loop in one process. A daemon (the one at --url
if it answers, else one run here), the project's session (the same one
across restarts), a banner with the device URL, its QR code and the
browser preview, PATH watched and pushed (through a converter with
``--run``), device logs and device arrivals as they happen, and keys:
``r`` reload, ``o`` open the preview, ``c`` clear, ``q`` quit. Without a
terminal (a pipe, CI, a service) there are no keys; Ctrl-C or SIGTERM ends
it cleanly either way."""

import os
import sys
from urllib.parse import quote

from lumora_reload.cli.control import Api, default_url
from lumora_reload.cli.device import run_reactor, ws_base
from lumora_reload.cli.devserver import (
    SessionMemory,
    answers,
    build_daemon,
    loopback_port,
    project_session,
    session_ws_url,
)
from lumora_reload.cli.lan import device_url, print_qr
from lumora_reload.cli.output import EXIT_OK, CliError, printable
from lumora_reload.cli.session import log_line, loopback_warning, new_lines
from lumora_reload.cli.watch import Pusher, check_debounce, check_watchable, read_file, run_converter, stamp
from lumora_reload.cli.watcher import Debouncer, FileWatcher

DEVICE_LOG_FORMAT = "[{device}] {message}"  # how the daemon logs a device's log line
POLL_SECONDS = 1.0  # device logs and device arrivals
KEYS = "r reload devices · o open the preview · c clear · q quit"


class Keys:
    """Single key presses from a terminal (cbreak mode: no echo, no
    line editing; Ctrl-C still interrupts), read on the reactor."""

    def __init__(self, reactor, on_key, fd=0):
        self.reactor = reactor
        self.on_key = on_key
        self.fd = fd
        self._saved = None

    def start(self):
        import termios
        import tty

        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        self.reactor.addReader(self)
        self.reactor.addSystemEventTrigger("after", "shutdown", self.stop)

    def stop(self):
        import termios

        self.reactor.removeReader(self)
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    # IReadDescriptor
    def fileno(self):
        return self.fd

    def doRead(self):
        try:
            data = os.read(self.fd, 64)
        except OSError:
            data = b""
        if not data:
            self.reactor.removeReader(self)
            return None
        for key in data.decode("utf-8", "ignore"):
            self.on_key(key)
        return None

    def connectionLost(self, reason):
        pass

    def logPrefix(self):
        return "keys"


def show_daemon_log(out, verbose):
    """The in-process daemon's log: warnings and errors as dim lines (every
    line with --verbose), instead of Twisted's default of nothing."""
    from twisted.logger import LogLevel, formatEvent, globalLogBeginner

    least = LogLevel.debug if verbose else LogLevel.warn

    def observer(event):
        level = event.get("log_level")
        if level is None or level < least or event.get("log_format") == DEVICE_LOG_FORMAT:
            return  # device log lines are shown from the session's log, once
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}: {failure.getErrorMessage()}"
        text = printable(text)  # it may repeat what a device sent
        out.event(out.paint(f"{stamp()} daemon: {text}", "dim" if level < LogLevel.warn else "warn"),
                  event="daemon", level=level.name, message=text)

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False, discardBuffer=True)


class Dev:
    """One `dev` run on one session: the banner, the watched path, the
    keys, and the devices and their logs. `start` returns a Deferred that
    fires with the exit status (on `q`, Ctrl-C or SIGTERM)."""

    def __init__(self, reactor, args, api, out, base, session_id, reused, local, ws_url=None):
        from twisted.internet import defer

        self.reactor = reactor
        self.args = args
        self.api = api
        self.out = out
        self.base = base
        self.session_id = session_id
        self.reused = reused
        self.local = local  # the daemon runs in this process
        self.finished = defer.Deferred()
        self.preview = f"{base}/preview/{session_id}"
        self.dashboard = f"{base}/"
        self.pusher = Pusher(reactor, api, out, session_id, on_gone=self._gone)
        self.debouncer = Debouncer(reactor, args.debounce / 1000.0, self._settled)
        self.watcher = None
        self.changed_file = None
        self.polling = False
        self.logs = []
        self.devices = {}
        self.ticker = None
        self.ws_url, self.lan_url, self.note = self._urls(ws_url)
        self.warning = None  # why the device URL cannot work, when the daemon says so
        self.keys = False  # keys are read (a terminal)

    # -- start and stop ----------------------------------------------------

    def start(self):
        from twisted.internet import task

        self.banner()
        if self.args.path:
            self.watcher = FileWatcher(self.reactor, self.args.path, self._changed)
            self.watcher.start()
            self._first_push()
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        self.ticker = task.LoopingCall(self.poll)
        self.ticker.clock = self.reactor
        self.ticker.start(POLL_SECONDS, now=True).addErrback(self._poll_failed)
        return self.finished

    def stop(self):
        if self.watcher is not None:
            self.watcher.stop()
        self.debouncer.cancel()
        self.pusher.stop()
        if self.ticker is not None and self.ticker.running:
            self.ticker.stop()

    def quit(self):
        if not self.finished.called:
            self.finished.callback(EXIT_OK)

    def _gone(self, message):
        # the session was deleted under us: the next run of dev makes a new one
        self.out.event(self.out.paint("the session is gone; run `lumora-reload dev` again for a new one", "error"),
                       event="gone", sessionId=self.session_id, error=message)

    # -- the banner --------------------------------------------------------

    def _urls(self, given):
        # the daemon's own URL knows its --ws-path and --public-url; this
        # guess is for a daemon that does not say
        local = given or f"{ws_base(self.base)}?session={quote(self.session_id, safe='')}"
        url, note = device_url(local, self.args.host)
        return local, url, note

    def banner(self):
        out = self.out
        where = "in this process" if self.local else "already running"
        if out.as_json:
            out.json({"event": "ready", "sessionId": self.session_id, "reused": self.reused,
                      "deviceUrl": self.lan_url, "localWsUrl": self.ws_url, "previewUrl": self.preview,
                      "dashboardUrl": self.dashboard, "daemon": self.base, "inProcess": self.local,
                      "note": self.note, "warning": self.warning})
            return
        out.line(out.paint("lumora-reload dev", "bold") + f" · daemon {self.base} ({where})")
        out.line(f"  Session:     {self.session_id} ({'reused' if self.reused else 'new'})")
        out.line(f"  Device URL:  {self.lan_url}")
        out.line(f"  Preview:     {self.preview}")
        out.line(f"  Dashboard:   {self.dashboard}")
        if self.args.path:
            what = self.args.path + (f" -> `{self.args.converter}`" if self.args.converter else "")
            out.line(f"  Watching:    {what}")
        if self.note:
            out.line(out.paint(f"  Note: {self.note}", "warn"))
        if self.warning:
            out.line(out.paint(f"  Warning: {self.warning}", "warn"))
        if not self.args.no_qr:
            out.line()
            print_qr(self.lan_url, out)
        out.line("Scan the QR code with the Lumora app, or open the preview in a browser.")
        if self.keys:
            out.line(out.paint(f"Keys: {KEYS}", "dim"))
        else:
            out.line(out.paint("No terminal: keys are off; Ctrl-C or SIGTERM stops.", "dim"))

    # -- keys ---------------------------------------------------------------

    def key(self, key):
        if key == "q":
            self.quit()
        elif key == "r":
            self.reload()
        elif key == "o":
            self.open_preview()
        elif key == "c":
            self.out.stream.write("\x1b[2J\x1b[H")
            self.banner()

    def reload(self):
        from twisted.internet import threads

        def done(answer):
            n = answer.get("devicesUpdated", 0)
            self.out.event(f"{stamp()} reload: full update #{answer.get('sequenceNumber')} sent to {n} "
                           f"device{'s' if n != 1 else ''}", event="reload", **answer)

        def failed(failure):
            e = failure.value
            if getattr(e, "code", None) == "NOT_FOUND":
                message = "nothing to reload: no schema has been pushed yet"
            else:
                message = str(e)
            self.out.event(self.out.paint(f"{stamp()} reload: {message}", "warn"), event="error", error=message)

        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.api.call, "POST",
                                      f"/session/{quote(self.session_id, safe='')}/reload")
        d.addCallbacks(done, failed)

    def open_preview(self):
        import webbrowser

        from twisted.internet import threads

        self.out.event(f"{stamp()} opening {self.preview}", event="open", url=self.preview)
        # a browser command may wait for the browser: keep the loop free
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), webbrowser.open, self.preview)
        d.addCallback(lambda ok: ok or self.out.line(f"{stamp()} no browser found: open {self.preview}"))
        d.addErrback(lambda f: self.out.line(f"{stamp()} cannot open a browser ({f.getErrorMessage()}): "
                                             f"open {self.preview}"))

    # -- watching -------------------------------------------------------------

    def _first_push(self):
        path, run = self.args.path, self.args.converter
        if not os.path.exists(path):
            self.out.event(self.out.paint(f"{stamp()} {path} does not exist yet; waiting for it", "warn"),
                           event="missing", file=path)
        elif os.path.isfile(path) or (run and "{file}" not in run):
            self.changed_file = path if os.path.isfile(path) else None
            self._settled()
        else:
            self.out.event(f"{stamp()} waiting for a change in {path}", event="waiting", folder=path)

    def _changed(self, kind, path):
        if kind == "deleted" and self.watcher.is_dir:
            return
        # a deletion too waits for the burst to settle: an editor that
        # renames the file away and writes a new one has saved it
        self.changed_file = path
        self.debouncer.poke()

    def _settled(self):
        if not os.path.exists(self.args.path):
            self.out.event(self.out.paint(f"{stamp()} {self.args.path} was deleted; waiting for it", "warn"),
                           event="missing", file=self.args.path)
            return
        run = self.args.converter
        if run:
            path = self.changed_file if not os.path.isdir(self.args.path) or "{file}" in run else None
            if path is not None:
                path = os.path.relpath(path)
            self.pusher.submit(lambda: run_converter(self.reactor, run, path))
        else:
            self.pusher.submit(lambda: read_file(self.args.path))

    # -- devices and their logs ----------------------------------------------

    def poll(self):
        """Print new device log lines and devices that came or went."""
        from twisted.internet import threads

        if self.polling:
            return
        self.polling = True
        sid = quote(self.session_id, safe="")

        def both():
            return self.api.call("GET", f"/session/{sid}/logs"), self.api.call("GET", f"/session/{sid}")

        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), both)
        d.addCallback(self._polled)
        d.addErrback(self._poll_error)
        d.addBoth(self._poll_done)

    def _poll_error(self, failure):
        if not failure.check(CliError):  # a daemon that is down: the pusher says so
            message = f"reading device logs failed: {failure.getErrorMessage()}"
            self.out.event(self.out.paint(f"{stamp()} {message}", "error"), event="error", error=message)

    def _poll_done(self, _):
        self.polling = False

    def _polled(self, answers):
        logs, info = answers
        devices = {d["connectionId"]: d for d in info.get("devices", [])}
        for cid in devices.keys() - self.devices.keys():
            d = devices[cid]
            name = printable(d.get("deviceName") or d.get("deviceId"))
            self.out.event(self.out.paint(f"{stamp()} device {name} ({printable(d.get('platform'))}) connected", "ok"),
                           event="device", state="connected", **d)
        for cid in self.devices.keys() - devices.keys():
            d = self.devices[cid]
            name = printable(d.get("deviceName") or d.get("deviceId"))
            self.out.event(f"{stamp()} device {name} left", event="device", state="left", **d)
        self.devices = devices
        lines = logs.get("lines", [])
        for line in new_lines(self.logs, lines):
            if self.out.as_json:
                self.out.json(dict(line, event="log"))
            else:
                self.out.line(log_line(line, self.out))
        self.logs = lines

    def _poll_failed(self, failure):
        message = f"device log polling stopped: {failure.getErrorMessage()}"
        self.out.event(self.out.paint(message, "error"), event="error", error=message)


def stop_on_signals(reactor, quit):
    """Ctrl-C and SIGTERM end `dev` cleanly, however often they come (a
    second signal while stopping is not an error)."""
    import signal

    def handler(number, frame):
        reactor.callFromThread(quit)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _check_args(args):
    check_debounce(args.debounce)
    if args.path is None:
        if args.converter:
            raise CliError("--run needs a PATH to watch")
        return
    if os.path.isdir(args.path):
        if not args.converter:
            raise CliError(f"{args.path} is a folder: give a schema file, or --run \"CMD {{file}}\" to convert "
                           "each changed file")
    else:
        check_watchable(args.path)


def cmd_dev(args, api, out):
    from lumora_reload import tap
    from lumora_reload.listen import endpoint_description

    _check_args(args)
    explicit_url = args.url != default_url()
    port = None
    if args.port is not None:
        try:
            port = endpoint_description(args.port)
        except ValueError as e:
            raise CliError(str(e))
    url = args.url.rstrip("/")  # the base the page URLs are made from
    if port is not None and not explicit_url and port.startswith("tcp:") and port.split(":")[1].isdigit():
        url = f"http://127.0.0.1:{port.split(':')[1]}"
    data_dir = args.data_dir or tap.default_data_dir()
    local = not answers(url)
    root = None
    if local:
        if port is None:
            number = loopback_port(url)
            if number is None:
                raise CliError(f"no lumora-reload daemon answers at {url}")
            port = f"tcp:{number}"
        from twisted.internet import reactor

        root, url = build_daemon(reactor, port, data_dir, args.in_memory, args.verbose)
        show_daemon_log(out, args.verbose)
    api = Api(url, token=api.token, timeout=api.timeout, default=api.default)
    memory = None if args.in_memory and local else SessionMemory(data_dir)
    # the project folder: its session is remembered under this name
    if args.path is None:
        project = os.getcwd()
    elif os.path.isdir(args.path):
        project = args.path
    else:
        project = os.path.dirname(os.path.abspath(args.path))
    keys = sys.stdin.isatty() and sys.stdout.isatty() and not out.as_json and not args.plain

    async def main(reactor):
        from twisted.internet import threads

        if root is not None:
            root.privilegedStartService()
            root.startService()
            reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
        pool = reactor.getThreadPool()
        session_id, reused, ws_url = await threads.deferToThreadPool(reactor, pool, project_session, api, memory,
                                                                     project)
        if ws_url is None and not local:  # the daemon run here has no --ws-path or --public-url of its own
            ws_url = await threads.deferToThreadPool(reactor, pool, session_ws_url, api, session_id)
        dev = Dev(reactor, args, api, out, url, session_id, reused, local, ws_url)
        dev.keys = keys
        dev.warning = await threads.deferToThreadPool(reactor, pool, loopback_warning, api, dev.lan_url)
        if keys:
            Keys(reactor, dev.key).start()
        stop_on_signals(reactor, dev.quit)
        return await dev.start()

    from twisted.internet import defer

    return run_reactor(lambda reactor: defer.ensureDeferred(main(reactor)))
