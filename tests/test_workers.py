"""`--workers N`: several daemon processes on one port sharing sessions
through a real `redis-server`; real `twistd` processes, real sockets."""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from lumora_reload import tap
from tests.helpers import make_schema, with_text
from tests.test_durability import TWISTD
from tests.test_fd_limit import DEADLINE, Output, call, device, read_until

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed (Debian package redis-server)"
)


def sockets_of(pid):
    """Open TCP sockets of a process, by inode."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def test_more_than_one_worker_needs_redis(capsys):
    """--workers 2 without --redis is refused with one line saying why."""
    with pytest.raises(SystemExit) as exit_:
        tap.Options().parseOptions(["--in-memory", "--workers", "2"])
    assert exit_.value.code == 2
    assert "--workers 2 needs --redis" in capsys.readouterr().err


def test_workers_refuse_a_tls_port(capsys):
    """--workers with an ssl: port is refused: the other workers could not speak TLS on it."""
    with pytest.raises(SystemExit):
        tap.Options().parseOptions(["--redis", "redis://127.0.0.1:1/0", "--workers", "2",
                                    "--port", "ssl:8443:privateKey=k.pem:certKey=c.pem"])
    assert "--workers needs a tcp:, tcp6: or unix: --port" in capsys.readouterr().err


@needs_redis
def test_two_workers_on_one_port_share_sessions(tmp_path):
    """Devices on either of two workers on one port get pushes made through either."""
    from tests.test_cluster import RedisServer

    redis = RedisServer(tmp_path)
    redis.start()
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logfile=-", "lumora-reload", "--redis", redis.url,
         "--port", "tcp:0:interface=127.0.0.1", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )
    out = Output(proc)
    phones = []
    try:
        port = int(out.wait_for(rb"Site starting on (\d+)").group(1))
        child = int(out.wait_for(rb"worker 2 of 2 started \(pid (\d+)\)").group(1))
        out.wait_for(rb"(?s)subscribed to .*subscribed to ")  # both joined the cluster
        schema = make_schema()
        # a worker's command connection to Redis can come up just after its
        # subscription: until then it answers 503, as documented
        for _ in range(100):
            made = call(_http(port), "POST", "/session/new", json.dumps({"schema": schema}).encode())
            if made.status != 503:
                break
            time.sleep(0.05)
        assert made.status == 200, made.raw[:400]
        sid = json.loads(made.body)["sessionId"]

        # The kernel hands each new connection to whichever worker accepts
        # first. To place a device (or a push) on one worker, the other is
        # paused (SIGSTOP) while it connects.
        workers = (proc.pid, child)
        for pid in workers:
            other = child if pid == proc.pid else proc.pid
            before = sockets_of(pid)
            with paused(other):
                phones.append(device(port, sid, f"phone-on-{pid}"))
            assert sockets_of(pid) - before, f"the device did not land on worker {pid}"

        for i, pid in enumerate(workers * 2):  # each push through one worker in turn
            other = child if pid == proc.pid else proc.pid
            schema = with_text(schema, f"push {i}")
            with paused(other):
                pushed = call(_http(port), "POST", f"/send/{sid}", json.dumps(schema).encode())
                assert pushed.status == 200, pushed.raw[:300]
            for phone in phones:  # devices on both workers get it
                read_until(phone, f"push {i}".encode())
        assert b"Traceback" not in out.data
    finally:
        for phone in phones:
            phone.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(DEADLINE)
        out.drain()
        proc.stdout.close()
        redis.stop()
    assert re.search(rb"worker 2 ended", out.data), "the first process stops its workers"
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


@contextlib.contextmanager
def paused(pid):
    """Stop process `pid` (it accepts nothing) for the duration."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _http(port):
    return socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
