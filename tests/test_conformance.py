"""The conformance run (lumora-reload conformance): the project's own
DeviceClient passes every scenario; a client that forgets lastSequence and
ignores close codes fails the scenarios that say so, by name."""

import json
import shlex
import subprocess
import sys

import pytest_twisted
from twisted.internet import defer

from lumora_reload.cli import conformance as cli_conformance
from lumora_reload.client import Backoff, DeviceClient
from lumora_reload.testing import LumoraServer, conformance

QUICK = Backoff(initial=0.2, maximum=0.5)
BROKEN = ["resume-1012", "replaced-4409", "final-4404", "final-4410"]


class ForgetfulClient(DeviceClient):
    """A broken client: reconnects without lastSequence, and after every
    close code (4404 and 4410 included)."""

    def _opened(self, protocol):
        synced, self.replica.synced = self.replica.synced, False  # no lastSequence
        try:
            super()._opened(protocol)
        finally:
            self.replica.synced = synced

    def _lost(self, protocol, code, reason):
        super()._lost(protocol, code if self._stopping else 1006, reason)


class InProcess:
    """Launches a DeviceClient (or a subclass) in this reactor."""

    def __init__(self, reactor, kind=DeviceClient, **options):
        self.reactor, self.kind, self.options = reactor, kind, options
        self.clients = []

    @property
    def running(self):
        return bool(self.clients) and not self.clients[-1].done.called

    def start(self, url):
        client = self.kind(url, reactor=self.reactor, backoff=QUICK, **self.options)
        self.clients.append(client)
        client.start()

    def stop(self):
        return defer.gatherResults([c.stop() for c in self.clients])


@defer.inlineCallbacks
def _run(reactor, launcher, names=None):
    server = yield LumoraServer(reactor).start()
    try:
        runner = conformance.Runner(server, launcher=launcher, timeout=5.0, final_wait=0.4)
        report = yield runner.run(names)
    finally:
        yield server.stop()
    return report


@pytest_twisted.inlineCallbacks
def test_device_client_passes_every_scenario(reactor):
    """DeviceClient passes all ten scenarios, and the report says so."""
    report = yield _run(reactor, InProcess(reactor))
    document = report.to_json()
    assert [s["name"] for s in document["scenarios"]] == list(conformance.NAMES)
    failed = [(s["name"], c) for s in document["scenarios"] for c in s["checks"] if not c["passed"]]
    assert failed == [] and document["passed"] is True
    assert document["summary"] == {"scenarios": 10, "passed": 10, "failed": 0, "failedScenarios": []}
    resume = next(s for s in document["scenarios"] if s["name"] == "resume-1012")
    assert [c["name"] for c in resume["checks"]] == [
        "client connected and in sync", "reconnected", "resumed with lastSequence of the state it held",
        "lastChecksum is that state's checksum", "ends on the exact schema",
    ]


@pytest_twisted.inlineCallbacks
def test_protocol_1_0_client_gets_full_for_nested_inserts(reactor):
    """A 1.0 client is judged as one: full for a nested insert, a delta for a top-level append."""
    report = yield _run(reactor, InProcess(reactor, client_version="1.0.0"), ["deltas"])
    (outcome,) = report.outcomes
    assert outcome.passed, outcome
    names = [c.name for c in outcome.checks]
    assert "a 1.0.0 client was sent full for a nested insert" in names


@pytest_twisted.inlineCallbacks
def test_broken_client_fails_by_name(reactor):
    """A client ignoring lastSequence and close codes fails exactly the resume, 4409 and final scenarios."""
    report = yield _run(reactor, InProcess(reactor, kind=ForgetfulClient))
    document = report.to_json()
    assert document["passed"] is False
    assert document["summary"]["failedScenarios"] == BROKEN
    failed = {s["name"]: [c for c in s["checks"] if not c["passed"]] for s in document["scenarios"]}
    for name in ("resume-1012", "replaced-4409"):
        assert [c["name"] for c in failed[name]] == ["resumed with lastSequence of the state it held"]
        assert failed[name][0]["detail"].startswith("lastSequence None")
    assert failed["final-4404"][0]["name"] == "did not reconnect after 4404"
    assert failed["final-4410"][0]["detail"].startswith("reconnected after")
    text = cli_conformance.human_report(report)
    assert "6 passed, 4 failed" in text
    for name in BROKEN:
        assert f"{name} " in text and "FAIL" in text.split(name, 1)[1].splitlines()[0]


@pytest_twisted.inlineCallbacks
def test_client_that_never_joins_fails(reactor):
    """Without a client the first scenario fails with "no client connected" (and the run ends)."""
    server = yield LumoraServer(reactor).start()
    try:
        runner = conformance.Runner(server, timeout=0.3, final_wait=0.1)
        report = yield runner.run(["full"])
    finally:
        yield server.stop()
    (outcome,) = report.outcomes
    assert not outcome.passed and outcome.checks[0].detail == "no client connected after 0.3 s"


def test_cli_names_match_the_scenarios():
    """The command line offers exactly the runner's scenarios, in order."""
    assert cli_conformance.NAMES == conformance.NAMES


def _lumora(*argv):
    return [sys.executable, "-m", "lumora_reload", *argv]


def test_cli_with_the_device_command(tmp_path):
    """`conformance --client-cmd` runs `lumora-reload device` through every scenario: exit 0, a JSON report."""
    url_file, report_file = tmp_path / "url", tmp_path / "report.json"
    client = shlex.join(_lumora("--url", "{http}", "device", "{session}", "--keep-going", "--no-log"))
    run = subprocess.run(
        _lumora("conformance", "--report", "json", "--client-cmd", client, "--final-wait", "0.4",
                "--timeout", "10", "--session-url-file", str(url_file), "--report-file", str(report_file)),
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    document = json.loads(run.stdout)
    assert document["passed"] is True and document["format"] == "lumora-conformance/1"
    assert url_file.read_text().strip() == document["sessionUrl"]
    assert json.loads(report_file.read_text()) == document
    assert "Session URL: ws://127.0.0.1:" in run.stderr


def test_cli_fails_with_a_client_that_does_nothing():
    """A client command that never joins makes the run exit 1 with a table naming the scenario."""
    idle = shlex.join([sys.executable, "-c", "import time; time.sleep(60)"])
    run = subprocess.run(
        _lumora("conformance", "--scenario", "full", "--scenario", "ping-pong", "--client-cmd", idle,
                "--timeout", "0.5"),
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("Session URL: ws://127.0.0.1:")
    assert any(line.startswith("full ") and "FAIL" in line and "no client connected" in line for line in lines)
    assert lines[-1] == "0 passed, 2 failed"


def test_cli_refuses_bad_options():
    """A bad option value is one line and exit status 1."""
    run = subprocess.run(_lumora("conformance", "--timeout", "0"), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "--timeout must be more than 0" in run.stderr
    run = subprocess.run(_lumora("conformance", "--client-cmd", "no-such-command-here {url}"),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "cannot find 'no-such-command-here'" in run.stderr
