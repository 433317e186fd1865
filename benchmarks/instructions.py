"""Instructions per push, counted by valgrind (callgrind), not timed.

This machine's speed drifts by tens of percent within minutes, so a change
worth a few percent of a push does not show in seconds. The number of
instructions the daemon's process runs for the same pushes to the same
devices is the same from run to run (to under 0.2 %), whatever else the
machine is doing, once Python's string hashing is fixed: with a random
hash seed per run, dict and attribute lookups alone moved the count by
up to 4 %. So the daemon runs with ``PYTHONHASHSEED`` set (``--hash-seed``,
0 by default); a seed can favour one checkout's dict layouts a little, so
try two or three before trusting a difference under 1 %. Two checkouts
then compare exactly, and the count splits into what each part of a push
costs.

How it measures: the daemon runs under ``valgrind --tool=callgrind
--instr-atstart=no`` (about fifty times slower, so its first answer takes
a while), with the defaults of the other benchmarks (``--in-memory``, its
own log lines on standard output). Devices from the load generators
connect (acking every update, or not), three pushes warm it up, then
counting starts (``callgrind_control``: instrumentation on, counters
zeroed). The client sends ``--pushes`` one-leaf changes of the small
schema (incremental updates), one at a time, each after every device holds
the one before. After a pause in which the daemon reads the last acks, the
counters are dumped. Rows without acks give a device's share of a push
(the send), and the difference with acks what one ack costs.

What it does not count: the kernel's side of the system calls (sends,
reads, epoll: about a third of the daemon's CPU time in the throughput
loop), and how long an instruction takes (cache misses, and loops such as
`int.from_bytes` that run many instructions quickly). Use it to compare
code paths of the same kind, and confirm a change in time.

    python -m benchmarks.instructions [CHECKOUT ...] [--devices 10,100] [--pushes 40] [--no-bare] [--hash-seed 0]
                                      [--framework-floor]

With ``--framework-floor`` the same rows are also counted for the lean
framework floor (benchmarks/framework_floor.py, with this checkout's
transport layer), broadcasting an update the first checkout sent: what
moving the same bytes through Twisted, twisted.web and Autobahn costs.
The daemon's POST carries the whole schema (about 10 KB), the floor's
only the update (about 0.5 KB); the rest of the difference is the
daemon's own work.

A checkout is a directory holding ``lumora_reload/`` (as for
benchmarks.compare), and may be named twice to see the counts repeat;
without one, the checkout whose ``lumora_reload`` this process imports.
Needs ``valgrind`` (Debian's package) on PATH.
"""

import argparse
import glob
import itertools
import os
import re
import shutil
import subprocess
import sys
import time

from benchmarks import harness
from benchmarks.compare import checkout_names
from benchmarks.workload import SMALL, Pushes

_TOTAL = re.compile(rb"^(?:summary|totals): (\d+)", re.M)
_RUNS = itertools.count(1)


class CountedServer(harness.Server):
    """The daemon under callgrind, counting nothing until `start_counting`;
    with `floor_kind`, the framework floor of that kind instead
    (benchmarks/framework_floor.py)."""

    name = "daemon under callgrind"

    def __init__(self, workdir, floor_kind=None):
        port = harness.free_port()
        # a name of its own: callgrind numbers every process's dumps from .1
        self.counts = os.path.join(workdir, f"callgrind-{os.getpid()}-{next(_RUNS)}-{port}.out")
        if floor_kind is None:
            served = [harness.twistd_path(), "-n", "--pidfile=",
                      "lumora-reload", "--in-memory", "--port", f"tcp:{port}:interface={harness.HOST}",
                      "--max-connections-per-address", "1000000"]
        else:
            self.name = f"framework floor ({floor_kind}) under callgrind"
            served = ["-m", "benchmarks.framework_floor", "--port", str(port), "--kind", floor_kind]
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={self.counts}",
                sys.executable, *served]
        super().__init__(argv, port, os.path.join(workdir, f"callgrind-server-{port}.out"))

    def _wait_ready(self, timeout=300.0):
        super()._wait_ready(timeout)

    def _control(self, *args):
        subprocess.run(["callgrind_control", *args, str(self.pid)], check=True, capture_output=True, timeout=120)

    def start_counting(self):
        self._control("--instr=on")
        self._control("--zero")

    def instructions(self):
        """Instructions since `start_counting` (a dump of the counters)."""
        before = set(glob.glob(self.counts + ".*"))
        self._control("--dump")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for path in set(glob.glob(self.counts + ".*")) - before:
                with open(path, "rb") as f:
                    found = _TOTAL.search(f.read())
                if found:
                    return int(found.group(1))
            time.sleep(0.1)
        raise RuntimeError("callgrind wrote no dump")


def measure(devices, pushes, acks, gens, workdir, floor=None):
    """Instructions per push of the small schema's one-leaf change to
    `devices` devices (acking every update if `acks`), and the bytes of
    the last update a device received (None without devices).

    With `floor` ``(kind, update)``, the framework floor of that kind is
    counted instead, broadcasting `update` (bytes the daemon sent) with
    its sequence number rewritten for every push."""
    server = CountedServer(workdir, floor[0] if floor else None)
    api = harness.Api(server.port, timeout=600)
    try:
        if floor:
            # as long as the daemon's session ids: the devices' acks are as long
            sid = "f" * 32
            bodies = [harness.renumbered(floor[1], i + 1) for i in range(3 + pushes)]
        else:
            sequence = Pushes(SMALL)
            status, made = api.call("POST", "/session/new", b'{"schema":' + sequence.initial + b"}")
            if status != 200:
                raise RuntimeError(f"POST /session/new answered {status}: {made}")
            sid = made["sessionId"]
            bodies = [sequence.next("incremental")[1] for _ in range(3 + pushes)]
        if devices:
            _, failed, _, errors = gens.connect(server.port, sid, devices, ack=acks)
            if failed:
                raise RuntimeError(f"{failed} devices failed to connect: {errors}")
            gens.reset()
        for i, body in enumerate(bodies):
            if i == 3:
                time.sleep(1.0)  # the warm-up's acks read
                server.start_counting()
            status, answer = api.call("POST", f"/send/{sid}", body)
            if status != 200:
                raise RuntimeError(f"POST /send answered {status}: {answer}")
            if devices:
                gens.wait_sequence(answer["sequenceNumber"], timeout=600)
        time.sleep(1.5)  # the last acks read
        update = gens.captured()[answer["sequenceNumber"]] if devices else None
        return server.instructions() / pushes, update
    finally:
        server.stop()
        api.close()
        if devices:
            gens.close_devices()


FLOOR_NAME = "framework floor (lean)"


def run(checkouts, device_counts, pushes, bare, workdir, hash_seed=0, framework_floor=False):
    """{name: {(devices, acks): instructions per push}}, one name per
    checkout given (a checkout named twice is measured twice); with
    `framework_floor`, also the lean framework floor's, under
    `FLOOR_NAME`, broadcasting an update the first checkout sent."""
    gens = harness.Generators(2)
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "PYTHONHASHSEED")}
    results = {}
    update = None
    names = checkout_names(checkouts)
    try:
        os.environ["PYTHONHASHSEED"] = str(hash_seed)
        plan = list(zip(names, checkouts))
        if framework_floor:
            # `python -m` puts the working directory first: the floor runs
            # this checkout's code whatever PYTHONPATH says
            plan.append((FLOOR_NAME, this_checkout()))
        for i, (name, checkout) in enumerate(plan):
            rest = [saved["PYTHONPATH"]] if saved["PYTHONPATH"] else []
            os.environ["PYTHONPATH"] = os.pathsep.join([checkout, *rest])
            rows = results[name] = {}
            for devices in device_counts:
                for acks in (True, False) if bare and devices else (True,):
                    floor = ("lean", update) if name == FLOOR_NAME else None
                    rows[devices, acks], sent = measure(devices, pushes, acks, gens, workdir, floor)
                    if i == 0 and update is None:
                        update = sent  # the first update a device of the first checkout had
                    print(f"{name}: {devices} devices, acks {'on' if acks else 'off'}: "
                          f"{rows[devices, acks] / 1e6:.3f} M instructions per push", flush=True)
            if i == 0 and framework_floor and update is None:
                # no row had a device: one push of the first checkout to one
                update = measure(1, 1, False, gens, workdir)[1]
    finally:
        gens.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return results


def this_checkout():
    """The directory holding the `lumora_reload` this process imports."""
    import lumora_reload

    return os.path.dirname(os.path.dirname(os.path.abspath(lumora_reload.__file__)))


def parts(rows):
    """What one push's instructions split into, from rows with and without
    acks: the push itself (its request included), one device's send, one
    ack. None for what the rows do not tell."""
    bare = sorted(d for d, acks in rows if not acks and d)
    out = {"push": None, "send": None, "ack": None}
    if len(bare) >= 2:
        low, high = bare[0], bare[-1]
        out["send"] = (rows[high, False] - rows[low, False]) / (high - low)
        out["push"] = rows[low, False] - low * out["send"]
    if bare:
        most = bare[-1]
        if (most, True) in rows:
            out["ack"] = (rows[most, True] - rows[most, False]) / most
    return out


def table(results):
    lines = ["| checkout | devices | acks | instructions per push (M) |", "|---|---|---|---|"]
    for checkout, rows in results.items():
        for (devices, acks), value in sorted(rows.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
            lines.append(f"| {checkout} | {devices} | {'yes' if acks else 'no'} | {value / 1e6:.3f} |")
    lines += ["", "| checkout | the push (request included), thousands | a device's send, thousands"
                  " | an ack, thousands |", "|---|---|---|---|"]
    for checkout, rows in results.items():
        p = parts(rows)
        lines.append(f"| {checkout} | " + " | ".join("-" if p[k] is None else f"{p[k] / 1e3:.1f}"
                                                      for k in ("push", "send", "ack")) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n\n")[0])
    p.add_argument("checkouts", nargs="*", help="directories holding lumora_reload/ [the code imported]")
    p.add_argument("--devices", default="10,100", help="device counts, comma-separated [10,100]")
    p.add_argument("--pushes", type=int, default=40, help="pushes counted per row [40]")
    p.add_argument("--no-bare", dest="bare", action="store_false",
                   help="skip the rows without acks (then no split into parts)")
    p.add_argument("--hash-seed", type=int, default=0, help="the daemon's PYTHONHASHSEED [0]")
    p.add_argument("--framework-floor", action="store_true",
                   help="also count the lean framework floor (benchmarks/framework_floor.py) on the same rows: "
                        "what moving the bytes through Twisted, twisted.web and Autobahn costs")
    p.add_argument("--workdir", default=None, help="keep the daemons' logs and counts here")
    args = p.parse_args(argv)
    try:
        counts = sorted({int(x) for x in args.devices.split(",")})
    except ValueError:
        p.error("--devices takes counts such as 10,100")
    if min(counts) < 0 or args.pushes < 1:
        p.error("--devices must be 0 or more, --pushes at least 1")
    if not 0 <= args.hash_seed <= 4294967295:
        p.error("--hash-seed takes 0 to 4294967295, as PYTHONHASHSEED does")
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        p.error("needs valgrind on PATH (Debian: apt-get install valgrind)")
    checkouts = [os.path.abspath(c) for c in args.checkouts] or [this_checkout()]
    for c in checkouts:
        if not os.path.isdir(os.path.join(c, "lumora_reload")):
            p.error(f"{c} holds no lumora_reload/")
    with harness.workdir(args.workdir) as wd:
        results = run(checkouts, counts, args.pushes, args.bare, wd, args.hash_seed, args.framework_floor)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
