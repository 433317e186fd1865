"""The resource tree and the HTTP site: the REST API at the root and the
device WebSocket at the ws path, on one port.

Access is decided from the request head, before any body is read: Host,
Origin, token, method and path, and the declared body size. `Request`
answers a refused request as soon as its headers are in and closes the
connection, so a client cannot make the daemon read (or store) a body it
will refuse. Every answer is a JSON error body with a code, Twisted's own
parse errors included (`Channel`).
"""

import io
import re
import time
from urllib.parse import quote

from autobahn.twisted.resource import WebSocketResource
from twisted.logger import Logger, LoggingFile
from twisted.web import http, resource, server

from lumora_reload import api, dashboard, errors, preview
from lumora_reload.access import is_loopback
from lumora_reload.accesslog import access_log_line
from lumora_reload.directwrite import DirectWriteWrapper
from lumora_reload.peraddress import PerAddressLimit

_log = Logger()

# First path segments of the control API; a --ws-path must not hide them.
API_SEGMENTS = (
    "health", "stats", "session", "send", "metrics", "openapi.json", "overview", "preview", "assets",
)
# Served to any client naming an allowed Host (and Origin): the browser
# preview is a device, and the files its page loads hold nothing private.
DEVICE_SEGMENTS = (b"preview", b"assets")


class Root(resource.Resource):
    def __init__(self, server, ws_resource, ws_path):
        super().__init__()
        self.hot = server
        self.putChild(b"health", api.Health(server))
        self.putChild(b"stats", api.Stats(server))
        self.putChild(b"session", api.Sessions(server))
        self.putChild(b"send", api.Send(server))
        self.putChild(b"metrics", api.MetricsPage(server))
        self.putChild(b"openapi.json", api.OpenApi(server))
        self.putChild(b"", dashboard.DashboardPage(server))
        self.putChild(b"overview", dashboard.Overview(server))
        self.putChild(b"preview", preview.Preview(server))
        self.putChild(b"assets", preview.Assets())
        parts = ws_path_parts(ws_path)
        # /ws, or a nested path such as /lumora/ws
        parent = self
        for part in parts[:-1]:
            child = api.Folder()
            parent.putChild(part.encode(), child)
            parent = child
        parent.putChild(parts[-1].encode(), ws_resource)
        self._ws_first = parts[0].encode()

    def getChildWithDefault(self, path, request):
        if len(request.prepath) > 1:
            # mounted below the site's root (an embedding program's tree):
            # URLs this tree hands out start with the path it is found at
            request.lumora_mount = "/" + "/".join(quote(p, safe="") for p in request.prepath[:-1])
        if path in (b"health", self._ws_first):
            # health is open to probes; the WebSocket does its own checks
            # and answers with close codes a browser can read
            return super().getChildWithDefault(path, request)
        if path in DEVICE_SEGMENTS:
            refusal = self.browser_refusal(request)
        else:
            # the dashboard page may carry the token in its URL: a browser
            # opening a page cannot send it in a header
            refusal = self.refusal(request, query_token=path == b"" and not request.postpath)
        if refusal is not None:
            return refusal
        return super().getChildWithDefault(path, request)

    def getChild(self, path, request):
        return api.NotFound()

    def render(self, request):
        return api.NotFound().render(request)

    def refusal(self, request, query_token=False):
        return self._counted(self._refusal(request, query_token))

    def _counted(self, refused):
        if refused is not None:
            self.hot.metrics.refused("api", refused.reason)
        return refused

    def _refusal(self, request, query_token):
        policy = self.hot.policy
        if policy.token_ok(_header(request, b"authorization")):
            return None
        if query_token:
            token = dashboard.query_token(request)
            if token is not None and policy.token_ok("Bearer " + token):
                return None
        host = _header(request, b"host")
        if policy.is_public(host) or policy.is_public(getattr(request, "lumora_received_host", None)):
            # a tunnel agent connects from loopback; the Host says the
            # request came from outside
            return api.Refused(403, errors.FORBIDDEN, _token_hint(
                policy, "Requests through the --public-url host come from outside"), reason="token")
        peer = getattr(request.getClientAddress(), "host", None)
        if not is_loopback(peer) and not _unix(request):
            return api.Refused(403, errors.FORBIDDEN, _token_hint(
                policy, "The control API answers only to loopback clients"), reason="token")
        return self._host_origin_refusal(request)

    def browser_refusal(self, request):
        """The Host and Origin checks alone (what a device passes)."""
        if self.hot.policy.token_ok(_header(request, b"authorization")):
            return None
        return self._counted(self._host_origin_refusal(request))

    def _host_origin_refusal(self, request):
        local = getattr(request.getHost(), "host", None)
        why = self.hot.policy.check_browser(_header(request, b"host"), _header(request, b"origin"), local)
        if why is not None:
            return api.Refused(403, errors.FORBIDDEN, why, reason="origin" if why.startswith("Origin") else "host")
        return None


def _token_hint(policy, why):
    if policy.api_token:
        return f"{why}; send 'Authorization: Bearer <token>'"
    return f"{why}; start the daemon with --api-token TOKEN and send 'Authorization: Bearer TOKEN'"


def ws_path_parts(ws_path):
    """The segments of a --ws-path; refuses one that would hide the API."""
    parts = [p for p in ws_path.strip("/").split("/") if p]
    if not parts:
        raise ValueError("--ws-path must be a path such as /ws")
    if parts[0] in API_SEGMENTS:
        raise ValueError(
            f"--ws-path {ws_path} would hide the control API's /{parts[0]}; choose another, such as /ws"
        )
    return parts


def _header(request, name):
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def _unix(request):
    # a Unix socket is as local as loopback
    return not hasattr(request.getClientAddress(), "host")


_WS_METHODS = (b"GET", b"HEAD")  # HEAD answers as a plain GET does


class DeviceSocket(WebSocketResource):
    """The WebSocket resource, answering plain HTTP in JSON: Autobahn's own
    refusal of a request that is not an upgrade is an HTML page."""

    def render(self, request):
        if request.method not in _WS_METHODS:
            return api.method_not_allowed(request, [m.decode() for m in _WS_METHODS])
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        key = request.getHeader(b"sec-websocket-key")
        if (request.method != b"GET" or upgrade != b"websocket" or not key
                or request.requestHeaders.getRawHeaders(b"sec-websocket-version") != [b"13"]):
            request.setHeader(b"upgrade", b"websocket")
            request.setHeader(b"sec-websocket-version", b"13")  # RFC 6455 4.4: the version it speaks
            body = api.write_json(request, 426, {
                "error": "This path is the device WebSocket; connect with a WebSocket client (version 13)",
                "code": errors.BAD_REQUEST,
            })
            request.setResponseCode(426, b"Upgrade Required")  # twisted.web knows no phrase for it
            return body
        channel = request.channel
        transport = channel.transport
        # Autobahn reads the handshake again and may refuse what twisted.web
        # took (a missing Connection header, a bad key); the device protocol
        # answers that in JSON itself, and this request is its access-log line
        factory = self._factory
        factory.upgrading = _log_refused(request)
        try:
            result = super().render(request)
        finally:
            factory.upgrading = None
        if result is not server.NOT_DONE_YET:
            return result  # Autobahn answered itself (a 500): nothing taken over
        # Bytes the client sent right after its handshake are still in
        # twisted.web's parser; Autobahn never sees them, and twisted.web
        # pauses the socket when they pass 16 KiB, so the connection would
        # stall (and never notice a close). Hand them to the device.
        device = getattr(transport, "wrappedProtocol", None) or getattr(transport, "protocol", None)
        if device is not None and device is not channel:
            buffered = b"".join(channel._dataBuffer)
            channel._dataBuffer = []
            channel.rawDataReceived = device.dataReceived
            if buffered:
                device.dataReceived(buffered)
        # This request is never finished, so the channel would keep it
        # queued for good, and it names its channel: a cycle that only the
        # garbage collector frees, some 30 objects per connect (in a connect
        # storm its passes over them held the reactor for up to 140 ms)
        if request in channel.requests:
            channel.requests.remove(request)
        return result


def _log_refused(request):
    def refused(status, length):
        request.code, request.sentLength = status, length
        site = getattr(request.channel, "factory", None)
        if site is not None:
            site.log(request)
    return refused


def build_root(server, ws_factory):
    return Root(server, DeviceSocket(ws_factory), server.ws_path)


# -- the HTTP site ------------------------------------------------------


def _json_response(status, reason, body):
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, reason, len(body), body)
    )


_BAD_REQUEST = _json_response(
    400, b"Bad Request", b'{"error":"Malformed HTTP request","code":"BAD_REQUEST"}'
)


class Channel(http.HTTPChannel):
    """HTTP/1.1 whose own refusals (bad request line, headers, chunking, a
    line over its 16 KiB limit) are JSON like every other answer."""

    def _respondToBadRequestAndDisconnect(self):
        self.transport.write(_BAD_REQUEST)
        self.loseConnection()

    def lineLengthExceeded(self, line):
        # Twisted's LineReceiver would drop the connection without a word
        self._respondToBadRequestAndDisconnect()

    def allHeadersReceived(self):
        # An absolute-form target (RFC 9112 3.2.2), which twisted.web would
        # route as a path: served as its path, its authority the Host
        found = None if self._path[:1] == b"/" else _ABSOLUTE.match(self._path)
        if found is not None:
            authority = found.group(1)
            if not authority or b"@" in authority:  # no host, or user info
                self._respondToBadRequestAndDisconnect()
                _ignore_rest(self)
                return
            rest = self._path[found.end():]
            self._path = rest if rest[:1] == b"/" else b"/" + rest
            request = self.requests[-1]
            # a proxy in front may have routed on the Host it received (the
            # --public-url host): kept, so that such a request stays public
            request.lumora_received_host = _header(request, b"host")
            request.requestHeaders.setRawHeaders(b"host", [authority])
        super().allHeadersReceived()


_ABSOLUTE = re.compile(rb"https?://([^/?#]*)", re.IGNORECASE)


class CorkedRequest(server.Request):
    """An answer's head and first body bytes leave in one send, not two,
    behind the direct-write wrapper (twisted.web writes them apart)."""

    def write(self, data):
        transport = self.channel.transport if self.channel is not None else None
        if self.startedWriting or type(transport) is not DirectWriteWrapper:
            super().write(data)
            return
        transport.cork()
        try:
            super().write(data)
        finally:
            transport.uncork()


class Request(CorkedRequest):
    """Decides from the head; keeps bodies in memory, counted as they come."""

    _answered = False
    _received = 0
    _unless_empty = None  # the answer, should a chunked body hold any byte
    _target = None  # the resource found from the head

    def gotLength(self, length):
        # bodies are bounded by --max-body-size: memory, never temp files
        self.content = io.BytesIO()
        if length == 0:
            return  # nothing to read: process() decides, from the same rules
        try:
            answer = self._head_answer(length)
        except Exception:  # as process() answers a failure while routing
            _log.failure("request failed")
            answer = api.Refused(500, errors.INTERNAL_ERROR, api.internal_error().message)
        if answer is not None:
            self._answer_now(answer)

    def handleContentChunk(self, data):
        if self._answered:
            return
        if self._unless_empty is not None and data:
            self._answer_now(self._unless_empty)
            return
        self._received += len(data)
        limit = _max_body(self)
        if limit is not None and self._received > limit:
            # a chunked body has no length up front: cut it at the limit
            self._answer_now(_too_large(limit))
            return
        self.content.write(data)

    def requestReceived(self, command, path, version):
        if self._answered:
            return
        super().requestReceived(command, path, version)

    def render(self, resrc):
        if self.method == b"HEAD":
            resrc = _Headless(resrc)
        super().render(resrc)

    def process(self):
        if self.path == b"*":  # OPTIONS * and the like: no resource answers it
            self.site = self.channel.site
            self._default_headers()
            body = api.NotFound().render(self)
            self.setHeader(b"content-length", b"%d" % len(body))
            self.write(body)
            self.finish()
            return
        super().process()

    def processingFailed(self, reason):
        _log.failure("request failed", reason)
        if self.startedWriting or self.finished:
            # too late for a 500: the answer is cut. Never finished, it
            # would never be logged, so it is logged here, as it went out
            factory = getattr(self.channel, "factory", None)
            if not self.finished and factory is not None:
                factory.log(self)
            self.loseConnection()
            return reason
        body = api.write_json(self, 500, api.error_body(api.internal_error()))
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()
        return reason

    # -- the head ----------------------------------------------------

    def _head_answer(self, length):
        """The resource that answers this request at once, or None to read
        the body. Same rules as the resource tree, applied early."""
        channel = self.channel
        site = channel.site
        self.method, self.uri, self.clientproto = channel._command, channel._path, channel._version
        self.path, _, query = self.uri.partition(b"?")
        self.args = http.parse_qs(query, 1) if query else {}
        self.prepath = []
        self.postpath = [http.unquote(p) for p in self.path[1:].split(b"/")]
        if self.path == b"*":  # as process() answers it
            return api.NotFound()
        target = self._target = site.getResourceFor(self)
        if isinstance(target, (api.Refused, api.NotFound)):
            return target
        if isinstance(target, api.JsonResource):
            refusal = api.route_refusal(target, self)
            if refusal is not None:
                return refusal
        elif isinstance(target, DeviceSocket):
            if self.method not in _WS_METHODS:
                return target  # its own 405
            # an upgrade carries no body; one that declares a body is not one
            return _NoBody()
        else:
            # folders (/preview, /assets, the parents of a nested --ws-path)
            # read no body: their answer is the one they give without it
            return target
        limit = _max_body(self)
        if limit is not None and length is not None and length > limit:
            return _too_large(limit)
        content_type = (self.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":  # a body must be JSON
            refusal = api.Refused(415, errors.BAD_REQUEST,
                                  "Send the body as JSON with 'Content-Type: application/json'")
            if length is None and not self.requestHeaders.hasHeader(b"expect"):
                # chunked: empty is no body, as Content-Length: 0 is (unless
                # the client asked whether to send one: then it means to)
                self._unless_empty = refusal
                return None
            return refusal
        return None

    def _default_headers(self):
        # what twisted.web's process() sets on every answer it makes
        self.setHeader(b"server", server.version)
        self.setHeader(b"date", http.datetimeToString())

    def _answer_now(self, answer):
        """Answer before the body, then close: the rest is never read."""
        self._answered = True
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after this
        channel = self.channel
        if isinstance(self._target, api.SendTo) and isinstance(answer, api.Refused):  # its body refused
            channel.site.hot_reload.metrics.push_refused(answer.code)
        channel.persistent = False
        _ignore_rest(channel)
        self.site = channel.site
        self._default_headers()
        body = answer.render(self)
        self.setHeader(b"connection", b"close")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()


def _ignore_rest(channel):
    """Once a request is answered early, whatever else the client sends on
    that connection is dropped unparsed."""
    channel.allContentReceived = lambda: None
    channel._respondToBadRequestAndDisconnect = lambda: None
    channel.rawDataReceived = lambda data: None


class _Headless:
    """A resource answering HEAD: its body measured, not handed back.
    twisted.web drops a HEAD answer's body itself, but logs a warning line
    that shows the request's URI (a session id, a token) for each one, and
    every answer here has a body."""

    def __init__(self, wrapped):
        self.wrapped = wrapped

    def render(self, request):
        body = self.wrapped.render(request)
        if isinstance(body, bytes) and body:
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body


class _NoBody(resource.Resource):
    isLeaf = True

    def render(self, request):
        return api.write_json(request, 400, {"error": "A WebSocket upgrade has no body", "code": errors.BAD_REQUEST})


def _too_large(limit):
    return api.Refused(413, errors.PAYLOAD_TOO_LARGE, f"Body is larger than {limit} bytes")


def _max_body(request):
    server = getattr(request.channel.site, "hot_reload", None) if request.channel else None
    return server.max_body_size if server is not None else None


class Site(server.Site):
    requestFactory = Request
    protocol = Channel  # type: ignore[assignment]  # a factory of channels, as HTTPFactory's default

    def __init__(self, hot_reload, reactor):
        # twisted.web would read every POST's Content-Type with the email
        # package to find form bodies; bodies here are JSON, others are
        # refused from the head
        super().__init__(hot_reload.resource(), reactor=reactor, logFormatter=access_log_line,
                         parsePOSTFormSubmission=False)
        self.hot_reload = hot_reload
        self.displayTracebacks = False
        self.noisy = False

    def log(self, request):
        logfile = self._logFile
        if (type(logfile) is not LoggingFile or logfile.closed or logfile._buffer
                or self._logFormatter is not access_log_line):
            # a file or line format of its own (an embedder's, a test's), or
            # a default file in a state its own write handles
            super().log(request)
            return
        # Twisted's default access log is a file whose every line becomes
        # one event of its logger. Every request writes one, so the same
        # event is handed to the logger's observer here, without the file's
        # line splitting and the logger's check that the level is a
        # LogLevel (access_log_line escapes control characters: a line
        # holds no newline).
        logger = logfile.log
        logger.observer({
            "log_io": access_log_line(self._logDateTime, request),
            "log_logger": logger, "log_level": logfile.level, "log_namespace": logger.namespace,
            "log_source": logger.source, "log_format": "{log_io}", "log_time": time.time(),
        })


def site(hot_reload, reactor):
    """The factory to listen with: the Site behind the per-address limit."""
    return PerAddressLimit(Site(hot_reload, reactor), hot_reload.max_connections_per_address)
