"""The dashboard: `GET /` is a page listing the sessions, and `GET
/overview` the JSON it polls (every session with its device URL and QR
code, devices and their health, recent updates, the log tail).

Both follow the control API's rule: loopback clients, or the API token.
A browser cannot put the token in a header when it opens a page, so the
page (and only the page) also takes it as ``?token=``; the page's script
then sends it as ``Authorization: Bearer`` on every call and drops it from
the address bar.
"""

from urllib.parse import urlsplit

import segno

from lumora_reload.access import is_loopback
from lumora_reload.api import JsonResource
from lumora_reload.cli.lan import choose_host, list_interfaces, with_host
from lumora_reload.errors import LumoraError
from lumora_reload.preview import Page, static_file

LOG_TAIL = 20
RECENT_UPDATES = 8
QR_URLS_PER_SESSION = 4  # dashboards opened on localhost, the LAN address, ...


class DashboardPage(Page):
    def body(self, request):
        return static_file("dashboard.html")


class Overview(JsonResource):
    isLeaf = True

    def __init__(self, server):
        super().__init__(server)
        # session id -> {device URL: its QR code as SVG}: drawn once, not on
        # every poll (a drawing takes milliseconds of the reactor); for the
        # sessions of the last overview, and a few device URLs each (the URL
        # follows the Host the dashboard was opened with)
        self._qr = {}

    def render_GET(self, request):
        hub = self.hot.hub
        lan = choose_host(list_interfaces())
        sessions = []
        for session in list(hub.sessions.values()):
            try:
                health = self.hot.get_session_health(session.id)
            except LumoraError:  # expired, not yet swept
                continue
            sessions.append(self._session(session, health, request, lan))
        sessions.sort(key=lambda s: -s["createdAt"])
        listed = {s["sessionId"] for s in sessions}
        for session_id in [session_id for session_id in self._qr if session_id not in listed]:
            del self._qr[session_id]
        return {"sessions": sessions, "totalDevices": hub.total_devices(), "wsPath": self.hot.ws_path}

    def _session(self, session, health, request, lan):
        local = self.hot.ws_url(session.id, request)
        device_url = with_host(local, lan) if lan and _loopback_url(local) else local
        info = {d.connection_id: d for d in session.devices.values()}
        devices = []
        for h in health["devices"]:
            d = info.get(h["connectionId"])
            devices.append(dict(h, platform=d.platform if d else None, deviceName=d.device_name if d else None,
                                connectedAt=d.connected_at if d else None))
        return {
            "sessionId": session.id,
            "createdAt": session.created_at,
            "expiresAt": session.expires_at(),
            "sequenceNumber": session.sequence,
            "checksum": session.checksum,
            "deviceUrl": device_url,
            "localUrl": local,
            "qrSvg": self._qr_svg(session.id, device_url),
            "healthyDevices": health["healthyDevices"],
            "devices": devices,
            "updates": [
                {"sequenceNumber": e.sequence, "updateType": e.update_type, "checksum": e.checksum}
                for e in reversed(session.history[-RECENT_UPDATES:])
            ],
            "logs": list(session.logs)[-LOG_TAIL:],
        }

    def _qr_svg(self, session_id, url):
        drawn = self._qr.setdefault(session_id, {})
        svg = drawn.get(url)
        if svg is None:
            if len(drawn) >= QR_URLS_PER_SESSION:
                del drawn[next(iter(drawn))]  # the oldest
            svg = drawn[url] = segno.make(url, error="m").svg_inline(scale=3, border=2, dark="#1c1f24", light="#fff")
        return svg


def _loopback_url(url):
    """Whether a URL names this machine only (then a phone needs the LAN address)."""
    host = (urlsplit(url).hostname or "").lower()
    return host == "localhost" or host.endswith(".localhost") or is_loopback(host)


def query_token(request):
    """The ``?token=`` of a dashboard page request, or None."""
    values = request.args.get(b"token") if request.args else None
    return values[0].decode("latin-1") if values else None

