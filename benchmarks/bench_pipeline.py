"""The push path in process: `HotReloadServer.push_update` with the memory
store and N devices behind no-op links, so only planning, committing,
applying and handing the update to each device's link is timed (no sockets,
no HTTP). It uses only the embedding API, so the same file measures any
checkout: ``PYTHONPATH=<checkout> python benchmarks/bench_pipeline.py``.

    python benchmarks/bench_pipeline.py [--pushes 300] [--devices 0,100,1000]
"""

import argparse
import gc
import os
import statistics
import sys
import time

from twisted.internet import task
from zope.interface import implementer

from lumora_reload.server import HotReloadServer
from lumora_reload.sessions import IDeviceLink


@implementer(IDeviceLink)
class Link:
    def send(self, outgoing):
        pass

    def close(self, code, reason):
        pass


def node(node_id, text, children=()):
    return {"id": node_id, "type": "Text", "props": {"text": text}, "children": list(children), "metadata": {}}


def schema(text, pads):
    nodes = [node(f"pad{i}", f"padding {i} " + "x" * 40) for i in range(pads)]
    return {"version": "1.0", "metadata": {"sourceFramework": "react", "sourceFile": "a", "generatedAt": 1},
            "nodes": [{"id": "root", "type": "View", "props": {}, "children": [node("title", text), *nodes],
                       "metadata": {}}]}


def measure(pads, devices, pushes):
    clock = task.Clock()
    server = HotReloadServer(reactor=clock, clock=clock, max_devices_per_session=100000)
    sid = server.create_session(schema("start", pads)).id
    for i in range(devices):
        server.hub.attach(sid, Link(), {"deviceId": f"d{i}", "platform": "web", "clientVersion": "1.1.0"})
    times = []
    for i in range(pushes):
        new = schema(f"edit {i}", pads)
        started = time.perf_counter()
        d = server.push_update(sid, new)
        elapsed = time.perf_counter() - started
        assert d.called
        times.append(elapsed * 1000)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pushes", type=int, default=300)
    p.add_argument("--devices", default="0,100,1000")
    args = p.parse_args(argv)
    gc.collect()
    where = os.path.dirname(sys.modules["lumora_reload"].__file__)
    print(f"lumora_reload from {where}")
    print("| schema | devices | pushes | p50 ms | p95 ms |\n|---|---|---|---|---|")
    for label, pads in (("small (~7 KB)", 50), ("large (~1 MB)", 8000)):
        for devices in [int(x) for x in args.devices.split(",")]:
            times = sorted(measure(pads, devices, args.pushes if pads < 1000 else max(20, args.pushes // 10)))
            p95 = times[int(len(times) * 0.95) - 1]
            print(f"| {label} | {devices} | {len(times)} | {statistics.median(times):.3f} | {p95:.3f} |")


if __name__ == "__main__":
    main()
