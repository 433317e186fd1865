"""The framework floor of the throughput benchmark: the trivial server built
from Twisted, twisted.web and Autobahn answers what the load generator asks,
broadcasts a POSTed body as it is, and in its lean kind is built from the
daemon's own transport layer."""

import orjson
import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet import endpoints, task
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.policies import WrappingFactory

from benchmarks import framework_floor
from lumora_reload import leanpoll
from lumora_reload.access import AccessPolicy
from lumora_reload.directwrite import DirectWriteWrapper
from lumora_reload.web import CorkedRequest
from lumora_reload.websocket import DeviceFactory
from tests.helpers import open_device

UPDATE = b'{"type":"update","sessionId":"floor","payload":{"delta":{},"sequenceNumber":%d}}'


async def _post(url, body):
    response = await treq.post(url, data=body, persistent=False)
    return response.code, orjson.loads(await treq.content(response))


async def _until(reactor, condition):
    for _ in range(500):
        if condition():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("not reached in 5 s")


@pytest.mark.parametrize("kind", framework_floor.KINDS)
@pytest_twisted.ensureDeferred
async def test_greets_a_device_broadcasts_a_posted_body_and_drops_what_devices_send(reactor, kind, monkeypatch):
    # Autobahn's general read path: the lean kind reads a device's acks without it
    general_reads = []
    general = WebSocketServerProtocol._dataReceived
    monkeypatch.setattr(WebSocketServerProtocol, "_dataReceived",
                        lambda self, data: (general_reads.append(len(data)), general(self, data))[1])
    site = framework_floor.site(kind)
    devices = (site.wrappedFactory if kind == "lean" else site).resource.children[b"ws"]._factory
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(site)
    base = f"127.0.0.1:{port.getHost().port}"
    device = None
    try:
        device = await open_device(reactor, f"ws://{base}/ws?session=floor")
        connected = await device.next()
        assert connected["type"] == "connected"
        assert connected["payload"]["sequenceNumber"] == 0
        general_reads.clear()  # the opening handshake

        for seq in (7, 8):
            status, answer = await _post(f"http://{base}/send/floor", UPDATE % seq)
            assert (status, answer["devicesUpdated"], answer["sequenceNumber"]) == (200, 1, seq)
            assert await device.next() == orjson.loads(UPDATE % seq)
            # an ack is read and dropped; the connection stays open
            device.send("ack", {"sequenceNumber": seq, "success": True})
        await _until(reactor, lambda: devices.dropped == 2)

        response = await treq.get(f"http://{base}/health", persistent=False)
        assert orjson.loads(await treq.content(response))["totalDevices"] == 1
        for method, path in (("GET", "/send/floor"), ("POST", "/health")):
            response = await treq.request(method, f"http://{base}{path}", persistent=False)
            assert response.code == 404
            await treq.content(response)
        assert device.received[1:] == [orjson.loads(UPDATE % 7), orjson.loads(UPDATE % 8)]
        assert (general_reads == []) == (kind == "lean"), general_reads
    finally:
        if device is not None:
            device.sendClose()
            await device.wait_closed()
        await port.stopListening()


def test_the_lean_kind_is_built_as_the_daemon_builds_its_port():
    """The direct-write wrapper around every connection, the corked request, and device
    connections that read whole frames up to the daemon's own limit."""
    site = framework_floor.site("lean")
    assert isinstance(site, WrappingFactory) and site.protocol is DirectWriteWrapper
    assert site.wrappedFactory.requestFactory is CorkedRequest
    devices = site.wrappedFactory.resource.children[b"ws"]._factory
    daemon = DeviceFactory(hub=None, policy=AccessPolicy(), reactor=MemoryReactorClock())
    assert devices.protocol._fast_limit == daemon.protocol._fast_limit > 0
    assert type(framework_floor.site("stock")) is framework_floor.QuietSite


@pytest.mark.parametrize("kind", framework_floor.KINDS)
def test_both_kinds_get_the_daemons_collector_settings_and_the_lean_one_its_reactor_loop(kind, monkeypatch):
    tuned = []
    monkeypatch.setattr(framework_floor.tap, "tune_collector", lambda: tuned.append(True))
    reactor = EPollReactor()
    try:
        framework_floor.prepare(reactor, kind)
        assert tuned == [True]
        assert leanpoll.installed(reactor) == (kind == "lean")
    finally:
        reactor.removeReader(reactor.waker)
        reactor.waker.connectionLost(None)
        reactor._poller.close()


def test_the_throughput_loop_runs_every_floor_unless_asked_otherwise(capsys):
    from benchmarks.__main__ import parse_args

    assert parse_args(["--only", "throughput"]).throughput_floors == ["asyncio", "stock", "lean"]
    assert parse_args(["--quick"]).throughput_floors == ["asyncio"]
    assert parse_args(["--throughput-floors", "lean,lean"]).throughput_floors == ["lean"]
    with pytest.raises(SystemExit):
        parse_args(["--throughput-floors", "asyncio,nginx"])
    assert "unknown floor 'nginx'" in capsys.readouterr().err


def test_a_floor_broadcasts_the_daemons_update_renumbered():
    """The floors send the bytes the daemon sent, only the sequence number changed; an update
    with two sequence numbers is refused rather than guessed at."""
    from benchmarks.harness import renumbered

    update = b'{"type":"update","payload":{"delta":{"n":"1"},"checksum":"ab12","sequenceNumber":41}}'
    assert renumbered(update, 7) == update.replace(b":41}", b":7}")
    assert renumbered(update, 123456) == update.replace(b":41}", b":123456}")
    with pytest.raises(RuntimeError):
        renumbered(update.replace(b'"n":"1"', b'"sequenceNumber":1'), 7)


def test_the_throughput_target_names_the_framework_floors_and_the_box_during_the_daemons_loop():
    from benchmarks import report

    def loop(rate, cpu):
        return {"delivered_rate": rate, "server_cpu_per_push_ms": cpu, "gaps": 0, "reorders": 0,
                "all_devices_have_last": True, "errors": {}, "closes": {}, "generator_cpu_per_push_ms": 1.7}

    run = {"variant": "daemon defaults", "devices": 100, "load": {"cores_busy": 1.9},
           "daemon": dict(loop(459.0, 1.99), cores_busy=1.4), "floor": loop(1211.0, 0.4),
           "floor_stock": loop(113.0, 8.7), "floor_lean": loop(599.0, 1.3)}
    (line,) = [t for t in report.targets({"throughput": [run], "machine": {"cores": 2}}) if "600" in t[0]]
    assert line[2] is False
    assert "Twisted, twisted.web, Autobahn 113.0/s (8.7 ms CPU per push)" in line[1]
    assert "the daemon's transport layer 599.0/s (1.3 ms CPU per push)" in line[1]
    assert "1.40 of 2 cores busy" in line[1]
    del run["daemon"]["cores_busy"], run["floor_stock"], run["floor_lean"]  # a run from before
    (line,) = [t for t in report.targets({"throughput": [run], "machine": {"cores": 2}}) if "600" in t[0]]
    assert "1.90 of 2 cores busy" in line[1] and "framework floor" not in line[1]
