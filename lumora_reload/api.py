"""The REST control API (SPEC §2) as twisted.web resources.

Every response is JSON. Handlers return a dict (200), a `(status, dict)`
pair, or a Deferred of either; a `LumoraError` anywhere becomes
``{"error", "code"}`` with its status in one place (`JsonResource.render`).
"""

import json

import orjson
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from lumora_reload import errors, schema as schemas
from lumora_reload.errors import LumoraError

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


def _finish(request, result):
    if isinstance(result, Failure):
        if result.check(LumoraError):
            error = result.value
        else:
            _log.failure("request failed", result)
            error = LumoraError(errors.INTERNAL_ERROR, f"Internal error: {result.getErrorMessage()}", status=500)
        status, body = error.status, error_body(error)
    elif isinstance(result, tuple):
        status, body = result
    else:
        status, body = 200, result
    return write_json(request, status, body)


class JsonResource(resource.Resource):
    """A resource whose render methods return data, not bytes."""

    def __init__(self, server):
        super().__init__()
        self.server = server

    def getChild(self, path, request):
        return NotFound()

    def render(self, request):
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, "render_" + method, None)
        if handler is None:
            allowed = sorted(n[7:] for n in dir(self) if n.startswith("render_") and n[7:].isupper())
            request.setHeader(b"allow", ", ".join(allowed).encode())
            return write_json(request, 405, {"error": f"Method {method} not allowed", "code": errors.BAD_REQUEST})
        try:
            result = handler(request)
        except Exception:
            return _finish(request, Failure())
        if not isinstance(result, defer.Deferred):
            return _finish(request, result)

        def done(outcome):
            if not request._disconnected and not request.finished:
                request.write(_finish(request, outcome))
                request.finish()

        result.addBoth(done)
        return server.NOT_DONE_YET


class NotFound(resource.Resource):
    isLeaf = True

    def render(self, request):
        return write_json(request, 404, {"error": "Not found", "code": errors.NOT_FOUND})


class Refused(resource.Resource):
    isLeaf = True

    def __init__(self, status, code, message):
        super().__init__()
        self.status, self.code, self.message = status, code, message

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


def _number(value, name, positive=True):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and value <= 0):
        raise LumoraError(errors.BAD_REQUEST, f"'{name}' must be a positive number of seconds", status=400,
                          details={"path": name})
    return float(value)


class Health(JsonResource):
    isLeaf = True

    def render_GET(self, request):
        hub = self.server.hub
        return {"status": "ok", "sessions": len(hub.sessions), "totalDevices": hub.total_devices()}


class Stats(JsonResource):
    isLeaf = True

    def render_GET(self, request):
        return self.server.get_stats()


class Send(JsonResource):
    """POST /send/:id"""

    def getChild(self, path, request):
        if request.postpath:
            return NotFound()
        return SendTo(self.server, path.decode("utf-8", "replace"))


class SendTo(JsonResource):
    isLeaf = True

    def __init__(self, server, session_id):
        super().__init__(server)
        self.session_id = session_id

    def render_POST(self, request):
        schema = read_json(request, self.server.max_body_size)
        if schema is None:
            raise LumoraError(errors.BAD_REQUEST, "Body must be a Lumora IR schema", status=400,
                              details={"path": ""})
        flag = (request.args.get(b"preserveState") or [b"true"])[0].decode().lower()
        preserve = flag not in ("false", "0", "no")
        d = self.server.push_update(self.session_id, schema, preserve_state=preserve)
        d.addCallback(lambda result: result.to_json())
        return d


class Sessions(JsonResource):
    """/session/new and /session/:id/..."""

    def getChild(self, path, request):
        if path == b"new" and not request.postpath:
            return NewSession(self.server)
        if not path:
            return NotFound()
        return SessionResource(self.server, path.decode("utf-8", "replace"))


class NewSession(JsonResource):
    isLeaf = True

    def render_POST(self, request):
        body = read_json(request, self.server.max_body_size) or {}
        if not isinstance(body, dict):
            raise LumoraError(errors.BAD_REQUEST, "Body must be a JSON object", status=400, details={"path": ""})
        timeout = _number(body.get("timeoutSeconds"), "timeoutSeconds")
        d = self.server.create_session_stored(schema=body.get("schema"), timeout_seconds=timeout)
        d.addCallback(
            lambda session: {
                "sessionId": session.id,
                "wsUrl": self.server.ws_url(session.id, request),
                "expiresAt": session.expires_at(),
                "createdAt": session.created_at,
            }
        )
        return d


class SessionResource(JsonResource):
    """/session/:id and its children."""

    def __init__(self, server, session_id):
        super().__init__(server)
        self.session_id = session_id

    def getChild(self, path, request):
        if path == b"":
            return self
        child = {
            b"schema": SessionSchema,
            b"reload": SessionReload,
            b"health": SessionHealth,
            b"extend": SessionExtend,
            b"logs": SessionLogs,
            b"devices": SessionDevices,
        }.get(path)
        if child is None:
            return NotFound()
        return child(self.server, self.session_id)

    def render_GET(self, request):
        return self.server.session_info(self.session_id)

    def render_DELETE(self, request):
        return self.server.delete_session(self.session_id).addCallback(lambda _: {"success": True})


class _SessionLeaf(SessionResource):
    isLeaf = True


class SessionSchema(_SessionLeaf):
    def render_GET(self, request):
        session = self.server.hub.get_session(self.session_id)
        if session.schema is None:
            raise errors.not_found("No schema has been pushed to this session yet")
        return session.schema


class SessionReload(_SessionLeaf):
    def render_POST(self, request):
        read_json(request, self.server.max_body_size)
        session, count = self.server.hub.reload_all(self.session_id)
        return {"success": True, "devicesUpdated": count, "sequenceNumber": session.sequence}


class SessionHealth(_SessionLeaf):
    def render_GET(self, request):
        return self.server.get_session_health(self.session_id)


class SessionExtend(_SessionLeaf):
    def render_POST(self, request):
        body = read_json(request, self.server.max_body_size) or {}
        if not isinstance(body, dict):
            raise LumoraError(errors.BAD_REQUEST, "Body must be a JSON object", status=400, details={"path": ""})
        seconds = _number(body.get("seconds"), "seconds")
        d = self.server.extend_session_stored(self.session_id, seconds)
        d.addCallback(lambda expires_at: {"success": True, "expiresAt": expires_at})
        return d


class SessionLogs(_SessionLeaf):
    def render_GET(self, request):
        session = self.server.hub.get_session(self.session_id)
        return {"sessionId": session.id, "lines": list(session.logs)}


class SessionDevices(SessionResource):
    """DELETE /session/:id/devices/:connectionId"""

    def getChild(self, path, request):
        if request.postpath or not path:
            return NotFound()
        return DeviceResource(self.server, self.session_id, path.decode("utf-8", "replace"))

    def render_GET(self, request):
        return {"devices": [d.to_json() for d in self.server.get_connected_devices(self.session_id)]}


class DeviceResource(JsonResource):
    isLeaf = True

    def __init__(self, server, session_id, connection_id):
        super().__init__(server)
        self.session_id, self.connection_id = session_id, connection_id

    def render_DELETE(self, request):
        self.server.disconnect_device(self.session_id, self.connection_id)
        return {"success": True}
