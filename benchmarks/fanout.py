"""Fan-out latency: one session, N devices, pushes alternating a one-leaf
change (incremental) and a many-node change (full).

Latency of a push = time from issuing ``POST /send`` to the moment the last
device holds the new sequence number (generator receive time,
CLOCK_MONOTONIC). Pushes are sequential: the next is issued once every
device has the previous one. The daemon runs first; one device keeps the
exact bytes of every update, and the floor then broadcasts those same
bytes in the same order to the same number of devices.

The one-device end-to-end latency (the everyday case) is this benchmark
with N = 1 and more pushes.
"""

import time

from benchmarks import harness
from benchmarks.harness import Api, Daemon, FloorServer, ms, percentile
from benchmarks.workload import SIZES, Pushes


def _push(api, path, body, server, gens):
    s0 = server.cpu()
    g0 = gens.cpu()
    t0 = time.monotonic()
    status, answer = api.call("POST", path, body)
    t_api = time.monotonic() - t0
    if status != 200:
        raise RuntimeError(f"POST {path} answered {status}: {answer}")
    first, last, devices = gens.wait_sequence(answer["sequenceNumber"])
    return {
        "seq": answer["sequenceNumber"],
        "type": answer["updateType"],
        "latency": last - t0,
        "first": first - t0,
        "api": t_api,
        "server_cpu": server.cpu() - s0,
        "gen_cpu": gens.cpu() - g0,
        "devices": devices,
    }


def _daemon_phase(spec, devices, pushes_per_type, gens, workdir, daemon_args, profiler=None):
    pushes = Pushes(spec)
    daemon = Daemon(workdir, daemon_args)
    api = Api(daemon.port)
    try:
        status, made = api.call("POST", "/session/new", b'{"schema":' + pushes.initial + b"}")
        assert status == 200, made
        sid = made["sessionId"]
        ok, failed, connect_s, errors = gens.connect(daemon.port, sid, devices)
        if failed:
            raise RuntimeError(f"{failed} of {devices} devices failed to connect to the daemon: {errors}")
        rss_connected = daemon.rss()[0]
        gens.reset()
        warm = [_push(api, f"/send/{sid}", pushes.next()[1], daemon, gens) for _ in range(2)]
        rows = []
        spy = profiler(daemon.pid) if profiler else None
        try:
            for _ in range(2 * pushes_per_type):
                intended, body = pushes.next()
                # not under py-spy: its samples would count the /metrics reads
                before = None if spy else api.push_seconds()
                row = _push(api, f"/send/{sid}", body, daemon, gens)
                if before is not None:
                    row["daemon_push"] = api.push_seconds() - before
                row["intended"] = intended
                rows.append(row)
        finally:
            profile = spy.stop() if spy else None
        stats = gens.stats()
        captured = gens.captured()
        rss = daemon.rss()
        daemon_cpu = daemon.cpu()
    finally:
        daemon.stop()
        api.close()
        gens.close_devices()
    for row in warm + rows:
        row["bytes"] = len(captured.get(row["seq"], b""))
    return {
        "warm": warm,
        "rows": rows,
        "captured": captured,
        "stats": stats,
        "connect_s": connect_s,
        "rss_kb": rss[0],
        "rss_connected_kb": rss_connected,
        "rss_peak_kb": rss[1],
        "profile": profile,
        "extra_cpu": daemon_cpu,
    }


def _floor_phase(devices, daemon_result, gens, workdir):
    floor = FloorServer(workdir)
    api = Api(floor.port)
    captured = daemon_result["captured"]
    try:
        ok, failed, _, errors = gens.connect(floor.port, "floor", devices)
        if failed:
            raise RuntimeError(f"{failed} of {devices} devices failed to connect to the floor: {errors}")
        gens.reset()
        for row in daemon_result["warm"]:
            _push(api, "/send/floor", captured[row["seq"]], floor, gens)
        gens.reset()
        rows = []
        for row in daemon_result["rows"]:
            floor_row = _push(api, "/send/floor", captured[row["seq"]], floor, gens)
            floor_row["type"] = row["type"]
            rows.append(floor_row)
        stats = gens.stats()
        expected = devices * sum(len(captured[row["seq"]]) for row in daemon_result["rows"])
        if stats["bytes"] != expected:
            raise RuntimeError(f"floor: devices received {stats['bytes']} bytes, expected {expected}")
    finally:
        daemon_result["extra_cpu"] += floor.cpu()
        floor.stop()
        api.close()
        gens.close_devices()
    return rows


def _by_type(rows, key):
    out = {}
    for row in rows:
        out.setdefault(row["type"], []).append(row[key])
    return out


def _mean(values):
    return sum(values) / len(values) if values else None


def run(size, devices, pushes_per_type, gens, workdir, daemon_args=(), floor=True, profiler=None):
    """Measure one configuration; returns a list of result rows, one per
    update type the daemon actually sent."""
    spec = SIZES[size]
    meter = harness.Machine([p for p in gens.pids])
    daemon_result = _daemon_phase(spec, devices, pushes_per_type, gens, workdir, daemon_args, profiler)
    floor_rows = _floor_phase(devices, daemon_result, gens, workdir) if floor else []
    load = meter.stop(daemon_result["extra_cpu"])
    results = []
    rows = daemon_result["rows"]
    for kind, latencies in _by_type(rows, "latency").items():
        mine = [r for r in rows if r["type"] == kind]
        theirs = [r for r in floor_rows if r["type"] == kind]
        floor_lat = [r["latency"] for r in theirs]
        pushed = [r["daemon_push"] for r in mine if "daemon_push" in r]  # none under py-spy
        result = {
            "schema": size,
            "devices": devices,
            "update": kind,
            "intended": sorted({r["intended"] for r in mine}),
            "pushes": len(mine),
            "bytes": int(_mean([r["bytes"] for r in mine])),
            "p50_ms": ms(percentile(latencies, 50)),
            "p95_ms": ms(percentile(latencies, 95)),
            "p99_ms": ms(percentile(latencies, 99)),
            "max_ms": ms(max(latencies)),
            "first_device_p50_ms": ms(percentile([r["first"] for r in mine], 50)),
            "daemon_push_p50_ms": ms(percentile(pushed, 50)) if pushed else None,
            "api_p50_ms": ms(percentile([r["api"] for r in mine], 50)),
            "daemon_cpu_ms": ms(_mean([r["server_cpu"] for r in mine])),
            "generator_cpu_ms": ms(_mean([r["gen_cpu"] for r in mine])),
        }
        if theirs:
            result.update(
                {
                    "floor_p50_ms": ms(percentile(floor_lat, 50)),
                    "floor_p95_ms": ms(percentile(floor_lat, 95)),
                    "floor_p99_ms": ms(percentile(floor_lat, 99)),
                    "floor_max_ms": ms(max(floor_lat)),
                    "floor_server_cpu_ms": ms(_mean([r["server_cpu"] for r in theirs])),
                    "floor_generator_cpu_ms": ms(_mean([r["gen_cpu"] for r in theirs])),
                }
            )
            p50 = percentile(latencies, 50)
            fp50 = percentile(floor_lat, 50)
            result["x_floor"] = round(p50 / fp50, 2) if fp50 else None
        results.append(result)
    stats = daemon_result["stats"]
    extra = {
        "connect_s": round(daemon_result["connect_s"], 2),
        "daemon_rss_mb": round(daemon_result["rss_kb"] / 1024, 1),
        "daemon_rss_connected_mb": round(daemon_result["rss_connected_kb"] / 1024, 1),
        "daemon_rss_peak_mb": round(daemon_result["rss_peak_kb"] / 1024, 1),
        "gaps": stats["gaps"],
        "reorders": stats["reorders"],
        "errors": stats["errors"],
        "closes": stats["closes"],
        "load": load,
    }
    for result in results:
        result.update(extra)
    return results, daemon_result["profile"]
