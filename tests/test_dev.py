"""`lumora-reload dev` run for real: in a pseudo-terminal (keys), without
one (plain mode), with its own daemon or one already running, with a
converter, and failing to start with one line. Devices are real WebSocket
clients in this test's reactor."""

import io
import json
import os
import pathlib
import socket
import stat
import subprocess
import sys

import pytest
import pytest_twisted
import segno
from twisted.internet import defer

from lumora_reload.cli.lan import device_url
from tests.helpers import make_schema, node, open_device, with_text
from tests.test_cli import ENV, Proc, free_port

ensure = pytest_twisted.ensureDeferred
UNASSIGNABLE = "192.0.2.1"  # TEST-NET-1: never an address of this machine


def environment(**extra):
    env = dict(ENV)
    env.pop("LUMORA_RELOAD_URL", None)
    env.update(extra)
    return env


class Dev(Proc):
    """`lumora-reload dev` as a child process, in a pseudo-terminal or not."""

    def __init__(self, reactor, args, cwd, pty=False, env=None):
        self.reactor = reactor
        self.out = b""
        self.err = b""
        self.lines = []
        self._waiters = []
        self.exited = defer.Deferred()
        self._stdin = None
        argv = [sys.executable, "-m", "lumora_reload", *args]
        self.transport = reactor.spawnProcess(self, sys.executable, argv, env=env or environment(),
                                              path=str(cwd), usePTY=pty)

    def stop(self):
        print(self.text())  # shown by pytest when the test fails
        return super().stop()

    def text(self):
        return self.out.decode("utf-8", "replace").replace("\r\n", "\n")

    def value(self, label):
        """The value printed after `label` in the banner."""
        for line in self.text().splitlines():
            if line.strip().startswith(label):
                return line.split(label, 1)[1].split()[0]
        raise AssertionError(f"no {label!r} in {self.text()!r}")


def project(tmp_path, schema=None):
    path = tmp_path / "app.json"
    path.write_text(json.dumps(schema or make_schema()))
    return path


def dev_args(port, data, *extra):
    return ["dev", *extra, "--port", str(port), "--data-dir", str(data)]


async def join(reactor, port, sid):
    device = await open_device(reactor, f"ws://127.0.0.1:{port}/ws?session={sid}")
    connected = await device.hello(device_id="pixel-8", platform="android", deviceName="Pixel 8")
    return device, connected


def has(text):
    return lambda line: text in line


@ensure
async def test_dev_in_a_terminal_pushes_saves_streams_logs_and_answers_keys(tmp_path, reactor):
    """Banner, QR code, a save pushed to a real device, its log coloured,
    `r` reloads it, `o` opens the preview, `q` quits with status 0."""
    path = project(tmp_path)
    port = free_port()
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser"
    browser.write_text(f"#!{sys.executable}\nimport sys\nopen({str(opened)!r}, 'a').write(sys.argv[1])\n")
    browser.chmod(browser.stat().st_mode | stat.S_IEXEC)
    env = environment(BROWSER=str(browser))
    env.pop("NO_COLOR")
    proc = Dev(reactor, ["--color", "always", *dev_args(port, tmp_path / "data", "app.json")], tmp_path,
               pty=True, env=env)
    device = None
    try:
        banner = proc.wait_line(has("Keys: r reload"))
        first = proc.wait_line(has("pushed app.json: full update #1"))
        await banner
        await first
        text = proc.text()
        sid = proc.value("Session:")
        assert len(sid) == 32 and "(new)" in text
        assert f"Preview:     http://127.0.0.1:{port}/preview/{sid}" in text
        assert f"Dashboard:   http://127.0.0.1:{port}/" in text
        lan = proc.value("Device URL:")
        assert lan == device_url(f"ws://127.0.0.1:{port}/ws?session={sid}")[0]
        qr = io.StringIO()
        segno.make(lan, error="m").terminal(out=qr, compact=True, border=2)
        assert qr.getvalue() in text  # the QR code carries the device URL

        arrived = proc.wait_line(has("device Pixel 8 (android) connected"))
        device, connected = await join(reactor, port, sid)
        assert connected["initialSchema"] == make_schema()
        await arrived

        pushed = proc.wait_line(has("pushed app.json: incremental update #2 -> 1 device"))
        path.write_text(json.dumps(with_text(make_schema(), "Saved")))
        update = await device.next_of("update")
        assert update["payload"]["type"] == "incremental" and update["payload"]["sequenceNumber"] == 2
        await pushed

        device.send("log", {"level": "warn", "message": "low battery"})
        line = await proc.wait_line(has("low battery"))
        assert "[Pixel 8]" in line and "\x1b[33mWARN" in line  # warnings in yellow

        reloaded = proc.wait_line(has("reload: full update #2 sent to 1 device"))
        proc.transport.write(b"r")
        update = await device.next_of("update")
        assert update["payload"]["type"] == "full" and update["payload"]["sequenceNumber"] == 2
        await reloaded

        opening = proc.wait_line(has("opening http://"))
        proc.transport.write(b"o")
        await opening
        for _ in range(200):  # the browser command runs in its own process
            if opened.exists():
                break
            await defer_later(reactor, 0.05)
        assert opened.read_text() == f"http://127.0.0.1:{port}/preview/{sid}"

        cleared = proc.wait_line(has("Keys: r reload"))
        proc.transport.write(b"c")
        await cleared
        assert "\x1b[2J" in proc.text()  # the screen was cleared, the banner shown again

        proc.transport.write(b"q")
        code = await proc.wait_exit()
        assert code == 0
        closed = await device.wait_closed()
        assert closed[0] == 1012  # the daemon in that process stopped: devices come back and resume
    finally:
        await proc.stop()
    assert "Traceback" not in proc.text()


def defer_later(reactor, seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds)


@ensure
async def test_dev_without_a_terminal_runs_plain_and_reuses_the_session(tmp_path, reactor):
    """No TTY: no keys, SIGTERM ends it with status 0; a second run in the
    same folder gets the same session, schema and all."""
    project(tmp_path)
    port = free_port()
    ids = []
    for run in range(2):
        proc = Dev(reactor, dev_args(port, tmp_path / "data", "app.json", "--no-qr"), tmp_path)
        try:
            plain = proc.wait_line(has("keys are off; Ctrl-C or SIGTERM stops"))
            first = proc.wait_line(has("pushed app.json"))
            await plain
            await first
            ids.append(proc.value("Session:"))
            assert ("(reused)" if run else "(new)") in proc.text()
            proc.transport.signalProcess("TERM")
            code = await proc.wait_exit()
        finally:
            await proc.stop()
        assert code == 0, proc.text()
        assert "Traceback" not in proc.text() + proc.err.decode()
    assert ids[0] == ids[1]
    assert "no change (still #1)" in proc.text()


@ensure
async def test_dev_with_a_converter_pushes_its_output_and_reports_its_failures(tmp_path, reactor):
    """--run: a converter that fails shows its exit status and stderr and
    pushes nothing; one that works pushes what it printed."""
    src = tmp_path / "src"
    src.mkdir()
    converter = tmp_path / "convert.py"
    converter.write_text(
        "import json, sys\n"
        "text = open(sys.argv[1]).read().strip()\n"
        "if text == 'garbage':\n"
        "    print('this is not JSON')\n"
        "    sys.exit(0)\n"
        "if text == 'broken':\n"
        "    sys.stderr.write('App.tsx:3: unexpected token\\n')\n"
        "    sys.exit(3)\n"
        "print(json.dumps({'version': '1.0', 'metadata': {'sourceFramework': 'react', 'sourceFile': sys.argv[1],"
        " 'generatedAt': 0}, 'nodes': [{'id': 'title', 'type': 'Text', 'props': {'text': text},"
        " 'children': [], 'metadata': {'lineNumber': 1}}]}))\n"
    )
    port = free_port()
    run = f"{sys.executable} {converter} {{file}}"
    proc = Dev(reactor, dev_args(port, tmp_path / "data", "src", "--run", run, "--no-qr"), tmp_path)
    device = None
    try:
        await proc.wait_line(has("waiting for a change in src"))
        sid = proc.value("Session:")
        arrived = proc.wait_line(has("device Pixel 8 (android) connected"))
        device, _ = await join(reactor, port, sid)
        await arrived  # seen, so its leaving is shown too

        pushed = proc.wait_line(has("pushed `"))
        (src / "App.tsx").write_text("first")
        update = await device.next_of("update")
        assert update["payload"]["schema"]["nodes"][0]["props"]["text"] == "first"
        line = await pushed
        assert "App.tsx" in line and "full update #1 -> 1 device" in line

        failed = proc.wait_line(has("converter failed (exit status 3)"))
        stderr = proc.wait_line(has("App.tsx:3: unexpected token"))
        (src / "App.tsx").write_text("broken")
        assert "(not pushed)" in await failed
        await stderr

        invalid = proc.wait_line(has("invalid JSON"))
        (src / "App.tsx").write_text("garbage")  # the converter prints something that is not JSON
        assert "(not pushed)" in await invalid

        (src / "App.tsx").write_text("second")
        update = await device.next_of("update")  # the failed runs sent nothing in between
        assert update["payload"]["sequenceNumber"] == 2
        assert with_text_of(update) == "second"

        left = proc.wait_line(has("device Pixel 8 left"))
        device.transport.loseConnection()
        await left
    finally:
        await proc.stop()
        if device is not None:
            device.transport.loseConnection()


def with_text_of(update):
    payload = update["payload"]
    if payload["type"] == "full":
        return payload["schema"]["nodes"][0]["props"]["text"]
    return payload["delta"]["modified"][0]["props"]["text"]


@ensure
async def test_dev_uses_the_daemon_already_running_at_url(daemon, tmp_path, reactor):
    """A daemon answering at --url is used; none is started."""
    path = project(tmp_path)
    proc = Dev(reactor, ["--url", daemon.url, "dev", "app.json", "--no-qr", "--data-dir", str(tmp_path / "d")],
               tmp_path)
    try:
        await proc.wait_line(has("pushed app.json: full update #1"))
        sid = proc.value("Session:")
        assert f"daemon {daemon.url} (already running)" in proc.text()
        assert daemon.server.get_session(sid).schema == make_schema()
        pushed = proc.wait_line(has("pushed app.json"))
        path.write_text(json.dumps(with_text(make_schema(), "again")))
        await pushed
        assert daemon.server.get_session(sid).sequence == 2
    finally:
        await proc.stop()
    assert not (tmp_path / "d" / "sessions.sqlite3").exists()  # no daemon of its own


@ensure
async def test_dev_reports_a_schema_too_large_for_the_daemon_and_does_not_retry_it(daemon_factory, tmp_path, reactor):
    """The daemon refuses an oversized body at once (413) and closes: that is
    said as such, not taken for a daemon that is down and sent again."""
    daemon = await daemon_factory(max_body_size=4096)
    big = make_schema([node(f"n{i}", text="x" * 100) for i in range(150_000)])  # ~20 MB: more than the socket buffers
    path = project(tmp_path, big)
    proc = Dev(reactor, ["--url", daemon.url, "dev", "app.json", "--no-qr", "--data-dir", str(tmp_path / "d")],
               tmp_path)
    try:
        line = await proc.wait_line(lambda line: "not pushed" in line or "cannot reach" in line, timeout=60)
        assert "app.json: Body is larger than 4096 bytes (the daemon's --max-body-size)" in line, line
        pushed = proc.wait_line(has("pushed app.json: full update #1"))
        path.write_text(json.dumps(make_schema()))
        await pushed
    finally:
        await proc.stop()
    assert "cannot reach" not in proc.text()


async def first_push(reactor, url, tmp_path):
    """`dev --json app.json` against the daemon at `url`, stopped after its
    first push: its first line (where it is ready, and its URLs)."""
    proc = Dev(reactor, ["--url", url, "--json", "dev", "app.json", "--data-dir", str(tmp_path / "d")], tmp_path)
    try:
        await proc.wait_line(has('"event": "push"'))
    finally:
        await proc.stop()
    return json.loads(proc.text().splitlines()[0])


@ensure
async def test_dev_prints_working_urls_when_url_ends_with_a_slash(daemon, tmp_path, reactor):
    """`--url http://host:port/` names the same daemon: the preview and
    dashboard URLs it prints are pages that daemon serves."""
    import treq

    project(tmp_path)
    ready = await first_push(reactor, daemon.url + "/", tmp_path)
    sid = ready["sessionId"]
    assert ready["previewUrl"] == f"{daemon.url}/preview/{sid}" and ready["dashboardUrl"] == f"{daemon.url}/"
    for url in (ready["previewUrl"], ready["dashboardUrl"]):
        response = await treq.get(url, persistent=False)
        await treq.content(response)
        assert response.code == 200, url


@ensure
async def test_dev_shows_the_device_url_of_a_daemon_with_its_own_ws_path(daemon_factory, tmp_path, reactor):
    """A daemon started with --ws-path: the device URL (and its QR code) is
    the one the daemon gives, for a new session and for a reused one."""
    daemon = await daemon_factory(ws_path="/live")
    project(tmp_path)
    for run in ("new", "reused"):
        ready = await first_push(reactor, daemon.url, tmp_path)
        sid = ready["sessionId"]
        assert ready["reused"] is (run == "reused")
        assert ready["localWsUrl"] == f"{daemon.ws}?session={sid}"
        assert ready["deviceUrl"] == device_url(f"{daemon.ws}?session={sid}")[0]


async def device_says(reactor, proc, ws_url, kind, payload, shown, joined=None):
    """Once `proc` (dev) pushed, join its session as a device named with
    escape sequences, wait for dev's line holding `joined` (if given), send
    `kind` `payload`, and return dev's first line holding `shown`."""
    device = None
    try:
        await proc.wait_line(has("pushed app.json"))
        sid = proc.value("Session:")
        arrived = proc.wait_line(has(joined)) if joined else None
        device = await open_device(reactor, f"{ws_url}?session={sid}")
        await device.hello(device_id="pixel", platform="android", deviceName="Pixel\x1b]0;owned\x07 8")
        if arrived is not None:
            await arrived
        said = proc.wait_line(has(shown))
        device.send(kind, payload)
        return await said
    finally:
        if device is not None:
            device.sendClose()
            await device.wait_closed()
        await proc.stop()


@ensure
async def test_dev_shows_what_a_device_sends_without_passing_on_terminal_controls(daemon, tmp_path, reactor):
    """A device's name and log lines are its own text: escape sequences in
    them (clear the screen, retitle the window, write the clipboard) are
    shown, not sent to the terminal."""
    project(tmp_path)
    proc = Dev(reactor, ["--url", daemon.url, "dev", "app.json", "--no-qr", "--data-dir", str(tmp_path / "d")],
               tmp_path)
    line = await device_says(reactor, proc, daemon.ws, "log",
                             {"level": "error", "message": "boom\x1b[2J\x1b[H\x1b]52;c;cHduZWQ=\x07\r after"},
                             shown="after", joined="(android) connected")
    assert "\\x1b[2J\\x1b[H\\x1b]52;c;cHduZWQ=\\x07\\x0d after" in line and "[Pixel\\x1b]0;owned\\x07 8]" in line
    assert not any(c in proc.text() for c in "\x1b\x07\r")  # no colour either: NO_COLOR


@ensure
async def test_dev_shows_its_own_daemons_lines_about_a_device_without_terminal_controls(tmp_path, reactor):
    """The in-process daemon's warnings repeat what a device sent (its
    name, an error it reports): shown escaped as well."""
    project(tmp_path)
    port = free_port()
    proc = Dev(reactor, dev_args(port, tmp_path / "data", "app.json", "--no-qr"), tmp_path)
    line = await device_says(reactor, proc, f"ws://127.0.0.1:{port}/ws", "error",
                             {"code": "RENDER_ERROR", "message": "boom\x1b[2J\x1b]52;c;cHduZWQ=\x07 after"},
                             shown="daemon:")
    assert "boom\\x1b[2J\\x1b]52;c;cHduZWQ=\\x07 after" in line and "Pixel\\x1b]0;owned\\x07 8" in line
    assert not any(c in proc.text() for c in "\x1b\x07")


@ensure
async def test_a_save_by_rename_is_a_save_and_a_deletion_is_reported(daemon, tmp_path, reactor):
    """An editor that renames the file away and writes a new one (vim's
    backup) has saved it: pushed, not reported as deleted. A file really
    deleted is reported."""
    path = project(tmp_path)
    proc = Dev(reactor, ["--url", daemon.url, "dev", "app.json", "--no-qr", "--data-dir", str(tmp_path / "d")],
               tmp_path)
    try:
        await proc.wait_line(has("pushed app.json: full update #1"))
        pushed = proc.wait_line(has("pushed app.json: incremental update #2"))
        backup = tmp_path / "app.json~"
        os.rename(path, backup)
        path.write_text(json.dumps(with_text(make_schema(), "saved by vim")))
        backup.unlink()
        await pushed
        deleted = proc.wait_line(has("app.json was deleted; waiting for it"))
        path.unlink()
        await deleted
    finally:
        await proc.stop()
    assert proc.text().count("was deleted") == 1, proc.text()


@ensure
async def test_dev_json_says_everything_as_json(daemon, tmp_path, reactor):
    """--json: a file not there yet, a deletion, a session deleted under it,
    a folder waiting for a change: every line is a JSON object."""
    path = tmp_path / "app.json"
    proc = Dev(reactor, ["--url", daemon.url, "--json", "dev", "app.json", "--data-dir", str(tmp_path / "d")],
               tmp_path)
    try:
        await proc.wait_line(has('"event": "missing"'))
        pushed = proc.wait_line(has('"event": "push"'))
        path.write_text(json.dumps(make_schema()))
        await pushed
        deleted = proc.wait_line(has('"event": "missing"'))
        path.unlink()
        await deleted
        sid = json.loads(proc.text().splitlines()[0])["sessionId"]
        daemon.server.delete_session(sid)
        gone = proc.wait_line(has('"event": "gone"'))
        path.write_text(json.dumps(with_text(make_schema(), "again")))
        await gone
    finally:
        await proc.stop()
    events = [json.loads(line) for line in proc.text().splitlines()]  # each one JSON
    assert [e["event"] for e in events] == ["ready", "missing", "push", "missing", "rejected", "gone"]
    assert events[1]["file"] == events[3]["file"] == "app.json"

    os.mkdir(tmp_path / "src")
    proc = Dev(reactor, ["--url", daemon.url, "--json", "dev", "src", "--run", "cat {file}", "--data-dir",
                         str(tmp_path / "d")], tmp_path)
    try:
        await proc.wait_line(has('"event": "waiting"'))
    finally:
        await proc.stop()
    events = [json.loads(line) for line in proc.text().splitlines()]
    assert [e["event"] for e in events] == ["ready", "waiting"] and events[1]["folder"] == "src"


@ensure
async def test_dev_watches_a_folder_with_more_subfolders_than_the_event_queue_holds(daemon, tmp_path, reactor):
    """A project folder with node_modules: more folders than the kernel's
    inotify queue has room for. Watching them reads each folder, which must
    not flood the queue (an overflow sets off another reading of every
    folder: the CPU busy for good and changes lost)."""
    queued = pathlib.Path("/proc/sys/fs/inotify/max_queued_events")
    if not queued.exists() or int(queued.read_text()) > 40_000:
        pytest.skip("needs Linux inotify with a queue of at most 40,000 events")
    for i in range(int(queued.read_text()) + 1000):
        os.makedirs(tmp_path / "node_modules" / f"p{i // 100}" / f"d{i}")
    os.mkdir(tmp_path / "src")
    (tmp_path / "out.json").write_text(json.dumps(make_schema()))
    converter = "cat out.json; : {file}"
    proc = Dev(reactor, ["--url", daemon.url, "dev", ".", "--run", converter, "--no-qr", "--data-dir",
                         str(tmp_path / "d")], tmp_path)
    try:
        await proc.wait_line(has("waiting for a change"))
        pushed = proc.wait_line(has("pushed `"))
        (tmp_path / "src" / "App.tsx").write_text("export default 1")
        await pushed
    finally:
        await proc.stop()
    assert "overflow" not in proc.text() + proc.err.decode()


def dev_fails(tmp_path, *args):
    """`dev` that cannot start: (status, stderr lines)."""
    project(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "lumora_reload", "dev", "app.json", "--data-dir", str(tmp_path / "data"), *args],
        cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0, result
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lumora-reload: "), result.stderr
    return result.returncode, lines[0]


def test_dev_on_a_port_in_use_fails_with_one_line(tmp_path):
    """A port held by something that is not a daemon: one line naming the next port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, line = dev_fails(tmp_path, "--port", f"tcp:{port}:interface=127.0.0.1")
    assert code == 1
    assert f"port {port} on 127.0.0.1 is in use; is another lumora-reload running? try --port {port + 1}" in line


@pytest.mark.parametrize("port, words", [
    ("tcp:99999", "out of range"),
    ("99999", "1-65535"),
    (f"tcp:0:interface={UNASSIGNABLE}", "not an address of this machine"),
])
def test_dev_with_a_port_it_cannot_have_fails_with_one_line(tmp_path, port, words):
    """Out-of-range ports and addresses of other machines: one line, non-zero."""
    _, line = dev_fails(tmp_path, "--port", port)
    assert words in line


@pytest.mark.parametrize("debounce", ["-1", "nan", "inf"])
def test_dev_refuses_a_debounce_that_is_no_time(tmp_path, debounce):
    """--debounce is a number of milliseconds: NaN (no save was ever
    pushed) and infinity (none would be) are refused like a negative one."""
    code, line = dev_fails(tmp_path, "--debounce", debounce)
    assert code == 1 and "--debounce must be 0 or more milliseconds" in line


def test_dev_refuses_a_folder_without_a_converter(tmp_path):
    """A folder needs --run: said in one line."""
    os.mkdir(tmp_path / "src")
    result = subprocess.run([sys.executable, "-m", "lumora_reload", "dev", "src"], cwd=tmp_path, env=environment(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "--run" in result.stderr and result.stderr.count("\n") == 1


@ensure
async def test_dev_plain_in_memory_verbose_and_ctrl_c(tmp_path, reactor):
    """--plain turns keys off in a terminal, --verbose shows the daemon's
    log, --in-memory remembers no session, Ctrl-C ends with status 0."""
    project(tmp_path)
    port = free_port()
    data = tmp_path / "data"
    proc = Dev(reactor, dev_args(port, data, "app.json", "--no-qr", "--plain", "--in-memory", "--verbose"),
               tmp_path, pty=True)
    try:
        plain = proc.wait_line(has("keys are off"))
        first = proc.wait_line(has("pushed app.json"))
        await plain
        await first
        assert f"daemon: listening on http://127.0.0.1:{port} (all interfaces)" in proc.text()
        proc.transport.signalProcess("INT")
        code = await proc.wait_exit()
    finally:
        await proc.stop()
    assert code == 0 and "Traceback" not in proc.text()
    assert not (data / "dev-sessions.json").exists()


@ensure
async def test_dev_warns_when_its_daemon_listens_on_loopback_only(tmp_path, reactor):
    """A daemon bound to 127.0.0.1 cannot serve the LAN URL: the banner says so."""
    project(tmp_path)
    port = free_port()
    lan = device_url(f"ws://127.0.0.1:{port}/ws?session=x")[0]
    if lan.startswith("ws://127.0.0.1"):
        pytest.skip("this machine has no LAN address to show")
    proc = Dev(reactor, dev_args(f"tcp:{port}:interface=127.0.0.1", tmp_path / "data", "app.json", "--no-qr"),
               tmp_path)
    try:
        line = await proc.wait_line(has("Warning:"))
    finally:
        await proc.stop()
    assert "listens on this machine only" in line and f"restart it with --port {port}" in line


@ensure
async def test_dev_json_prints_one_object_per_line(daemon, tmp_path, reactor):
    """--json: the banner and every push are JSON objects, one per line."""
    project(tmp_path)
    proc = Dev(reactor, ["--url", daemon.url, "--json", "dev", "app.json", "--data-dir", str(tmp_path / "d")],
               tmp_path)
    try:
        await proc.wait_line(has('"event": "push"'))
    finally:
        await proc.stop()
    events = [json.loads(line) for line in proc.text().splitlines() if line.strip()]
    ready, push = events[0], events[1]
    sid = ready["sessionId"]
    assert ready["event"] == "ready" and ready["inProcess"] is False
    assert ready["previewUrl"] == f"{daemon.url}/preview/{sid}" and ready["dashboardUrl"] == f"{daemon.url}/"
    assert push["event"] == "push" and push["sequenceNumber"] == 1 and push["updateType"] == "full"
