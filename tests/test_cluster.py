"""Cluster mode (``--redis``): two `twistd -n lumora-reload` subprocesses
sharing sessions through a real `redis-server` on a loopback port.

- pushes sent to each daemon in turn reach every device, in order, with the
  same sequence numbers everywhere;
- concurrent pushes on two daemons get unique, consecutive numbers;
- a daemon is killed: its device reconnects to the other one and resumes,
  the other daemon's device never notices;
- Redis stopped: pushes answer 503 "Redis unavailable", devices stay
  connected; Redis back: pushes work again;
- Redis unreachable at start-up: one line, exit status 1.
"""

import inspect
import os
import shutil
import socket
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task

from lumora_reload.cluster import ClusterError, check_reachable, parse_url
from tests.helpers import connected_device, make_schema, node, with_text
from tests.test_durability import TWISTD, DaemonProcess, Remote, stop

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed (Debian package redis-server)"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, directory):
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "3600 1", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        conf = parse_url(self.url)
        for _ in range(200):
            try:
                check_reachable(conf, timeout=0.5)
                return
            except ClusterError:
                if self.proc.poll() is not None:
                    raise RuntimeError("redis-server exited")
                time.sleep(0.02)  # fixture start-up only, bounded
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # saves the dump (--save) before exiting
            self.proc.wait(10)


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cluster(reactor, redis):
    """Start daemons on the fixture's Redis; kill the survivors at the end."""
    running = []

    async def start(*extra):
        proc = DaemonProcess()
        argv = [TWISTD, "-n", "--pidfile=", "lumora-reload", "--in-memory", "--redis", redis.url,
                "--port", "tcp:0:interface=127.0.0.1", *extra]
        reactor.spawnProcess(proc, TWISTD, argv, env=dict(os.environ))
        running.append(proc)
        port = await proc.started.addTimeout(30, reactor)
        remote = Remote(reactor, port)
        # ready once it has subscribed (a push before that answers 503)
        await until(lambda: b"subscribed to" in proc.output, reactor)
        return proc, remote

    yield start
    for proc in running:
        if not proc.ended.called:
            proc.signal("KILL")
            pytest_twisted.blockon(proc.ended)


async def until(predicate, reactor, tries=250, step=0.02):
    for _ in range(tries):
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await task.deferLater(reactor, step, lambda: None)
    raise AssertionError("condition not met in time")


def base_schema():
    pads = [node(f"pad{i}", text=f"padding {i} " + "x" * 40) for i in range(25)]
    return make_schema([node("root", "View", [node("title", text="Hello"), *pads])])


async def visible(remote, sid, reactor):
    async def check():
        status, _ = await remote.call("GET", f"/session/{sid}")
        return status == 200

    await until(check, reactor)


async def updates_until(device, last):
    seen = []
    while not seen or seen[-1]["sequenceNumber"] < last:
        message = await device.next_of("update")
        seen.append(message["payload"])
    return seen



async def shared_session(cluster, reactor):
    """Two daemons on one Redis and a session both of them know."""
    proc_a, a = await cluster()
    proc_b, b = await cluster()
    base = base_schema()
    sid = await a.new_session(base)
    await visible(b, sid, reactor)
    return proc_a, a, proc_b, b, base, sid

@pytest_twisted.ensureDeferred
async def test_pushes_on_each_daemon_in_turn_reach_every_device_in_order(reactor, cluster):
    proc_a, a, proc_b, b, base, sid = await shared_session(cluster, reactor)
    devices = []
    for i, remote in enumerate([a, b, a, b]):
        device, info = await connected_device(remote, sid, device_id=f"phone-{i}")
        assert info["sequenceNumber"] == 1
        devices.append(device)
    numbers = []
    for i in range(6):
        result = await [a, b][i % 2].push(sid, with_text(base, f"state {i}"))
        numbers.append(result["sequenceNumber"])
    assert numbers == list(range(2, 8))
    final = None
    for device in devices:
        seen = await updates_until(device, 7)
        assert [u["sequenceNumber"] for u in seen] == list(range(2, 8))
        final = final or seen[-1]["checksum"]
        assert seen[-1]["checksum"] == final
    for remote in (a, b):
        status, info = await remote.call("GET", f"/session/{sid}")
        assert info["sequenceNumber"] == 7
    for proc in (proc_a, proc_b):
        await stop(proc)  # SIGTERM: a clean exit, no traceback


@pytest_twisted.ensureDeferred
async def test_concurrent_pushes_on_two_daemons_get_unique_consecutive_numbers(reactor, cluster):
    _, a, _, b, base, sid = await shared_session(cluster, reactor)
    devices = {}
    for name, remote in [("a1", a), ("a2", a), ("b1", b), ("b2", b)]:
        devices[name], _ = await connected_device(remote, sid, device_id=name)
    pushes = [[a, b][i % 2].push(sid, with_text(base, f"concurrent {i}")) for i in range(10)]
    results = await defer.gatherResults(pushes, consumeErrors=True)
    assert sorted(r["sequenceNumber"] for r in results) == list(range(2, 12))
    seen = {name: await updates_until(d, 11) for name, d in devices.items()}
    checksums = set()
    for name, updates in seen.items():
        numbers = [u["sequenceNumber"] for u in updates]
        assert numbers == sorted(set(numbers)), (name, numbers)  # in order, no repeat
        checksums.add(updates[-1]["checksum"])
    assert len(checksums) == 1  # everybody ends on the same state
    # devices of one daemon get exactly the same stream
    assert [u["sequenceNumber"] for u in seen["a1"]] == [u["sequenceNumber"] for u in seen["a2"]]
    assert [u["sequenceNumber"] for u in seen["b1"]] == [u["sequenceNumber"] for u in seen["b2"]]


@pytest_twisted.ensureDeferred
async def test_device_of_a_killed_daemon_resumes_on_the_other(reactor, cluster):
    proc_a, a, _, b, base, sid = await shared_session(cluster, reactor)
    moving, _ = await connected_device(a, sid, device_id="moving")
    staying, _ = await connected_device(b, sid, device_id="staying")
    await a.push(sid, with_text(base, "one"))
    await b.push(sid, with_text(base, "two"))
    last = (await updates_until(moving, 3))[-1]["sequenceNumber"]
    proc_a.signal("KILL")
    await proc_a.ended
    await moving.wait_closed()
    await b.push(sid, with_text(base, "three"))
    await b.push(sid, with_text(base, "four"))
    again = await b.device(sid)
    info = await again.hello(device_id="moving", lastSequence=last)
    assert info["resumed"] is True
    replay = await updates_until(again, 5)
    assert [u["sequenceNumber"] for u in replay] == [4, 5]
    assert all(u["type"] == "incremental" for u in replay)
    assert [u["sequenceNumber"] for u in await updates_until(staying, 5)] == [2, 3, 4, 5]
    assert not staying.closed.called


@pytest_twisted.ensureDeferred
async def test_a_full_update_is_replayed_by_daemons_that_saw_it_and_by_others_while_current(reactor, cluster):
    """Redis keeps a full update without its frame: a daemon that saw the push replays it; one that
    read the history from Redis replays it while it is the current state, not once a push follows."""
    threshold = ("--incremental-threshold", "2")  # a two-node edit goes out full
    _, a = await cluster(*threshold)
    base = base_schema()
    sid = await a.new_session(base)
    one = with_text(base, "one")
    both = with_text(with_text(one, "two"), "two", "pad3")
    assert [(await a.push(sid, s))["updateType"] for s in (one, both)] == ["incremental", "full"]
    _, c = await cluster(*threshold)
    await visible(c, sid, reactor)

    async def resume(remote, device_id):
        device = await remote.device(sid)
        info = await device.hello(device_id=device_id, lastSequence=1)
        return device, info

    device, info = await resume(c, "late")
    assert info["resumed"] is True
    assert [(u["sequenceNumber"], u["type"]) for u in await updates_until(device, 3)] == [
        (2, "incremental"), (3, "full")]
    await a.push(sid, with_text(both, "three", "pad5"))
    await until(lambda: device.received and device.received[-1]["payload"].get("sequenceNumber") == 4, reactor)
    device.dropConnection()
    _, info = await resume(c, "later")
    assert info["resumed"] is False
    device, info = await resume(a, "early")
    assert info["resumed"] is True
    assert [u["sequenceNumber"] for u in await updates_until(device, 4)] == [2, 3, 4]
    device.dropConnection()


@pytest_twisted.ensureDeferred
async def test_pushes_fail_with_503_while_redis_is_down_and_work_after(reactor, cluster, redis):
    _, a, _, b, base, sid = await shared_session(cluster, reactor)
    on_a, _ = await connected_device(a, sid, device_id="on-a")
    on_b, _ = await connected_device(b, sid, device_id="on-b")
    await a.push(sid, with_text(base, "before"))
    redis.stop()

    async def refused():
        status, body = await b.call("POST", f"/send/{sid}", with_text(base, "during"))
        assert status in (200, 503), body
        return (status, body) if status == 503 else None

    status, body = await until(refused, reactor)
    assert body["code"] == "INTERNAL_ERROR" and "Redis unavailable" in body["error"]
    status, body = await a.call("POST", f"/send/{sid}", with_text(base, "during"))
    assert status == 503, body
    assert not on_a.closed.called and not on_b.closed.called
    redis.start()

    async def accepted(remote, text):
        async def once():
            status, body = await remote.call("POST", f"/send/{sid}", with_text(base, text))
            assert status in (200, 503), body
            return body if status == 200 else None

        return await until(once, reactor)

    # each daemon reconnects by itself (within about a second)
    assert (await accepted(a, "after"))["sequenceNumber"] == 3
    assert (await accepted(b, "after again"))["sequenceNumber"] == 4
    for device in (on_a, on_b):
        assert [u["sequenceNumber"] for u in await updates_until(device, 4)] == [2, 3, 4]
        assert not device.closed.called


@pytest.mark.parametrize("url, says", [
    ("redis://127.0.0.1:{port}/0", "cannot reach Redis at 127.0.0.1:"),
    ("http://127.0.0.1:{port}", "must start with redis:// or rediss://"),
])
def test_unusable_redis_at_start_up_is_one_line_and_exit_1(tmp_path, url, says):
    argv = [TWISTD, "-n", "--pidfile=", "lumora-reload", "--in-memory", "--redis",
            url.format(port=free_port()), "--port", "tcp:0:interface=127.0.0.1"]
    done = subprocess.run(argv, capture_output=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert b"Traceback" not in done.stdout + done.stderr


def test_redis_url_forms():
    assert parse_url("rediss://:secret@cache.example:6380/2") == {
        "host": "cache.example", "port": 6380, "db": 2, "tls": True, "username": None, "password": "secret",
    }
    with pytest.raises(ClusterError):
        parse_url("http://127.0.0.1:6379")


@pytest_twisted.ensureDeferred
async def test_push_on_another_daemon_right_after_create_and_delete_closes_devices_everywhere(reactor, cluster):
    _, a = await cluster()
    _, b = await cluster()
    base = base_schema()
    sid = await a.new_session(base)
    # no wait: b finds the session in Redis if its mirror has not got it yet
    result = await b.push(sid, with_text(base, "straight away"))
    assert result["sequenceNumber"] == 2
    on_a, _ = await connected_device(a, sid, device_id="on-a")
    await visible(b, sid, reactor)
    on_b, _ = await connected_device(b, sid, device_id="on-b")
    status, _ = await b.call("DELETE", f"/session/{sid}")
    assert status == 200
    for device in (on_a, on_b):
        code, _ = await device.wait_closed()
        assert code == 1000
    for remote in (a, b):
        status, body = await remote.call("POST", f"/send/{sid}", with_text(base, "gone"))
        assert status == 404, body
