"""`Config`: every setting of a daemon, in one frozen, validated value.

The twistd options are generated from these fields (``--session-timeout``
is `Config.session_timeout`), `HotReloadServer` takes a `Config` (or the same
names as keyword arguments), and each room reads what it needs from it.
Adding a setting means adding a field here and using it where it matters.
"""

import ipaddress
import math
import sys
from urllib.parse import urlsplit

import attrs

MiB = 1024 * 1024

# The longest a session may stay idle, and the most a request may extend or
# give it: a larger one overflows its expiry time in milliseconds.
MAX_SESSION_SECONDS = 30 * 24 * 3600
# The largest whole-number setting: a body limit is read in one bound read,
# which takes no larger size.
MAX_COUNT = sys.maxsize - 1

# kind -> (what a value must be, converter from option text, coerceDoc)
KINDS = {
    "seconds": ("a positive number of seconds", float, "Seconds; fractions allowed."),
    "count": ("a positive whole number", int, "A whole number."),
    "rate": ("a positive number", float, "Per second; fractions allowed."),
}


def _positive(kind, most):
    what, convert, _ = KINDS[kind]

    def check(instance, attribute, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{_flag(attribute)} must be {what}, not {value!r}")
        if not (value > 0 and math.isfinite(value)) or (convert is int and value != int(value)):
            raise ValueError(f"{_flag(attribute)} must be {what}, not {value!r}")
        if most is not None and value > most[0]:
            raise ValueError(f"{_flag(attribute)} must be at most {most[1]}, not {value!r}")

    return check


def _flag(attribute):
    return "--" + attribute.name.replace("_", "-")


def _number(default, doc, kind, most=None):
    """A positive number with a twistd option of the same name; `most` is
    the largest value taken and how a refusal names it."""
    convert = KINDS[kind][1]
    if most is None and kind == "count":
        most = (MAX_COUNT, str(MAX_COUNT))

    def converter(value):
        # 3.0 may stand for 3; anything else is left for the validator to name
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            if convert is float or value == int(value):
                return convert(value)
        return value

    return attrs.field(
        default=default,
        converter=converter,
        validator=_positive(kind, most),
        metadata={"doc": doc, "kind": kind, "most": most},
    )


def _check_ws_path(instance, attribute, value):
    from lumora_reload.web import ws_path_parts

    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("--ws-path must be a path such as /ws")
    for c in value:
        # wsUrl carries the path as it is: a character a URL path cannot hold
        # ("?", "#", a space) or one that stands for another ("%") breaks it
        if not (c.isascii() and (c.isalnum() or c in _PATH_CHARACTERS)):
            raise ValueError(
                f"--ws-path {value!r} has {c!r}, which a URL path cannot carry as it is; "
                "use letters, digits and - . _ ~ (such as /lumora/ws)"
            )
    ws_path_parts(value)  # raises ValueError for a path that hides the API


# what a URL path holds as it is, besides letters and digits
_PATH_CHARACTERS = "/-._~!$&'()*+,;=:@"


def is_host(name):
    """A host name or IP address as a Host header names it (an IPv6
    address without its brackets)."""
    if not 0 < len(name) <= 253 or not name.isascii():
        return False
    if ":" in name:
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return False
        return True
    return all(c.isalnum() or c in "-._" for c in name)


def _check_public_url(instance, attribute, value):
    if value is None:
        return
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:  # an unclosed "[" of an IPv6 address
        parts = None
    if parts is None or parts.scheme not in ("http", "https", "ws", "wss"):
        raise ValueError("--public-url must start with http://, https://, ws:// or wss://")
    if not is_host(parts.hostname or ""):
        raise ValueError(f"--public-url must name a host, such as https://preview.example, not '{value}'")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"--public-url '{value}' has a bad port: give a number from 1 to 65535, or none")
    if "@" in parts.netloc:
        # it would be handed to every device in wsUrl and drawn in QR codes
        raise ValueError("--public-url must not hold a user name or password")


def _check_api_token(instance, attribute, value):
    # a blank token could never be matched: the daemon would take no token
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise ValueError("--api-token must not be empty")
    if value is not None and value != value.strip():
        # the token a request sends is read without surrounding spaces
        raise ValueError("--api-token must not begin or end with spaces")


def _strings(value):
    return tuple(value or ())


def _check_allowed_origins(instance, attribute, value):
    for origin in value:
        if not (isinstance(origin, str) and "://" in origin and _names_a_host(origin)):
            raise ValueError(f"--allowed-origin '{origin}' must look like http://host:port")


def _names_a_host(url):
    """The URL has a host, and a port from 1 to 65535 if any."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is no number, an unclosed "["
        return False
    return is_host(parts.hostname or "") and port != 0


def _host_names(value):
    # as a Host header is compared: lower case, an IPv6 address unbracketed
    names = []
    for name in value or ():
        if isinstance(name, str):
            name = name.strip().lower()
            if name.startswith("[") and name.endswith("]"):
                name = name[1:-1]
        names.append(name)
    return tuple(names)


def _check_allowed_hosts(instance, attribute, value):
    for name in value:
        if isinstance(name, str) and is_host(name):
            continue
        hint = ""
        if isinstance(name, str):
            try:
                host = urlsplit(name if "://" in name else "//" + name).hostname or ""
            except ValueError:
                host = ""
            hint = f": {host}" if is_host(host) else f", not {name!r}"
        raise ValueError(f"--allowed-host takes a host name or address without scheme or port{hint}")


@attrs.frozen(kw_only=True)
class Config:
    ws_path: str = attrs.field(
        default="/ws", validator=_check_ws_path, metadata={"doc": "Path of the device WebSocket.", "kind": "text"}
    )
    session_timeout: float = _number(
        28800.0, "Seconds of inactivity after which a session expires (at most 30 days).", "seconds",
        most=(MAX_SESSION_SECONDS, f"{MAX_SESSION_SECONDS} seconds (30 days)"),
    )
    heartbeat_interval: float = _number(30.0, "Seconds between liveness sweeps (and WebSocket pings).", "seconds")
    connection_timeout: float = _number(60.0, "A device silent this long is disconnected.", "seconds")
    cleanup_interval: float = _number(60.0, "Seconds between expired-session sweeps.", "seconds")
    incremental_threshold: int = _number(10, "Deltas touching fewer than N nodes go out incremental.", "count")
    history_size: int = _number(64, "Updates kept per session for resume.", "count")
    max_history_bytes: int = _number(
        16 * MiB, "Bytes of replayable updates kept per session for resume (oldest dropped).", "count"
    )
    max_sessions: int = _number(10000, "Sessions per daemon.", "count")
    max_devices_per_session: int = _number(10000, "Devices per session.", "count")
    max_message_size: int = _number(10 * MiB, "Largest device message in bytes (close 1009 above).", "count")
    max_body_size: int = _number(10 * MiB, "Largest HTTP body in bytes (413 above).", "count")
    rate_limit: float = _number(100.0, "Device messages per second, sustained.", "rate")
    rate_burst: int = _number(200, "Device messages allowed in one burst.", "count")
    max_buffer: int = _number(
        4 * MiB, "Bytes queued for a slow device before it is switched to latest-wins.", "count"
    )
    max_ack_lag: int = _number(10, "A device whose last ack lags more updates than this is unhealthy.", "count")
    max_connections_per_address: int = _number(
        256, "Open connections (HTTP and WebSocket) from one remote address.", "count"
    )
    max_pending_bytes: int = _number(
        128 * MiB,
        "Bytes of partly received device messages held at once, all devices together (close 1013 above).",
        "count",
    )
    max_log_bytes: int = _number(MiB, "Bytes of device log lines kept per session (oldest dropped).", "count")
    workers: int = _number(
        1, "Daemon processes serving the port, one per core; more than 1 needs --redis.", "count"
    )
    max_name_length: int = _number(
        256, "Longest deviceId, deviceName, platform and clientVersion, in characters.", "count"
    )
    api_token: str | None = attrs.field(default=None, validator=_check_api_token)
    public_url: str | None = attrs.field(default=None, validator=_check_public_url)
    allowed_hosts: tuple = attrs.field(default=(), converter=_host_names, validator=_check_allowed_hosts)
    allowed_origins: tuple = attrs.field(default=(), converter=_strings, validator=_check_allowed_origins)
    # WebSocket ping interval; None follows heartbeat_interval
    auto_ping_interval: float | None = attrs.field(default=None)
    secure: bool = False  # the port is TLS: wsUrl says wss
    verbose: bool = False

    @classmethod
    def option_fields(cls):
        """The fields that are twistd options with a generated row."""
        return [f for f in attrs.fields(cls) if f.metadata.get("kind") in KINDS or f.name == "ws_path"]

    @classmethod
    def from_options(cls, options, **extra):
        """A Config from parsed twistd `Options` (keys like "session-timeout")."""
        values = {f.name: options[f.name.replace("_", "-")] for f in cls.option_fields()}
        values.update(
            api_token=options["api-token"],
            public_url=options["public-url"],
            allowed_hosts=options["allowed-hosts"],
            allowed_origins=options["allowed-origins"],
            verbose=bool(options["verbose"]),
        )
        values.update(extra)
        return cls(**values)


def option_rows():
    """``optParameters`` rows for every `Config` option: the coerce function
    names the option in its one-line error."""
    rows = []
    for field in Config.option_fields():
        flag = field.name.replace("_", "-")
        kind = field.metadata["kind"]
        if kind not in KINDS:
            rows.append([flag, None, field.default, field.metadata["doc"]])
            continue
        what, convert, coerce_doc = KINDS[kind]

        def coerce(text, flag=flag, what=what, convert=convert, most=field.metadata["most"]):
            try:
                value = convert(text)
            except ValueError:
                raise ValueError(f"--{flag}: '{text}' is not {what}") from None
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"--{flag}: '{text}' must be positive")
            if most is not None and value > most[0]:
                raise ValueError(f"--{flag}: '{text}' must be at most {most[1]}")
            return value

        coerce.coerceDoc = coerce_doc
        rows.append([flag, None, field.default, field.metadata["doc"], coerce])
    return rows
