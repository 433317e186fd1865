"""The daemon's log lines (`--log-format text|json`) under `twist` and
`twistd -n`: real processes, a real push, the lines they print."""

import io
import json
import re

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import Logger, LoggingFile, LogLevel, LogPublisher, formatEvent

from lumora_reload import accesslog, logs
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


class _Peer:
    host = "192.0.2.7"


class _Request:
    """What an access-log line reads from a request."""

    method = b"POST"
    uri = b"/send/c3aea446a76e2c18a9e40c315dc94f7b?preserveState=false"
    clientproto = b"HTTP/1.1"
    code = 200
    sentLength = 98

    def __init__(self, agent):
        self.agent = agent

    def getClientAddress(self):
        return _Peer()

    def getHeader(self, name):
        return self.agent if name == b"user-agent" else None


def _access_site(logfile):
    from lumora_reload import web

    site = web.Site(_Hub(), reactor=None)
    site._logFile, site._logDateTime = logfile, "[01/Dec/2026:19:25:31 +0000]"
    return site


def test_an_access_line_is_the_event_its_file_would_write():
    """The Site hands each access-log line to the log file's logger as the very event the file would
    make of it, without the file's write; both line formats show it as the formatter would."""
    events = []
    logger = Logger(namespace="twisted.python.log", observer=LogPublisher(events.append))
    logfile, reference = (LoggingFile(logger, level=LogLevel.info) for _ in range(2))
    logfile.write = lambda data: pytest.fail("the Site wrote through the file")
    site = _access_site(logfile)
    for agent in (b"curl/8.5", b'odd "agent" \\ \x00\xe9', None):
        request = _Request(agent)
        site.log(request)
        reference.write(accesslog.access_log_line(site._logDateTime, request) + "\n")
        ours, files = events[-2:]
        assert ours.pop("log_time") <= files.pop("log_time")
        assert ours == files
        assert "c3aea446a76e" not in ours["log_io"]
        assert logs._message(ours) == formatEvent(ours) == ours["log_io"]
        for log_format in logs.FORMATS:
            stream = io.StringIO()
            observer = logs.LineObserver(stream, log_format)
            observer(dict(ours, log_time=0))
            with_formatter = stream.getvalue()
            stream.seek(0)
            stream.truncate()
            observer(dict(files, log_time=0, log_format="{text}", text=files["log_io"]))
            assert with_formatter == stream.getvalue()
    assert len(events) == 6


def test_an_access_line_after_a_partial_line_joins_it_as_before():
    """Text written to the default log file without a newline still leads the next access line, and
    a closed file still refuses it."""
    events = []
    logfile = LoggingFile(Logger(observer=LogPublisher(events.append)), level=LogLevel.info)
    site = _access_site(logfile)
    logfile.write("partial ")
    site.log(_Request(b"curl/8.5"))
    (event,) = events
    assert event["log_io"].startswith('partial "192.0.2.7" - - ') and event["log_io"].endswith('"curl/8.5"')
    logfile.close()
    with pytest.raises(ValueError):
        site.log(_Request(b"curl/8.5"))


def test_an_access_line_format_of_its_own_is_kept():
    """A Site given its own line format writes that format's lines to the default log file, one event each."""
    events = []
    logfile = LoggingFile(Logger(observer=LogPublisher(events.append)), level=LogLevel.info)
    site = _access_site(logfile)
    site._logFormatter = lambda timestamp, request: f"custom {request.method.decode()}\nsecond"
    site.log(_Request(b"curl/8.5"))
    assert [event["log_io"] for event in events] == ["custom POST", "second"]


def test_an_access_log_file_of_its_own_still_gets_each_line():
    """A Site whose access log is a file (an embedder's, a test's) writes the lines to it."""
    site = _access_site(io.StringIO())
    site.log(_Request(b"curl/8.5"))
    assert site._logFile.getvalue() == (
        '"192.0.2.7" - - [01/Dec/2026:19:25:31 +0000] "POST /send/c3aea4...?preserveState=false HTTP/1.1" '
        '200 98 "-" "curl/8.5"\n'
    )


class _Hub:
    def resource(self):
        from twisted.web.resource import Resource

        return Resource()


@given(st.one_of(st.binary(max_size=40), st.text(alphabet=st.characters(max_codepoint=127), max_size=40)))
@settings(max_examples=500)
def test_log_text_escapes_as_twisted_does(value):
    """An access-log field reads exactly as Twisted's own escaping writes it, for any bytes or ASCII text."""
    from twisted.web.http import _escape

    from lumora_reload.accesslog import log_text

    assert log_text(value) == _escape(value)
