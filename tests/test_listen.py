"""The daemon's port: `--port 8080`, start-up failures as one line and a
non-zero exit (twistd run for real), the ready line, and `/health` saying
whether only this machine can connect."""

import os
import socket
import subprocess
import sys

import pytest
import pytest_twisted
import treq

from lumora_reload import listen, tap

ensure = pytest_twisted.ensureDeferred
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
# TEST-NET-1: documentation addresses, never assigned to a machine
UNASSIGNABLE = "192.0.2.1"


def test_a_plain_number_is_a_tcp_port():
    """`--port 8080` means tcp:8080 (every interface); descriptions pass through."""
    assert listen.endpoint_description("8080") == "tcp:8080"
    assert tap_options("--port", "9001")["port"] == "tcp:9001"
    assert tap_options("--port", "tcp:0:interface=127.0.0.1")["port"] == "tcp:0:interface=127.0.0.1"
    for bad in ("0", "65536", "tcp:99999"):
        with pytest.raises(ValueError, match="1-65535"):
            listen.endpoint_description(bad)


def tap_options(*argv):
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def held_port():
    """A socket listening on a loopback port (the port "in use")."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def twistd(tmp_path, *argv):
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "lumora-reload", "--in-memory", *argv],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )


def assert_one_line(result, status=None):
    assert result.returncode != 0, result
    if status is not None:
        assert result.returncode == status, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lumora-reload: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("as_number", [False, True])
def test_twistd_on_a_port_in_use_says_so_in_one_line(tmp_path, as_number):
    """A port in use ends twistd with one line naming the next port to try."""
    with held_port() as s:
        port = s.getsockname()[1]
        description = str(port) if as_number else f"tcp:{port}:interface=127.0.0.1"
        line = assert_one_line(twistd(tmp_path, "--port", description), status=1)
    assert f"port {port}" in line and "is in use; is another lumora-reload running?" in line
    assert f"try --port {port + 1}" in line


def test_twistd_with_a_port_out_of_range_says_so_in_one_line(tmp_path):
    """tcp:99999 is refused with one line, before anything starts."""
    line = assert_one_line(twistd(tmp_path, "--port", "tcp:99999"))
    assert "99999" in line and "1-65535" in line


def test_twistd_on_an_address_of_another_machine_says_so_in_one_line(tmp_path):
    """An interface address this machine does not have is one line and exit 1."""
    line = assert_one_line(twistd(tmp_path, "--port", f"tcp:0:interface={UNASSIGNABLE}"), status=1)
    assert UNASSIGNABLE in line and "not an address of this machine" in line


def test_failure_lines_name_the_fix():
    """Each listening failure becomes a line that says what to do."""
    from twisted.internet.error import CannotListenError

    in_use = CannotListenError("", 8080, OSError(98, "Address already in use"))
    assert listen.failure_line("tcp:8080", in_use) == (
        "port 8080 is in use; is another lumora-reload running? try --port 8081")
    denied = CannotListenError("", 80, PermissionError(13, "Permission denied"))
    assert "need root" in listen.failure_line("tcp:80", denied)


def test_twistd_logs_a_ready_line(tmp_path):
    """Once listening, the daemon's log says where, and how to go on."""
    with held_port() as s:
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "lumora-reload", "--in-memory", "--port", f"tcp:{port}:interface=127.0.0.1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        for line in proc.stdout:
            if "listening on" in line:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    base = f"http://127.0.0.1:{port}"
    assert f"listening on {base} (this machine only" in line
    assert f"open {base}/ or run `lumora-reload dev --url {base}`" in line


@pytest.mark.parametrize("interface, expected", [("127.0.0.1", True), ("0.0.0.0", False)])
@ensure
async def test_health_says_whether_only_this_machine_can_connect(reactor, interface, expected):
    """The daemon built as twistd builds it reports loopbackOnly in /health."""
    options = tap_options("--in-memory", "--port", f"tcp:0:interface={interface}")
    root = tap.build(options, reactor)
    listener = root.getServiceNamed("listener")
    root.privilegedStartService()
    root.startService()
    try:
        port = listener.port.getHost().port
        response = await treq.get(f"http://127.0.0.1:{port}/health", persistent=False)
        body = await response.json()
        assert body["loopbackOnly"] is expected
    finally:
        await root.stopService()
