"""Promises of the README's control API, device protocol and "Choices worth
knowing" that no other test pins, each on a live daemon over real HTTP and
WebSocket on loopback."""

import os
import pathlib
import re
import sys

import orjson
import pytest_twisted
import treq
from twisted.internet import task

from tests.helpers import WAIT, connected_device, make_schema, with_text
from tests.processes import spawn_child, start_daemon  # noqa: F401 (fixtures)

ensure = pytest_twisted.ensureDeferred

DAY = 24 * 3600


@ensure
async def test_extend_without_seconds_gives_the_session_timeout_from_now(daemon_factory, clock):
    """`extend` sets the expiry to `seconds` (default: the session timeout) from now."""
    daemon = await daemon_factory(clock=clock)
    sid = await daemon.new_session(timeoutSeconds=600)
    clock.advance(100)
    status, body = await daemon.call("POST", f"/session/{sid}/extend")
    assert (status, body) == (200, {"success": True, "expiresAt": int((100 + 600) * 1000)})


@ensure
async def test_extend_never_shortens_the_expiry(daemon_factory, clock):
    daemon = await daemon_factory(clock=clock)
    sid = await daemon.new_session(timeoutSeconds=600)
    _, before = await daemon.call("GET", f"/session/{sid}")
    status, body = await daemon.call("POST", f"/session/{sid}/extend", {"seconds": 10})
    assert status == 200 and body["expiresAt"] == before["expiresAt"] == 600_000
    _, after = await daemon.call("GET", f"/session/{sid}")
    assert after["expiresAt"] == 600_000


@ensure
async def test_extend_takes_at_most_30_days(daemon):
    sid = await daemon.new_session()
    status, body = await daemon.call("POST", f"/session/{sid}/extend", {"seconds": 30 * DAY + 1})
    assert status == 400 and body["code"] == "BAD_REQUEST" and body["path"] == "seconds"
    status, _ = await daemon.call("POST", f"/session/{sid}/extend", {"seconds": 30 * DAY})
    assert status == 200


@ensure
async def test_reload_without_a_schema_is_404_not_found(daemon):
    """A session without a schema is at 0; reloading it answers 404 NOT_FOUND."""
    sid = await daemon.new_session()
    _, info = await daemon.call("GET", f"/session/{sid}")
    assert info["sequenceNumber"] == 0
    status, body = await daemon.call("POST", f"/session/{sid}/reload")
    assert status == 404 and body["code"] == "NOT_FOUND"


@ensure
async def test_a_schema_given_at_creation_is_state_1(daemon):
    sid = await daemon.new_session(make_schema())
    _, info = await daemon.call("GET", f"/session/{sid}")
    assert info["sequenceNumber"] == 1


@ensure
async def test_a_second_connect_is_invalid_message_and_the_device_stays(daemon):
    sid = await daemon.new_session(make_schema())
    device, _ = await connected_device(daemon, sid)
    device.send("connect", {"deviceId": "phone-1", "platform": "ios", "clientVersion": "1.1.0"})
    error = await device.next_of("error")
    assert error["payload"]["code"] == "INVALID_MESSAGE"
    device.send("ping", {})
    pong = await device.next_of("pong")
    assert pong["payload"]["sequenceNumber"] == 1


# -- "A walk-through with curl", as written ------------------------------------


def walkthrough():
    """The walk-through's shell block and its device.py."""
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("\n## A walk-through with curl\n"):readme.index("\n## Options\n")]
    shell = section.split("```sh\n", 1)[1].split("```", 1)[0]
    device_py = section.split("```python\n", 1)[1].split("```", 1)[0]
    return shell, device_py


@ensure
async def test_the_curl_walkthrough_runs_as_written(reactor, start_daemon, spawn_child, tmp_path):
    """Create a session as curl does, run device.py, push the README's schema:
    the answers are the ones the README shows and the device prints and acks
    the update."""
    shell, device_py = walkthrough()
    assert "twistd -n lumora-reload --in-memory" in shell
    child, remote = await start_daemon("twistd")
    port = remote.url.rsplit(":", 1)[1]

    # 1. `curl -s -X POST localhost:8080/session/new`: no body, no type
    assert "curl -s -X POST localhost:8080/session/new\n" in shell
    response = await treq.post(f"{remote.url}/session/new", headers={"Host": [f"localhost:{port}"]},
                               persistent=False)
    created = orjson.loads(await treq.content(response))
    assert response.code == 200
    shown = re.search(r"# (\{\"sessionId\".*\})\n", shell).group(1)
    assert list(created) == re.findall(r'"(\w+)":', shown)
    sid = created["sessionId"]
    assert created["wsUrl"] == f"ws://localhost:{port}/ws?session={sid}"

    # 2. `python device.py 3f0c…`, its URL pointed at this daemon's port
    assert "ws://127.0.0.1:8080/ws?session=" in device_py
    script = tmp_path / "device.py"
    script.write_text(device_py.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    device = spawn_child([sys.executable, str(script), sid], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    await device.wait_for(rb"(?m)^connected ", timeout=WAIT)

    # 3. the push with the README's body and header
    body = re.search(r"-d '(\{.*?\})'", shell, re.S).group(1)
    assert "-H 'Content-Type: application/json'" in shell
    response = await treq.post(f"{remote.url}/send/{sid}", data=body.encode(),
                               headers={"Content-Type": ["application/json"]}, persistent=False)
    answer = await treq.content(response)
    assert response.code == 200
    assert orjson.loads(answer) == orjson.loads(re.search(r"# (\{\"success\".*\})\n", shell).group(1))
    printed = await device.wait_for(rb"(?m)^update (.*)$", timeout=WAIT)
    assert printed.group(1).startswith(b'{"type": "full"'), printed.group(1)  # cut to 200 characters
    for _ in range(100):  # the ack arrives after the print
        _, info = await remote.call("GET", f"/session/{sid}")
        if info["devices"][0]["lastAckSequence"] == 1:
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    assert info["devices"][0] == {**info["devices"][0], "deviceId": "my-phone", "platform": "ios",
                                  "lastAckSequence": 1}
    await child.stop()


@ensure
async def test_the_session_limit_answers_429_rate_limit_exceeded(daemon_factory):
    daemon = await daemon_factory(max_sessions=1)
    await daemon.new_session()
    status, body = await daemon.call("POST", "/session/new")
    assert status == 429 and body["code"] == "RATE_LIMIT_EXCEEDED"


@ensure
async def test_a_device_is_healthy_while_it_spoke_within_the_connection_timeout(daemon_factory, clock):
    """Healthy: spoke within --connection-timeout and lags at most --max-ack-lag updates."""
    daemon = await daemon_factory(clock=clock, connection_timeout=60, heartbeat_interval=1000, max_ack_lag=1)
    sid = await daemon.new_session(make_schema())
    device, _ = await connected_device(daemon, sid)

    async def healthy():
        _, body = await daemon.call("GET", f"/session/{sid}/health")
        (entry,) = body["devices"]
        return entry["healthy"], entry["ackLag"]

    device.send("ack", {"sequenceNumber": 1, "success": True})  # the schema `connected` brought
    device.send("ping", {})
    await device.next_of("pong")
    await daemon.push(sid, with_text(make_schema(), "two"))
    await device.next_of("update")
    assert await healthy() == (True, 1)  # one behind: at most --max-ack-lag
    clock.advance(60)
    assert await healthy() == (True, 1)
    clock.advance(1)  # silent past the timeout (no ping to answer), before any sweep drops it
    assert await healthy() == (False, 1)
    device.send("ack", {"sequenceNumber": 2, "success": True})
    device.send("ping", {})
    await device.next_of("pong")
    assert await healthy() == (True, 0)


@ensure
async def test_the_session_log_keeps_the_last_1000_lines(daemon_factory):
    daemon = await daemon_factory(rate_limit=5000, rate_burst=5000)
    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid, deviceName="Pixel")
    for i in range(1005):
        device.send("log", {"level": "info", "message": f"line {i}"})
    device.send("ping", {})
    await device.next_of("pong")
    status, body = await daemon.call("GET", f"/session/{sid}/logs")
    assert status == 200 and body["sessionId"] == sid
    lines = body["lines"]
    assert [line["message"] for line in lines] == [f"line {i}" for i in range(5, 1005)]
    assert set(lines[0]) == {"time", "deviceId", "deviceName", "level", "message"}
    assert (lines[0]["deviceId"], lines[0]["deviceName"], lines[0]["level"]) == ("phone-1", "Pixel", "info")


# -- "Device client", its example as written ------------------------------------


@ensure
async def test_the_device_client_example_runs_as_written(daemon, reactor, spawn_child, tmp_path):
    """The README's DeviceClient program gets the schema, logs a line the
    session shows, and ends when the session is deleted (a final close)."""
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("\n## Device client\n"):readme.index("\n## Benchmarks\n")]
    program = section.split("```python\n", 1)[1].split("```", 1)[0]
    sid = await daemon.new_session(make_schema())
    assert "ws://127.0.0.1:8080/ws?session=3f0c8e…" in program
    script = tmp_path / "preview.py"
    script.write_text(program.replace("ws://127.0.0.1:8080/ws?session=3f0c8e…", f"{daemon.ws}?session={sid}"))
    child = spawn_child([sys.executable, str(script)], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    await child.wait_for(rb"now at 1 1 top-level nodes\n", timeout=WAIT)
    for _ in range(100):  # the log line follows the schema
        _, logs = await daemon.call("GET", f"/session/{sid}/logs")
        if logs["lines"]:
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    assert [(line["deviceName"], line["level"], line["message"]) for line in logs["lines"]] == [
        ("My preview", "info", "preview ready")]
    assert (await daemon.call("DELETE", f"/session/{sid}"))[0] == 200
    await child.wait_for(rb"closed 1000 Session closed retry in None\ngave up: 1000 Session closed\n", timeout=WAIT)
    assert await child.ended.addTimeout(WAIT, reactor) == 0, child.output.decode()


# -- "Five-minute tour": the command's global options -----------------------------


@ensure
async def test_the_commands_send_the_api_token_from_the_option_or_the_environment(daemon_factory):
    """`--api-token` (or LUMORA_RELOAD_TOKEN) reaches the daemon, and global
    options go before the command or after it."""
    from tests.test_cli import one_error_line
    from tests.test_cli_urls import cli

    # Host is the --public-url host (whatever the port): the control API
    # needs the token even from loopback
    daemon = await daemon_factory(api_token="s3cret", public_url="https://localhost")
    url = f"http://localhost:{daemon.port.getHost().port}"
    sid = await daemon.new_session(make_schema())
    code, out, err = await cli(daemon, "--url", url, "status", sid)
    line = one_error_line(code, out, err)
    assert "--api-token" in line, line
    code, out, err = await cli(daemon, "--url", url, "status", sid, env={"LUMORA_RELOAD_TOKEN": "s3cret"})
    assert code == 0 and f"Session {sid}: state #1" in out, err
    code, out, err = await cli(daemon, "status", sid, "--json", "--api-token", "s3cret", "--url", url)
    assert code == 0, err
    assert orjson.loads(out.splitlines()[0])["sessionId"] == sid


@ensure
async def test_a_device_disconnected_over_rest_is_closed_1000_disconnected_by_server(daemon):
    """The reason tells a device (and DeviceClient) not to come back on its own."""
    sid = await daemon.new_session()
    device, info = await connected_device(daemon, sid)
    assert (await daemon.call("DELETE", f"/session/{sid}/devices/{info['connectionId']}"))[0] == 200
    assert await device.wait_closed() == (1000, "Disconnected by server")


# -- "Control API": the answers carry the fields the README's table lists --------


def documented_fields(text):
    """{path of keys: [field names]} of the table's notation, such as
    {"a","b":[{"c"}]} -> {(): ["a", "b"], ("b",): ["c"]}."""
    fields, stack, last, prev, i = {}, [], None, "", 0
    while i < len(text):
        c = text[i]
        if c == '"':
            end = text.index('"', i + 1)
            if prev in "{," and stack:  # a name, not a value such as "ok"
                last = text[i + 1:end]
                fields.setdefault(stack[-1], []).append(last)
            prev, i = '"', end + 1
            continue
        if c == "{":
            stack.append(() if not stack else stack[-1] + ((last,) if prev in ":[" else ()))
        elif c == "}":
            stack.pop()
        if not c.isspace():
            prev = c
        i += 1
    return fields


def control_api_table():
    """(method, path, answer as written, its fields) for each row whose answer is JSON."""
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("\n## Control API\n"):readme.index("\nStatus codes:")]
    rows = []
    for line in table.splitlines():
        row = re.match(r"\| `(GET|POST|DELETE) ([^`]+)` \| [^|]* \| [^`]*`(\{.*?\})`", line.replace("\\|", "/"))
        if row:
            rows.append((row.group(1), row.group(2), row.group(3), documented_fields(row.group(3))))
    return rows


def fields_of(answer, keys):
    """The field names of `answer` at the path `keys` (through lists)."""
    for key in keys:
        answer = answer[key]
        answer = answer[0] if isinstance(answer, list) else answer
    return set(answer)


@ensure
async def test_every_answer_has_the_fields_the_control_api_table_lists(start_daemon):
    """Exactly those fields, or at least those where the row ends in "…"."""
    child, remote = await start_daemon("twistd")
    sid = await remote.new_session(make_schema())
    device, info = await connected_device(remote, sid, deviceName="Pixel")
    device.send("log", {"level": "info", "message": "hello"})
    device.send("ping", {})
    await device.next_of("pong")
    targets = {":id": sid, ":connectionId": info["connectionId"]}
    bodies = {"/send/:id": with_text(make_schema(), "two")}
    rows = control_api_table()
    order = [row for row in rows if row[0] != "DELETE"] + sorted(
        (row for row in rows if row[0] == "DELETE"), key=lambda row: -len(row[1]))  # the device, then the session
    assert len(order) == 13, [row[:2] for row in rows]
    row_text = {(method, path): text for method, path, text, _ in rows}
    for method, path, _, documented in order:
        target = path
        for name, value in targets.items():
            target = target.replace(name, value)
        status, answer = await remote.call(method, target, bodies.get(path))
        assert status == 200, (method, path, answer)
        for keys, names in documented.items():
            got = fields_of(answer, keys)
            if "…" in row_text[method, path]:  # the row lists some fields only
                assert set(names) <= got, (method, path, keys, set(names) - got)
            else:
                assert set(names) == got, (method, path, keys, set(names) ^ got)
    await child.stop()


@ensure
async def test_logs_follow_prints_new_device_lines_coloured_by_level(daemon):
    """`lumora-reload logs SID --follow`: what the devices log, as it comes, coloured by level."""
    from tests.test_cli import Proc

    sid = await daemon.new_session()
    device, _ = await connected_device(daemon, sid, deviceName="Pixel 8")
    device.send("log", {"level": "warn", "message": "low battery"})
    proc = Proc(daemon.reactor, ["-m", "lumora_reload", "--url", daemon.url, "logs", sid[:8], "--follow",
                                 "--color", "always", "--interval", "0.05"])
    try:
        warn = await proc.wait_line(lambda line: "low battery" in line)
        device.send("log", {"level": "error", "message": "render failed"})
        error = await proc.wait_line(lambda line: "render failed" in line)
        device.send("log", {"level": "info", "message": "fine"})
        info = await proc.wait_line(lambda line: "fine" in line)
    finally:
        await proc.stop()
    assert "\x1b[33mWARN \x1b[0m [Pixel 8] \x1b[33mlow battery\x1b[0m" in warn
    assert "\x1b[31mERROR\x1b[0m [Pixel 8] \x1b[31mrender failed\x1b[0m" in error
    assert info.endswith("INFO  [Pixel 8] fine")
    assert proc.lines.count(warn) == 1  # each line once, though polled again and again


@ensure
async def test_the_tour_watch_and_device_print_what_the_readme_shows(daemon, tmp_path):
    """The tour's app.json, `watch` and `device`: a full update #1, then an
    edit of "Hello" goes out as incremental update #2 which the device applies
    with its checksum ok."""
    from tests.test_cli import Proc

    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    tour = readme[readme.index("\n## Five-minute tour\n"):readme.index("\n## Browser preview and dashboard\n")]
    app_json = tour.split("cat > app.json <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    sid = await daemon.new_session()
    url = ["-m", "lumora_reload", "--url", daemon.url]
    device = Proc(daemon.reactor, [*url, "device", sid[:6]])
    watch = None
    try:
        await device.wait_line(lambda line: "connected" in line)
        path = tmp_path / "app.json"
        path.write_text(app_json)
        watch = Proc(daemon.reactor, [*url, "watch", sid[:6], "app.json"], cwd=str(tmp_path))
        first = await watch.wait_line(lambda line: "pushed" in line)
        assert re.fullmatch(r"\d\d:\d\d:\d\d pushed app\.json: full update #1 -> 1 device in \d+ ms", first), first
        applied = device.wait_line(lambda line: "#2" in line)
        pushed = watch.wait_line(lambda line: "pushed" in line)
        (tmp_path / "app.json.tmp").write_text(app_json.replace('"Hello"', '"Hello, Lumora"'))
        os.replace(tmp_path / "app.json.tmp", path)
        assert re.search(r"pushed app\.json: incremental update #2 -> 1 device in \d+ ms$", await pushed)
        assert re.search(r"#2 incremental applied in \d+\.\d ms, 1 nodes, checksum ok", await applied)
    finally:
        await device.stop()
        if watch is not None:
            await watch.stop()
    assert daemon.server.get_session(sid).schema["nodes"][0]["props"]["text"] == "Hello, Lumora"


@ensure
async def test_watch_json_prints_one_json_object_per_line(daemon, tmp_path):
    from tests.test_cli import Proc

    sid = await daemon.new_session()
    path = tmp_path / "app.json"
    path.write_text(orjson.dumps(make_schema()).decode())
    proc = Proc(daemon.reactor, ["-m", "lumora_reload", "--url", daemon.url, "watch", sid, str(path), "--json"])
    try:
        await proc.wait_line(lambda line: '"push"' in line)
        reported = proc.wait_line(lambda line: '"invalid"' in line)
        path.write_text('{"version": "1.0", "nodes": [')
        await reported
    finally:
        await proc.stop()
    events = [orjson.loads(line) for line in proc.lines]  # every line is one JSON object
    push = next(e for e in events if e["event"] == "push")
    assert (push["sequenceNumber"], push["updateType"], push["devicesUpdated"]) == (1, "full", 0)
    assert [e["event"] for e in events].count("invalid") == 1
    assert daemon.server.get_session(sid).sequence == 1


@ensure
async def test_connect_requires_device_id_platform_and_client_version_as_strings(daemon):
    sid = await daemon.new_session(make_schema())
    good = {"deviceId": "phone-1", "platform": "ios", "clientVersion": "1.1.0"}
    for name in good:
        for payload in ({k: v for k, v in good.items() if k != name}, {**good, name: 7}):
            device = await daemon.device(sid)
            device.send("connect", payload)
            error = await device.next()
            assert (error["type"], error["payload"]["code"]) == ("error", "INVALID_MESSAGE"), payload
            assert name in error["payload"]["message"], error
            device.sendClose()
            await device.wait_closed()


# -- "Where state lives" ------------------------------------------------------------


@ensure
async def test_the_data_dir_holds_the_database_and_a_lock_with_the_daemons_pid(start_daemon, tmp_path):
    data_dir = tmp_path / "state"
    child, remote = await start_daemon("twistd", "--data-dir", str(data_dir))
    await remote.push(await remote.new_session(), make_schema())
    assert set(os.listdir(data_dir)) == {"sessions.sqlite3", "sessions.sqlite3-wal", "sessions.sqlite3-shm", "lock"}
    assert (data_dir / "lock").read_text().strip() == str(child.transport.pid)
    await child.stop()
    assert set(os.listdir(data_dir)) <= {"sessions.sqlite3", "lock"}  # -wal and -shm only while running


@ensure
async def test_a_crash_keeps_the_expiry_as_of_the_last_push_extend_or_cleanup_sweep(daemon_factory, clock, tmp_path):
    """What SQLite holds of a session's times: device activity is stored at
    the next cleanup sweep, a push and an extend at once."""
    import sqlite3

    from lumora_reload.sqlite_store import SQLiteStore

    store = SQLiteStore.open(str(tmp_path), clock=clock)
    daemon = await daemon_factory(store=store, clock=clock, cleanup_interval=60, heartbeat_interval=1000,
                                  connection_timeout=1000)
    sid = await daemon.new_session(timeoutSeconds=600)

    def stored_activity():
        with sqlite3.connect(tmp_path / "sessions.sqlite3") as db:
            return db.execute("SELECT last_activity FROM sessions WHERE id = ?", (sid,)).fetchone()[0]

    clock.advance(10)
    await daemon.push(sid, make_schema())
    assert stored_activity() == 10
    clock.advance(10)
    assert (await daemon.call("POST", f"/session/{sid}/extend"))[0] == 200
    assert stored_activity() == 20
    device, _ = await connected_device(daemon, sid)
    clock.advance(25)
    device.send("ping", {})
    await device.next_of("pong")
    assert daemon.server.get_session(sid).last_activity == 45 and stored_activity() == 20
    clock.advance(15)  # the cleanup sweep at 60 s stores the session its device keeps alive
    assert stored_activity() == 60


def test_the_device_clients_defaults_are_the_readmes():
    """Pings every 20 s, a silent daemon given 3 pings, backoff 1 s doubling to 30 s with a quarter jitter."""
    from twisted.internet.testing import MemoryReactorClock

    from lumora_reload.client import Backoff, DeviceClient

    client = DeviceClient("ws://127.0.0.1:9/ws?session=s", reactor=MemoryReactorClock())
    assert (client.ping_interval, client.receive_timeout) == (20.0, 60.0)
    assert client.backoff == Backoff(initial=1, maximum=30, factor=2, jitter=0.25)
    assert client.replica.legacy is False
    old = DeviceClient("ws://127.0.0.1:9/ws?session=s", client_version="1.0.0", reactor=MemoryReactorClock())
    assert old.replica.legacy is True  # applies deltas as a protocol-1.0 device
