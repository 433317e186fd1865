"""`twistd lumora-reload`: options and the one place things are wired."""

import gc
import os
import sys

from twisted.application import service, strports
from twisted.python import usage

from lumora_reload import __version__


_KINDS = {
    "seconds": ("a number of seconds", float, "Seconds; fractions allowed."),
    "count": ("a whole number", int, "A whole number."),
    "rate": ("a number", float, "Per second; fractions allowed."),
}


def _param(name, default, doc, kind):
    """An optParameters row whose coerce function names the option."""
    what, convert, coerce_doc = _KINDS[kind]

    def coerce(text):
        try:
            value = convert(text)
        except ValueError:
            raise ValueError(f"--{name}: '{text}' is not {what}")
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError(f"--{name}: '{text}' must be positive")
        return value

    coerce.coerceDoc = coerce_doc
    return [name, None, default, doc, coerce]


def default_data_dir():
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "lumora-reload")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the lumora-reload daemon: a REST control API and the device "
        "WebSocket on one port, pushing live Lumora UI-schema updates."
    )
    optFlags = [
        ["in-memory", None, "Keep nothing on disk (tests, throw-away runs)."],
        ["verbose", "v", "Debug logging."],
    ]
    optParameters = [
        ["port", "p", "tcp:8080", "Twisted endpoint description (REST API and WebSocket share it)."],
        ["ws-path", None, "/ws", "Path of the device WebSocket."],
        _param("session-timeout", 28800.0, "Seconds of inactivity after which a session expires.", "seconds"),
        _param("heartbeat-interval", 30.0, "Seconds between liveness sweeps.", "seconds"),
        _param("connection-timeout", 60.0, "A device silent this long is disconnected.", "seconds"),
        _param("cleanup-interval", 60.0, "Seconds between expired-session sweeps.", "seconds"),
        _param("incremental-threshold", 10, "Deltas touching fewer than N nodes go out incremental.", "count"),
        ["data-dir", None, None, "Where durable session state lives (SQLite). [default: $XDG_STATE_HOME/lumora-reload]"],
        ["redis", None, None, "Cluster mode: share sessions with other daemons through this Redis (redis://[:password@]host:port/db or rediss://)."],
        ["api-token", None, None, "Bearer token that opens the control API to non-loopback callers."],
        ["api-token-file", None, None, "File holding the API token."],
        ["public-url", None, None, "Base URL used in wsUrl when behind a proxy or tunnel."],
        _param("history-size", 64, "Updates kept per session for resume.", "count"),
        _param("max-sessions", 10000, "Sessions per daemon.", "count"),
        _param("max-devices-per-session", 10000, "Devices per session.", "count"),
        _param("max-message-size", 10 * 1024 * 1024, "Largest device message in bytes (close 1009 above).", "count"),
        _param("max-body-size", 10 * 1024 * 1024, "Largest HTTP body in bytes (413 above).", "count"),
        _param("rate-limit", 100.0, "Device messages per second, sustained.", "rate"),
        _param("rate-burst", 200, "Device messages allowed in one burst.", "count"),
        _param("max-buffer", 4 * 1024 * 1024, "Bytes queued for a slow device before it is switched to latest-wins.", "count"),
        _param("max-ack-lag", 10, "A device whose last ack lags more updates than this is unhealthy.", "count"),
        _param("max-connections-per-address", 256, "Open connections (HTTP and WebSocket) from one remote address.", "count"),
        _param("max-pending-bytes", 128 * 1024 * 1024, "Bytes of partly received device messages held at once, all devices together (close 1013 above).", "count"),
        _param("max-log-bytes", 1024 * 1024, "Bytes of device log lines kept per session (oldest dropped).", "count"),
        _param("max-name-length", 256, "Longest deviceId, deviceName, platform and clientVersion, in characters.", "count"),
    ]

    def __init__(self):
        super().__init__()
        self["allowed-hosts"] = []
        self["allowed-origins"] = []

    def opt_allowed_host(self, name):
        """Extra Host name accepted (repeatable), e.g. a tunnel's name."""
        if not name.strip():
            raise usage.UsageError("--allowed-host needs a name")
        self["allowed-hosts"].append(name.strip().lower())

    def opt_allowed_origin(self, origin):
        """Extra browser Origin accepted (repeatable)."""
        if "://" not in origin:
            raise usage.UsageError(f"--allowed-origin '{origin}' must look like http://host:port")
        self["allowed-origins"].append(origin.strip())

    def parseOptions(self, options=None):
        # A bad value is one line and a non-zero exit, not a page of usage.
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            text = str(e).replace("Parameter type enforcement failed: ", "")
            sys.stderr.write(f"lumora-reload: {text}\n")
            raise SystemExit(2)

    def opt_version(self):
        """Print the version and exit."""
        print(f"lumora-reload {__version__}")
        sys.exit(0)

    def postOptions(self):
        if self["api-token"] and self["api-token-file"]:
            raise usage.UsageError("give --api-token or --api-token-file, not both")
        if self["api-token-file"]:
            try:
                with open(self["api-token-file"]) as f:
                    self["api-token"] = f.read().strip()
            except OSError as e:
                raise usage.UsageError(f"cannot read --api-token-file: {e.strerror}")
            if not self["api-token"]:
                raise usage.UsageError("--api-token-file is empty")
        if self["public-url"] and not self["public-url"].split("://")[0] in ("http", "https", "ws", "wss"):
            raise usage.UsageError("--public-url must start with http://, https://, ws:// or wss://")
        if not self["ws-path"].startswith("/") or self["ws-path"].strip("/") == "":
            raise usage.UsageError("--ws-path must be a path such as /ws")
        from lumora_reload.web import ws_path_parts

        try:
            ws_path_parts(self["ws-path"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        if self["data-dir"] is None:
            self["data-dir"] = default_data_dir()
        try:
            from twisted.internet import endpoints, reactor

            endpoints.serverFromString(reactor, self["port"])
        except Exception as e:
            raise usage.UsageError(f"--port '{self['port']}' is not a valid endpoint: {e}")


def make_store(config, clock=None):
    """The session store; a data dir that cannot be used ends the program
    with one line on stderr saying why (no traceback)."""
    if config.get("redis"):
        from lumora_reload.cluster import ClusterError, RedisStore

        try:
            return RedisStore.open(config["redis"], reactor=clock)
        except ClusterError as e:
            sys.stderr.write(f"lumora-reload: {e}\n")
            raise SystemExit(1)
    if config["in-memory"]:
        from lumora_reload.store import MemoryStore

        return MemoryStore()
    from lumora_reload.sqlite_store import SQLiteStore, StoreError

    try:
        return SQLiteStore.open(config["data-dir"], clock=clock)
    except StoreError as e:
        sys.stderr.write(f"lumora-reload: {e}\n")
        raise SystemExit(1)


def makeService(config, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    # A daemon's start-up objects live forever: keep them out of the
    # collector's way, and collect young objects less often (a large push
    # allocates hundreds of thousands; each full pass paused fan-out for
    # 17-37 ms in the benchmarks).
    gc.freeze()
    gc.set_threshold(20000, 20, 20)
    from lumora_reload.server import HotReloadServer

    root = service.MultiService()
    store = make_store(config, clock=reactor)
    hot = HotReloadServer(
        reactor=reactor,
        ws_path=config["ws-path"],
        session_timeout=config["session-timeout"],
        heartbeat_interval=config["heartbeat-interval"],
        connection_timeout=config["connection-timeout"],
        cleanup_interval=config["cleanup-interval"],
        incremental_threshold=config["incremental-threshold"],
        store=store,
        history_size=config["history-size"],
        max_sessions=config["max-sessions"],
        max_devices_per_session=config["max-devices-per-session"],
        max_message_size=config["max-message-size"],
        max_body_size=config["max-body-size"],
        rate_limit=config["rate-limit"],
        rate_burst=config["rate-burst"],
        max_buffer=config["max-buffer"],
        max_ack_lag=config["max-ack-lag"],
        max_connections_per_address=config["max-connections-per-address"],
        max_pending_bytes=config["max-pending-bytes"],
        max_log_bytes=config["max-log-bytes"],
        max_name_length=config["max-name-length"],
        api_token=config["api-token"],
        public_url=config["public-url"],
        allowed_hosts=config["allowed-hosts"],
        allowed_origins=config["allowed-origins"],
        secure=config["port"].startswith("ssl:"),
        verbose=config["verbose"],
    )
    hot.setServiceParent(root)
    from lumora_reload import web

    strports.service(config["port"], web.site(hot, reactor), reactor=reactor).setServiceParent(root)
    return root
