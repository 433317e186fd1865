"""Durability (docs/protocol.md, section 5) with a real daemon: `twistd -n lumora-reload` as a subprocess
on a temporary data dir, killed and started again.

- SIGKILL at random moments of a push stream loses no answered push, and
  devices resume with their `lastSequence`;
- SIGTERM closes devices with 1012 and they resume after the restart;
- refusals (second daemon, unreadable or corrupt database, read-only data
  dir) are one line on stderr, a non-zero exit and no traceback.

The daemon listens on ``tcp:0`` and the test reads the port it got from its
log ("Site starting on N"), so no port can be taken between choosing and
binding it.
"""

import collections
import contextlib
import ctypes
import os
import random
import re
import signal
import subprocess
import sys

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, protocol, threads

from lumora_reload.sqlite_store import DB_NAME, SQLiteStore
from tests.helpers import Daemon, make_schema, node, with_text

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
STARTED = re.compile(rb"Site starting on (\d+)")


def daemon_argv(data_dir, *extra):
    return [
        TWISTD, "-n", "--pidfile=", "lumora-reload",
        "--port", "tcp:0:interface=127.0.0.1", "--data-dir", str(data_dir), *extra,
    ]


class DaemonProcess(protocol.ProcessProtocol):
    """A running `twistd -n lumora-reload`; `started` fires with its port,
    `ended` with its exit code (or -signal)."""

    def __init__(self):
        self.output = b""
        self.started = defer.Deferred()
        self.ended = defer.Deferred()

    def childDataReceived(self, fd, data):
        self.output += data
        found = STARTED.search(self.output)
        if found and not self.started.called:
            self.started.callback(int(found.group(1)))

    def processEnded(self, reason):
        code = reason.value.exitCode
        if code is None:
            code = -reason.value.signal
        if not self.started.called:
            self.started.errback(RuntimeError(f"daemon exited ({code}): {self.output.decode()}"))
        self.ended.callback(code)

    def signal(self, name):
        with contextlib.suppress(Exception):
            self.transport.signalProcess(name)


class Remote(Daemon):
    """The helpers' Daemon client methods, pointed at a daemon in another process."""

    def __init__(self, reactor, port):
        self.reactor = reactor
        self.server = None
        self.port = None
        self.url = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/ws"


@pytest.fixture
def spawn(reactor):
    """Start daemons; kill any still running at the end of the test."""
    running = []

    async def start(data_dir, *extra):
        proc = DaemonProcess()
        reactor.spawnProcess(proc, TWISTD, daemon_argv(data_dir, *extra), env=dict(os.environ))
        running.append(proc)
        port = await proc.started.addTimeout(30, reactor)
        return proc, Remote(reactor, port)

    yield start
    for proc in running:
        if not proc.ended.called:
            proc.signal("KILL")
            pytest_twisted.blockon(proc.ended)


async def stop(proc):
    """SIGTERM; twistd re-raises the signal after a clean shutdown, so the
    exit status is -SIGTERM."""
    proc.signal("TERM")
    assert await proc.ended == -signal.SIGTERM
    assert b"Traceback" not in proc.output, proc.output.decode()


def base_schema():
    """Small enough for every engine to send a one-node text change
    incremental."""
    pads = [node(f"pad{i}", text=f"padding {i} " + "x" * 40) for i in range(25)]
    return make_schema([node("root", "View", [node("title", text="Hello"), *pads])])


def last_sequence(device):
    """The newest state a device has seen."""
    seen = [0]
    for message in device.received:
        payload = message.get("payload") or {}
        if message["type"] in ("connected", "update"):
            seen.append(payload["sequenceNumber"])
    return max(seen)


@attrs.define
class Known:
    """What a session must look like after a restart."""

    sequence: int
    schema: dict
    pending: dict | None = None  # sent, never answered: may or may not be stored
    device: object = None


async def push_stream(remote, sid, known, counter):
    """Push new schemas to one session until the daemon stops answering."""
    for i in range(5000):
        schema = with_text(base_schema(), f"{sid[:4]} #{counter[0]}")
        counter[0] += 1
        known.pending = schema
        try:
            status, result = await remote.call("POST", f"/send/{sid}", schema)
        except Exception:
            return i
        assert status == 200, result
        assert result["sequenceNumber"] == known.sequence + 1, result
        known.sequence, known.schema, known.pending = result["sequenceNumber"], schema, None
    raise AssertionError("the daemon was never killed")


async def check_restored(remote, sessions, rng, tally):
    """Every session is back with its last answered push (or the one in
    flight, if it was committed before the kill), and its device resumes,
    replaying the updates it missed from the restored history."""
    status, stats = await remote.call("GET", "/stats")
    assert status == 200
    assert {s["id"] for s in stats["sessionDetails"]} == set(sessions)
    for sid, known in sessions.items():
        status, info = await remote.call("GET", f"/session/{sid}")
        assert status == 200, info
        status, current = await remote.call("GET", f"/session/{sid}/schema")
        n = info["sequenceNumber"]
        if n == known.sequence + 1 and known.pending is not None:
            assert current == known.pending  # committed, answer lost with the process
            tally["in-flight push stored"] += 1
        else:
            assert (n, current) == (known.sequence, known.schema), "an answered push was lost"
        known.sequence, known.schema, known.pending = n, current, None

        seen = last_sequence(known.device)
        assert seen <= n, "a device saw a state that was not stored"
        # as if the device had also missed the last few updates before the kill
        k = max(1, seen - rng.randint(0, 3))
        device = await remote.device(sid)
        hello = await device.hello(device_id=f"phone-{sid[:4]}", lastSequence=k)
        assert hello["sequenceNumber"] == n
        if n - k <= 3:  # history covers it
            assert hello["resumed"] is True, (k, n)
        if hello["resumed"]:
            tally["resumed"] += 1
            replay = [(await device.next_of("update"))["payload"] for _ in range(n - k)]
            assert [u["sequenceNumber"] for u in replay] == list(range(k + 1, n + 1))
            assert all(u["type"] == "incremental" for u in replay)
            tally["updates replayed"] += n - k
        else:
            assert hello["initialSchema"] == current
            tally["not resumed"] += 1
        known.device = device


@pytest.mark.parametrize("rounds", [3, pytest.param(25, marks=pytest.mark.slow)])
@pytest_twisted.ensureDeferred
async def test_sigkill_at_random_moments_loses_no_answered_push(reactor, spawn, tmp_path, seed, rounds):
    """Kill -9 a daemon at random moments of a push stream, `rounds` times:
    every answered push and every session is there after each restart, and
    devices resume. Random moments come from the printed seed (--seed)."""
    rng = random.Random(seed)
    data_dir = tmp_path / "state"
    sessions = {}
    counter = [0]
    tally = collections.Counter()
    for round_ in range(rounds):
        proc, remote = await spawn(data_dir)
        await check_restored(remote, sessions, rng, tally)
        for _ in range(2):
            sid = await remote.new_session(base_schema())
            sessions[sid] = Known(1, base_schema())
            sessions[sid].device = await remote.device(sid)
            await sessions[sid].device.hello(device_id=f"phone-{sid[:4]}")
        delay = rng.uniform(0.02, 0.4)
        reactor.callLater(delay, proc.signal, "KILL")
        pushed = await defer.gatherResults(
            [defer.ensureDeferred(push_stream(remote, sid, known, counter)) for sid, known in sessions.items()]
        )
        assert await proc.ended == -signal.SIGKILL
        for known in sessions.values():
            await known.device.wait_closed()
        print(f"seed {seed} round {round_}: killed after {delay:.3f}s, {sum(pushed)} pushes answered")
    proc, remote = await spawn(data_dir)
    await check_restored(remote, sessions, rng, tally)
    print(f"seed {seed}: {dict(tally)}")
    assert tally["resumed"] > 0
    for known in sessions.values():
        known.device.dropConnection()
    await stop(proc)


@pytest_twisted.ensureDeferred
async def test_sigterm_closes_devices_with_1012_and_they_resume(spawn, tmp_path):
    data_dir = tmp_path / "state"
    proc, remote = await spawn(data_dir)
    schema = base_schema()
    sid = await remote.new_session(schema)
    device = await remote.device(sid)
    await device.hello(device_id="phone")
    for i in range(4):
        await remote.push(sid, with_text(schema, f"v{i}"))
        await device.next_of("update")
    n = last_sequence(device)
    assert n == 5
    proc.signal("TERM")
    code, reason = await device.wait_closed()
    assert (code, reason) == (1012, "Service restart")
    await stop(proc)

    proc, remote = await spawn(data_dir)
    device = await remote.device(sid)
    hello = await device.hello(device_id="phone", lastSequence=n)
    assert (hello["resumed"], hello["sequenceNumber"]) == (True, n)
    assert "initialSchema" not in hello
    behind = await remote.device(sid)
    hello = await behind.hello(device_id="tablet", lastSequence=n - 2)
    assert hello["resumed"] is True
    replay = [(await behind.next_of("update"))["payload"]["sequenceNumber"] for _ in range(2)]
    assert replay == [n - 1, n]
    result = await remote.push(sid, with_text(schema, "after restart"))
    assert result["sequenceNumber"] == n + 1
    assert (await device.next_of("update"))["payload"]["sequenceNumber"] == n + 1
    for d in (device, behind):
        d.dropConnection()
    await stop(proc)


# -- refusals ----------------------------------------------------------------


def refuse(data_dir, *, no_dac=False):
    """Run the daemon, expect it to refuse: returns its one stderr line."""
    out = subprocess.run(
        daemon_argv(data_dir),
        capture_output=True, text=True, timeout=60,
        preexec_fn=_drop_dac if no_dac else None,
    )
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("lumora-reload: "), out.stderr
    return out.stderr


def _drop_dac():
    """In the child: give up root's power to ignore file permissions
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so chmod means something."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _permissions_bind():
    if os.geteuid() != 0:
        return True
    probe = subprocess.run(["true"], preexec_fn=_drop_dac, capture_output=True)
    return probe.returncode == 0


needs_permissions = pytest.mark.skipif(
    not _permissions_bind(), reason="running as root and cannot drop CAP_DAC_OVERRIDE"
)


def _stored_data_dir(path):
    store = SQLiteStore.open(str(path))
    store.load()
    store.close()
    return path


@pytest_twisted.ensureDeferred
async def test_second_daemon_on_the_same_data_dir_refuses(reactor, spawn, tmp_path):
    proc, remote = await spawn(tmp_path)
    line = await threads.deferToThread(refuse, tmp_path)
    assert "already using --data-dir" in line and "pid" in line
    status, health = await remote.call("GET", "/health")  # the first one is unharmed
    assert status == 200
    await stop(proc)


def test_corrupt_database_refuses(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"not a database, honestly" * 200)
    line = refuse(tmp_path)
    assert "is not a lumora-reload database or is damaged" in line and "move it aside" in line


def test_data_dir_that_is_a_file_refuses(tmp_path):
    (tmp_path / "file").write_text("")
    assert "is not a directory" in refuse(tmp_path / "file")


@needs_permissions
def test_unreadable_database_refuses(tmp_path):
    _stored_data_dir(tmp_path)
    os.chmod(tmp_path / DB_NAME, 0)
    line = refuse(tmp_path, no_dac=True)
    assert f"cannot open {tmp_path / DB_NAME}: Permission denied" in line


@needs_permissions
@pytest.mark.parametrize("existing", [False, True], ids=["empty", "with-database"])
def test_read_only_data_dir_refuses(tmp_path, existing):
    data_dir = tmp_path / "state"
    if existing:
        _stored_data_dir(data_dir)
    else:
        data_dir.mkdir()
    os.chmod(data_dir, 0o500)
    try:
        line = refuse(data_dir, no_dac=True)
    finally:
        os.chmod(data_dir, 0o700)
    assert "writable" in line and str(data_dir) in line
