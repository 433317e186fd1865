"""contrib/systemd: the units pass `systemd-analyze verify`, and the daemon
started with the unit's own command line serves HTTP and WebSocket on a
socket handed over the way systemd does it (descriptor 3, `LISTEN_FDS`,
`LISTEN_PID`), and restarts on it without refusing a connection."""

import os
import pathlib
import shlex
import shutil
import socket
import subprocess
import sys

import pytest
import pytest_twisted

from tests.helpers import make_schema, with_text
from tests.processes import TWIST, Remote, spawn_child  # noqa: F401 (fixture)

UNITS = pathlib.Path(__file__).resolve().parent.parent / "contrib" / "systemd"
INSTALLED_TWIST = "/opt/lumora-reload/bin/twist"
# sets LISTEN_PID to its own pid, then becomes the daemon (exec keeps the pid)
AS_SYSTEMD = "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[1], sys.argv[1:])"
READY = rb"Site starting on"


def directives(name):
    """[(section, key, value)] of a unit file, in order (keys may repeat)."""
    section, found = None, []
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key, value))
    return found


def setting(name, key):
    values = [value for _, k, value in directives(name) if k == key]
    assert values, f"{name} has no {key}="
    return values[-1]


def test_units_verify(tmp_path):
    """`systemd-analyze verify` accepts both units without a warning (ExecStart pointed at this venv's twist)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    service = (UNITS / "lumora-reload.service").read_text()
    assert INSTALLED_TWIST in service
    (tmp_path / "lumora-reload.service").write_text(service.replace(INSTALLED_TWIST, TWIST))
    shutil.copy(UNITS / "lumora-reload.socket", tmp_path)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "lumora-reload.socket"), str(tmp_path / "lumora-reload.service")],
        capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0 and "Failed to initialize manager" in result.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr.strip()}")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_service_unit_runs_as_its_own_user_with_state_and_hardening():
    """The service runs `twist` with text logs on the inherited socket, as a transient user with its own state dir, hardened."""
    unit = "lumora-reload.service"
    argv = shlex.split(setting(unit, "ExecStart"))
    assert argv[:2] == [INSTALLED_TWIST, "lumora-reload"]
    assert argv[argv.index("--port") + 1] == "systemd:domain=INET:index=0"
    assert argv[argv.index("--data-dir") + 1] == "%S/" + setting(unit, "StateDirectory")
    assert argv[argv.index("--log-format") + 1] == "text"
    for key, value in [
        ("DynamicUser", "yes"), ("Restart", "on-failure"), ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX AF_NETLINK"), ("CapabilityBoundingSet", ""),
        ("Requires", "lumora-reload.socket"),
    ]:
        assert setting(unit, key) == value, key
    assert setting("lumora-reload.socket", "ListenStream") == "0.0.0.0:8080"  # one IPv4 socket: domain=INET


def unit_argv(port_socket, data_dir):
    """The service's ExecStart, for this venv and a temporary state dir,
    behind the wrapper that plays systemd's part."""
    argv = shlex.split(setting("lumora-reload.service", "ExecStart"))
    argv = [TWIST if a == INSTALLED_TWIST else a.replace("%S/lumora-reload", str(data_dir)) for a in argv]
    return [sys.executable, "-c", AS_SYSTEMD, *argv]


@pytest.fixture
def listening():
    """A bound, listening loopback socket, as systemd holds it for the service."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield sock
    sock.close()


def activate(spawn_child, sock, data_dir):
    env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="lumora-reload.socket")
    return spawn_child(unit_argv(sock, data_dir), env=env, child_fds={3: sock.fileno()})


@pytest_twisted.ensureDeferred
async def test_socket_activation_serves_http_and_websocket(reactor, spawn_child, listening, tmp_path):
    """Started with the unit's command on a systemd-style inherited socket, the daemon answers REST and devices."""
    child = activate(spawn_child, listening, tmp_path / "state")
    await child.wait_for(READY)
    remote = Remote(reactor, f"http://127.0.0.1:{listening.getsockname()[1]}")
    status, health = await remote.call("GET", "/health")
    assert (status, health["status"]) == (200, "ok")
    sid = await remote.new_session()
    device = await remote.device(sid)
    await device.hello(device_id="phone")
    await remote.push(sid, make_schema())
    update = await device.next_of("update")
    assert update["payload"]["sequenceNumber"] == 1
    device.sendClose()
    await device.wait_closed()
    await child.stop()
    assert b" info " in child.output and not child.output.lstrip().startswith((b"{", b"\x1e"))  # text logs


@pytest_twisted.ensureDeferred
async def test_restart_on_the_held_socket_refuses_no_connection(reactor, spawn_child, listening, tmp_path):
    """Stopping the daemon closes devices with 1012; a request made while it is down waits and is answered by the next one, and the device resumes."""
    data_dir = tmp_path / "state"
    remote = Remote(reactor, f"http://127.0.0.1:{listening.getsockname()[1]}")
    first = activate(spawn_child, listening, data_dir)
    await first.wait_for(READY)
    schema = make_schema()
    sid = await remote.new_session()
    device = await remote.device(sid)
    await device.hello(device_id="phone")
    await remote.push(sid, schema)
    await device.next_of("update")

    first.signal("TERM")
    assert await device.wait_closed() == (1012, "Service restart")
    assert await first.ended == -15

    waiting = remote.call("GET", "/health")  # no daemon now: the connection waits in the socket's queue
    second = activate(spawn_child, listening, data_dir)
    status, _ = await waiting
    assert status == 200
    device = await remote.device(sid)
    hello = await device.hello(device_id="phone", lastSequence=1)
    assert (hello["resumed"], hello["sequenceNumber"]) == (True, 1)
    await remote.push(sid, with_text(schema, "after restart"))
    assert (await device.next_of("update"))["payload"]["sequenceNumber"] == 2
    device.sendClose()
    await device.wait_closed()
    await second.stop()


@pytest.fixture
def listening_ipv6():
    """What `ListenStream=PORT` (a port alone) makes systemd hold: an IPv6 socket."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    sock.listen(16)
    yield sock
    sock.close()


@pytest_twisted.ensureDeferred
async def test_a_socket_of_another_family_than_the_port_names_is_refused_in_one_line(
    reactor, spawn_child, listening_ipv6, tmp_path
):
    """Handed an IPv6 socket while --port says domain=INET, the daemon exits 1 naming the fix; it does not serve
    with every peer address garbled (and every control request refused as not loopback)."""
    child = activate(spawn_child, listening_ipv6, tmp_path / "state")
    await child.wait_for(rb"listening on|lumora-reload: ")
    if b"listening on" in child.output:
        await child.stop()
        pytest.fail("served on a socket of another family: " + child.output.decode())
    assert await child.ended == 1, child.output.decode()
    output = child.output.decode()
    assert "Traceback" not in output, output
    [line] = [line for line in output.splitlines() if line.startswith("lumora-reload: ")]
    assert "IPv6" in line and "--port systemd:domain=INET6:index=0" in line, line


def test_port_systemd_without_a_socket_says_what_to_do(tmp_path):
    """`--port systemd:...` outside socket activation exits with one line naming the missing socket."""
    result = subprocess.run(
        [TWIST, "lumora-reload", "--in-memory", "--port", "systemd:domain=INET:index=0"],
        capture_output=True, text=True, timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")},
    )
    assert result.returncode != 0
    assert "no socket was passed by systemd" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
