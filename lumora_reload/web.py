"""The resource tree: the REST API at the root and the device WebSocket at
the ws path, on one port. The root applies SPEC §2's access rules before
any control resource is reached."""

from autobahn.twisted.resource import WebSocketResource
from twisted.web import resource

from lumora_reload import api, errors
from lumora_reload.access import is_loopback

_MUTATING = (b"POST", b"PUT", b"PATCH", b"DELETE")


class Root(resource.Resource):
    def __init__(self, server, ws_resource, ws_path):
        super().__init__()
        self.server = server
        self.putChild(b"health", api.Health(server))
        self.putChild(b"stats", api.Stats(server))
        self.putChild(b"session", api.Sessions(server))
        self.putChild(b"send", api.Send(server))
        # /ws, or a nested path such as /lumora/ws
        parts = [p.encode() for p in ws_path.strip("/").split("/")]
        parent = self
        for part in parts[:-1]:
            child = resource.Resource()
            parent.putChild(part, child)
            parent = child
        parent.putChild(parts[-1], ws_resource)
        self._ws_first = parts[0]

    def getChildWithDefault(self, path, request):
        if path in (b"health", self._ws_first):
            # health is open to probes; the WebSocket does its own checks
            # and answers with close codes a browser can read
            return super().getChildWithDefault(path, request)
        refusal = self.refusal(request)
        if refusal is not None:
            return refusal
        return super().getChildWithDefault(path, request)

    def getChild(self, path, request):
        return api.NotFound()

    def render(self, request):
        return api.NotFound().render(request)

    def refusal(self, request):
        policy = self.server.policy
        if policy.token_ok(_header(request, b"authorization")):
            return None
        peer = getattr(request.getClientAddress(), "host", None)
        if not is_loopback(peer) and not _unix(request):
            hint = (
                "send 'Authorization: Bearer <token>'"
                if policy.api_token
                else "start the daemon with --api-token TOKEN and send 'Authorization: Bearer TOKEN'"
            )
            return api.Refused(403, errors.FORBIDDEN, f"The control API answers only to loopback clients; {hint}")
        local = getattr(request.getHost(), "host", None)
        why = policy.check_browser(_header(request, b"host"), _header(request, b"origin"), local)
        if why is not None:
            return api.Refused(403, errors.FORBIDDEN, why)
        return None


def _header(request, name):
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def _unix(request):
    # a Unix socket is as local as loopback
    return not hasattr(request.getClientAddress(), "host")


def build_root(server, ws_factory):
    return Root(server, WebSocketResource(ws_factory), server.ws_path)
