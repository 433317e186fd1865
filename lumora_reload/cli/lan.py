"""The address a phone on the same network can reach this machine at, and the
QR code that carries a session's URL to it."""

import ipaddress
import re
import socket
import struct
import sys
from urllib.parse import urlsplit, urlunsplit

_SKIP_NAME = re.compile(
    r"^(lo\d*|docker|br-|veth|virbr|vbox|vmnet|vnet|tun|tap|utun|wg|tailscale|zt|ppp|ipsec|gif|stf"
    r"|awdl|llw|anpi|bridge|lxc|lxd|lxdbr|cni|flannel|cali|podman|kube|ifb|dummy|nordlynx|proton"
    r"|mullvad|gpd|cscotun|ham|nebula|vxlan|genev|weave|cilium)",
    re.IGNORECASE,
)
_SKIP_WORDS = ("virtualbox", "vmware", "hyper-v", "vethernet", "vpn", "docker", "wsl", "loopback", "pseudo",
               "tailscale", "zerotier", "teredo", "isatap")
_PREFERRED_NAME = re.compile(r"^(en|eth|wl|wlan|wlp|wifi|Wi-Fi|Ethernet)", re.IGNORECASE)
_DOCKER_NET = ipaddress.ip_network("172.17.0.0/16")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")  # Tailscale and other overlay VPNs


def _looks_virtual(name):
    lowered = name.lower()
    return bool(_SKIP_NAME.match(name)) or any(w in lowered for w in _SKIP_WORDS)


def choose_host(interfaces):
    """Pick the address a phone on the same network can reach from
    ``[(interface_name, ipv4_address), ...]``, or None.

    Skips loopback, link-local, Docker/VirtualBox/VM bridges and VPN-looking
    interfaces; prefers private (RFC 1918) addresses on Ethernet/Wi-Fi
    adapters, then the order given."""
    candidates = []
    for order, (name, address) in enumerate(interfaces):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if ip.version != 4 or ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
            continue
        if ip in _DOCKER_NET or ip in _CGNAT:
            continue
        if name and _looks_virtual(name):
            continue
        rank = (not ip.is_private, not (name and _PREFERRED_NAME.match(name)), order)
        candidates.append((rank, address))
    if not candidates:
        return None
    return min(candidates)[1]


def list_interfaces():
    """``[(name, ipv4)]`` of this machine's interfaces (names may be empty
    where the platform does not tell)."""
    found = []
    if sys.platform.startswith("linux"):
        import fcntl

        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
                except OSError:
                    continue  # no IPv4 address
                found.append((name, socket.inet_ntoa(packed[20:24])))
        except OSError:
            pass
        finally:
            probe.close()
    if not found:
        # elsewhere: the address of the default route (a UDP "connect" sends
        # nothing), then whatever the host name resolves to
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.connect(("10.255.255.255", 1))
            found.append(("", probe.getsockname()[0]))
        except OSError:
            pass
        finally:
            probe.close()
        try:
            for address in socket.gethostbyname_ex(socket.gethostname())[2]:
                found.append(("", address))
        except OSError:
            pass
    return found


def is_loopback_name(host):
    """Whether a URL's host name means "this machine only". Unlike
    `lumora_reload.access.is_loopback` (an address check), no host and
    ``localhost`` names count too, and ``::ffff:``-mapped addresses do not."""
    if host is None:
        return True
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def with_host(url, host):
    """`url` with its host replaced (port kept)."""
    parts = urlsplit(url)
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    netloc = shown if parts.port is None else f"{shown}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def device_url(ws_url, host=None, interfaces=None):
    """The URL to show a phone: `ws_url` with `host` (``--host``) if given;
    else, when the daemon answered with a loopback address, the LAN address
    chosen by `choose_host`; else (``--public-url``) as it is. Returns
    ``(url, note)``; `note` explains a fallback."""
    if host:
        return with_host(ws_url, host), None
    if not is_loopback_name(urlsplit(ws_url).hostname):
        return ws_url, None
    chosen = choose_host(list_interfaces() if interfaces is None else interfaces)
    if chosen is None:
        return ws_url, "no LAN interface found: only this machine can use this URL (use --host)"
    return with_host(ws_url, chosen), None


def print_qr(text, out):
    import segno

    qr = segno.make(text, error="m")
    encoding = getattr(out.stream, "encoding", None) or "ascii"
    try:
        "█▀▄".encode(encoding)
        compact = True
    except (UnicodeEncodeError, LookupError):
        compact = False
    qr.terminal(out=out.stream, compact=compact, border=2)
    out.stream.flush()
