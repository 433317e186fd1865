"""The `lumora-reload` console script, run for real (``python -m
lumora_reload``) as a subprocess against a real daemon on loopback. The
daemon lives in this test's reactor, so subprocesses are spawned through the
reactor (never subprocess.run, which would block the daemon)."""

import io
import json
import os
import socket
import sys

import attrs
import pytest
import pytest_twisted
import segno
from twisted.internet import defer, protocol, task, utils

from lumora_reload import cli
from lumora_reload.client import DeviceClient
from tests.helpers import WAIT, connected_device, make_schema, node, with_text

ensure = pytest_twisted.ensureDeferred

ENV = dict(os.environ, PYTHONIOENCODING="utf-8", NO_COLOR="1", PYTHONUNBUFFERED="1")
ENV.pop("LUMORA_RELOAD_TOKEN", None)


async def run(daemon, *args, stdin=None, url=None):
    """Run the CLI to completion; returns (exit code, stdout, stderr)."""
    argv = ["-m", "lumora_reload", "--url", url or daemon.url, *args]
    if stdin is None:
        d = utils.getProcessOutputAndValue(sys.executable, argv, env=ENV)
        out, err, code = await d.addTimeout(30, daemon.reactor)
    else:
        proc = Proc(daemon.reactor, argv, stdin=stdin)
        code = await proc.wait_exit()
        out, err = proc.out, proc.err
    return code, out.decode("utf-8"), err.decode("utf-8")


class Proc(protocol.ProcessProtocol):
    """A running CLI whose stdout lines can be awaited."""

    def __init__(self, reactor, argv, stdin=None, cwd=None):
        self.reactor = reactor
        self.out = b""
        self.err = b""
        self.lines = []
        self._waiters = []
        self.exited = defer.Deferred()
        self._stdin = stdin
        self.transport = reactor.spawnProcess(self, sys.executable, [sys.executable, *argv], env=ENV, path=cwd)

    def connectionMade(self):
        if self._stdin is not None:
            self.transport.write(self._stdin)
            self.transport.closeStdin()

    def outReceived(self, data):
        self.out += data
        *complete, rest = self.out.decode("utf-8", "replace").split("\n")
        for line in complete[len(self.lines):]:
            self.lines.append(line)
            for waiter in list(self._waiters):
                predicate, d = waiter
                if predicate(line):
                    self._waiters.remove(waiter)
                    d.callback(line)

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.exited.callback(reason.value.exitCode)

    def wait_line(self, predicate, timeout=WAIT):
        """The next line (from now on) for which `predicate` holds."""
        d = defer.Deferred()
        self._waiters.append((predicate, d))
        return d.addTimeout(timeout, self.reactor)

    def wait_exit(self, timeout=30):
        d = defer.Deferred()
        self.exited.addBoth(lambda r: (d.called or d.callback(r), r)[1])
        return d.addTimeout(timeout, self.reactor)

    def stop(self):
        if not self.exited.called:
            self.transport.signalProcess("TERM")
        return self.wait_exit()


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_json(path, obj):
    """Save as an editor does with a temporary file and a rename."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def one_error_line(code, out, err):
    assert code == 1, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lumora-reload: "), err
    return lines[0]


# -- session new -------------------------------------------------------------


@ensure
async def test_session_new_prints_the_device_url_and_its_qr_code(daemon):
    code, out, err = await run(daemon, "session", "new", "--host", "10.1.2.3")
    assert code == 0, err
    port = daemon.port.getHost().port
    sid = out.split()[1]
    assert daemon.server.get_session(sid).id == sid
    url = f"ws://10.1.2.3:{port}/ws?session={sid}"
    assert f"Device URL:   {url}" in out
    assert f"This machine: ws://127.0.0.1:{port}/ws?session={sid}" in out
    qr = io.StringIO()
    segno.make(url, error="m").terminal(out=qr, compact=True, border=2)
    assert qr.getvalue() in out  # the QR code drawn encodes exactly that URL


@ensure
async def test_session_new_json_picks_a_lan_address(daemon):
    code, out, err = await run(daemon, "--json", "session", "new", "--timeout", "60")
    assert code == 0, err
    answer = json.loads(out)
    sid = answer["sessionId"]
    port = daemon.port.getHost().port
    assert answer["localWsUrl"] == f"ws://127.0.0.1:{port}/ws?session={sid}"
    lan = cli.choose_host(cli.list_interfaces()) or "127.0.0.1"
    assert answer["wsUrl"] == f"ws://{lan}:{port}/ws?session={sid}"
    assert answer["expiresAt"] - answer["createdAt"] == pytest.approx(60_000, abs=1000)


def test_choose_host_skips_loopback_docker_virtualbox_and_vpns():
    assert cli.choose_host([("lo", "127.0.0.1")]) is None
    interfaces = [
        ("lo", "127.0.0.1"),
        ("docker0", "172.17.0.1"),
        ("br-3f2a", "172.18.0.1"),
        ("vboxnet0", "192.168.56.1"),
        ("tailscale0", "100.101.102.103"),
        ("tun0", "10.8.0.2"),
        ("utun3", "10.9.0.2"),
        ("wg0", "10.10.0.2"),
        ("VirtualBox Host-Only Network", "192.168.57.1"),
        ("eth1", "169.254.10.10"),
        ("wlan0", "192.168.1.23"),
    ]
    assert cli.choose_host(interfaces) == "192.168.1.23"
    assert cli.choose_host([("", "10.0.0.5")]) == "10.0.0.5"  # names unknown (non-Linux)
    # a private Wi-Fi address beats a public one; an Ethernet name beats an odd one
    assert cli.choose_host([("eth0", "81.2.69.160"), ("wlp2s0", "192.168.0.9")]) == "192.168.0.9"
    assert cli.choose_host([("foo0", "192.168.0.8"), ("en0", "192.168.0.9")]) == "192.168.0.9"


def test_device_url_keeps_a_public_url_and_overrides_with_host():
    lan = [("en0", "192.168.1.5")]
    assert cli.device_url("ws://127.0.0.1:8080/ws?session=a", interfaces=lan) == (
        "ws://192.168.1.5:8080/ws?session=a", None)
    assert cli.device_url("wss://dev.example.com/ws?session=a", interfaces=lan) == (
        "wss://dev.example.com/ws?session=a", None)
    assert cli.device_url("ws://localhost:8080/ws?session=a", host="fd00::2")[0] == (
        "ws://[fd00::2]:8080/ws?session=a")
    url, note = cli.device_url("ws://127.0.0.1:8080/ws?session=a", interfaces=[("lo", "127.0.0.1")])
    assert url == "ws://127.0.0.1:8080/ws?session=a" and "--host" in note


# -- push ----------------------------------------------------------------------


@ensure
async def test_push_reaches_the_device(daemon, tmp_path):
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid)
    schema = make_schema()
    path = tmp_path / "app.json"
    write_json(path, schema)
    code, out, err = await run(daemon, "push", sid, str(path))
    assert code == 0, err
    assert out.startswith("full update #1 -> 1 device in ")
    update = await device.next_of("update")
    assert update["payload"]["schema"] == schema and update["payload"]["sequenceNumber"] == 1
    # from stdin, with --json given after the subcommand
    changed = with_text(schema, "from stdin")
    code, out, err = await run(daemon, "push", sid, "-", "--json", stdin=json.dumps(changed).encode())
    assert code == 0, err
    answer = json.loads(out)
    assert answer["sequenceNumber"] == 2 and answer["devicesUpdated"] == 1 and "latencyMs" in answer
    update = await device.next_of("update")
    assert update["payload"]["sequenceNumber"] == 2


@ensure
async def test_push_errors_are_one_line_and_non_zero(daemon, tmp_path):
    sid = await daemon.new_session()
    good = tmp_path / "app.json"
    write_json(good, make_schema())
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"version": "1.0",\n  "nodes": [}')
    duplicate = tmp_path / "dup.json"
    write_json(duplicate, make_schema([node("a"), node("b", "View", [node("a")])]))

    line = one_error_line(*await run(daemon, "push", "0" * 32, str(good)))
    assert "session 00000000000000000000000000000000 not found" in line
    line = one_error_line(*await run(daemon, "push", sid, str(bad_json)))
    assert f"{bad_json}: invalid JSON at line 2, column" in line
    line = one_error_line(*await run(daemon, "push", sid, str(duplicate)))
    assert f"{duplicate}: schema error at nodes[1].children[0]" in line and "'a'" in line
    line = one_error_line(*await run(daemon, "push", sid, str(tmp_path / "missing.json")))
    assert "missing.json: No such file or directory" in line
    line = one_error_line(*await run(daemon, "push", sid, str(good), url=f"http://127.0.0.1:{free_port()}"))
    assert "cannot reach the daemon" in line and "connection refused" in line
    assert daemon.server.get_session(sid).sequence == 0  # nothing was pushed


@ensure
async def test_push_of_a_schema_too_large_for_the_daemon_says_so(daemon_factory, tmp_path):
    """The daemon answers 413 before the body is all sent, then closes: the
    answer is read, not taken for a daemon that cannot be reached."""
    daemon = await daemon_factory(max_body_size=4096)
    sid = await daemon.new_session()
    big = tmp_path / "big.json"
    write_json(big, make_schema([node(f"n{i}", text="x" * 100) for i in range(150_000)]))  # ~20 MB
    line = one_error_line(*await run(daemon, "push", sid, str(big)))
    assert f"{big}: Body is larger than 4096 bytes (the daemon's --max-body-size)" in line, line


# -- watch ----------------------------------------------------------------------


@ensure
async def test_watch_debounces_reports_invalid_json_and_recovers(daemon, tmp_path, reactor):
    sid = await daemon.new_session()
    session = daemon.server.get_session(sid)
    path = tmp_path / "app.json"
    schema = make_schema()
    write_json(path, schema)
    debounce = "300"  # ms; with "0" the burst goes out as several pushes and this test fails
    proc = Proc(reactor, ["-m", "lumora_reload", "--url", daemon.url, "watch", sid, str(path),
                          "--debounce", debounce])
    try:
        await proc.wait_line(lambda l: "pushed" in l)  # the file as it is at start
        assert session.sequence == 1

        pushed = proc.wait_line(lambda l: "pushed" in l)
        for i in range(3):  # three saves in a burst, 60 ms apart (three file events)
            if i:
                await task.deferLater(reactor, 0.06)
            write_json(path, with_text(schema, f"save {i}"))
        line = await pushed
        assert "update #2" in line and "ms" in line
        # the first push after the burst already carried the last save: one push
        assert session.sequence == 2 and session.schema == with_text(schema, "save 2")
        await task.deferLater(reactor, 0.2)
        assert session.sequence == 2

        reported = proc.wait_line(lambda l: "invalid JSON" in l)
        path.write_text('{"version": "1.0", "nodes": [')
        line = await reported
        assert "not pushed" in line
        assert session.sequence == 2

        pushed = proc.wait_line(lambda l: "pushed" in l)
        write_json(path, with_text(schema, "fixed"))
        await pushed
        assert session.sequence == 3 and session.schema == with_text(schema, "fixed")
    finally:
        await proc.stop()
    assert "Traceback" not in proc.err.decode()


def test_debouncer_waits_for_quiet(clock):
    """A burst of pokes fires once, `delay` after the last one."""
    fired = []
    d = cli.Debouncer(clock, 0.1, lambda: fired.append(clock.seconds()))
    d.poke()
    clock.advance(0.05)
    d.poke()
    clock.advance(0.09)
    assert fired == [] and d.pending
    clock.advance(0.02)
    assert len(fired) == 1  # 0.1 after the second poke
    clock.advance(1.0)
    assert len(fired) == 1  # fired once
    d.poke()
    d.cancel()
    clock.advance(1.0)
    assert len(fired) == 1 and not d.pending


@ensure
async def test_watch_of_an_unknown_session_fails_at_once(daemon, tmp_path):
    path = tmp_path / "app.json"
    write_json(path, make_schema())
    line = one_error_line(*await run(daemon, "watch", "f" * 32, str(path)))
    assert "not found" in line


# -- status, logs, reload --------------------------------------------------------


@ensure
async def test_status_json_lists_sessions_and_devices(daemon, reactor):
    sid = await daemon.new_session(make_schema())
    client = DeviceClient(f"{daemon.ws}?session={sid}", device_name="Pixel 8", platform="android",
                          reactor=reactor, clock=task.Clock())
    client.start()
    await client.wait_for_sequence(1).addTimeout(WAIT, reactor)
    for _ in range(100):  # the ack of the initial schema is on its way
        if daemon.server.get_connected_devices(sid)[0].last_ack_sequence == 1:
            break
        await task.deferLater(reactor, 0.01)
    try:
        code, out, err = await run(daemon, "--json", "status", sid)
        assert code == 0, err
        status = json.loads(out)
        assert status["sessionId"] == sid and status["sequenceNumber"] == 1
        [device] = status["devices"]
        assert device["deviceName"] == "Pixel 8" and device["platform"] == "android"
        assert device["healthy"] is True and device["lastAckSequence"] == 1 and device["ackLag"] == 0

        code, out, err = await run(daemon, "--json", "status")
        assert code == 0, err
        assert [(s["id"], s["devices"]) for s in json.loads(out)["sessionDetails"]] == [(sid, 1)]

        code, out, err = await run(daemon, "status", sid)
        assert code == 0, err
        assert "Pixel 8" in out and "healthy" in out and "LAST ACK" in out
    finally:
        await client.stop()
    one_error_line(*await run(daemon, "status", "0" * 32))


@ensure
async def test_logs_show_device_lines(daemon, reactor):
    sid = await daemon.new_session()
    client = DeviceClient(f"{daemon.ws}?session={sid}", device_name="Pixel 8", reactor=reactor, clock=task.Clock())
    client.start()
    await client.when("connected").addTimeout(WAIT, reactor)
    client.log("warn", "low battery")
    client.log("error", "render failed")
    for _ in range(200):
        if len(daemon.server.get_session(sid).logs) == 2:
            break
        await task.deferLater(reactor, 0.01)
    await client.stop()
    code, out, err = await run(daemon, "logs", sid)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert "WARN  [Pixel 8] low battery" in lines[0] and "ERROR [Pixel 8] render failed" in lines[1]
    code, out, err = await run(daemon, "--json", "logs", sid)
    assert [(l["level"], l["message"]) for l in json_lines(out)] == [("warn", "low battery"),
                                                                     ("error", "render failed")]


@ensure
@pytest.mark.parametrize("seconds", ["-1", "nan", "inf", "0"])
async def test_a_time_that_is_no_time_is_one_line(daemon, seconds):
    """`logs --interval`, `device --ping-interval`, `session new --timeout`
    and `--http-timeout` take a number of seconds: a negative one, NaN,
    infinity or 0 is an error line, not a traceback, a reconnecting device
    or a body that is not JSON."""
    sid = await daemon.new_session()
    line = one_error_line(*await run(daemon, "logs", sid, "-f", "--interval", seconds))
    assert "--interval must be more than 0 seconds" in line
    line = one_error_line(*await run(daemon, "device", sid, "--ping-interval", seconds))
    assert "--ping-interval must be more than 0 seconds" in line
    line = one_error_line(*await run(daemon, "session", "new", "--timeout", seconds))
    assert "--timeout must be a number of seconds" in line
    code, out, err = await run(daemon, "--http-timeout", seconds, "status")
    assert code == 2 and "Traceback" not in err  # a usage error, as a --url that is no URL
    assert err.strip().splitlines()[-1] == "lumora-reload: error: --http-timeout must be more than 0 seconds"


def test_new_lines_follows_a_ring_buffer():
    a, b, c, d = ({"m": i} for i in "abcd")
    assert cli.new_lines([], [a, b]) == [a, b]
    assert cli.new_lines([a, b], [a, b, c]) == [c]
    assert cli.new_lines([a, b, c], [b, c, d]) == [d]  # the oldest fell out
    assert cli.new_lines([a, b], [c, d]) == [c, d]


@ensure
async def test_reload_sends_a_full_update(daemon):
    schema = make_schema()
    sid = await daemon.new_session(schema)
    device, _ = await connected_device(daemon, sid)
    code, out, err = await run(daemon, "reload", sid)
    assert code == 0, err
    assert out.strip() == "full update #1 sent to 1 device"
    update = await device.next_of("update")
    assert update["payload"]["type"] == "full" and update["payload"]["schema"] == schema
    empty = await daemon.new_session()
    line = one_error_line(*await run(daemon, "reload", empty))
    assert "no schema has been pushed" in line


# -- device ---------------------------------------------------------------------


@ensure
async def test_three_simulated_devices_hold_the_pushed_schema(daemon, reactor):
    schema = make_schema()
    sid = await daemon.new_session(schema)
    proc = Proc(reactor, ["-m", "lumora_reload", "--url", daemon.url, "--json",
                          "device", sid, "--count", "3", "--updates", "2"])
    try:
        for _ in range(300):
            if len(daemon.server.get_connected_devices(sid)) == 3:
                break
            await task.deferLater(reactor, 0.02)
        assert len(daemon.server.get_connected_devices(sid)) == 3, proc.err
        small = with_text(schema, "second")
        await daemon.push(sid, small)
        bigger = make_schema([node(f"n{i}", text=str(i)) for i in range(40)])
        await daemon.push(sid, bigger)
        code = await proc.wait_exit()
    finally:
        await proc.stop()
    assert code == 0, proc.err
    events = json_lines(proc.out.decode())
    assert sorted(e["deviceName"] for e in events if e["event"] == "connected") == [
        "Simulator 1", "Simulator 2", "Simulator 3"]
    done = [e for e in events if e["event"] == "done"]
    assert len(done) == 3
    assert all(e["schema"] == bigger and e["sequence"] == 3 for e in done)
    updates = [e for e in events if e["event"] == "update"]
    assert len(updates) == 6 and all(u["ok"] for u in updates)
    # each device said what it applied in the session log
    logs = daemon.server.get_session(sid).logs
    assert len([l for l in logs if l["message"].startswith("applied #3")]) == 3


@ensure
async def test_device_exits_non_zero_on_a_checksum_mismatch(daemon, reactor):
    sid = await daemon.new_session(make_schema())
    proc = Proc(reactor, ["-m", "lumora_reload", "--url", daemon.url, "device", sid])
    try:
        await proc.wait_line(lambda l: "connected" in l)
        session = daemon.server.get_session(sid)
        # the daemon now sends a wrong checksum
        session.state = attrs.evolve(session.state, checksum="0" * 64, cache={})
        status, _ = await daemon.call("POST", f"/session/{sid}/reload")
        assert status == 200
        code = await proc.wait_exit()
    finally:
        await proc.stop()
    assert code == 1
    assert "checksum mismatch" in proc.err.decode() and "Traceback" not in proc.err.decode()


@ensure
async def test_device_for_an_unknown_session_fails_cleanly(daemon):
    line = one_error_line(*await run(daemon, "device", "0" * 32))
    assert "not found" in line


@ensure
async def test_ctrl_c_on_device_ends_cleanly_without_a_traceback(daemon, reactor):
    sid = await daemon.new_session(make_schema())
    proc = Proc(reactor, ["-m", "lumora_reload", "--url", daemon.url, "device", sid])
    try:
        await proc.wait_line(lambda l: "connected" in l)
        proc.transport.signalProcess("INT")
        code = await proc.wait_exit()
    finally:
        await proc.stop()
    assert code == 0
    assert "Traceback" not in proc.err.decode(), proc.err.decode()


def test_the_device_command_joins_at_the_path_the_daemon_serves():
    """`--ws-path /a//b/` is served at /a/b (doubled and trailing slashes
    dropped), so `device` connects there, below any path of --url."""
    from lumora_reload.cli.device import ws_base
    assert ws_base("http://127.0.0.1:9000", "/a//b/") == "ws://127.0.0.1:9000/a/b"
    assert ws_base("https://tunnel.example/lumora/", "/ws") == "wss://tunnel.example/lumora/ws"
