"""The daemon's control API, called synchronously (stdlib urllib, no proxies:
the daemon is local), and its errors as one line naming what the user gave."""

import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from urllib.parse import quote, urlsplit

from lumora_reload import __version__
from lumora_reload.cli.output import CliError

DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "LUMORA_RELOAD_TOKEN"
URL_ENV = "LUMORA_RELOAD_URL"
MIN_PREFIX = 6  # shortest session-id prefix accepted


def default_url(environ=None):
    """``--url`` when none is given: $LUMORA_RELOAD_URL, else the local daemon."""
    environ = os.environ if environ is None else environ
    return (environ.get(URL_ENV) or "").strip() or DEFAULT_URL


class ApiError(CliError):
    def __init__(self, status, code, message, path=None, details=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.path = path
        self.details = details
        self.api = None  # the Api that got it: hints name its --url


class _EarlyAnswer:
    """A connection that still reads the daemon's answer when the daemon
    answered before the body was all sent: an oversized body is refused
    (413) as soon as its Content-Length is read, and the connection closed,
    so the rest of the body meets a closed socket. The answer is already
    here; only a connection that gives none is an error."""

    _send_failed: OSError | None = None

    def send(self, data):
        if self._send_failed is not None:
            return
        try:
            super().send(data)  # type: ignore[misc]
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as e:  # the last: Windows
            self._send_failed = e

    def getresponse(self):
        try:
            return super().getresponse()  # type: ignore[misc]
        except (OSError, http.client.HTTPException):
            if self._send_failed is None:
                raise
            raise self._send_failed from None


class _HTTPConnection(_EarlyAnswer, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_EarlyAnswer, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, context=self._context)


class Api:
    """The daemon's REST API, synchronously."""

    def __init__(self, url, token=None, timeout=10.0, default=None):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.default = (default or default_url()).rstrip("/")
        # a daemon on this machine: never go through an HTTP proxy
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _HTTPHandler(), _HTTPSHandler())

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

    def command(self, text):
        """A `lumora-reload` command to suggest: with ``--url`` when this is
        not the daemon a bare command would reach."""
        flag = "" if self.url == self.default else f" --url {self.url}"
        return f"lumora-reload{flag} {text}"

    def _unreachable(self, reason):
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, (socket.timeout, TimeoutError)):
            why = "timed out"
        else:
            why = str(getattr(reason, "strerror", None) or reason)
        port = urlsplit(self.url).port
        start = "twistd -n lumora-reload" + (f" --port {port}" if port and port != 8080 else "")
        return (
            f"cannot reach the daemon at {self.url} ({why}); "
            f"is it running? Start it with `{start}` (or run `{self.command('dev')}`)"
        )

    def _error(self, e):
        error = self._api_error(e)
        error.api = self
        return error

    def _api_error(self, e):
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
    new = error.api.command("session new") if error.api else "lumora-reload session new"
    if code == "SESSION_NOT_FOUND" and session_id:
        return f"session {session_id} not found (create one with `{new}`)"
    if code == "SESSION_EXPIRED" and session_id:
        return f"session {session_id} has expired (create one with `{new}`)"
    if code in ("SCHEMA_VALIDATION_FAILED", "BAD_REQUEST") and error.path is not None:
        where = error.path or "(root)"
        prefix = f"{source}: " if source else ""
        kind = "schema error" if code == "SCHEMA_VALIDATION_FAILED" else "bad request"
        return f"{prefix}{kind} at {where}: {error.message}"
    if code == "PAYLOAD_TOO_LARGE":
        prefix = f"{source}: " if source else ""
        return f"{prefix}{error.message} (the daemon's --max-body-size)"
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


def resolve_session(api, text):
    """The session id that `text` stands for: a whole id as it is, or a
    prefix of at least `MIN_PREFIX` characters matching exactly one of the
    daemon's sessions (``GET /stats``); anything else is one clear error."""
    text = text.strip()
    if len(text) >= 32:
        return text
    if len(text) < MIN_PREFIX:
        raise CliError(
            f"session id '{text}' is too short: give the whole id or its first {MIN_PREFIX} characters or more"
        )
    try:
        stats = api.call("GET", "/stats")
    except ApiError as e:
        raise CliError(describe(e))
    ids = [d["id"] for d in stats.get("sessionDetails", []) if isinstance(d, dict) and "id" in d]
    if text in ids:
        return text
    matches = sorted(i for i in ids if i.startswith(text.lower()))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CliError(f"no session id starts with '{text}' (list them with `{api.command('status')}`)")
    shown = ", ".join(m[: len(text) + 4] + "…" for m in matches[:3]) + (", …" if len(matches) > 3 else "")
    raise CliError(f"'{text}' matches {len(matches)} sessions ({shown}): give more characters")
