"""`device SESSION`: simulated devices (`lumora_reload.client.DeviceClient`)
on the reactor, reporting each update they apply.

Twisted is imported only when this command runs, so the simple commands
start quickly."""

import functools
import math
import secrets
from urllib.parse import quote, urlsplit, urlunsplit

from lumora_reload.cli.control import session_info
from lumora_reload.cli.output import EXIT_ERROR, EXIT_OK, CliError, print_error
from lumora_reload.cli.push import count_nodes


def ws_base(http_url, ws_path="/ws"):
    """The daemon's WebSocket URL (no query) from its HTTP base URL."""
    parts = urlsplit(http_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = "/".join(part for part in ws_path.split("/") if part)  # as the daemon routes it
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/" + path, "", ""))


def cmd_device(args, api, out):
    if args.count < 1:
        raise CliError("--count must be at least 1")
    if not 0 < args.ping_interval < math.inf:
        raise CliError("--ping-interval must be more than 0 seconds")
    session_info(api, args.session)
    url = f"{ws_base(args.url, args.ws_path)}?session={quote(args.session, safe='')}"
    return run_reactor(lambda reactor: Simulator(reactor, args, url, out).start())


def run_reactor(main):
    """Run the reactor until `main(reactor)` (a Deferred of an exit code)
    fires; Ctrl-C ends it too (exit 0)."""
    from twisted.internet import defer, reactor
    from twisted.internet.error import ReactorNotRunning

    code = EXIT_OK

    def finished(result):
        nonlocal code
        code = result
        try:
            reactor.stop()
        except ReactorNotRunning:  # already stopping: Ctrl-C ended it first
            pass

    def failed(failure):
        print_error(failure.getErrorMessage())
        finished(EXIT_ERROR)

    def start():
        defer.maybeDeferred(main, reactor).addCallbacks(finished, failed)

    reactor.callWhenRunning(start)
    reactor.run()
    return code


class SimulatedDevice:
    """One simulated device: its client, the name it shows and how many
    updates it has applied."""

    def __init__(self, client, name):
        self.client = client
        self.name = name
        self.updates = 0


class Simulator:
    """``--count`` devices on one session. `start` returns a Deferred that
    fires with the exit status: after each device applied ``--updates``
    updates, on a checksum mismatch (unless ``--keep-going``), or when the
    daemon closed every device for good."""

    def __init__(self, reactor, args, url, out):
        from twisted.internet import defer

        from lumora_reload.client import DeviceClient

        self.reactor = reactor
        self.args = args
        self.out = out
        self.code = EXIT_OK
        self.finished = defer.Deferred()
        self.devices = []
        self.remaining = set()  # devices still to reach --updates
        prefix = args.device_id or f"sim-{secrets.token_hex(3)}"
        for i in range(args.count):
            name = f"{args.name} {i + 1}" if args.count > 1 else args.name
            client = DeviceClient(
                url,
                device_id=f"{prefix}-{i + 1}",
                device_name=name,
                platform=args.platform,
                client_version=args.client_version,
                reactor=reactor,
                ping_interval=args.ping_interval,
            )
            device = SimulatedDevice(client, name)
            self.devices.append(device)
            self.remaining.add(device)
            client.subscribe("connected", functools.partial(self._connected, device))
            client.subscribe("update", functools.partial(self._updated, device))
            client.subscribe("closed", functools.partial(self._closed, device))
            client.subscribe("stopped", functools.partial(self._stopped, device))

    def start(self):
        self.reactor.addSystemEventTrigger("before", "shutdown", self._interrupted)
        for device in self.devices:
            device.client.start()
        return self.finished

    def _stop_all(self):
        from twisted.internet import defer

        return defer.DeferredList([device.client.stop() for device in self.devices])

    def end(self, code):
        """Stop every device, then fire `finished` (once) with the exit
        status; a failure status sticks."""
        if code != EXIT_OK:
            self.code = code
        if self.finished.called:
            return
        d = self._stop_all()
        d.addCallback(lambda _: self.finished.called or self.finished.callback(self.code))

    def summary(self, device):
        replica = device.client.replica
        self.out.event(
            f"{device.name} done at #{replica.sequence} ({count_nodes(replica.schema)} nodes, "
            f"checksum {(replica.checksum or '-')[:12]})",
            event="done", device=device.client.device_id, deviceName=device.name, sequence=replica.sequence,
            checksum=replica.checksum, schema=replica.schema,
        )

    def _connected(self, device, payload):
        client = device.client
        if payload.get("resumed"):
            what = f"resumed at #{payload.get('sequenceNumber')}"
        elif payload.get("initialSchema") is not None:
            what = f"initial schema #{payload.get('sequenceNumber')}, {count_nodes(client.replica.schema)} nodes"
        else:
            what = "no schema yet"
        self.out.event(
            f"{device.name} connected ({what})",
            event="connected", device=client.device_id, deviceName=device.name,
            connectionId=payload.get("connectionId"), sequence=payload.get("sequenceNumber"),
            resumed=bool(payload.get("resumed")), checksum=client.replica.checksum,
        )

    def _updated(self, device, event):
        client, name, args, out = device.client, device.name, self.args, self.out
        if event.ok:
            human = (
                f"{name} #{event.sequence} {event.update_type} applied in {event.apply_ms:.1f} ms, "
                f"{count_nodes(client.replica.schema)} nodes, checksum ok ({(event.checksum or '')[:12]})"
            )
        else:
            human = out.paint(f"{name} #{event.sequence} {event.update_type} FAILED: {event.error}", "error")
        out.event(
            human, event="update", device=client.device_id, deviceName=name, sequence=event.sequence,
            type=event.update_type, ok=event.ok, applyMs=round(event.apply_ms, 3),
            checksum=event.checksum, error=event.error, code=event.code,
        )
        if not args.no_log:
            if event.ok:
                client.log("info", f"applied #{event.sequence} ({event.update_type}) in {event.apply_ms:.1f} ms")
            else:
                client.log("error", f"could not apply #{event.sequence} ({event.update_type}): {event.error}")
        if not event.ok and event.code == "CHECKSUM_MISMATCH":
            self.code = EXIT_ERROR
            if not args.keep_going:
                print_error(f"{name}: {event.error}")
                self.end(EXIT_ERROR)
                return
        if event.ok:
            device.updates += 1
            if args.updates and device.updates >= args.updates and device in self.remaining:
                self.remaining.discard(device)
                self.summary(device)
                if not self.remaining:
                    self.end(EXIT_OK)

    def _closed(self, device, c):
        if c.retry_in is not None:
            what = f"cannot connect ({c.reason})" if c.code is None else f"disconnected ({c.code} {c.reason or ''})"
            self.out.event(
                f"{device.name} {what}; reconnecting in {c.retry_in:.1f} s",
                event="disconnected", device=device.client.device_id, deviceName=device.name, code=c.code,
                reason=c.reason, retryIn=round(c.retry_in, 3),
            )

    def _stopped(self, device, c):
        if c.final:
            print_error(f"{device.name}: closed by the daemon: {c.code} {c.reason}")
            self.remaining.discard(device)
            self.code = EXIT_ERROR
            if all(d.client.done.called or d is device for d in self.devices):
                self.end(EXIT_ERROR)

    def _interrupted(self):
        """Ctrl-C: each device still running says where it got to."""
        if not self.finished.called:
            for device in self.devices:
                if device in self.remaining:
                    self.summary(device)
            return self._stop_all()
