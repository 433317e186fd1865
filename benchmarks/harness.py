"""What every benchmark needs: the daemon and the floor as subprocesses,
the load-generator workers, a keep-alive HTTP client, /proc readers and
percentiles."""

import atexit
import contextlib
import glob
import http.client
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import orjson

from benchmarks import loadgen

HOST = "127.0.0.1"
TICK = os.sysconf("SC_CLK_TCK")


# -- /proc ------------------------------------------------------------------


def cpu_seconds(pid):
    """CPU time (user + system) of every thread of `pid`, from schedstat
    (nanoseconds) where available, else from stat (clock ticks)."""
    total = 0
    found = False
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
                found = True
        except (OSError, ValueError, IndexError):
            pass
    if found:
        return total / 1e9
    return sum(user_system_seconds(pid))


def user_system_seconds(pid):
    """(user, system) CPU time of `pid`, every thread, from stat (clock
    ticks: coarse, so only for spans of seconds)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) / TICK, int(fields[12]) / TICK
    except OSError:
        return 0.0, 0.0


def rss_kb(pid):
    """(VmRSS, VmHWM) of `pid` in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                values[key] = int(value.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


class Machine:
    """Whole-machine CPU use between two points, to tell our processes'
    work from everybody else's (other engineers share this box)."""

    def __init__(self, pids=()):
        self.pids = list(pids)
        self.start()

    @staticmethod
    def _busy():
        with open("/proc/stat") as f:
            parts = f.readline().split()[1:]
        values = [int(v) for v in parts]
        idle = values[3] + values[4]
        return (sum(values[:8]) - idle) / TICK

    def start(self):
        self.t0 = time.monotonic()
        self.busy0 = self._busy()
        self.ours0 = sum(cpu_seconds(p) for p in self.pids) + _self_cpu()

    def stop(self, extra_cpu=0.0):
        """`extra_cpu`: CPU seconds of our processes that are gone by now
        (servers started and stopped in between)."""
        wall = time.monotonic() - self.t0
        busy = self._busy() - self.busy0
        ours = sum(cpu_seconds(p) for p in self.pids) + _self_cpu() - self.ours0 + extra_cpu
        return {
            "wall_s": round(wall, 2),
            "cores_busy": round(busy / wall, 2) if wall else 0,
            "other_cores_busy": round(max(0.0, busy - ours) / wall, 2) if wall else 0,
            "loadavg": os.getloadavg()[0],
        }


def _self_cpu():
    t = os.times()
    return t.user + t.system


def machine_info():
    model = "?"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    mem = 0
    with contextlib.suppress(OSError):
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_mb": mem,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }


def git_commit():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "lumora_reload"],
            capture_output=True, text=True,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- statistics ---------------------------------------------------------------


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of `values`."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def summary(values, points=(50, 95)):
    out = {f"p{p}": percentile(values, p) for p in points}
    out["max"] = max(values) if values else None
    out["n"] = len(values)
    return out


def ms(seconds):
    return None if seconds is None else round(seconds * 1000, 2)


# -- servers --------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


_running = set()


@atexit.register
def stop_servers():
    """Stop every server still running (an error skipped its stop)."""
    for server in list(_running):
        server.stop()


class Server:
    """A server subprocess on a loopback port, ready once GET /health answers."""

    name = "server"

    def __init__(self, argv, port, log_path):
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        _running.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}")
            try:
                status, _ = Api(self.port, timeout=1.0).call("GET", "/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer /health within {timeout}s; see {self.log_path}")

    def cpu(self):
        return cpu_seconds(self.pid)

    def user_system(self):
        return user_system_seconds(self.pid)

    def rss(self):
        return rss_kb(self.pid)

    def stop(self):
        _running.discard(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def twistd_path():
    """The twistd beside this Python, else the one on PATH."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(twistd):
        twistd = shutil.which("twistd") or "twistd"
    return twistd


class Daemon(Server):
    name = "daemon"

    def __init__(self, workdir, extra=()):
        port = free_port()
        twistd = twistd_path()
        # logging as the README runs it (twistd -n: the daemon's own line
        # format on standard output, captured in the .out file)
        argv = [
            twistd, "-n", "--pidfile=",
            "lumora-reload", "--in-memory", "--port", f"tcp:{port}:interface={HOST}",
            # every simulated device connects from loopback
            "--max-connections-per-address", "1000000", *extra,
        ]
        self.argv = argv
        super().__init__(argv, port, os.path.join(workdir, f"daemon-{port}.out"))


_SEQUENCE = re.compile(rb'"sequenceNumber":\d+')


def renumbered(update, sequence):
    """`update` (the bytes of an update the daemon sent) with its sequence
    number set to `sequence`: what a floor server broadcasts."""
    if update.count(b'"sequenceNumber":') != 1:
        raise RuntimeError("the update carries more than one sequenceNumber")
    return _SEQUENCE.sub(b'"sequenceNumber":%d' % sequence, update, count=1)


class FloorServer(Server):
    """The asyncio floor (benchmarks/floor.py), or with `kind` "stock" or
    "lean" the framework floor (benchmarks/framework_floor.py)."""

    name = "floor"

    def __init__(self, workdir, kind="asyncio"):
        port = free_port()
        if kind == "asyncio":
            argv = [sys.executable, "-m", "benchmarks.floor", "--port", str(port)]
        else:
            argv = [sys.executable, "-m", "benchmarks.framework_floor", "--port", str(port), "--kind", kind]
            self.name = f"framework floor ({kind})"
        super().__init__(argv, port, os.path.join(workdir, f"floor-{kind}-{port}.out"))


class Api:
    """A keep-alive HTTP/1.1 client for the control API."""

    def __init__(self, port, timeout=120.0):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def _connect(self):
        self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self, method, path, body=None):
        """(status, the JSON answer parsed)."""
        status, raw = self.raw(method, path, body)
        return status, (orjson.loads(raw) if raw else None)

    def raw(self, method, path, body=None):
        """(status, the answer's bytes)."""
        if self.conn is None:
            self._connect()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            raw = response.read()
        except (http.client.HTTPException, OSError):
            self.close()
            raise
        return response.status, raw

    def push_seconds(self):
        """The daemon's own total of time spent in pushes, from /metrics
        (`lumora_reload_push_seconds_sum`). Read before and after one push,
        the difference is that push inside the daemon: from its parsed
        body to the last device's send and the release of the state it
        replaced (not the body's arrival and parse, nor the answer)."""
        status, raw = self.raw("GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}")
        for line in raw.decode().splitlines():
            if line.startswith("lumora_reload_push_seconds_sum "):
                return float(line.split()[1])
        raise RuntimeError("/metrics has no lumora_reload_push_seconds_sum")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# -- load generators ---------------------------------------------------------------


class Generators:
    """Worker processes (benchmarks.loadgen), each holding a share of the
    devices. Devices are spread evenly; workers without devices are left
    out of waits."""

    def __init__(self, count, parse=False, ping_interval=25.0):
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        self.procs = []
        options = {"parse": parse, "ping_interval": ping_interval}
        for i in range(count):
            ours, theirs = context.Pipe()
            proc = context.Process(target=loadgen.main, args=(theirs, i, options), daemon=True)
            proc.start()
            theirs.close()
            self.pipes.append(ours)
            self.procs.append(proc)
        self.held = [0] * count
        self._stash = {}  # seq -> {worker: (count, first, last)}

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def cpu(self):
        return sum(cpu_seconds(pid) for pid in self.pids)

    def _expect(self, i, kind, timeout=300.0):
        pipe = self.pipes[i]
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not pipe.poll(left):
                raise TimeoutError(f"generator {i} did not answer {kind!r}")
            message = pipe.recv()
            if message[0] == kind:
                return message
            self._note(i, message)

    def _note(self, i, message):
        if message[0] == "arrived":
            _, seq, count, first, last = message
            self._stash.setdefault(seq, {})[i] = (count, first, last)

    def _all(self, command, kind, workers=None):
        workers = range(len(self.pipes)) if workers is None else workers
        for i in workers:
            self.pipes[i].send(command)
        return {i: self._expect(i, kind) for i in workers}

    def connect(self, port, session_id, count, concurrency=40, path="/ws", ack=False):
        """Open `count` more devices spread over the workers (acking every
        update if `ack`); returns (ok, failed, seconds, sample errors)."""
        n = len(self.pipes)
        shares = [count // n + (1 if i < count % n else 0) for i in range(n)]
        per_worker = max(1, concurrency // n)
        started = time.monotonic()
        for i, share in enumerate(shares):
            if share:
                self.pipes[i].send(("connect", HOST, port, path, session_id, share, per_worker, ack))
        ok = failed = 0
        errors = []
        for i, share in enumerate(shares):
            if share:
                _, good, bad, _, errs = self._expect(i, "connected")
                self.held[i] += good
                ok += good
                failed += bad
                errors += errs
        return ok, failed, time.monotonic() - started, errors

    def active(self):
        return [i for i, n in enumerate(self.held) if n]

    def report(self, on):
        for i in range(len(self.pipes)):
            self.pipes[i].send(("report", on))

    def wait_sequence(self, seq, timeout=120.0):
        """Block until every active worker reported all its devices hold
        `seq`. Returns (first, last, devices) or raises TimeoutError with
        how many devices got it."""
        active = self.active()
        deadline = time.monotonic() + timeout
        got = self._stash.setdefault(seq, {})
        while any(i not in got for i in active):
            left = deadline - time.monotonic()
            if left <= 0:
                status = self.status(seq)
                have = sum(s[0] for s in status.values())
                raise TimeoutError(f"sequence {seq}: {have}/{sum(self.held)} devices after {timeout}s")
            ready = multiprocessing.connection.wait([self.pipes[i] for i in active], left)
            for pipe in ready:
                self._note(self.pipes.index(pipe), pipe.recv())
        self._stash.pop(seq, None)
        for old in [s for s in self._stash if s < seq]:
            del self._stash[old]
        values = [got[i] for i in active]
        return min(v[1] for v in values), max(v[2] for v in values), sum(v[0] for v in values)

    def status(self, seq):
        """{worker: (count, first, last, ready)} for `seq`."""
        answers = self._all(("status", seq), "status", self.active())
        return {i: a[2:] for i, a in answers.items()}

    def stats(self):
        answers = self._all(("stats",), "stats")
        merged = {"ready": 0, "gaps": 0, "missed": 0, "reorders": 0, "messages": 0, "updates": 0, "bytes": 0,
                  "errors": {}, "closes": {}}
        for _, s in answers.values():
            for key in ("ready", "gaps", "missed", "reorders", "messages", "updates", "bytes"):
                merged[key] += s[key]
            for key in ("errors", "closes"):
                for k, v in s[key].items():
                    merged[key][k] = merged[key].get(k, 0) + v
        return merged

    def reset(self):
        self._stash.clear()
        self._all(("reset",), "reset")

    def captured(self):
        return self._all(("captured",), "captured", [0])[0][1]

    def close_devices(self):
        self._all(("close",), "closed")
        self.held = [0] * len(self.pipes)
        self._stash.clear()

    def stop(self):
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("quit",))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()


@contextlib.contextmanager
def workdir(keep=None):
    path = keep or tempfile.mkdtemp(prefix="lumora-bench-")
    os.makedirs(path, exist_ok=True)
    try:
        yield path
    finally:
        if keep is None:
            shutil.rmtree(path, ignore_errors=True)
