"""GET /metrics: a live daemon scraped over real HTTP after real pushes,
devices, resumes and refusals; the text parses cleanly and follows the
Prometheus naming conventions."""

import pathlib
import re
import shutil

import orjson
import pytest
import pytest_twisted
import treq
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.web.test.requesthelper import DummyRequest

from lumora_reload.cluster import RedisStore
from lumora_reload.connection import Connection, Flow, Phase
from lumora_reload.metrics import Metrics
from lumora_reload.server import HotReloadServer
from lumora_reload.sessions import Hub
from lumora_reload.store import MemoryStore, StoreConflict, StoreUnavailable
from lumora_reload.web import ws_path_parts
from tests.helpers import Daemon, connected_device, make_schema, node, with_text
from tests.test_access import _render
from tests.test_cluster import RedisServer, until
from tests.test_connection import attached, frame, push

ensure = pytest_twisted.ensureDeferred


async def scrape(daemon, headers=None):
    """GET /metrics; returns (status, content type, {sample name + labels: value})."""
    response = await treq.get(daemon.url + "/metrics", headers=headers, persistent=False)
    text = (await treq.content(response)).decode()
    if response.code != 200:
        return response.code, None, text
    return response.code, response.headers.getRawHeaders("content-type")[0], samples(text)


def samples(text):
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


@ensure
async def test_metrics_count_sessions_devices_pushes_bytes_and_latency(daemon):
    """Sessions, devices by protocol version, pushes by type, bytes and push latency follow real traffic."""
    pads = [node(f"pad{i}", text="x" * 300) for i in range(12)]
    schema = make_schema([node("root", "View", [node("title", text="Hello"), *pads])])
    sid = await daemon.new_session(schema)
    await daemon.new_session()
    current, _ = await connected_device(daemon, sid, device_id="new", client_version="1.1.0")
    legacy, _ = await connected_device(daemon, sid, device_id="old", client_version="1.0.0")
    await daemon.push(sid, with_text(schema, "one"))  # incremental
    await daemon.push(sid, with_text(schema, "one"))  # unchanged
    other = make_schema([node("root", "View", [node(f"pad{i}", text="y" * 300) for i in range(12)])])
    assert (await daemon.push(sid, other))["updateType"] == "full"  # every node changed
    for device in (current, legacy):
        await device.next_of("update")
        await device.next_of("update")
    status, content_type, found = await scrape(daemon)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert found["lumora_reload_sessions{}"] == 2
    assert found["lumora_reload_connections{}"] == 2
    assert found["lumora_reload_devices{protocol=1.1}"] == 1
    assert found["lumora_reload_devices{protocol=1.0}"] == 1
    assert found["lumora_reload_pushes_total{type=incremental}"] == 1
    assert found["lumora_reload_pushes_total{type=full}"] == 1
    assert found["lumora_reload_pushes_total{type=none}"] == 1
    assert found["lumora_reload_push_seconds_count{}"] == 3
    assert found["lumora_reload_push_seconds_bucket{le=+Inf}"] == 3
    # connected + two updates per device, every byte of them counted
    received = sum(len(orjson.dumps(m)) for m in current.received + legacy.received)
    assert found["lumora_reload_sent_frames_total{}"] == 6
    assert found["lumora_reload_sent_bytes_total{}"] == received
    assert found["lumora_reload_store_write_seconds_count{operation=commit_push}"] == 3
    assert found["lumora_reload_store_write_failures_total{operation=commit_push}"] == 0
    # neither device acknowledged any of the three states
    assert found["lumora_reload_ack_lag_max{}"] == 3


@ensure
async def test_ack_lag_and_lagging_devices_follow_acks(daemon_factory):
    """The worst ack lag and the devices past --max-ack-lag are read from the devices when scraped."""
    daemon = await daemon_factory(max_ack_lag=1)
    schema = make_schema()
    sid = await daemon.new_session(schema)
    device, _ = await connected_device(daemon, sid)
    for text in ("a", "b", "c"):
        schema = with_text(schema, text)
        await daemon.push(sid, schema)
    _, _, found = await scrape(daemon)
    # a device that never acknowledged is behind by every state (as in /session/:id/health)
    assert found["lumora_reload_ack_lag_max{}"] == 4 and found["lumora_reload_devices_lagging{}"] == 1
    device.send("ack", {"sequenceNumber": 4, "success": True})
    device.send("ping", {})
    await device.next_of("pong")
    _, _, found = await scrape(daemon)
    assert found["lumora_reload_ack_lag_max{}"] == 0 and found["lumora_reload_devices_lagging{}"] == 0


@ensure
async def test_resumes_are_counted_by_outcome(daemon_factory):
    """A device resuming inside the history counts as replayed, one outside it as full."""
    daemon = await daemon_factory(history_size=2)
    schema = make_schema()
    sid = await daemon.new_session(schema)
    for i in range(4):
        schema = with_text(schema, f"v{i}")
        await daemon.push(sid, schema)
    _, info = await connected_device(daemon, sid, device_id="a", lastSequence=1)
    assert info["resumed"] is False
    _, info = await connected_device(daemon, sid, device_id="b", lastSequence=4)
    assert info["resumed"] is True
    await connected_device(daemon, sid, device_id="c")  # a first connection is no resume
    _, _, found = await scrape(daemon)
    assert found["lumora_reload_resumes_total{outcome=replayed}"] == 1
    assert found["lumora_reload_resumes_total{outcome=full}"] == 1


@ensure
async def test_refused_hosts_and_origins_are_counted_per_endpoint(daemon):
    """A refused Host or Origin on the REST API or the device WebSocket is counted with its reason."""
    status, _ = await daemon.call("GET", "/stats", headers={"Host": "evil.example"})
    assert status == 403
    status, _ = await daemon.call("GET", "/stats", headers={"Origin": "http://evil.example"})
    assert status == 403
    sid = await daemon.new_session()
    device = await daemon.device(sid, headers={"Origin": "http://evil.example"})
    assert (await device.wait_closed())[0] == 4403
    _, _, found = await scrape(daemon)
    assert found["lumora_reload_refused_requests_total{endpoint=api,reason=host}"] == 1
    assert found["lumora_reload_refused_requests_total{endpoint=api,reason=origin}"] == 1
    assert found["lumora_reload_refused_requests_total{endpoint=websocket,reason=origin}"] == 1
    assert found["lumora_reload_refused_requests_total{endpoint=websocket,reason=host}"] == 0


@ensure
async def test_refused_preview_pages_are_counted_as_requests(daemon):
    """A browser page (/preview, /assets) refused for its Host or Origin counts as a refused request."""
    sid = await daemon.new_session()
    status, _ = await daemon.call("GET", f"/preview/{sid}", headers={"Host": "evil.example"})
    assert status == 403
    status, _ = await daemon.call("GET", "/assets/preview.js", headers={"Origin": "http://evil.example"})
    assert status == 403
    _, _, found = await scrape(daemon)
    assert found["lumora_reload_refused_requests_total{endpoint=api,reason=host}"] == 1
    assert found["lumora_reload_refused_requests_total{endpoint=api,reason=origin}"] == 1


@ensure
async def test_metrics_refuse_a_foreign_host_like_every_control_endpoint(daemon):
    """/metrics is refused for a Host naming another machine, as the rest of the control API."""
    status, _, text = await scrape(daemon, headers={"Host": "evil.example"})
    assert status == 403 and "FORBIDDEN" in text


def test_metrics_refuse_a_lan_client_without_token(clock):
    """A non-loopback client needs the API token for /metrics; a refused one counts as a token refusal."""
    server = HotReloadServer(reactor=clock, clock=clock, api_token="tok")
    status, body = _render(server, "/metrics", headers={"Host": "192.168.1.10:8080"})
    assert status == 403 and body["code"] == "FORBIDDEN"
    status, _ = _render(server, "/stats", headers={"Host": "192.168.1.10:8080", "Authorization": "Bearer no"})
    assert status == 403
    found = samples(server.metrics.exposition().decode())
    assert found["lumora_reload_refused_requests_total{endpoint=api,reason=token}"] == 2


def test_metrics_are_served_to_a_lan_client_with_the_token(clock):
    """With 'Authorization: Bearer <token>' a non-loopback client gets the Prometheus text."""
    server = HotReloadServer(reactor=clock, clock=clock, api_token="tok")
    request = DummyRequest([b"metrics"])
    request.method = b"GET"
    request.client = IPv4Address("TCP", "192.168.1.50", 50000)
    request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer tok"])
    resource = server.resource().getChildWithDefault(request.postpath.pop(0), request)
    body = resource.render(request)
    assert (request.responseCode or 200) == 200
    assert "lumora_reload_sessions 0.0" in body.decode()


class BrokenStore(MemoryStore):
    def commit_push(self, update):
        raise StoreUnavailable("disk gone")


@ensure
async def test_store_write_failures_and_push_failures_are_counted(daemon_factory):
    """A store that fails a write is counted per operation, and the refused push by its code."""
    daemon = await daemon_factory(store=BrokenStore())
    sid = await daemon.new_session()
    await daemon.push(sid, make_schema(), expect=503)
    await daemon.push(sid, {"nodes": "not a list"}, expect=400)
    _, _, found = await scrape(daemon)
    assert found["lumora_reload_store_write_failures_total{operation=commit_push}"] == 1
    assert found["lumora_reload_store_write_failures_total{operation=create_session}"] == 0
    assert found["lumora_reload_push_failures_total{code=INTERNAL_ERROR}"] == 1
    assert found["lumora_reload_push_failures_total{code=SCHEMA_VALIDATION_FAILED}"] == 1
    assert found["lumora_reload_push_seconds_count{}"] == 0


@ensure
async def test_a_push_refused_for_its_body_is_counted_under_its_code(daemon_factory):
    """A /send body refused before any push starts (too large, not JSON, not
    sent as JSON, a number no device can read) is a refused push too."""
    daemon = await daemon_factory(max_body_size=4096)
    sid = await daemon.new_session()
    for data, content_type, status in [(b"[" * 5000, "application/json", 413), (b"{nope", "application/json", 400),
                                       (b"{}", "text/plain", 415), (b'{"n": 1e400}', "application/json", 400)]:
        code, _ = await daemon.call("POST", f"/send/{sid}", data=data, headers={"Content-Type": content_type})
        assert code == status
    _, _, found = await scrape(daemon)
    assert found["lumora_reload_push_failures_total{code=PAYLOAD_TOO_LARGE}"] == 1
    assert found["lumora_reload_push_failures_total{code=BAD_REQUEST}"] == 2
    assert found["lumora_reload_push_failures_total{code=SCHEMA_VALIDATION_FAILED}"] == 1


def test_rate_limit_closes_and_slow_devices_are_counted(clock):
    """A device closed for flooding and a device switched to latest-wins are each counted once."""
    hub = Hub(clock)
    metrics = Metrics(hub, set())
    schema = make_schema()
    sid = hub.create_session(schema).id
    slow, _ = attached(hub, sid, clock, device_id="slow", max_buffer=1, events=metrics)
    slow.paused()
    push(hub, sid, schema := with_text(schema, "one"))
    push(hub, sid, with_text(schema, "two"))
    assert slow.flow is Flow.CONGESTED
    flood, _ = attached(hub, sid, clock, device_id="flood", rate_limit=1, rate_burst=1, events=metrics)
    for _ in range(5):
        flood.received(frame("ping", sid))
    assert flood.phase is Phase.CLOSING
    found = samples(metrics.exposition().decode())
    assert found["lumora_reload_slow_devices_total{}"] == 1
    assert found["lumora_reload_rate_limit_closes_total{}"] == 1


def test_a_connection_without_a_daemon_reports_to_no_one(clock):
    """A Connection built on its own (no metrics) works as before."""
    hub = Hub(clock)
    sid = hub.create_session(make_schema()).id
    connection, wire = attached(hub, sid, clock)
    assert isinstance(connection, Connection) and wire.types() == ["connected"]


def test_two_daemons_in_one_process_keep_their_own_numbers(clock):
    """Every daemon has its own registry: one's sessions never show in the other's metrics."""
    one = HotReloadServer(reactor=clock, clock=clock)
    two = HotReloadServer(reactor=clock, clock=clock)
    one.create_session()
    assert samples(one.metrics.exposition().decode())["lumora_reload_sessions{}"] == 1
    assert samples(two.metrics.exposition().decode())["lumora_reload_sessions{}"] == 0


def test_an_embedder_can_add_its_own_collectors_to_the_registry(clock):
    """server.metrics.registry is a CollectorRegistry whose additions appear in /metrics."""
    server = HotReloadServer(reactor=clock, clock=clock)
    assert isinstance(server.metrics.registry, CollectorRegistry)
    Counter("myapp_builds", "Builds", registry=server.metrics.registry).inc()
    found = samples(server.metrics.exposition().decode())
    assert found["myapp_builds_total{}"] == 1 and "lumora_reload_sessions{}" in found


# Prometheus naming: snake case, our prefix, counters end in _total, a unit
# suffix in base units where there is a unit
NAME = re.compile(r"^lumora_reload_[a-z][a-z0-9_]*$")


@ensure
async def test_every_metric_is_named_by_the_conventions(daemon):
    """Every family has the prefix and HELP text; counters end in _total; durations in _seconds, sizes in _bytes."""
    sid = await daemon.new_session(make_schema())
    await connected_device(daemon, sid)
    response = await treq.get(daemon.url + "/metrics", persistent=False)
    text = (await treq.content(response)).decode()
    found = families(text)
    assert len(found) >= 15
    for name, family in found.items():
        assert NAME.match(name), name
        assert family.documentation, name
        for sample in family.samples:
            assert NAME.match(sample.name), sample.name
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
        if family.type == "histogram":
            assert name.endswith("_seconds"), name
        assert not re.search(r"(millis|_ms$|_kb|_mb|_milliseconds)", name), name
    assert found["lumora_reload_sent_bytes"].type == "counter"
    assert not any("python_" in n or "process_" in n for n in found)  # not the process-global collectors


@pytest.fixture
def redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@ensure
async def test_cluster_mode_reports_the_redis_connections(reactor, redis):
    """In cluster mode redis_up says 1 per connection while Redis answers and 0 once it is gone."""
    daemon = Daemon(reactor, store=RedisStore.open(redis.url, reactor))
    await daemon.start()
    try:
        await until(lambda: daemon.server.store.available(), reactor)
        _, _, found = await scrape(daemon)
        assert found["lumora_reload_redis_up{connection=commands}"] == 1
        assert found["lumora_reload_redis_up{connection=subscription}"] == 1
        redis.stop()

        async def down():
            _, _, found = await scrape(daemon)
            return found["lumora_reload_redis_up{connection=subscription}"] == 0

        await until(down, reactor)
    finally:
        await daemon.stop()


def test_a_single_daemon_reports_no_redis(clock):
    """Without a shared store there is no Redis metric at all."""
    server = HotReloadServer(reactor=clock, clock=clock)
    assert "redis" not in server.metrics.exposition().decode()


def test_store_write_is_timed_even_when_it_fails_at_once():
    """A store method raising synchronously becomes a failed Deferred, timed and counted."""
    metrics = Metrics(Hub(None), set())

    def boom():
        raise OSError("disk full")

    d = metrics.store_write("save_session", boom)
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(OSError)
    found = samples(metrics.exposition().decode())
    assert found["lumora_reload_store_write_failures_total{operation=save_session}"] == 1
    assert found["lumora_reload_store_write_seconds_count{operation=save_session}"] == 1
    assert isinstance(d, defer.Deferred)


README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_lists_every_metric_and_no_other(clock):
    """The README's metrics table names exactly the families a daemon exposes (Redis ones in cluster mode)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Metrics"):].split("\n## ", 2)[1]
    listed = set(re.findall(r"^\| `(lumora_reload_[a-z_]+)", section, re.M))
    server = HotReloadServer(reactor=clock, clock=clock)
    exposed = {
        # a counter family is named without _total; its sample is what the README shows
        name + ("_total" if family.type == "counter" else "")
        for name, family in families(server.metrics.exposition().decode()).items()
        if not name.endswith("_created")  # prometheus_client's start times, named in the README
    }
    assert listed == exposed | {"lumora_reload_redis_up"}


def test_latency_buckets_run_from_half_a_millisecond_to_ten_seconds(clock):
    """Both histograms have the buckets the README states."""
    server = HotReloadServer(reactor=clock, clock=clock)
    found = families(server.metrics.exposition().decode())
    for name in ("lumora_reload_push_seconds", "lumora_reload_store_write_seconds"):
        bounds = sorted({float(s.labels["le"]) for s in found[name].samples if "le" in s.labels})
        assert bounds[0] == 0.0005 and bounds[-2] == 10.0 and bounds[-1] == float("inf"), name


def test_a_lost_race_with_another_daemon_is_not_a_store_failure():
    """A commit refused with StoreConflict (another daemon was first) is timed but not counted as failed."""
    metrics = Metrics(Hub(None), set())

    def conflict():
        raise StoreConflict(3)

    metrics.store_write("commit_push", conflict).addErrback(lambda f: f.trap(StoreConflict))
    found = samples(metrics.exposition().decode())
    assert found["lumora_reload_store_write_failures_total{operation=commit_push}"] == 0
    assert found["lumora_reload_store_write_seconds_count{operation=commit_push}"] == 1


@pytest.mark.parametrize("ws_path", ["/metrics", "/openapi.json/ws"])
def test_a_ws_path_hiding_the_new_endpoints_is_refused(ws_path):
    """--ws-path cannot take the place of /metrics or /openapi.json."""
    with pytest.raises(ValueError, match="would hide the control API"):
        ws_path_parts(ws_path)


def test_the_events_base_ignores_every_event():
    """`Events` (what a connection built without a daemon reports to) does nothing, whatever the event."""
    from lumora_reload.metrics import NO_EVENTS, Events
    for name in [n for n in vars(Events) if not n.startswith("_")]:
        method = getattr(NO_EVENTS, name)
        args = {"frame_sent": (10,), "push_refused": ("BAD_REQUEST",), "refused": ("api", "host"),
                "resumed": (True,)}.get(name, ())
        assert method(*args) is None, name
