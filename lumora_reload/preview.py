"""The browser preview and the files the browser pages load.

`GET /preview/:id` is a page that joins the session as a `web` device over
the device WebSocket, like any phone: it is a device, so it needs no token,
but it obeys the Host and Origin rules (checked by the root resource). Its
JavaScript and CSS are package data under ``lumora_reload/static`` and are
served from `GET /assets/:name`: nothing comes from a CDN, the page works
offline.
"""

import functools
import html
from importlib import resources

from twisted.web import resource

from lumora_reload import api

# name -> content type; nothing else is served from /assets
ASSETS = {
    "schema.js": b"text/javascript; charset=utf-8",
    "render.js": b"text/javascript; charset=utf-8",
    "preview.js": b"text/javascript; charset=utf-8",
    "preview.css": b"text/css; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
}

# Scripts and styles only from this daemon; images from anywhere (a schema
# names its own); sockets to this daemon. The page's URL holds the session
# id, so it is never sent on as a referrer.
_CSP = (b"default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src * data: blob:; "
        b"connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'")


@functools.lru_cache(maxsize=None)
def static_file(name):
    """The bytes of a file under lumora_reload/static."""
    return resources.files("lumora_reload").joinpath("static", name).read_bytes()


class Page(api.JsonResource):
    """A leaf that answers GET and HEAD with a file (405 in JSON otherwise,
    like every resource of the API)."""

    isLeaf = True
    content_type = b"text/html; charset=utf-8"
    cache = b"no-store"

    def render(self, request):
        if api.extra_path(request):
            return api.NotFound().render(request)
        allowed = api.allowed_methods(self)
        if request.method.decode("latin-1") not in allowed:
            return api.method_not_allowed(request, allowed)
        body = self.body(request)
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", self.cache)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"content-security-policy", _CSP)
        return body

    def render_GET(self, request):  # the method list of allowed_methods
        return self.render(request)

    def body(self, request):
        raise NotImplementedError


class Asset(Page):
    cache = b"no-cache"

    def __init__(self, name):
        super().__init__(None)
        self.name = name
        self.content_type = ASSETS[name]

    def body(self, request):
        return static_file(self.name)


class Assets(resource.Resource):
    """/assets/:name"""

    def getChild(self, path, request):
        name = path.decode("utf-8", "replace")
        if name not in ASSETS or request.postpath:
            return api.NotFound()
        return Asset(name)

    def render(self, request):
        return api.NotFound().render(request)


class PreviewPage(Page):
    def __init__(self, server, session_id):
        super().__init__(server)
        self.session_id = session_id

    def body(self, request):
        template = static_file("preview.html").decode("utf-8")
        return (
            template.replace("{session}", html.escape(self.session_id))
            .replace("{short}", html.escape(self.session_id[:8]))
            .replace("{ws_path}", html.escape(self.hot.ws_path))
            .encode("utf-8")
        )


class Preview(resource.Resource):
    """/preview/:id -- the page for any id: an unknown or expired session is
    told over the WebSocket (close 4404 / 4410), where the page shows it."""

    param = "sessionId"  # the name of the path segment below (OpenAPI)

    def __init__(self, server):
        super().__init__()
        self.hot = server

    def getChild(self, path, request):
        if not path or request.postpath:
            return api.NotFound()
        return PreviewPage(self.hot, path.decode("utf-8", "replace"))

    def render(self, request):
        return api.NotFound().render(request)
