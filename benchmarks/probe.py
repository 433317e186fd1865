"""How fast this box is right now, printed at the start and the end of
every run.

Shared machines change speed from one minute to the next (other tenants):
on 2026-12-01 the same code planned the same push in 3.3-4.5 ms at 05:12
and in 5.2-8.8 ms from 05:30. The probe times a fixed piece of work of the
kind a large push does, with no code of the daemon in it (so it also
measures the box, not the checkout, when the benchmarks run another
commit's code): parse the ~500 KB benchmark schema, serialize it with
sorted keys, SHA-256 it, and walk its nodes in Python. It reports the
fastest of `rounds`, in ms.

Compute is not all: later that morning the compute probe was back to its
quiet figure while the floor server's throughput was still two thirds of
what it had been. Fan-out and throughput are mostly system calls that wake
another process, so `wakeup_probe` times that too: a one-byte ping-pong
between two processes over a socket pair, in µs per round trip (fastest of
`rounds` batches). Runs whose probes differ much do not compare; alternate
base and new code instead.
"""

import hashlib
import os
import socket
import time

import orjson

from benchmarks.workload import LARGE, Pushes


def _walk(nodes):
    stack = [nodes]
    while stack:
        for node in stack.pop():
            if type(node.get("id")) is not str:
                raise ValueError("not a benchmark schema")
            children = node.get("children")
            if children:
                stack.append(children)


def speed_probe(rounds=30):
    body = Pushes(LARGE).initial
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        tree = orjson.loads(body)
        hashlib.sha256(orjson.dumps(tree, option=orjson.OPT_SORT_KEYS)).digest()
        _walk(tree["nodes"])
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 2)


def wakeup_probe(rounds=5, trips=2000):
    here, there = socket.socketpair()
    child = os.fork()
    if child == 0:  # echo every byte back until the parent closes
        here.close()
        try:
            while there.recv(1):
                there.send(b"x")
        finally:
            os._exit(0)
    there.close()
    try:
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(trips):
                here.send(b"x")
                here.recv(1)
            best = min(best, (time.perf_counter() - started) / trips)
    finally:
        here.close()
        os.waitpid(child, 0)
    return round(best * 1e6, 1)


def probes():
    """Both probes, as the benchmarks record them."""
    return {"compute_ms": speed_probe(), "wakeup_us": wakeup_probe()}


if __name__ == "__main__":
    print(probes())
