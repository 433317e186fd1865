"""The session commands that are one HTTP call or a poll loop: `session new`,
`status`, `logs` and `reload`."""

import math
import time
from urllib.parse import quote, urlsplit

from lumora_reload.cli.control import ApiError, describe, session_info
from lumora_reload.cli.lan import device_url, is_loopback_name, print_qr
from lumora_reload.cli.output import EXIT_OK, CliError, clock_time, printable, relative, table
from lumora_reload.cli.push import read_schema


def cmd_session_new(args, api, out):
    body = {}
    if args.schema:
        body["schema"] = read_schema(args.schema)[1]
    if args.timeout is not None:
        if not 0 < args.timeout < math.inf:  # NaN would not even be JSON
            raise CliError("--timeout must be a number of seconds, more than 0")
        body["timeoutSeconds"] = args.timeout
    try:
        answer = api.call("POST", "/session/new", body or None)
    except ApiError as e:
        raise CliError(describe(e, source=args.schema))
    local = answer["wsUrl"]
    url, note = device_url(local, args.host)
    warning = loopback_warning(api, url)
    expires = answer.get("expiresAt")
    if out.as_json:
        out.json(
            {
                "sessionId": answer["sessionId"],
                "wsUrl": url,
                "localWsUrl": local,
                "expiresAt": expires,
                "createdAt": answer.get("createdAt"),
                **({"warning": warning} if warning else {}),
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
    if warning:
        out.line(out.paint(f"  Warning: {warning}", "warn"))
    if not args.no_qr:
        out.line()
        out.line("Scan with the Lumora app:")
        print_qr(url, out)
    out.line(f"Next: {api.command(f'push {sid} app.json')}   or   {api.command(f'watch {sid} app.json')}")
    return EXIT_OK


def loopback_warning(api, url):
    """Why `url` (for a phone) cannot work, when the daemon says (``GET
    /health``) that it listens on loopback only and `url` is not a
    loopback address; else None."""
    if is_loopback_name(urlsplit(url).hostname):
        return None
    try:
        health = api.call("GET", "/health")
    except CliError:
        return None
    if not (isinstance(health, dict) and health.get("loopbackOnly") is True):
        return None
    port = urlsplit(api.url).port or 8080
    return (
        f"the daemon listens on this machine only, so phones cannot reach {urlsplit(url).netloc}; "
        f"restart it with --port {port} (every interface)"
    )



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
    info = session_info(api, sid)
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
                printable(d.get("deviceName") or d.get("deviceId")),
                printable(d.get("platform", "")),
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


def log_line(line, out):
    level = printable(line.get("level", "info")).lower()
    who = printable(line.get("deviceName") or line.get("deviceId") or "?")
    stamp = clock_time(line.get("time", 0))
    return f"{out.paint(stamp, 'dim')} {out.paint(level.upper()[:5].ljust(5), level)} [{who}] " + out.paint(
        printable(line.get("message", "")), level if level in ("error", "fatal", "warn", "warning") else ""
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
    if not 0 < args.interval < math.inf:
        raise CliError("--interval must be more than 0 seconds")
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
                out.line(log_line(line, out))
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
