"""What the daemon counts, in Prometheus terms (``GET /metrics``).

Each `HotReloadServer` has its own `Metrics` and its own registry, so
several daemons in one process (tests, embedders) never mix their numbers.

Two kinds of numbers:

- State read when scraped (`_Live`): sessions, devices by protocol
  version, open connections, ack lag, bytes sent, Redis connections. Nothing
  is updated on the hot path for them; bytes sent are a plain integer
  added per frame.
- Events, counted where they happen through the `Events` interface:
  pushes (once per push, not per device), resumes, refusals, rate-limit
  closes, devices switched to latest-wins, store writes.

`Events` does nothing; a `Connection` built without a daemon (unit tests)
reports to it.
"""

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet import defer
from twisted.python.failure import Failure

from lumora_reload import messages
from lumora_reload.errors import LumoraError
from lumora_reload.store import StoreConflict

PREFIX = "lumora_reload_"

# the Prometheus text format every scraper reads
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# the `operation` label of store writes
STORE_WRITES = ("create_session", "commit_push", "save_session", "delete_session", "expire_session")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Events:
    """What the connection and service layers report as it happens. This
    base class ignores everything."""

    def frame_sent(self, size):
        """One message of `size` bytes was handed to a device's socket."""

    def push_refused(self, code):
        """A push refused (or failed) with error `code`, before or in the push."""

    def refused(self, endpoint, reason):
        """A request (`endpoint` "api" or "websocket") was refused for its
        `reason`: "host", "origin" or "token"."""

    def rate_limit_closed(self):
        """A device was closed for sending too fast."""

    def congested(self):
        """A device's socket fell behind: it now gets only the latest state."""

    def resumed(self, replayed):
        """A device reconnected naming the state it holds; `replayed` is
        True when it got only what it missed, False when it got it all."""


NO_EVENTS = Events()


def _now():
    # measured durations, not timing logic: a monotonic wall clock
    return time.perf_counter()


class Metrics(Events):
    """The numbers of one daemon, and their Prometheus registry."""

    def __init__(self, hub, connections, store=None, max_ack_lag=None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.bytes_sent = 0
        self.frames_sent = 0
        self.registry.register(_Live(self, hub, connections, store, max_ack_lag))
        r = self.registry
        self.pushes = Counter(
            PREFIX + "pushes", "Pushes accepted, by the update they became (none: schema unchanged)",
            ["type"], registry=r,
        )
        for kind in (messages.UPDATE_FULL, messages.UPDATE_INCREMENTAL, messages.UPDATE_NONE):
            self.pushes.labels(kind)
        self.push_failures = Counter(
            PREFIX + "push_failures", "Pushes refused or failed, by error code", ["code"], registry=r,
        )
        self.push_seconds = Histogram(
            PREFIX + "push_seconds",
            "From a push reaching the daemon to its last device being handed the frame",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.resumes = Counter(
            PREFIX + "resumes", "Reconnecting devices, by outcome: replayed (only what they missed) or full",
            ["outcome"], registry=r,
        )
        for outcome in ("replayed", "full"):
            self.resumes.labels(outcome)
        self.refusals = Counter(
            PREFIX + "refused_requests", "Requests and upgrades refused for their Host, Origin or missing token",
            ["endpoint", "reason"], registry=r,
        )
        for endpoint in ("api", "websocket"):
            for reason in ("host", "origin", "token"):
                self.refusals.labels(endpoint, reason)
        self.rate_limit_closes = Counter(
            PREFIX + "rate_limit_closes", "Devices closed (4429) for sending too fast", registry=r,
        )
        self.congestions = Counter(
            PREFIX + "slow_devices", "Devices whose socket fell behind and were switched to latest-wins",
            registry=r,
        )
        self.store_seconds = Histogram(
            PREFIX + "store_write_seconds", "Store writes, by operation", ["operation"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.store_failures = Counter(
            PREFIX + "store_write_failures", "Store writes that failed (a lost race with another daemon is not one)",
            ["operation"], registry=r,
        )
        for operation in STORE_WRITES:
            self.store_seconds.labels(operation)
            self.store_failures.labels(operation)

    def exposition(self):
        """The Prometheus text format of every metric, as bytes."""
        return generate_latest(self.registry)

    # -- Events ------------------------------------------------------------

    def frame_sent(self, size):
        self.frames_sent += 1
        self.bytes_sent += size

    def push_refused(self, code):
        """A push refused (or failed) with error `code`, before or in the push."""
        self.push_failures.labels(code).inc()

    def refused(self, endpoint, reason):
        self.refusals.labels(endpoint, reason).inc()

    def rate_limit_closed(self):
        self.rate_limit_closes.inc()

    def congested(self):
        self.congestions.inc()

    def resumed(self, replayed):
        self.resumes.labels("replayed" if replayed else "full").inc()

    # -- timed operations ----------------------------------------------------

    def timed_push(self, f, *args):
        """Call `f` (a push, returning a Deferred of a `PushResult`) and
        count its outcome and how long it took."""
        started = _now()
        d = f(*args)

        def done(result):
            if isinstance(result, Failure):
                self.push_refused(result.value.code if result.check(LumoraError) else "INTERNAL_ERROR")
            else:
                self.pushes.labels(result.update_type).inc()
                self.push_seconds.observe(_now() - started)
            return result

        return d.addBoth(done)

    def store_write(self, operation, f, *args):
        """`defer.maybeDeferred(f, *args)`, timed and counted as a store
        write named `operation`."""
        started = _now()
        d = defer.maybeDeferred(f, *args)

        def done(result):
            self.store_seconds.labels(operation).observe(_now() - started)
            if isinstance(result, Failure) and not result.check(StoreConflict):
                self.store_failures.labels(operation).inc()
            return result

        return d.addBoth(done)


class _Live(Collector):
    """Numbers read from the daemon's state when scraped."""

    def __init__(self, metrics, hub, connections, store, max_ack_lag):
        self.metrics = metrics
        self.hub = hub
        self.connections = connections
        self.store = store
        self.max_ack_lag = max_ack_lag

    def collect(self):
        hub = self.hub
        yield GaugeMetricFamily(PREFIX + "sessions", "Sessions held by this daemon", value=len(hub.sessions))
        yield GaugeMetricFamily(
            PREFIX + "connections", "Open device WebSocket connections (attached or not yet)",
            value=len(self.connections),
        )
        by_version = {}
        worst = 0
        lagging = 0
        for session in hub.sessions.values():
            sequence = session.sequence
            for device in session.devices.values():
                key = _protocol(device.client_version)
                by_version[key] = by_version.get(key, 0) + 1
                lag = max(0, sequence - device.last_ack_sequence)
                worst = max(worst, lag)
                if self.max_ack_lag is not None and lag > self.max_ack_lag:
                    lagging += 1
        devices = GaugeMetricFamily(
            PREFIX + "devices", "Devices attached to sessions, by protocol version (major.minor)", labels=["protocol"]
        )
        for key, count in sorted(by_version.items()):
            devices.add_metric([key], count)
        yield devices
        yield GaugeMetricFamily(
            PREFIX + "ack_lag_max", "The most updates any device is behind in acknowledging", value=worst
        )
        yield GaugeMetricFamily(
            PREFIX + "devices_lagging", "Devices more updates behind in acknowledging than --max-ack-lag",
            value=lagging,
        )
        yield CounterMetricFamily(
            PREFIX + "sent_bytes", "Bytes of WebSocket messages handed to devices", value=self.metrics.bytes_sent
        )
        yield CounterMetricFamily(
            PREFIX + "sent_frames", "WebSocket messages handed to devices", value=self.metrics.frames_sent
        )
        if self.store is not None:
            redis = GaugeMetricFamily(
                PREFIX + "redis_up", "Cluster mode: 1 while the connection to Redis is up, by connection",
                labels=["connection"],
            )
            for name, up in sorted(self.store.connection_state().items()):
                redis.add_metric([name], 1 if up else 0)
            yield redis


def _protocol(client_version):
    version = messages.parse_version(client_version)
    return f"{version[0]}.{version[1]}" if version is not None else "unknown"
