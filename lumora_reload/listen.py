"""The daemon's listening port: `--port` as a plain number or an endpoint
description, start-up failures as one line saying what to do, and the
ready line in the log.

Twisted's own `strports.service` reports a port in use as a page of
traceback; `Listener` catches it and names the fix instead. `bind` listens
at once (twistd calls it while building the service, before its logger
takes over stderr), so a port that cannot be had ends the program with one
line on stderr."""

import errno
import ipaddress
import re
import socket
import sys

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python.failure import Failure

DEFAULT_PORT = 8080


class ListenError(Exception):
    """A port that cannot be had, as one line for the user."""


def endpoint_description(text):
    """`--port` as an endpoint description: a plain number means TCP on
    every interface (``8080`` -> ``tcp:8080``)."""
    text = str(text).strip()
    if text.isdigit():
        number = int(text)
        if not 0 < number < 65536:
            raise ValueError(f"--port {text}: a port number is 1-65535")
        return f"tcp:{number}"
    port = _port_of(text)
    if port is not None and port > 65535:
        raise ValueError(f"--port {text}: port {port} is out of range (1-65535)")
    return text


def _port_of(description):
    """The TCP port number in a ``tcp:``/``ssl:`` description, or None."""
    parts = description.split(":")
    if len(parts) > 1 and parts[0] in ("tcp", "tcp6", "ssl"):
        for part in parts[1:]:
            if part.startswith("port="):
                part = part[5:]
            if part.isdigit():
                return int(part)
    return None


def failure_line(description, error):
    """One line for why listening on `description` failed."""
    cause = getattr(error, "socketError", None) or error
    code = getattr(cause, "errno", None)
    if isinstance(cause, (OverflowError, ValueError)):
        return f"--port {description}: the port is out of range (1-65535)"
    port = _port_of(description)
    interface = getattr(error, "interface", "") or ""
    where = f"port {port}" if port is not None else description
    if interface:
        where += f" on {interface}"
    if code == errno.EADDRINUSE:
        line = f"{where} is in use; is another lumora-reload running?"
        if port is not None and port < 65535:
            line += f" try --port {port + 1}"
        return line
    if code == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: {interface or 'that address'} is not an address of this machine"
    if code == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need root; try --port 8080)"
    reason = getattr(cause, "strerror", None) or str(cause)
    return f"cannot listen on {description}: {reason}"


def http_base(address, secure=False):
    """``http://host:port`` for a listening address; None for a Unix socket."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return None
    shown = host
    if host in ("0.0.0.0", "::", ""):
        shown = "127.0.0.1"
    elif ":" in host:
        shown = f"[{host}]"
    return f"{'https' if secure else 'http'}://{shown}:{port}"


def loopback_only(address):
    """Whether devices on other machines cannot reach this address."""
    host = getattr(address, "host", None)
    if host is None:  # a Unix socket
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def ready_line(address, secure=False):
    base = http_base(address, secure)
    if base is None:
        return f"listening on {address}"
    if getattr(address, "host", "") in ("0.0.0.0", "::"):
        scope = " (all interfaces)"
    elif loopback_only(address):
        scope = " (this machine only: phones cannot reach it)"
    else:
        scope = ""
    dev = "lumora-reload dev"
    if not base.endswith(f":{DEFAULT_PORT}") or not loopback_url(base):
        dev += f" --url {base}"
    return f"listening on {base}{scope} — open {base}/ or run `{dev}`"


def loopback_url(base):
    return base.startswith(("http://127.0.0.1:", "https://127.0.0.1:"))


_DOMAINS = {socket.AF_INET: ("INET", "IPv4"), socket.AF_INET6: ("INET6", "IPv6"), socket.AF_UNIX: ("UNIX", "Unix")}


def _family_mismatch(port, description):
    """For a socket handed over by systemd: one line when its address
    family is not the `domain=` the description names, else None. Twisted
    takes the domain on trust, and an IPv6 socket read as IPv4 garbles
    every peer address (no client is loopback any more)."""
    sock = getattr(port, "socket", None)
    if not isinstance(sock, socket.socket) or not hasattr(socket, "SO_DOMAIN"):
        return None
    declared = sock.family  # as the description named it (an adopted socket's family is not read)
    try:
        actual = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
    except OSError:
        return None
    if actual == declared or actual not in _DOMAINS or declared not in _DOMAINS:
        return None
    domain, name = _DOMAINS[actual]
    fixed = re.sub(r"domain=\w+", f"domain={domain}", description)
    return (f"the socket systemd passed is {name}, not {_DOMAINS[declared][1]}: use --port {fixed} "
            f"(ListenStream=PORT alone is IPv6; ListenStream=0.0.0.0:PORT is IPv4)")


class Listener(service.Service):
    """Listens on an endpoint description with a factory; tells `hot`
    (the `HotReloadServer`) how it listens, and logs the ready line."""

    _log = Logger()

    def __init__(self, description, factory, hot, reactor):
        self.description = description
        self.factory = factory
        self.hot = hot
        self.reactor = reactor
        self.port = None

    def listen(self):
        """A Deferred of the listening port; fails with `ListenError`."""
        if self.port is not None:
            return defer.succeed(self.port)
        try:
            endpoint = endpoints.serverFromString(self.reactor, self.description)
            d = endpoint.listen(self.factory)
        except Exception as e:
            return defer.fail(ListenError(failure_line(self.description, e)))

        def listening(port):
            wrong = _family_mismatch(port, self.description)
            if wrong is not None:
                port.stopListening()
                raise ListenError(wrong)
            self.port = port
            self.hot.loopback_only = loopback_only(port.getHost())
            return port

        def failed(failure):
            raise ListenError(failure_line(self.description, failure.value))

        return d.addCallbacks(listening, failed)

    def bind(self):
        """Listen now; a port that cannot be had ends the program with one
        line on stderr (the Deferred of a TCP, SSL or Unix endpoint has
        fired by the time `listen` returns)."""
        result = []
        self.listen().addBoth(result.append)
        if result and isinstance(result[0], Failure):
            sys.stderr.write(f"lumora-reload: {result[0].getErrorMessage()}\n")
            raise SystemExit(1)

    def privilegedStartService(self):
        super().privilegedStartService()
        # twistd: already bound by `bind`; otherwise a failure here is raised
        d = self.listen()
        errors = []
        d.addErrback(errors.append)
        if errors:
            errors[0].raiseException()

    def startService(self):
        super().startService()
        if self.port is not None:
            secure = self.description.startswith("ssl:")
            self._log.info("{line}", line=ready_line(self.port.getHost(), secure))

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
