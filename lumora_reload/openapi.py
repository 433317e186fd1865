"""The OpenAPI 3.1 document of the REST control API (``GET /openapi.json``).

Built as a dict from the daemon's settings (the WebSocket path moves with
--ws-path). tests/test_openapi.py walks the resource tree and checks that
every routed path and method is here and nothing else is; the CI runs a
property-based client against a live daemon that checks every answer
against it.

HEAD is answered wherever GET is (same headers, no body) and is not listed.
"""

from lumora_reload import __version__, errors

_ERROR = {"$ref": "#/components/schemas/Error"}
_SESSION_ID = {"name": "sessionId", "in": "path", "required": True,
               "description": "A session id as `POST /session/new` returned it (32 hex digits).",
               "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
_CONNECTION_ID = {"name": "connectionId", "in": "path", "required": True,
                  "description": "A device's `connectionId` (from `GET /session/{sessionId}/devices`).",
                  "schema": {"type": "string", "pattern": "^c_[0-9a-f]{16}$"}}

# The error answers, by status: what they mean and the codes they carry.
_ERRORS = {
    400: ("The request is not valid: the body is not JSON, or a value is out of range, or (bodies that "
          "carry a schema) the schema is invalid, with `path` naming the first problem",
          [errors.BAD_REQUEST, errors.SCHEMA_VALIDATION_FAILED]),
    403: ("Refused: not a loopback client and no valid `Authorization: Bearer` token, or a Host or "
          "Origin that is not allowed", [errors.FORBIDDEN]),
    404: ("No such session, device or schema", [errors.SESSION_NOT_FOUND, errors.NOT_FOUND]),
    410: ("The session expired", [errors.SESSION_EXPIRED]),
    413: ("The body is larger than --max-body-size (any method)", [errors.PAYLOAD_TOO_LARGE]),
    415: ("A body was sent without `Content-Type: application/json` (any method)", [errors.BAD_REQUEST]),
    429: ("Too many sessions (--max-sessions)", [errors.RATE_LIMIT_EXCEEDED]),
    500: ("The change could not be stored; nothing changed", [errors.INTERNAL_ERROR]),
    503: ("The store is unavailable for now (or a push lost too many races with other daemons); "
          "nothing changed, try again", [errors.INTERNAL_ERROR]),
}

# what every request can be answered with: a body it should not have sent
_ANY = (413, 415)
# ... and every control endpoint (not /health) with a refusal
_CONTROL = (403, *_ANY)
# ... and those about one session
_SESSION = (*_CONTROL, 404, 410)
# ... and those that write to the store
_WRITE = (*_SESSION, 500, 503)


def _error(status):
    description, codes = _ERRORS[status]
    schema = {"allOf": [_ERROR, {"properties": {"code": {"enum": codes}}}]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ok(description, schema, links=None):
    answer = {"description": description, "content": {"application/json": {"schema": schema}}}
    if links:
        answer["links"] = links
    return answer


def _operation(operation_id, summary, ok, statuses, parameters=(), body=None, description=None):
    responses = {"200": ok}
    for status in sorted(set(statuses)):
        responses[str(status)] = _error(status)
    operation = {"operationId": operation_id, "summary": summary, "responses": responses}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = body
    return operation


def _obj(required, **properties):
    return {"type": "object", "required": list(required), "properties": properties}


_INT = {"type": "integer", "minimum": 0}
_MS = {"type": "integer", "description": "Unix time in milliseconds"}
_STR = {"type": "string"}
_SUCCESS = {"type": "boolean", "const": True}


def _links(*targets):
    """Follow-up operations that take the new session's id."""
    return {
        target: {"operationId": target, "parameters": {"sessionId": "$response.body#/sessionId"}}
        for target in targets
    }


def document(ws_path="/ws", mount=""):
    """The OpenAPI document of a daemon whose device WebSocket is at `ws_path`,
    its resource found at path `mount` of its site, or at URL `mount` from
    outside ("": the root of the host the document was read from)."""
    ref = "#/components/schemas/"
    schema_body = {
        "required": True,
        "description": "A Lumora IR schema",
        "content": {"application/json": {"schema": {"$ref": ref + "Schema"}}},
    }

    def optional_body(schema):
        return {"required": False, "content": {"application/json": {"schema": schema}}}

    session = [_SESSION_ID]
    paths = {
        "/health": {"get": _operation(
            "getHealth", "Liveness and counts; open to every client (no token, any Host)",
            _ok("Up", _obj(["status", "sessions", "totalDevices"], status={"const": "ok"}, sessions=_INT,
                           totalDevices=_INT)),
            _ANY)},
        "/stats": {"get": _operation(
            "getStats", "Every session with its device count",
            _ok("The daemon's sessions", _obj(
                ["sessions", "totalDevices", "sessionDetails"], sessions=_INT, totalDevices=_INT,
                sessionDetails={"type": "array", "items": _obj(
                    ["id", "devices", "createdAt", "expiresAt"], id=_STR, devices=_INT, createdAt=_MS,
                    expiresAt=_MS)})),
            _CONTROL)},
        "/metrics": {"get": _operation(
            "getMetrics", "Prometheus metrics in the text exposition format",
            {"description": "The metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
            _CONTROL)},
        "/": {"get": _operation(
            "getDashboard", "The dashboard page (HTML); the page alone also takes ?token=TOKEN",
            {"description": "The dashboard", "content": {"text/html": {"schema": {"type": "string"}}}},
            _CONTROL)},
        "/preview/{sessionId}": {"get": _operation(
            "getPreview", "The browser preview of a session (HTML): a device page, open to any client whose Host "
            "and Origin are allowed; an unknown or expired session is told over the WebSocket",
            {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}},
            _CONTROL,
            [{"name": "sessionId", "in": "path", "required": True, "description": "Any session id",
              "schema": {"type": "string", "minLength": 1}}])},
        "/overview": {"get": _operation(
            "getOverview", "What the dashboard shows: every session with its devices, updates and logs",
            _ok("The overview", _obj(["sessions", "totalDevices"], sessions={"type": "array"},
                                     totalDevices={"type": "integer", "minimum": 0})),
            _CONTROL)},
        "/openapi.json": {"get": _operation(
            "getOpenApi", "This document",
            _ok("An OpenAPI 3.1 document", {"type": "object", "required": ["openapi", "paths"]}),
            _CONTROL)},
        "/session/new": {"post": _operation(
            "createSession", "Create a session, optionally with its first schema",
            _ok("The new session", _obj(
                ["sessionId", "wsUrl", "expiresAt", "createdAt"], sessionId=_STR,
                wsUrl={"type": "string", "description": "Where devices connect"},
                expiresAt=_MS, createdAt=_MS),
                _links("getSession", "pushSchema", "getSessionHealth", "extendSession", "deleteSession",
                       "getSessionSchema", "reloadSession", "getSessionLogs", "getSessionDevices")),
            (*_CONTROL, 400, 429, 500, 503),
            body=optional_body({"type": ["object", "null"], "properties": {
                "schema": {"anyOf": [{"$ref": ref + "Schema"}, {"type": "null"}]},
                "timeoutSeconds": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 30 * 24 * 3600,
                                   "description": "Idle seconds before the session expires"}}}))},
        "/session/{sessionId}": {
            "get": _operation(
                "getSession", "A session and its devices",
                _ok("The session", _obj(
                    ["sessionId", "createdAt", "expiresAt", "sequenceNumber", "connectedDevices", "devices"],
                    sessionId=_STR, createdAt=_MS, expiresAt=_MS, sequenceNumber=_INT, connectedDevices=_INT,
                    devices={"type": "array", "items": {"$ref": ref + "Device"}})),
                _SESSION, session),
            "delete": _operation(
                "deleteSession", "Delete a session; its devices are closed with 1000",
                _ok("Deleted", _obj(["success"], success=_SUCCESS)), _WRITE, session),
        },
        "/session/{sessionId}/schema": {"get": _operation(
            "getSessionSchema", "The session's current schema (404 NOT_FOUND before the first push)",
            _ok("The schema", {"$ref": ref + "Schema"}), _SESSION, session)},
        "/session/{sessionId}/reload": {"post": _operation(
            "reloadSession", "Send every device the full current schema (404 NOT_FOUND before the first push)",
            _ok("Sent", _obj(["success", "devicesUpdated", "sequenceNumber"], success=_SUCCESS,
                             devicesUpdated=_INT, sequenceNumber=_INT)),
            (*_SESSION, 400), session, body=optional_body({"description": "Ignored"}))},
        "/session/{sessionId}/health": {"get": _operation(
            "getSessionHealth", "Each device's liveness and acknowledgement lag",
            _ok("Device health", _obj(
                ["sessionId", "sequenceNumber", "totalDevices", "healthyDevices", "unhealthyDevices", "devices"],
                sessionId=_STR, sequenceNumber=_INT, totalDevices=_INT, healthyDevices=_INT,
                unhealthyDevices=_INT, devices={"type": "array", "items": _obj(
                    ["connectionId", "deviceId", "healthy", "lastPing", "timeSinceLastPing", "lastAckSequence",
                     "ackLag"], connectionId=_STR, deviceId=_STR, healthy={"type": "boolean"}, lastPing=_MS,
                    timeSinceLastPing=_INT, lastAckSequence=_INT, ackLag=_INT)})),
            _SESSION, session)},
        "/session/{sessionId}/extend": {"post": _operation(
            "extendSession", "Move the expiry later (never earlier)",
            _ok("The new expiry", _obj(["success", "expiresAt"], success=_SUCCESS, expiresAt=_MS)),
            (*_WRITE, 400), session,
            body=optional_body({"type": ["object", "null"], "properties": {
                "seconds": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 30 * 24 * 3600,
                            "description": "Expire this many seconds from now (default: the session's timeout)"}
            }}))},
        "/session/{sessionId}/logs": {"get": _operation(
            "getSessionLogs", "Log lines the session's devices sent, oldest first",
            _ok("The lines", _obj(["sessionId", "lines"], sessionId=_STR, lines={"type": "array", "items": _obj(
                ["time", "deviceId", "deviceName", "level", "message"], time=_MS, deviceId=_STR,
                deviceName={"type": ["string", "null"]}, level=_STR, message=_STR)})),
            _SESSION, session)},
        "/session/{sessionId}/devices": {"get": _operation(
            "getSessionDevices", "The session's connected devices",
            _ok("The devices", _obj(["devices"], devices={"type": "array", "items": {"$ref": ref + "Device"}})),
            _SESSION, session)},
        "/session/{sessionId}/devices/{connectionId}": {"delete": _operation(
            "disconnectDevice", "Close one device's connection with 1000",
            _ok("Closed", _obj(["success"], success=_SUCCESS)), _SESSION, [_SESSION_ID, _CONNECTION_ID])},
        "/send/{sessionId}": {"post": _operation(
            "pushSchema", "Push a new schema to the session's devices (full or incremental, decided here)",
            _ok("Stored and handed to every device", _obj(
                ["success", "clientsUpdated", "devicesUpdated", "updateType", "sequenceNumber"],
                success=_SUCCESS, clientsUpdated=_INT, devicesUpdated=_INT,
                updateType={"enum": ["full", "incremental", "none"]}, sequenceNumber=_INT)),
            (*_WRITE, 400),
            [_SESSION_ID, {"name": "preserveState", "in": "query", "required": False,
                           "description": "Whether devices keep their UI state (default true)",
                           "schema": {"type": "boolean"}}],
            body=schema_body)},
        ws_path: {"get": _operation(
            "deviceWebSocket", "The device WebSocket (see the device protocol)",
            {"description": "Not a WebSocket upgrade: connect with a WebSocket client (version 13)",
             "content": {"application/json": {"schema": _ERROR}}},
            (), [{"name": "session", "in": "query", "required": False, "schema": _STR}],
            description="Answers 101 Switching Protocols to a WebSocket upgrade; any other GET is "
                        "answered 426 and a request with a body 400.")},
    }
    ws = paths[ws_path]["get"]["responses"]
    ws["426"] = ws.pop("200")
    ws["101"] = {"description": "Switching to the WebSocket protocol"}
    ws["400"] = {"description": "A request with a body is not an upgrade",
                 "content": {"application/json": {"schema": _ERROR}}}
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "lumora-reload control API",
            "version": __version__,
            "description": (
                "Pushes Lumora UI schemas to devices. Every answer is JSON except `/metrics`; errors are "
                "`{\"error\", \"code\"}`. Only loopback clients are served unless a request carries "
                "`Authorization: Bearer TOKEN` (--api-token); `/health` is open. A method a path does not "
                "answer gets 405 with `Allow`; an unknown path 404 `NOT_FOUND`; a malformed HTTP request 400."
            ),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "--api-token; not needed from loopback"}},
            "schemas": {
                "Error": _obj(["error", "code"], error={"type": "string", "description": "What to do"},
                              code={"type": "string"},
                              path={"type": "string", "description": "JSON path of the first problem"},
                              details={}),
                "Device": _obj(
                    ["connectionId", "deviceId", "platform", "deviceName", "connectedAt", "lastAckSequence"],
                    connectionId=_STR, deviceId=_STR, platform=_STR, deviceName={"type": ["string", "null"]},
                    connectedAt=_MS, lastAckSequence=_INT),
                "Schema": {
                    "type": "object",
                    "description": "A Lumora IR schema; node ids are unique in the whole tree",
                    "required": ["version", "metadata", "nodes"],
                    "properties": {
                        "version": _STR,
                        "metadata": {"type": "object", "properties": {
                            "sourceFramework": _STR, "sourceFile": _STR,
                            "generatedAt": {"type": ["number", "string", "null"]}}},
                        "nodes": {"type": "array", "items": {"$ref": ref + "Node"}},
                    },
                },
                "Node": {
                    "type": "object",
                    "required": ["id", "type"],
                    "properties": {
                        "id": {"type": "string", "minLength": 1},
                        "type": {"type": "string", "minLength": 1},
                        "props": {"type": "object"},
                        "metadata": {"type": "object"},
                        "children": {"type": "array", "items": {"$ref": ref + "Node"}},
                    },
                },
            },
        },
        "security": [{}, {"bearer": []}],
    }
    if mount:
        # without `servers` the paths are taken from the root of the host
        doc["servers"] = [{"url": mount}]
    return doc
