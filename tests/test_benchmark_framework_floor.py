"""The framework floor of the throughput benchmark: the trivial server built
from Twisted, twisted.web and Autobahn answers what the load generator asks,
and broadcasts a POSTed body as it is."""

import orjson
import pytest
import pytest_twisted
import treq
from twisted.internet import endpoints

from benchmarks import framework_floor
from tests.helpers import open_device

UPDATE = b'{"type":"update","sessionId":"floor","payload":{"delta":{},"sequenceNumber":%d}}'


async def _post(url, body):
    response = await treq.post(url, data=body, persistent=False)
    return response.code, orjson.loads(await treq.content(response))


@pytest.mark.parametrize("kind", framework_floor.KINDS)
@pytest_twisted.ensureDeferred
async def test_greets_a_device_broadcasts_a_posted_body_and_drops_what_devices_send(reactor, kind):
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(framework_floor.site(kind))
    base = f"127.0.0.1:{port.getHost().port}"
    device = None
    try:
        device = await open_device(reactor, f"ws://{base}/ws?session=floor")
        connected = await device.next()
        assert connected["type"] == "connected"
        assert connected["payload"]["sequenceNumber"] == 0

        for seq in (7, 8):
            status, answer = await _post(f"http://{base}/send/floor", UPDATE % seq)
            assert (status, answer["devicesUpdated"], answer["sequenceNumber"]) == (200, 1, seq)
            assert await device.next() == orjson.loads(UPDATE % seq)
            # an ack is read and dropped; the connection stays open
            device.send("ack", {"sequenceNumber": seq, "success": True})

        response = await treq.get(f"http://{base}/health", persistent=False)
        assert orjson.loads(await treq.content(response))["totalDevices"] == 1
        assert device.received[1:] == [orjson.loads(UPDATE % 7), orjson.loads(UPDATE % 8)]
    finally:
        if device is not None:
            device.sendClose()
            await device.wait_closed()
        await port.stopListening()


def test_the_throughput_loop_runs_every_floor_unless_asked_otherwise(capsys):
    from benchmarks.__main__ import parse_args

    assert parse_args(["--only", "throughput"]).throughput_floors == ["asyncio", "stock", "lean"]
    assert parse_args(["--quick"]).throughput_floors == ["asyncio"]
    assert parse_args(["--throughput-floors", "lean"]).throughput_floors == ["lean"]
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
