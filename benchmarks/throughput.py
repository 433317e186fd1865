"""Push throughput: N devices that ack every update; one client pushes
one-leaf changes of the small schema (incremental updates) back to back,
each ``POST /send`` issued as soon as the previous one answered, for a
fixed time.

Delivered rate = pushes / (time from the first POST until the last device
holds the last sequence number). Every device checks that it saw every
sequence number once, in order. The floors run the same loop, broadcasting
the daemon's own update bytes with the sequence number rewritten, to
devices that join with the daemon's session id (so their acks are as
long): the asyncio floor (what the generator and the kernel cost) and
the framework floors (the same server built from Twisted, twisted.web and
Autobahn, as they come and with the daemon's transport layer).
"""

import time

from benchmarks import harness
from benchmarks.harness import Api, Daemon, FloorServer, ms, percentile
from benchmarks.workload import SMALL, Pushes


def _loop(api, path, next_body, server, gens, seconds):
    gens.report(False)
    gens.reset()
    s0 = server.cpu()
    us0 = server.user_system()
    g0 = gens.cpu()
    answers = []
    start = time.monotonic()
    stop = start + seconds
    status_errors = {}
    while time.monotonic() < stop:
        t0 = time.monotonic()
        status, answer = api.call("POST", path, next_body())
        if status != 200:
            status_errors[status] = status_errors.get(status, 0) + 1
            continue
        answers.append((time.monotonic() - t0, answer["sequenceNumber"]))
    issued = time.monotonic() - start
    last_seq = answers[-1][1]
    first_seq = answers[0][1]
    # wait (bounded) until every device holds the last sequence number
    deadline = time.monotonic() + 120
    while True:
        status = gens.status(last_seq)
        have = sum(s[0] for s in status.values())
        ready = sum(s[3] for s in status.values())
        if have >= ready or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    last_arrival = max((s[2] for s in status.values() if s[2] is not None), default=None)
    stats = gens.stats()
    gens.report(True)
    user, system = (b - a for a, b in zip(us0, server.user_system()))
    pushes = len(answers)
    delivered_s = (last_arrival - start) if last_arrival else None
    return {
        "pushes": pushes,
        "issue_s": round(issued, 2),
        "api_rate": round(pushes / issued, 1),
        "delivered_rate": round(pushes / delivered_s, 1) if delivered_s else None,
        "delivered_s": round(delivered_s, 2) if delivered_s else None,
        "all_devices_have_last": have >= ready and ready == sum(gens.held),
        "devices": ready,
        "api_p50_ms": ms(percentile([a[0] for a in answers], 50)),
        "api_p99_ms": ms(percentile([a[0] for a in answers], 99)),
        "server_cpu_per_push_ms": ms((server.cpu() - s0) / pushes),
        "server_cpu_share": round((server.cpu() - s0) / delivered_s, 2) if delivered_s else None,
        # the part spent in the kernel: sends, reads, epoll (the rest is Python)
        "server_kernel_share": round(system / (user + system), 2) if user + system else None,
        "generator_cpu_per_push_ms": ms((gens.cpu() - g0) / pushes),
        "generator_cpu_share": round((gens.cpu() - g0) / delivered_s, 2) if delivered_s else None,
        "messages": stats["messages"],
        "updates": stats["updates"],
        "expected_updates": pushes * ready,
        "gaps": stats["gaps"],
        "missed": stats["missed"],
        "reorders": stats["reorders"],
        "errors": stats["errors"],
        "closes": stats["closes"],
        "http_errors": status_errors,
        "sequence_span": [first_seq, last_seq],
    }


# the result keys of the floors, by kind (FloorServer)
FLOOR_KEYS = {"asyncio": "floor", "stock": "floor_stock", "lean": "floor_lean"}


def run(devices, seconds, gens, workdir, daemon_args=(), floors=("asyncio",), profiler=None):
    """Measure the daemon, then each of `floors` (kinds of `FloorServer`:
    "asyncio", and the framework floors "stock" and "lean"), each under
    its `FLOOR_KEYS` key; `profiler(pid)` (optional) watches the daemon
    during its push loop and its ``stop()`` result is returned under
    "profile"."""
    meter = harness.Machine(gens.pids)
    pushes = Pushes(SMALL)
    daemon = Daemon(workdir, daemon_args)
    api = Api(daemon.port)
    extra_cpu = 0.0
    try:
        status, made = api.call("POST", "/session/new", b'{"schema":' + pushes.initial + b"}")
        assert status == 200, made
        sid = made["sessionId"]
        ok, failed, _, errors = gens.connect(daemon.port, sid, devices, ack=True)
        if failed:
            raise RuntimeError(f"{failed} devices failed to connect: {errors}")
        gens.reset()
        # warm-up, and a sample of the daemon's update bytes for the floor
        for _ in range(3):
            status, answer = api.call("POST", f"/send/{sid}", pushes.next("incremental")[1])
            gens.wait_sequence(answer["sequenceNumber"])
        template = gens.captured()[answer["sequenceNumber"]]
        spy = profiler(daemon.pid) if profiler else None
        window = harness.Machine(gens.pids)
        try:
            result = _loop(api, f"/send/{sid}", lambda: pushes.next("incremental")[1], daemon, gens, seconds)
            # the box during the daemon's loop alone ("load" spans the
            # floors' too), read before a profiler's stop adds its own work
            result["cores_busy"] = window.stop()["cores_busy"]
        finally:
            profile = spy.stop() if spy else None
        result["daemon_rss_mb"] = round(daemon.rss()[0] / 1024, 1)
        extra_cpu += daemon.cpu()
    finally:
        daemon.stop()
        api.close()
        gens.close_devices()
    out = {"devices": devices, "seconds": seconds, "bytes": len(template), "daemon": result}
    if profile:
        out["profile"] = profile
    for kind in floors:
        out[FLOOR_KEYS[kind]], cpu = _floor_loop(kind, template, sid, devices, seconds, gens, workdir)
        extra_cpu += cpu
    out["load"] = meter.stop(extra_cpu)
    return out


def _floor_loop(kind, template, session_id, devices, seconds, gens, workdir):
    """The push loop against a floor server broadcasting the daemon's own
    update bytes, the sequence number rewritten; its result and the
    floor's CPU seconds."""
    floor_server = FloorServer(workdir, kind)
    api = Api(floor_server.port)
    counter = iter(range(1, 10**9))
    try:
        ok, failed, _, errors = gens.connect(floor_server.port, session_id, devices, ack=True)
        if failed:
            raise RuntimeError(f"{failed} devices failed to connect to the {floor_server.name}: {errors}")

        def body():
            return harness.renumbered(template, next(counter))

        return _loop(api, f"/send/{session_id}", body, floor_server, gens, seconds), floor_server.cpu()
    finally:
        floor_server.stop()
        api.close()
        gens.close_devices()
