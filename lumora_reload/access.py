"""Who may talk to the daemon: the control-API access rule and the
Host and Origin checks that keep a web page in the developer's own browser
(DNS rebinding, cross-site requests) away from sessions.

Pure functions over header values, shared by the REST and WebSocket layers.
"""

import functools
import hmac
import ipaddress
import socket
from urllib.parse import urlsplit

from lumora_reload.cli.lan import list_interfaces


def _strip_port(host):
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        end = host.find("]")
        return host[1:end] if end != -1 else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def is_loopback(address):
    # no address literal is longer; a longer Host header must not fill the cache
    if not address or len(address) > 64:
        return False
    return _is_loopback(address)


@functools.lru_cache(maxsize=4096)
def _is_loopback(address):
    # asked on every request: parsing the address each time showed in profiles
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
    # the host name often resolves to loopback alone; a request through a
    # port forward names an interface's address while arriving on another
    names.update(address for _, address in list_interfaces() if address != "0.0.0.0")
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
        # The host of --public-url is where a tunnel or proxy delivers
        # requests from outside; its agent connects from loopback, so the
        # peer address says nothing there.
        self.public_host = _strip_port(urlsplit(public_url).netloc) if public_url else None
        if self.public_host:
            self.allowed_hosts.add(self.public_host)
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}
        self._own = _own_names()

    def token_ok(self, authorization):
        if not self.api_token or not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode(), self.api_token.encode())

    def is_public(self, host_header):
        """True when the request names the --public-url host: it came from
        outside, whatever its peer address."""
        return bool(self.public_host and host_header and _strip_port(host_header) == self.public_host)

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
        try:
            parts = urlsplit(origin)
        except ValueError:  # e.g. an unclosed "[" in an IPv6 literal
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        return self.host_ok(parts.netloc, local_address)

    def check_browser(self, host_header, origin, local_address):
        """Return None when allowed, else a sentence saying how to fix it."""
        if not self.host_ok(host_header, local_address):
            name = _strip_port(host_header or "")
            if not _is_name(name):
                return "A Host header naming this machine is required"
            return (
                f"Host '{name}' is not allowed; start the daemon with "
                f"--allowed-host {name} if you reach it by that name"
            )
        if not self.origin_ok(origin, local_address):
            shown = origin.strip()[:_SHOWN]
            if not _is_origin(shown):
                # 'null' (file:// pages, sandboxed frames) names no site
                # that could be allowed
                return f"Origin '{shown}' is not allowed; serve the page from an allowed host"
            return (
                f"Origin '{shown}' is not allowed; start the daemon with "
                f"--allowed-origin {shown} to let that page connect"
            )
        return None


# characters of a client-supplied value repeated in a refusal
_SHOWN = 200


def _is_name(name):
    """A host name or address the --allowed-host option would take."""
    return 0 < len(name) <= 253 and all(c.isalnum() or c in "-._:" for c in name) and name.isascii()


def _is_origin(origin):
    """An origin the --allowed-origin option would take (scheme://host)."""
    try:
        parts = urlsplit(origin)
        host = parts.hostname or ""
    except ValueError:
        return False
    return origin.isascii() and parts.scheme in ("http", "https") and _is_name(host)
