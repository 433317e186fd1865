"""Who may talk to the daemon (SPEC §2): the control-API access rule and the
Host and Origin checks that keep a web page in the developer's own browser
(DNS rebinding, cross-site requests) away from sessions.

Pure functions over header values, shared by the REST and WebSocket layers.
"""

import hmac
import ipaddress
import socket
from urllib.parse import urlsplit


def _strip_port(host):
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        end = host.find("]")
        return host[1:end] if end != -1 else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def is_loopback(address):
    if not address:
        return False
    if address.startswith("::ffff:"):
        address = address[7:]
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _own_names():
    names = set()
    try:
        hostname = socket.gethostname().lower()
        names.update({hostname, hostname + ".local", socket.getfqdn().lower()})
        for info in socket.getaddrinfo(hostname, None):
            names.add(info[4][0].lower())
    except OSError:
        pass
    return names


class AccessPolicy:
    """Decides on one request or upgrade from its headers.

    `local_address` is the address the client connected to: a request that
    names it in Host reached this machine directly, not through a rebinding
    DNS name.
    """

    def __init__(self, api_token=None, allowed_hosts=(), allowed_origins=(), public_url=None):
        self.api_token = api_token
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        if public_url:
            self.allowed_hosts.add(_strip_port(urlsplit(public_url).netloc))
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}
        self._own = _own_names()

    def token_ok(self, authorization):
        if not self.api_token or not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode(), self.api_token.encode())

    def host_ok(self, host_header, local_address=None):
        if not host_header:
            return False
        name = _strip_port(host_header)
        if name in ("localhost",) or name.endswith(".localhost"):
            return True
        if is_loopback(name) or name in self.allowed_hosts or name in self._own:
            return True
        if local_address and name == local_address.lower():
            return True
        return False

    def origin_ok(self, origin, local_address=None):
        """An absent Origin is fine (native apps, curl); a present one must
        name an allowed host or be listed with --allowed-origin."""
        if origin is None:
            return True
        origin = origin.strip().rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        return self.host_ok(parts.netloc, local_address)

    def check_browser(self, host_header, origin, local_address):
        """Return None when allowed, else a sentence saying how to fix it."""
        if not self.host_ok(host_header, local_address):
            name = _strip_port(host_header or "") or "(none)"
            return (
                f"Host '{name}' is not allowed; start the daemon with "
                f"--allowed-host {name} if you reach it by that name"
            )
        if not self.origin_ok(origin, local_address):
            return (
                f"Origin '{origin}' is not allowed; start the daemon with "
                f"--allowed-origin {origin} to let that page connect"
            )
        return None
