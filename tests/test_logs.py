"""The daemon's log lines (`--log-format text|json`) under `twist` and
`twistd -n`: real processes, a real push, the lines they print."""

import io
import json
import re

import pytest
import pytest_twisted
from twisted.logger import Logger, LogLevel, LogPublisher

from lumora_reload import logs
from tests.helpers import make_schema, with_text
from tests.processes import spawn_child, start_daemon  # noqa: F401 (fixtures)

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info|warn|error|critical) +\S+: .*$")


async def push_with_a_device(remote):
    """A session, a device in it, two pushes; returns the session id."""
    schema = make_schema()
    sid = await remote.new_session()
    device = await remote.device(sid)
    await device.hello(device_id="phone-7")
    await remote.push(sid, schema)
    await remote.push(sid, with_text(schema, "Bye"))
    await device.next_of("update")
    await device.next_of("update")
    device.sendClose()
    await device.wait_closed()
    return sid


def json_records(output):
    lines = [line for line in output.decode().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line parses


@pytest.mark.parametrize("runner", ["twist", "twistd"])
@pytest_twisted.ensureDeferred
async def test_json_lines_carry_stable_fields(start_daemon, runner):
    """With --log-format json every line is one JSON object, and our events carry event/session/device/sequence/latency_ms."""
    child, remote = await start_daemon(runner, "--log-format", "json", "--verbose")
    sid = await push_with_a_device(remote)
    await child.stop()
    records = json_records(child.output)
    assert all({"time", "level", "namespace", "message"} <= set(r) for r in records)
    by_event = {r["event"]: r for r in records if "event" in r}
    short = sid[:6] + "…"
    assert by_event["session.created"]["session"] == short
    joined = by_event["device.joined"]
    assert (joined["session"], joined["device"]) == (short, "phone-7")
    pushes = [r for r in records if r.get("event") == "push"]
    assert [p["sequence"] for p in pushes] == [1, 2]
    assert all(p["session"] == short and isinstance(p["latency_ms"], (int, float)) for p in pushes)
    assert by_event["device.left"]["device"] == "phone-7"
    assert sid not in child.output.decode()  # session ids are never logged in full


@pytest.mark.parametrize("runner", ["twist", "twistd"])
@pytest_twisted.ensureDeferred
async def test_text_is_the_default_and_reads_as_text(start_daemon, runner):
    """Without --log-format, the output (a pipe, as under systemd) is human-readable text, never JSON records."""
    child, remote = await start_daemon(runner, "--verbose")
    await push_with_a_device(remote)
    await child.stop()
    lines = child.output.decode().splitlines()
    assert lines and all(TEXT_LINE.match(line) for line in lines), child.output.decode()
    assert not any(line.lstrip("\x1e").startswith("{") for line in lines)
    text = child.output.decode()
    assert "device phone-7 (ios, 1.1.0) joined session" in text
    assert re.search(r"push 2 \(incremental\) to 1 device\(s\) of session \w{6}… in [\d.]+ ms", text)


@pytest_twisted.ensureDeferred
async def test_bad_log_format_is_one_line(spawn_child):
    """An unknown --log-format exits non-zero with one line naming the option."""
    from tests.processes import TWIST

    child = spawn_child([TWIST, "lumora-reload", "--in-memory", "--log-format", "xml"])
    code = await child.ended
    assert code != 0
    assert b"--log-format must be text or json, not 'xml'" in child.output
    assert b"Traceback" not in child.output


def test_failures_keep_their_traceback_in_both_formats():
    """A logged failure shows its traceback in text and as `error`/`traceback` in JSON."""
    for log_format in logs.FORMATS:
        stream = io.StringIO()
        publisher = LogPublisher(logs.LineObserver(stream, log_format))
        log = Logger(namespace="lumora_reload.test", observer=publisher)
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("sweep failed", event="sweep.failed", session="abc123…")
        out = stream.getvalue()
        assert "ZeroDivisionError" in out
        if log_format == "json":
            record = json.loads(out)
            assert (record["event"], record["session"], record["message"]) == ("sweep.failed", "abc123…", "sweep failed")
            assert "division by zero" in record["error"]


def test_level_threshold_and_foreign_fields():
    """Events below the level are dropped; a library's `event` key is not taken for one of ours."""
    stream = io.StringIO()
    publisher = LogPublisher(logs.LineObserver(stream, "json", LogLevel.info))
    Logger(namespace="lumora_reload.x", observer=publisher).debug("hidden")
    Logger(namespace="somelib", observer=publisher).info("{event}", event="theirs")
    (record,) = json_records(stream.getvalue().encode())
    assert record["message"] == "theirs" and "event" not in record

