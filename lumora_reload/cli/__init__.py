"""`lumora-reload`: the developer's side of the daemon.

    lumora-reload [--url URL] [--api-token T] [--json] COMMAND ...

    session new [--host H] [--schema FILE] [--timeout S] [--no-qr]
    push SESSION FILE|-
    watch SESSION PATH [--debounce MS]
    status [SESSION]
    logs SESSION [--follow]
    reload SESSION
    device SESSION [--count N] [--updates N]

Simple commands are synchronous HTTP calls (stdlib urllib, no proxies: the
daemon is local). `watch` and `logs --follow` are poll loops; `device` runs
the reactor with `lumora_reload.client.DeviceClient`. Every failure is one
line on stderr and a non-zero exit status, never a traceback.
"""

import argparse
import ipaddress
import json
import os
import re
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import quote, urlsplit, urlunsplit

from lumora_reload import __version__

DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "LUMORA_RELOAD_TOKEN"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure to report as one line (and exit non-zero)."""


class ApiError(CliError):
    def __init__(self, status, code, message, path=None, details=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.path = path
        self.details = details


# -- talking to the daemon ------------------------------------------------


class Api:
    """The daemon's REST API, synchronously."""

    def __init__(self, url, token=None, timeout=10.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        # a daemon on this machine: never go through an HTTP proxy
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method, path, body=None, raw=None):
        """One request; returns the parsed JSON answer or raises `CliError`."""
        headers = {"Accept": "application/json", "User-Agent": f"lumora-reload/{__version__}"}
        data = raw
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return _json_body(response.read())
        except urllib.error.HTTPError as e:
            raise self._error(e)
        except urllib.error.URLError as e:
            raise CliError(self._unreachable(e.reason))
        except (ConnectionError, socket.timeout, OSError) as e:
            raise CliError(self._unreachable(e))

    def _unreachable(self, reason):
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, (socket.timeout, TimeoutError)):
            why = "timed out"
        else:
            why = str(getattr(reason, "strerror", None) or reason)
        return (
            f"cannot reach the daemon at {self.url} ({why}); "
            "is it running? Start it with `twistd -n lumora-reload`"
        )

    def _error(self, e):
        try:
            body = _json_body(e.read())
        except Exception:
            body = None
        if not isinstance(body, dict):
            return ApiError(e.code, None, f"the daemon answered HTTP {e.code} {e.reason}")
        details = body.get("details")
        path = body.get("path")
        if path is None and isinstance(details, dict):
            path = details.get("path")
        message = body.get("error") or f"HTTP {e.code}"
        if isinstance(details, dict) and isinstance(details.get("message"), str):
            message = details["message"]
        return ApiError(e.code, body.get("code"), message, path, details)


def _json_body(raw):
    return json.loads(raw) if raw.strip() else None


def describe(error, session_id=None, source=None):
    """One line for an API error, naming what the user gave."""
    if not isinstance(error, ApiError):
        return str(error)
    code = error.code
    if code == "SESSION_NOT_FOUND" and session_id:
        return f"session {session_id} not found (create one with `lumora-reload session new`)"
    if code == "SESSION_EXPIRED" and session_id:
        return f"session {session_id} has expired (create one with `lumora-reload session new`)"
    if code in ("SCHEMA_VALIDATION_FAILED", "BAD_REQUEST") and error.path is not None:
        where = error.path or "(root)"
        prefix = f"{source}: " if source else ""
        kind = "schema error" if code == "SCHEMA_VALIDATION_FAILED" else "bad request"
        return f"{prefix}{kind} at {where}: {error.message}"
    if code == "FORBIDDEN":
        return f"refused by the daemon: {error.message} (pass --api-token or set {TOKEN_ENV})"
    suffix = f" ({code})" if code else ""
    return f"{error.message}{suffix}"


# -- output -----------------------------------------------------------------

_COLOURS = {
    "error": "31",
    "fatal": "1;31",
    "warn": "33",
    "warning": "33",
    "info": "",
    "log": "",
    "debug": "2",
    "trace": "2",
    "ok": "32",
    "dim": "2",
    "bold": "1",
}


class Output:
    def __init__(self, as_json=False, colour="auto", stream=None):
        self.as_json = as_json
        self.stream = stream or sys.stdout
        if colour == "auto":
            colour = "always" if (self.stream.isatty() and not os.environ.get("NO_COLOR")) else "never"
        self.colour = colour == "always" and not as_json

    def paint(self, text, style):
        code = _COLOURS.get(style, "")
        if not self.colour or not code:
            return text
        return f"\x1b[{code}m{text}\x1b[0m"

    def line(self, text=""):
        print(text, file=self.stream, flush=True)

    def json(self, obj):
        print(json.dumps(obj, ensure_ascii=False), file=self.stream, flush=True)

    def event(self, human, **data):
        """One line: `human` for people, `data` as a JSON line with --json."""
        if self.as_json:
            self.json(data)
        else:
            self.line(human)


def table(rows, headers):
    """Plain left-aligned columns."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for row in cells:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(out)


def clock_time(ms):
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000.0)) + f".{int(ms) % 1000:03d}"


def relative(seconds):
    seconds = int(round(seconds))
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{sign}{seconds}s"
    if seconds < 3600:
        return f"{sign}{seconds // 60}m{seconds % 60:02d}s"
    return f"{sign}{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# -- the LAN address a phone can reach ---------------------------------------

_SKIP_NAME = re.compile(
    r"^(lo\d*|docker|br-|veth|virbr|vbox|vmnet|vnet|tun|tap|utun|wg|tailscale|zt|ppp|ipsec|gif|stf"
    r"|awdl|llw|anpi|bridge|lxc|lxd|lxdbr|cni|flannel|cali|podman|kube|ifb|dummy|nordlynx|proton"
    r"|mullvad|gpd|cscotun|ham|nebula|vxlan|genev|weave|cilium)",
    re.IGNORECASE,
)
_SKIP_WORDS = ("virtualbox", "vmware", "hyper-v", "vethernet", "vpn", "docker", "wsl", "loopback", "pseudo",
               "tailscale", "zerotier", "teredo", "isatap")
_PREFERRED_NAME = re.compile(r"^(en|eth|wl|wlan|wlp|wifi|Wi-Fi|Ethernet)", re.IGNORECASE)
_DOCKER_NET = ipaddress.ip_network("172.17.0.0/16")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")  # Tailscale and other overlay VPNs


def _looks_virtual(name):
    lowered = name.lower()
    return bool(_SKIP_NAME.match(name)) or any(w in lowered for w in _SKIP_WORDS)


def choose_host(interfaces):
    """Pick the address a phone on the same network can reach from
    ``[(interface_name, ipv4_address), ...]``, or None.

    Skips loopback, link-local, Docker/VirtualBox/VM bridges and VPN-looking
    interfaces; prefers private (RFC 1918) addresses on Ethernet/Wi-Fi
    adapters, then the order given."""
    candidates = []
    for order, (name, address) in enumerate(interfaces):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if ip.version != 4 or ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
            continue
        if ip in _DOCKER_NET or ip in _CGNAT:
            continue
        if name and _looks_virtual(name):
            continue
        rank = (not ip.is_private, not (name and _PREFERRED_NAME.match(name)), order)
        candidates.append((rank, address))
    if not candidates:
        return None
    return min(candidates)[1]


def list_interfaces():
    """``[(name, ipv4)]`` of this machine's interfaces (names may be empty
    where the platform does not tell)."""
    found = []
    if sys.platform.startswith("linux"):
        import fcntl

        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
                except OSError:
                    continue  # no IPv4 address
                found.append((name, socket.inet_ntoa(packed[20:24])))
        except OSError:
            pass
        finally:
            probe.close()
    if not found:
        # elsewhere: the address of the default route (a UDP "connect" sends
        # nothing), then whatever the host name resolves to
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.connect(("10.255.255.255", 1))
            found.append(("", probe.getsockname()[0]))
        except OSError:
            pass
        finally:
            probe.close()
        try:
            for address in socket.gethostbyname_ex(socket.gethostname())[2]:
                found.append(("", address))
        except OSError:
            pass
    return found


def _is_loopback_name(host):
    if host is None:
        return True
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def with_host(url, host):
    """`url` with its host replaced (port kept)."""
    parts = urlsplit(url)
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    netloc = shown if parts.port is None else f"{shown}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def device_url(ws_url, host=None, interfaces=None):
    """The URL to show a phone: `ws_url` with `host` (``--host``) if given;
    else, when the daemon answered with a loopback address, the LAN address
    chosen by `choose_host`; else (``--public-url``) as it is. Returns
    ``(url, note)``; `note` explains a fallback."""
    if host:
        return with_host(ws_url, host), None
    if not _is_loopback_name(urlsplit(ws_url).hostname):
        return ws_url, None
    chosen = choose_host(list_interfaces() if interfaces is None else interfaces)
    if chosen is None:
        return ws_url, "no LAN interface found: only this machine can use this URL (use --host)"
    return with_host(ws_url, chosen), None


def print_qr(text, out):
    import segno

    qr = segno.make(text, error="m")
    encoding = getattr(out.stream, "encoding", None) or "ascii"
    try:
        "█▀▄".encode(encoding)
        compact = True
    except (UnicodeEncodeError, LookupError):
        compact = False
    qr.terminal(out=out.stream, compact=compact, border=2)
    out.stream.flush()


# -- reading schema files --------------------------------------------------


def read_schema(path):
    """``(raw bytes, parsed)`` of a schema file, or `-` for stdin."""
    name = "stdin" if path == "-" else path
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except OSError as e:
        raise CliError(f"{name}: {e.strerror or e}")
    return strip_bom(raw), parse_schema(raw, name)


def strip_bom(raw):
    return raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw


def parse_schema(raw, name):
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CliError(f"{name}: not UTF-8 text (byte {e.start})")
    if not text.strip():
        raise CliError(f"{name}: file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"{name}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")
    except RecursionError:
        raise CliError(f"{name}: JSON nested too deeply")


def count_nodes(schema):
    if not isinstance(schema, dict):
        return 0
    stack = list(schema.get("nodes") or [])
    n = 0
    while stack:
        node = stack.pop()
        n += 1
        if isinstance(node, dict):
            stack.extend(node.get("children") or [])
    return n


# -- commands ----------------------------------------------------------------


def cmd_session_new(args, api, out):
    body = {}
    if args.schema:
        body["schema"] = read_schema(args.schema)[1]
    if args.timeout is not None:
        body["timeoutSeconds"] = args.timeout
    try:
        answer = api.call("POST", "/session/new", body or None)
    except ApiError as e:
        raise CliError(describe(e, source=args.schema))
    local = answer["wsUrl"]
    url, note = device_url(local, args.host)
    expires = answer.get("expiresAt")
    if out.as_json:
        out.json(
            {
                "sessionId": answer["sessionId"],
                "wsUrl": url,
                "localWsUrl": local,
                "expiresAt": expires,
                "createdAt": answer.get("createdAt"),
            }
        )
        return EXIT_OK
    sid = answer["sessionId"]
    out.line(f"Session {out.paint(sid, 'bold')}")
    out.line(f"  Device URL:   {url}")
    if url != local:
        out.line(f"  This machine: {local}")
    if expires:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(expires / 1000))
        out.line(f"  Expires:      {when} (in {relative(expires / 1000 - time.time())} without activity)")
    if note:
        out.line(out.paint(f"  Note: {note}", "warn"))
    if not args.no_qr:
        out.line()
        out.line("Scan with the Lumora app:")
        print_qr(url, out)
    out.line(f"Next: lumora-reload push {sid} app.json   or   lumora-reload watch {sid} app.json")
    return EXIT_OK


def push_raw(api, session_id, raw, source, preserve_state=True):
    """POST one schema; returns (answer, latency ms) or raises CliError."""
    query = "" if preserve_state else "?preserveState=false"
    started = time.perf_counter()
    try:
        answer = api.call("POST", f"/send/{quote(session_id, safe='')}{query}", raw=raw)
    except ApiError as e:
        e.args = (describe(e, session_id, source),)
        raise
    return answer, (time.perf_counter() - started) * 1000


def push_line(answer, ms):
    kind = answer.get("updateType")
    seq = answer.get("sequenceNumber")
    if kind == "none":
        return f"no change (still #{seq}) in {ms:.0f} ms"
    n = answer.get("devicesUpdated", 0)
    return f"{kind} update #{seq} -> {n} device{'s' if n != 1 else ''} in {ms:.0f} ms"


def cmd_push(args, api, out):
    raw, _ = read_schema(args.file)
    source = "stdin" if args.file == "-" else args.file
    answer, ms = push_raw(api, args.session, raw, source, not args.reset_state)
    if out.as_json:
        out.json(dict(answer, latencyMs=round(ms, 2)))
    else:
        out.line(push_line(answer, ms))
    return EXIT_OK


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
    _session_info(api, args.session)
    watch = Watch(api, out, args.session, args.path, args.debounce / 1000.0)
    return watch.run(initial=not args.no_initial)


def _session_info(api, session_id):
    try:
        return api.call("GET", f"/session/{quote(session_id, safe='')}")
    except ApiError as e:
        raise CliError(describe(e, session_id))


def cmd_status(args, api, out):
    if not args.session:
        try:
            stats = api.call("GET", "/stats")
        except ApiError as e:
            raise CliError(describe(e))
        if out.as_json:
            out.json(stats)
            return EXIT_OK
        now = time.time()
        rows = [
            (d["id"], d["devices"], relative(now - d["createdAt"] / 1000) + " ago",
             "in " + relative(d["expiresAt"] / 1000 - now))
            for d in stats.get("sessionDetails", [])
        ]
        out.line(f"{stats.get('sessions', 0)} session(s), {stats.get('totalDevices', 0)} device(s) connected")
        if rows:
            out.line(table(rows, ["SESSION", "DEVICES", "CREATED", "EXPIRES"]))
        return EXIT_OK
    sid = args.session
    info = _session_info(api, sid)
    try:
        health = api.call("GET", f"/session/{quote(sid, safe='')}/health")
    except ApiError as e:
        raise CliError(describe(e, sid))
    by_connection = {d["connectionId"]: d for d in info.get("devices", [])}
    sequence = info.get("sequenceNumber", 0)
    devices = []
    for h in health.get("devices", []):
        d = dict(by_connection.get(h["connectionId"], {}))
        d.update(h)
        d.setdefault("ackLag", max(0, sequence - (d.get("lastAckSequence") or 0)))
        devices.append(d)
    if out.as_json:
        out.json(
            {
                "sessionId": info["sessionId"],
                "sequenceNumber": sequence,
                "createdAt": info.get("createdAt"),
                "expiresAt": info.get("expiresAt"),
                "connectedDevices": info.get("connectedDevices", len(devices)),
                "healthyDevices": health.get("healthyDevices"),
                "unhealthyDevices": health.get("unhealthyDevices"),
                "devices": devices,
            }
        )
        return EXIT_OK
    out.line(
        f"Session {sid}: state #{sequence}, {len(devices)} device(s), "
        f"expires in {relative(info['expiresAt'] / 1000 - time.time())}"
    )
    if devices:
        rows = [
            (
                d.get("deviceName") or d.get("deviceId"),
                d.get("platform", ""),
                out.paint("healthy", "ok") if d.get("healthy") else out.paint("UNHEALTHY", "error"),
                f"#{d.get('lastAckSequence', 0)}",
                d.get("ackLag", 0),
                relative((d.get("timeSinceLastPing") or 0) / 1000) + " ago",
                d.get("connectionId"),
            )
            for d in devices
        ]
        out.line(table(rows, ["DEVICE", "PLATFORM", "HEALTH", "LAST ACK", "LAG", "LAST SEEN", "CONNECTION"]))
    return EXIT_OK


def _log_line(line, out):
    level = str(line.get("level", "info")).lower()
    who = line.get("deviceName") or line.get("deviceId") or "?"
    stamp = clock_time(line.get("time", 0))
    return f"{out.paint(stamp, 'dim')} {out.paint(level.upper()[:5].ljust(5), level)} [{who}] " + out.paint(
        str(line.get("message", "")), level if level in ("error", "fatal", "warn", "warning") else ""
    )


def new_lines(previous, current):
    """The lines of `current` (a ring buffer's contents) not in `previous`."""
    if not previous:
        return list(current)
    n = len(previous)
    for drop in range(n + 1):
        keep = n - drop
        if keep <= len(current) and current[:keep] == previous[drop:]:
            return current[keep:]
    return list(current)


def cmd_logs(args, api, out):
    sid = args.session
    path = f"/session/{quote(sid, safe='')}/logs"
    previous = []
    while True:
        try:
            answer = api.call("GET", path)
        except ApiError as e:
            raise CliError(describe(e, sid))
        lines = answer.get("lines", [])
        for line in new_lines(previous, lines):
            if out.as_json:
                out.json(line)
            else:
                out.line(_log_line(line, out))
        if not args.follow:
            return EXIT_OK
        previous = lines
        time.sleep(args.interval)


def cmd_reload(args, api, out):
    sid = args.session
    try:
        answer = api.call("POST", f"/session/{quote(sid, safe='')}/reload")
    except ApiError as e:
        if e.code == "NOT_FOUND":
            raise CliError(f"nothing to reload: no schema has been pushed to session {sid} yet")
        raise CliError(describe(e, sid))
    if out.as_json:
        out.json(answer)
    else:
        n = answer.get("devicesUpdated", 0)
        out.line(f"full update #{answer.get('sequenceNumber')} sent to {n} device{'s' if n != 1 else ''}")
    return EXIT_OK


def ws_base(http_url, ws_path="/ws"):
    parts = urlsplit(http_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/" + ws_path.strip("/"), "", ""))


def cmd_device(args, api, out):
    if args.count < 1:
        raise CliError("--count must be at least 1")
    _session_info(api, args.session)
    url = f"{ws_base(args.url, args.ws_path)}?session={quote(args.session, safe='')}"
    return _run_reactor(lambda reactor: _devices(reactor, args, url, out))


def _run_reactor(main):
    """Run the reactor until `main(reactor)` (a Deferred of an exit code)
    fires; Ctrl-C ends it too (exit 0)."""
    from twisted.internet import defer, reactor

    result = {"code": EXIT_OK}

    def finished(code):
        result["code"] = code
        if reactor.running:
            reactor.stop()

    def failed(failure):
        print(f"lumora-reload: {failure.getErrorMessage()}", file=sys.stderr)
        finished(EXIT_ERROR)

    def start():
        defer.maybeDeferred(main, reactor).addCallbacks(finished, failed)

    reactor.callWhenRunning(start)
    reactor.run()
    return result["code"]


def _devices(reactor, args, url, out):
    import secrets

    from twisted.internet import defer

    from lumora_reload.client import DeviceClient

    prefix = args.device_id or f"sim-{secrets.token_hex(3)}"
    outcome = {"code": EXIT_OK}
    finished = defer.Deferred()
    clients = []
    remaining = set()

    def end(code):
        if code != EXIT_OK:
            outcome["code"] = code
        if finished.called:
            return
        d = defer.DeferredList([c.stop() for c in clients])
        d.addCallback(lambda _: finished.called or finished.callback(outcome["code"]))

    def summary(client, name):
        replica = client.replica
        out.event(
            f"{name} done at #{replica.sequence} ({count_nodes(replica.schema)} nodes, "
            f"checksum {(replica.checksum or '-')[:12]})",
            event="done", device=client.device_id, deviceName=name, sequence=replica.sequence,
            checksum=replica.checksum, schema=replica.schema,
        )

    def watch(client, name):
        received = {"updates": 0}

        def connected(payload):
            if payload.get("resumed"):
                what = f"resumed at #{payload.get('sequenceNumber')}"
            elif payload.get("initialSchema") is not None:
                what = f"initial schema #{payload.get('sequenceNumber')}, {count_nodes(client.replica.schema)} nodes"
            else:
                what = "no schema yet"
            out.event(
                f"{name} connected ({what})",
                event="connected", device=client.device_id, deviceName=name,
                connectionId=payload.get("connectionId"), sequence=payload.get("sequenceNumber"),
                resumed=bool(payload.get("resumed")), checksum=client.replica.checksum,
            )

        def updated(event):
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
                outcome["code"] = EXIT_ERROR
                if not args.keep_going:
                    print(f"lumora-reload: {name}: {event.error}", file=sys.stderr)
                    end(EXIT_ERROR)
                    return
            if event.ok:
                received["updates"] += 1
                if args.updates and received["updates"] >= args.updates and client in remaining:
                    remaining.discard(client)
                    summary(client, name)
                    if not remaining:
                        end(EXIT_OK)

        def closed(c):
            if c.retry_in is not None:
                what = f"cannot connect ({c.reason})" if c.code is None else f"disconnected ({c.code} {c.reason or ''})"
                out.event(
                    f"{name} {what}; reconnecting in {c.retry_in:.1f} s",
                    event="disconnected", device=client.device_id, deviceName=name, code=c.code,
                    reason=c.reason, retryIn=round(c.retry_in, 3),
                )

        def stopped(c):
            if c.final:
                print(f"lumora-reload: {name}: closed by the daemon: {c.code} {c.reason}", file=sys.stderr)
                remaining.discard(client)
                outcome["code"] = EXIT_ERROR
                if all(x.done.called or x is client for x in clients):
                    end(EXIT_ERROR)

        client.subscribe("connected", connected)
        client.subscribe("update", updated)
        client.subscribe("closed", closed)
        client.subscribe("stopped", stopped)

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
        clients.append(client)
        remaining.add(client)
        watch(client, name)

    def interrupted():
        if not finished.called:
            for client in clients:
                if client in remaining:
                    summary(client, client.device_name)
            return defer.DeferredList([c.stop() for c in clients])

    reactor.addSystemEventTrigger("before", "shutdown", interrupted)
    for client in clients:
        client.start()
    return finished


# -- argument parsing ----------------------------------------------------


def _global_options(parser, suppress):
    kw = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument(
        "--url", help=f"the daemon's base URL (default {DEFAULT_URL})", **({"default": DEFAULT_URL} | kw)
    )
    parser.add_argument("--api-token", help=f"bearer token for the control API (default: ${TOKEN_ENV})", **kw)
    parser.add_argument("--json", action="store_true", help="machine-readable output (JSON)", **kw)
    parser.add_argument(
        "--color", choices=("auto", "always", "never"), help="colour output (default auto)",
        **({"default": "auto"} | kw),
    )
    parser.add_argument("--http-timeout", type=float, help="HTTP timeout in seconds (default 10)",
                        **({"default": 10.0} | kw))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="lumora-reload",
        description="Push live Lumora UI-schema updates to devices through a running lumora-reload daemon.",
        epilog="Start the daemon first: twistd -n lumora-reload",
    )
    parser.add_argument("--version", action="version", version=f"lumora-reload {__version__}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    session = commands.add_parser("session", help="create a session", parents=[common])
    session_commands = session.add_subparsers(dest="session_command", metavar="SUBCOMMAND")
    session_commands.required = True
    new = session_commands.add_parser(
        "new", help="create a session; print its URL and a QR code", parents=[common]
    )
    new.add_argument("--host", help="host name or address phones use to reach this machine (default: chosen LAN address)")
    new.add_argument("--schema", metavar="FILE", help="initial schema")
    new.add_argument("--timeout", dest="timeout", type=float, metavar="S", help="seconds of inactivity before expiry")
    new.add_argument("--no-qr", action="store_true", help="do not draw the QR code")
    new.set_defaults(run=cmd_session_new)

    push = commands.add_parser("push", help="push a schema file (or - for stdin)", parents=[common])
    push.add_argument("session", metavar="SESSION")
    push.add_argument("file", metavar="FILE")
    push.add_argument("--reset-state", action="store_true", help="send preserveState=false")
    push.set_defaults(run=cmd_push)

    watch = commands.add_parser("watch", help="push a schema file whenever it changes", parents=[common])
    watch.add_argument("session", metavar="SESSION")
    watch.add_argument("path", metavar="PATH")
    watch.add_argument("--debounce", type=float, default=100.0, metavar="MS",
                       help="wait this long after the last change before pushing (default 100)")
    watch.add_argument("--no-initial", action="store_true", help="do not push the file at start")
    watch.set_defaults(run=cmd_watch)

    status = commands.add_parser("status", help="sessions, or one session's devices", parents=[common])
    status.add_argument("session", metavar="SESSION", nargs="?")
    status.set_defaults(run=cmd_status)

    logs = commands.add_parser("logs", help="device log lines", parents=[common])
    logs.add_argument("session", metavar="SESSION")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--interval", type=float, default=0.5, metavar="S", help="poll interval with --follow")
    logs.set_defaults(run=cmd_logs)

    reload_ = commands.add_parser("reload", help="send every device a full update", parents=[common])
    reload_.add_argument("session", metavar="SESSION")
    reload_.set_defaults(run=cmd_reload)

    device = commands.add_parser("device", help="run simulated devices", parents=[common])
    device.add_argument("session", metavar="SESSION")
    device.add_argument("--count", type=int, default=1, metavar="N", help="number of devices (default 1)")
    device.add_argument("--updates", type=int, default=0, metavar="N",
                        help="exit after each device applied N updates (default: run until Ctrl-C)")
    device.add_argument("--name", default="Simulator", help="device name (numbered with --count)")
    device.add_argument("--device-id", help="device id prefix (default: random)")
    device.add_argument("--platform", default="simulator")
    device.add_argument("--client-version", default="1.1.0", help="protocol version to announce")
    device.add_argument("--ws-path", default="/ws", help="the daemon's WebSocket path (default /ws)")
    device.add_argument("--ping-interval", type=float, default=20.0, metavar="S")
    device.add_argument("--no-log", action="store_true",
                        help="do not send a log line to the session for each update")
    device.add_argument("--keep-going", action="store_true",
                        help="on a checksum mismatch, ask for the full schema instead of exiting")
    device.set_defaults(run=cmd_device)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    token = args.api_token if args.api_token is not None else os.environ.get(TOKEN_ENV)
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        parser.error(f"--url must look like {DEFAULT_URL}, not {args.url!r}")
    api = Api(args.url, token=token or None, timeout=args.http_timeout)
    out = Output(as_json=args.json, colour=args.color)
    try:
        code = args.run(args, api, out)
    except CliError as e:
        print(f"lumora-reload: {e}", file=sys.stderr, flush=True)
        code = EXIT_ERROR
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # e.g. `lumora-reload logs ID | head`
        sys.stderr.close()
        code = EXIT_OK
    sys.exit(code)


if __name__ == "__main__":
    main()
