"""The REST control API as twisted.web resources.

Every response is JSON. Handlers return a dict (200), a `(status, dict)`
pair, or a Deferred of either; a `LumoraError` anywhere becomes
``{"error", "code"}`` with its status in one place (`JsonResource.render`).
"""

import functools
import json
from urllib.parse import urlsplit

import orjson
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from lumora_reload import errors, openapi
from lumora_reload import schema as schemas
from lumora_reload.config import MAX_SESSION_SECONDS
from lumora_reload.errors import LumoraError
from lumora_reload.metrics import CONTENT_TYPE

_log = Logger()


def write_json(request, status, body):
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return orjson.dumps(body)


def error_body(error):
    body = {"error": error.message, "code": error.code}
    if error.details is not None:
        body["details"] = error.details
        if isinstance(error.details, dict) and "path" in error.details:
            body["path"] = error.details["path"]
    return body


def internal_error():
    # the traceback goes to the log; the caller learns only that it failed
    return LumoraError(errors.INTERNAL_ERROR, "Internal error; the daemon's log has the details", status=500)


def _finish(request, result):
    if isinstance(result, Failure):
        if result.check(LumoraError):
            error = result.value
        else:
            _log.failure("request failed", result)
            error = internal_error()
        status, body = error.status, error_body(error)
    elif isinstance(result, tuple):
        status, body = result
    else:
        status, body = 200, result
    try:
        return write_json(request, status, body)
    except TypeError:  # a value JSON cannot carry; never an unanswered request
        _log.failure("answer could not be encoded")
        return write_json(request, 500, error_body(internal_error()))


def allowed_methods(target):
    """The methods a resource answers: the render_* methods its own classes
    define (not twisted.web's defaults), and HEAD wherever GET is."""
    return _allowed_methods_of(type(target))


@functools.lru_cache(maxsize=None)
def _allowed_methods_of(cls):
    # asked on every request with a body: once per class (dir() is slow)
    methods = {
        name[7:]
        for name in dir(cls)
        if name.startswith("render_") and name[7:].isupper()
        and getattr(cls, name) is not getattr(resource.Resource, name, None)
    }
    if "GET" in methods:
        methods.add("HEAD")
    return tuple(sorted(methods))


def method_not_allowed(request, allowed):
    request.setHeader(b"allow", ", ".join(allowed).encode())
    method = request.method.decode("latin-1")[:_SHOWN]
    return write_json(request, 405, {"error": f"Method {method} not allowed; use {', '.join(allowed)}",
                                     "code": errors.BAD_REQUEST})


# characters of a client-supplied value repeated in an answer
_SHOWN = 64


def extra_path(request):
    """Path segments left after a leaf resource (a trailing slash is fine)."""
    return [part for part in request.postpath if part]


class MethodNotAllowed(resource.Resource):
    isLeaf = True

    def __init__(self, allowed):
        super().__init__()
        self.allowed = allowed

    def render(self, request):
        return method_not_allowed(request, self.allowed)


def route_refusal(target, request):
    """The resource that refuses `request` at JSON route `target`, or None:
    a path beyond a leaf and a parent of routes (/session, /send: no route
    itself) are not found, a method it does not define is not allowed.
    Asked from the request's head and again when it is rendered."""
    if target.isLeaf and extra_path(request):
        return NotFound()
    allowed = allowed_methods(target)
    if not allowed:
        return NotFound()
    if request.method.decode("latin-1") not in allowed:
        return MethodNotAllowed(allowed)
    return None


class JsonResource(resource.Resource):
    """A resource whose render methods return data, not bytes; it answers
    only the methods it defines itself (405 with Allow otherwise)."""

    # For the OpenAPI check, which walks the tree: the fixed names `getChild`
    # answers, and the name of the variable segment it takes (if any).
    named: tuple[bytes, ...] = ()
    param: str | None = None

    def __init__(self, server):
        super().__init__()
        self.hot = server

    def getChild(self, path, request):
        return NotFound()

    def render(self, request):
        refusal = route_refusal(self, request)
        if refusal is not None:
            return refusal.render(request)
        try:
            result = getattr(self, "render_" + request.method.decode("latin-1"))(request)
        except Exception:
            return _finish(request, Failure())
        if isinstance(result, bytes):  # an answer that is not JSON, ready to send
            return result
        if not isinstance(result, defer.Deferred):
            return _finish(request, result)

        def done(outcome):
            if not request._disconnected and not request.finished:
                _write_late(request, _finish(request, outcome))

        result.addBoth(done)
        return server.NOT_DONE_YET


def _write_late(request, body):
    """Send `body`, rendered after `render` returned NOT_DONE_YET, and
    finish; with its length: no chunk framing, and no last chunk sent on
    its own. NOT_DONE_YET: the render that made it answers later itself."""
    if body is not server.NOT_DONE_YET:
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


class NotFound(resource.Resource):
    isLeaf = True

    def render(self, request):
        return write_json(request, 404, {"error": "Not found", "code": errors.NOT_FOUND})


class Folder(resource.Resource):
    """A path segment with children and no answer of its own (the parents
    of a nested --ws-path): 404 in JSON, like any unknown path."""

    def getChild(self, path, request):
        return NotFound()

    def render(self, request):
        return NotFound().render(request)


class Refused(resource.Resource):
    isLeaf = True

    def __init__(self, status, code, message, reason=None):
        super().__init__()
        self.status, self.code, self.message = status, code, message
        self.reason = reason  # what was wrong: "host", "origin", "token"

    def render(self, request):
        return write_json(request, self.status, {"error": self.message, "code": self.code})


def read_json(request, max_size):
    """The request body as JSON, or None when there is none."""
    body = request.content.read(max_size + 1) if request.content is not None else b""
    if len(body) > max_size:
        raise LumoraError(
            errors.PAYLOAD_TOO_LARGE,
            f"Body is larger than {max_size} bytes",
            status=413,
        )
    if not body.strip():
        return None
    content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise LumoraError(
            errors.BAD_REQUEST,
            "Send the body as JSON with 'Content-Type: application/json'",
            status=415,
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        try:  # orjson refuses some JSON that Python reads (numbers beyond a double, lone surrogates)
            value = json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            pass
        else:
            problem = schemas.find_unencodable(value)
            if problem is not None:  # it could never be sent on to a device
                raise LumoraError(
                    errors.SCHEMA_VALIDATION_FAILED, f"{problem[0]}: {problem[1]}", status=400,
                    details={"path": problem[0], "message": problem[1]},
                )
            return value
        raise LumoraError(
            errors.BAD_REQUEST,
            f"Body is not valid JSON: {e}",
            status=400,
            details={"path": "", "position": getattr(e, "pos", None)},
        )


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def _object_body(request, max_size):
    """A body that should be a JSON object, {} when there is none (or it is
    null); anything else (``[]``, ``0``, ``false``) is returned as it is, to
    be refused."""
    body = read_json(request, max_size)
    return {} if body is None else body


def _seconds(value, name):
    """A number of seconds from a request body: positive, finite, at most
    30 days (a larger one overflows the expiry time)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_SESSION_SECONDS:
        raise LumoraError(errors.BAD_REQUEST, f"'{name}' must be a number of seconds, more than 0 and at most "
                          f"{MAX_SESSION_SECONDS} (30 days)", status=400, details={"path": name})
    return float(value)


_FLAGS = {b"true": True, b"1": True, b"yes": True, b"false": False, b"0": False, b"no": False}


def _flag(request, name, default):
    values = request.args.get(name.encode())
    if not values:
        return default
    value = _FLAGS.get(values[0].lower())
    if value is None:
        raise LumoraError(errors.BAD_REQUEST, f"'{name}' must be true or false", status=400,
                          details={"path": name})
    return value


class Health(JsonResource):
    isLeaf = True

    def render_GET(self, request):
        return self.hot.get_health()


class Stats(JsonResource):
    isLeaf = True

    def render_GET(self, request):
        return self.hot.get_stats()


class MetricsPage(JsonResource):
    """GET /metrics: the Prometheus text format."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        request.setHeader(b"cache-control", b"no-store")
        return self.hot.metrics.exposition()


class OpenApi(JsonResource):
    """GET /openapi.json: the OpenAPI document of this API."""

    isLeaf = True

    def render_GET(self, request):
        # mounted below a path of an embedding program's site, the paths
        # in the document are below it too; behind --public-url, below its
        # path, as wsUrl is
        public_url = self.hot.public_url
        if public_url and urlsplit(public_url).path.rstrip("/"):
            # whole: a client that read the document on loopback is sent
            # there too, not to this host's /path, where nothing answers
            mount = public_url.rstrip("/")
        else:
            mount = getattr(request, "lumora_mount", "")
        return openapi.document(self.hot.ws_path, mount=mount)


class Send(JsonResource):
    """POST /send/:id"""

    param = "sessionId"  # the name of the path segment below (OpenAPI)

    def getChild(self, path, request):
        if request.postpath:
            return NotFound()
        return SendTo(self.hot, path.decode("utf-8", "replace"))


class SendTo(JsonResource):
    isLeaf = True

    def __init__(self, server, session_id):
        super().__init__(server)
        self.session_id = session_id

    def render_POST(self, request):
        try:
            schema = read_json(request, self.hot.max_body_size)
            if schema is None:
                raise LumoraError(errors.BAD_REQUEST, "Body must be a Lumora IR schema", status=400,
                                  details={"path": ""})
        except LumoraError as e:
            self.hot.metrics.push_refused(e.code)
            raise
        preserve = _flag(request, "preserveState", True)
        # parsed just now: nothing else holds its objects
        d = self.hot.push_update(self.session_id, schema, preserve_state=preserve, fresh=True)
        d.addCallback(lambda result: result.to_json())
        return d


class Sessions(JsonResource):
    """/session/new and /session/:id/..."""

    named = (b"new",)
    param = "sessionId"

    def getChild(self, path, request):
        if path == b"new" and not request.postpath:
            return NewSession(self.hot)
        if not path:
            return NotFound()
        return SessionResource(self.hot, path.decode("utf-8", "replace"))


class NewSession(JsonResource):
    isLeaf = True

    def render_POST(self, request):
        body = _object_body(request, self.hot.max_body_size)
        if not isinstance(body, dict):
            raise LumoraError(errors.BAD_REQUEST, "Body must be a JSON object", status=400, details={"path": ""})
        timeout = _seconds(body.get("timeoutSeconds"), "timeoutSeconds")
        # parsed from the body's JSON text: nothing in it but JSON values
        d = self.hot.create_session_stored(schema=body.get("schema"), timeout_seconds=timeout, fresh=True)
        d.addCallback(
            lambda session: {
                "sessionId": session.id,
                "wsUrl": self.hot.ws_url(session.id, request),
                "expiresAt": session.expires_at(),
                "createdAt": session.created_at,
            }
        )
        return d


class _SessionPart(JsonResource):
    """Something under /session/:id; knows the id, answers its own methods."""

    def __init__(self, server, session_id):
        super().__init__(server)
        self.session_id = session_id

    def render(self, request):
        # cluster mode: a session this daemon does not know (made on another
        # one) is read from Redis first; 503 while Redis cannot be read
        if route_refusal(self, request) is not None:
            return super().render(request)
        known = []
        d = self.hot.lookup(self.session_id).addBoth(known.append)
        if known and not isinstance(known[0], Failure):
            return super().render(request)

        def answer(_):
            if request._disconnected or request.finished:
                return
            failed = isinstance(known[0], Failure)
            _write_late(request, _finish(request, known[0]) if failed else JsonResource.render(self, request))

        d.addCallback(answer)
        return server.NOT_DONE_YET


class SessionResource(_SessionPart):
    """/session/:id and its children."""

    def getChild(self, path, request):
        if path == b"":
            return self
        child = _SESSION_PARTS.get(path)
        if child is None:
            return NotFound()
        return child(self.hot, self.session_id)

    def render_GET(self, request):
        return self.hot.session_info(self.session_id)

    def render_DELETE(self, request):
        return self.hot.delete_session(self.session_id).addCallback(lambda _: {"success": True})


class _SessionLeaf(_SessionPart):
    isLeaf = True


class SessionSchema(_SessionLeaf):
    def render_GET(self, request):
        return self.hot.get_schema(self.session_id)


class SessionReload(_SessionLeaf):
    def render_POST(self, request):
        read_json(request, self.hot.max_body_size)
        count, sequence = self.hot.reload_all(self.session_id)
        return {"success": True, "devicesUpdated": count, "sequenceNumber": sequence}


class SessionHealth(_SessionLeaf):
    def render_GET(self, request):
        return self.hot.get_session_health(self.session_id)


class SessionExtend(_SessionLeaf):
    def render_POST(self, request):
        body = _object_body(request, self.hot.max_body_size)
        if not isinstance(body, dict):
            raise LumoraError(errors.BAD_REQUEST, "Body must be a JSON object", status=400, details={"path": ""})
        seconds = _seconds(body.get("seconds"), "seconds")
        d = self.hot.extend_session_stored(self.session_id, seconds)
        d.addCallback(lambda expires_at: {"success": True, "expiresAt": expires_at})
        return d


class SessionLogs(_SessionLeaf):
    def render_GET(self, request):
        return {"sessionId": self.session_id, "lines": self.hot.get_logs(self.session_id)}


class SessionDevices(_SessionPart):
    """DELETE /session/:id/devices/:connectionId"""

    param = "connectionId"

    def getChild(self, path, request):
        if request.postpath or not path:
            return NotFound()
        return DeviceResource(self.hot, self.session_id, path.decode("utf-8", "replace"))

    def render_GET(self, request):
        return {"devices": [d.to_json() for d in self.hot.get_connected_devices(self.session_id)]}


class DeviceResource(JsonResource):
    isLeaf = True

    def __init__(self, server, session_id, connection_id):
        super().__init__(server)
        self.session_id, self.connection_id = session_id, connection_id

    def render_DELETE(self, request):
        self.hot.disconnect_device(self.session_id, self.connection_id)
        return {"success": True}


_SESSION_PARTS = {
    b"schema": SessionSchema,
    b"reload": SessionReload,
    b"health": SessionHealth,
    b"extend": SessionExtend,
    b"logs": SessionLogs,
    b"devices": SessionDevices,
}
SessionResource.named = tuple(_SESSION_PARTS)
