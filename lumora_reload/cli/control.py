"""The daemon's control API, called synchronously (stdlib urllib, no proxies:
the daemon is local), and its errors as one line naming what the user gave."""

import json
import socket
import urllib.error
import urllib.request
from urllib.parse import quote

from lumora_reload import __version__
from lumora_reload.cli.output import CliError

DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "LUMORA_RELOAD_TOKEN"


class ApiError(CliError):
    def __init__(self, status, code, message, path=None, details=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.path = path
        self.details = details


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


def session_info(api, session_id):
    """``GET /session/ID``; an unknown session or a daemon that is down is a
    `CliError` naming it."""
    try:
        return api.call("GET", f"/session/{quote(session_id, safe='')}")
    except ApiError as e:
        raise CliError(describe(e, session_id))
