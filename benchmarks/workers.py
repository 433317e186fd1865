"""Devices per box with ``--workers``: at 1 and 2 workers (sharing sessions
through a local ``redis-server``), idle devices joined to one session, the
RSS of all worker processes, ``GET /health`` while they connect and while
held, and the fan-out p50 of a small incremental update to all of them.

    python -m benchmarks.workers [--plan 1:18000,2:36000] [--generators 4] [--pushes 10]

Each generator process holds at most devices / generators sockets, so every
process stays under its open-files limit. Needs ``redis-server`` on PATH.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

from benchmarks import harness, loadgen
from benchmarks.fanout import _push
from benchmarks.harness import HOST, Api, Daemon, ms, percentile
from benchmarks.idle import Prober
from benchmarks.workload import SMALL, Pushes


def _redis(workdir):
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", HOST, "--dir", workdir,
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return proc, f"redis://{HOST}:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def _family(pid):
    """The daemon's pid and its worker processes' pids."""
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


def _rss_kb(pids):
    return sum(harness.rss_kb(p)[0] for p in pids)


def run_one(workers, devices, gens, workdir, pushes, settle=3.0):
    redis, url = _redis(workdir)
    daemon = Daemon(workdir, ["--redis", url, "--workers", str(workers),
                              f"--max-devices-per-session={devices}"])
    prober = None
    try:
        deadline = time.monotonic() + 30
        while len(_family(daemon.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(settle)  # the other workers subscribe to Redis
        pids = _family(daemon.pid)
        spec = Pushes(SMALL)
        api = Api(daemon.port)
        status, made = api.call("POST", "/session/new", b'{"schema":' + spec.initial + b"}")
        assert status == 200, made
        sid = made["sessionId"]
        rss0 = _rss_kb(pids)
        prober = Prober(daemon.port)
        prober.start()
        c0 = time.monotonic()
        ok, failed, seconds, errors = gens.connect(daemon.port, sid, devices)
        c1 = time.monotonic()
        time.sleep(settle)
        h1 = time.monotonic()
        rss = _rss_kb(pids)
        per_worker = {p: len(os.listdir(f"/proc/{p}/fd")) for p in pids}
        gens.reset()
        api.close()
        api = Api(daemon.port)  # a fresh connection: the first one idled through the connect storm
        rows = [_push(api, f"/send/{sid}", spec.next("incremental")[1], daemon, gens) for _ in range(pushes)]
        latencies = [r["latency"] for r in rows]
        return {
            "workers": workers, "devices": ok, "failed": failed, "connect_errors": errors[:3],
            "connect_s": round(seconds, 1), "open_files_per_worker": sorted(per_worker.values()),
            "rss_mb": round(rss / 1024, 1), "kb_per_device": round((rss - rss0) / ok, 1) if ok else None,
            "health_connecting": prober.window(c0, c1), "health_held": prober.window(c1, h1),
            # while connecting and held, not while pushing to every device
            "health_all": prober.window(c0, h1),
            "fanout_p50_ms": ms(percentile(latencies, 50)), "fanout_updates": [r["type"] for r in rows][:3],
        }
    finally:
        if prober is not None:
            prober.stop()
        daemon.stop()
        gens.close_devices()
        redis.terminate()
        redis.wait(10)


def table(results):
    out = ["| workers | devices held | failed | RSS MB (all workers) | KB/device | open files per worker | "
           "connect s | /health p99 connecting | /health p99 held | fan-out p50 (small update, all devices) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        out.append(f"| {r['workers']} | {r['devices']:,} | {r['failed']} | {r['rss_mb']} | {r['kb_per_device']} | "
                   f"{', '.join(map(str, r['open_files_per_worker']))} | {r['connect_s']} | "
                   f"{r['health_connecting']['p99_ms']} ms | {r['health_held']['p99_ms']} ms | "
                   f"{r['fanout_p50_ms']} ms |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plan", default="1:18000,2:36000", help="workers:devices pairs [1:18000,2:36000]")
    p.add_argument("--generators", type=int, default=4)
    p.add_argument("--pushes", type=int, default=10)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed")
    loadgen.raise_fd_limit()
    plan = [tuple(int(x) for x in item.split(":")) for item in args.plan.split(",")]
    gens = harness.Generators(args.generators)
    results = []
    try:
        with harness.workdir() as wd:
            for workers, devices in plan:
                print(f"workers: {workers} worker(s), {devices} devices ...", flush=True)
                results.append(run_one(workers, devices, gens, wd, args.pushes))
                print(json.dumps(results[-1]), flush=True)
    finally:
        gens.stop()
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load": os.getloadavg(),
                       "workers": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
