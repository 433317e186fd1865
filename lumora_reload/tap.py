"""`twistd lumora-reload`: options and the one place things are wired."""

import gc
import os
import sys

from twisted.application import service
from twisted.python import usage

from lumora_reload import __version__, leanpoll, workers
from lumora_reload.config import Config, option_rows
from lumora_reload.listen import Listener, endpoint_description
from lumora_reload.logs import FORMATS, take_over


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
        ["port", "p", "tcp:8080",
         "A port number (8080 means tcp:8080) or a Twisted endpoint description "
         "(REST API and WebSocket share it).", endpoint_description],
        ["data-dir", None, None,
         "Where durable session state lives (SQLite). [default: $XDG_STATE_HOME/lumora-reload, "
         "else ~/.local/state/lumora-reload]"],
        ["redis", None, None,
         "Cluster mode: share sessions with other daemons through this Redis "
         "(redis://[:password@]host:port/db or rediss://)."],
        ["api-token", None, None, "Bearer token that opens the control API to non-loopback callers."],
        ["api-token-file", None, None, "File holding the API token."],
        ["public-url", None, None, "Base URL used in wsUrl when behind a proxy or tunnel."],
        ["log-format", None, "text",
         "Log lines as 'text' or 'json' (one object per line), under twist and twistd -n alike."],
    ] + option_rows()

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
        self["allowed-origins"].append(origin.strip())  # checked by Config

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
        if self["api-token"] is not None and not self["api-token"].strip():
            raise usage.UsageError("--api-token must not be empty")
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
        if self["log-format"] not in FORMATS:
            raise usage.UsageError(f"--log-format must be text or json, not '{self['log-format']}'")
        if self["data-dir"] is None:
            self["data-dir"] = default_data_dir()
        if self["workers"] > 1 and not self["redis"]:
            raise usage.UsageError(
                f"--workers {self['workers']} needs --redis: the workers share sessions through Redis"
            )
        if self["workers"] > 1 and not self["port"].startswith(("tcp:", "tcp6:", "unix:")):
            # the other workers take over the bare socket, so no TLS wrapper
            raise usage.UsageError("--workers needs a tcp:, tcp6: or unix: --port (terminate TLS in front)")
        try:
            from twisted.internet import endpoints, reactor

            endpoints.serverFromString(reactor, self["port"])
        except (IndexError, KeyError) as e:
            if self["port"].startswith("systemd:"):
                raise usage.UsageError(
                    f"--port '{self['port']}': no socket was passed by systemd (LISTEN_FDS/LISTEN_PID); "
                    "start the daemon through its .socket unit, or give a tcp: port"
                )
            raise usage.UsageError(f"--port '{self['port']}' is not a valid endpoint: {e}")
        except Exception as e:
            raise usage.UsageError(f"--port '{self['port']}' is not a valid endpoint: {e}")
        try:
            self["config"] = Config.from_options(self, secure=self["port"].startswith("ssl:"))
        except ValueError as e:
            raise usage.UsageError(str(e))


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


def tune_collector():
    """The daemon's garbage-collector settings, made once at its start."""
    # A daemon's start-up objects live forever: keep them out of the
    # collector's way, and collect young objects less often (a large push
    # allocates hundreds of thousands; each full pass paused fan-out for
    # 17-37 ms in the benchmarks). The middle generation is collected
    # after every third young pass, not every twenty-first (a generation
    # is collected once the younger one was collected more times than its
    # threshold): in a connect storm its pass reads every object made since
    # the last one and still alive, and over twenty-one young passes' worth
    # that held the reactor for 150-270 ms (35 ms over three). Full passes
    # keep their pace, one per ~460 passes, and still only once a quarter
    # of the old generation is new. Only in makeService: an embedding
    # program or a test keeps its own collector settings.
    gc.freeze()
    gc.set_threshold(20000, 2, 115)


def makeService(config, reactor=None):
    """The entry point of twistd and twist: process-wide tuning, then `build`."""
    tune_collector()
    take_over(config)
    if reactor is None:
        from twisted.internet import reactor
    # every device's ack is a reactor event: no log context per event
    # (a fifth of the CPU of a push to 100 acking devices; see leanpoll)
    leanpoll.install(reactor)
    root = build(config, reactor)
    # listen now, while stderr is still the terminal: a port that cannot be
    # had is one line and exit status 1, not a traceback in the log
    if "listener" in root.namedServices:
        root.getServiceNamed("listener").bind()
    return root


def build(config, reactor=None):
    """The daemon's service tree from parsed `Options`: the server and its
    port, sharing one store."""
    if reactor is None:
        from twisted.internet import reactor
    from lumora_reload import web
    from lumora_reload.server import HotReloadServer

    root = service.MultiService()
    hot = HotReloadServer(reactor=reactor, store=make_store(config, clock=reactor), config=config["config"])
    hot.setServiceParent(root)
    site = web.site(hot, reactor)
    inherited = os.environ.pop(workers.LISTEN_FD_ENV, None)
    if inherited is not None:  # one of --workers: the first process listens for us
        workers.AdoptedPort(reactor, int(inherited), site).setServiceParent(root)
    elif config["workers"] > 1:
        workers.SharedPort(reactor, config["port"], site, config["workers"]).setServiceParent(root)
    else:
        listener = Listener(config["port"], site, hot, reactor)
        listener.setName("listener")
        listener.setServiceParent(root)
    return root
