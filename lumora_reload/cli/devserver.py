"""What `dev` needs before its loop starts: a daemon (the one at --url if
it answers, else the same service tree twistd builds, run in this process)
and the project's session, remembered per directory so a restart of `dev`
keeps the devices' URL."""

import json
import os
import urllib.request
from urllib.parse import quote, urlsplit

from lumora_reload.cli.control import ApiError, describe
from lumora_reload.cli.output import CliError

MEMORY_FILE = "dev-sessions.json"


def answers(url, timeout=1.0):
    """Whether a lumora-reload daemon answers ``GET /health`` at `url`."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url.rstrip("/") + "/health", timeout=timeout) as response:
            body = json.loads(response.read() or b"null")
    except Exception:
        return False
    return isinstance(body, dict) and body.get("status") == "ok"


def loopback_port(url):
    """The port of a URL naming this machine (the daemon `dev` may run
    itself there), else None."""
    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "localhost", "::1"):
        return parts.port or (443 if parts.scheme == "https" else 80)
    return None


def build_daemon(reactor, port, data_dir, in_memory, verbose=False):
    """The daemon's service tree, built as twistd builds it, listening on
    `port` (an endpoint description). Returns ``(root service, http base
    URL)``; a port, data dir or option that cannot be used is a `CliError`
    of one line."""
    from twisted.python.failure import Failure

    from lumora_reload import tap
    from lumora_reload.listen import http_base

    argv = ["--port", port, "--data-dir", data_dir]
    if in_memory:
        argv.append("--in-memory")
    if verbose:
        argv.append("--verbose")
    options = tap.Options()
    options.parseOptions(argv)  # a bad value: one line on stderr, exit 2
    root = tap.build(options, reactor)  # a data dir in use: one line, exit 1
    result = []
    root.getServiceNamed("listener").listen().addBoth(result.append)
    if not result:
        raise CliError(f"--port {port}: this endpoint type cannot be used by `dev`; use twistd")
    if isinstance(result[0], Failure):
        raise CliError(result[0].getErrorMessage())
    base = http_base(result[0].getHost(), secure=port.startswith("ssl:"))
    if base is None:
        raise CliError(f"--port {port}: `dev` needs a TCP port")
    return root, base


class SessionMemory:
    """Which session each project directory used last: a small JSON file
    in the data dir, keyed by the directory's absolute path."""

    def __init__(self, data_dir):
        self.path = os.path.join(data_dir, MEMORY_FILE)

    def _load(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, project):
        entry = self._load().get(os.path.abspath(project))
        return entry.get("sessionId") if isinstance(entry, dict) else None

    def put(self, project, session_id):
        data = self._load()
        data[os.path.abspath(project)] = {"sessionId": session_id}
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def project_session(api, memory, project):
    """``(session id, reused, device WebSocket URL)``: the session this
    project used last if the daemon still has it, else a new one
    (remembered). The URL is the one the daemon gave a new session (its
    --ws-path, its --public-url), else None (`session_ws_url` asks).
    Blocking: call it from a thread when the daemon runs in this process."""
    remembered = memory.get(project) if memory is not None else None
    if remembered:
        try:
            api.call("GET", f"/session/{quote(remembered, safe='')}")
            return remembered, True, None
        except ApiError as e:
            if e.code not in ("SESSION_NOT_FOUND", "SESSION_EXPIRED"):
                raise CliError(describe(e, remembered))
    try:
        answer = api.call("POST", "/session/new")
    except ApiError as e:
        raise CliError(describe(e))
    session_id = answer["sessionId"]
    if memory is not None:
        try:
            memory.put(project, session_id)
        except OSError as e:
            raise CliError(f"cannot remember the session in {memory.path}: {e.strerror or e}")
    return session_id, False, answer.get("wsUrl")


def session_ws_url(api, session_id):
    """The device URL of an existing session, as the dashboard's overview
    gives it (only a new session's answer carries one), or None. Blocking."""
    try:
        overview = api.call("GET", "/overview")
    except CliError:
        return None
    for session in overview.get("sessions", []) if isinstance(overview, dict) else []:
        if isinstance(session, dict) and session.get("sessionId") == session_id:
            return session.get("localUrl")
    return None
