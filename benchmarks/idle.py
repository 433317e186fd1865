"""Idle connections: daemon memory with 0 / 1,000 / 10,000 / 18,000 devices
connected to one session (small schema, so each got it in ``connected``),
and ``GET /health`` latency meanwhile.

A prober thread opens a fresh TCP connection for every ``GET /health``
(as a load balancer does) every `interval` seconds, from before the first
device connects until after the last step was held; latencies are split
into "while devices connect" and "while they are held". RSS is read from
/proc/PID/status after each step settled (`settle` seconds). Devices send
an application ``ping`` every 25 s (the daemon drops devices silent for
60 s) and answer protocol pings. The floor holds the same connections, to
show what a minimal asyncio server needs per connection.
"""

import http.client
import threading
import time

from benchmarks import harness
from benchmarks.harness import HOST, Api, Daemon, FloorServer, ms, percentile
from benchmarks.workload import SMALL, Pushes


class Prober(threading.Thread):
    def __init__(self, port, interval=0.02):
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.samples = []  # (monotonic time, latency or None on failure)
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            t0 = time.monotonic()
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                conn.request("GET", "/health")
                response = conn.getresponse()
                response.read()
                conn.close()
                latency = time.monotonic() - t0 if response.status == 200 else None
            except (OSError, http.client.HTTPException):
                latency = None
            self.samples.append((t0, latency))
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def stop(self):
        self._halt.set()
        self.join()

    def window(self, start, end):
        picked = [lat for t, lat in self.samples if start <= t < end]
        good = [lat for lat in picked if lat is not None]
        return {
            "probes": len(picked),
            "failed": len(picked) - len(good),
            "p50_ms": ms(percentile(good, 50)),
            "p99_ms": ms(percentile(good, 99)),
            "max_ms": ms(max(good)) if good else None,
        }


def _hold(server, gens, counts, settle, session_id, prober):
    steps = []
    time.sleep(settle)
    rss0 = server.rss()[0]
    steps.append({"devices": 0, "rss_mb": round(rss0 / 1024, 1)})
    held = 0
    for target in counts:
        c0 = time.monotonic()
        ok, failed, seconds, errors = gens.connect(server.port, session_id, target - held)
        c1 = time.monotonic()
        held += ok
        time.sleep(settle)
        h1 = time.monotonic()
        rss, hwm = server.rss()
        steps.append(
            {
                "devices": held,
                "failed": failed,
                "connect_errors": errors[:3],
                "connect_s": round(seconds, 2),
                "connects_per_s": round(ok / seconds, 1) if seconds else None,
                "rss_mb": round(rss / 1024, 1),
                "peak_rss_mb": round(hwm / 1024, 1),
                "kb_per_device": round((rss - rss0) / held, 1) if held else None,
                "health_connecting": prober.window(c0, c1),
                "health_held": prober.window(c1, h1),
            }
        )
    return steps, prober.window(0, time.monotonic())


def run(counts, gens, workdir, daemon_args=(), floor=True, settle=3.0):
    meter = harness.Machine(gens.pids)
    initial = Pushes(SMALL).initial
    out = {"counts": counts}
    extra_cpu = 0.0
    # all devices join one session: lift the per-session cap (10,000) to the count
    daemon = Daemon(workdir, [f"--max-devices-per-session={max(counts)}", *daemon_args])
    prober = None
    try:
        status, made = Api(daemon.port).call("POST", "/session/new", b'{"schema":' + initial + b"}")
        assert status == 200, made
        prober = Prober(daemon.port)
        prober.start()
        out["daemon"], out["daemon_health"] = _hold(daemon, gens, counts, settle, made["sessionId"], prober)
        stats = gens.stats()
        out["daemon_closes"] = stats["closes"]
        out["daemon_errors"] = stats["errors"]
        out["daemon_cpu_s"] = round(daemon.cpu(), 2)
        extra_cpu += daemon.cpu()
    finally:
        if prober is not None:
            prober.stop()
        daemon.stop()
        gens.close_devices()
    if floor:
        server = FloorServer(workdir)
        prober = Prober(server.port)
        prober.start()
        try:
            out["floor"], out["floor_health"] = _hold(server, gens, counts, settle, "floor", prober)
            extra_cpu += server.cpu()
        finally:
            prober.stop()
            server.stop()
            gens.close_devices()
    out["load"] = meter.stop(extra_cpu)
    return out
