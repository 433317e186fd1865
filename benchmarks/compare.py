"""Two or more checkouts of the daemon, measured against each other in one
run: each in turn, round after round, the order rotating.

This machine's speed drifts by tens of percent within minutes (see
benchmarks/probe.py), so figures from separate runs do not compare;
measurements a minute apart do. What is measured:

- by default, the throughput loop (100 acking devices, one-leaf pushes
  back to back): the daemon's CPU per push, the load generators' CPU per
  push (what the devices' side costs: a change in how the daemon writes
  can move it) and the updates delivered per second;
- with ``--fanout SIZE:DEVICES`` (e.g. ``large:1000``), the fan-out
  benchmark for that schema and device count instead: the p50 latency of
  each update type, and the p50 of the same pushes timed inside the
  daemon (its ``/metrics``): from the parsed body to the last device's
  send, without the body's arrival and parse, the answer, or the
  devices' reading.

Each round prints every checkout's figures; the summary gives, per
figure, the median over rounds of each checkout's ratio to the first
checkout's (lower is better, but for updates/s), in how many rounds it
was lower, and how likely a split at least that uneven would be if the
two did not differ (a two-sided sign test: each round a coin toss; a
round where the two are equal counts for neither side). With several
figures, one of them may come out unlikely by luck alone.

    python -m benchmarks.compare BASE_CHECKOUT OTHER_CHECKOUT [...] [--rounds 16] [--seconds 3]
    python -m benchmarks.compare BASE_CHECKOUT OTHER_CHECKOUT --fanout large:1000 --rounds 8

A checkout is a directory holding ``lumora_reload/`` (``git worktree add``
makes one); each daemon runs with it first on PYTHONPATH, ahead of what
PYTHONPATH already holds (twistd finds the ``lumora-reload`` command
through the installed project or a checkout there). The same checkout may
be given twice: the two should then come out alike.
"""

import argparse
import math
import os
import statistics
import sys

from benchmarks import fanout, harness, throughput
from benchmarks.workload import SIZES


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("checkouts", nargs="+", help="directories holding lumora_reload/; the first is the base")
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--seconds", type=float, default=3.0, help="length of each throughput loop [3]")
    p.add_argument("--devices", type=int, default=100, help="throughput: acking devices [100]")
    p.add_argument("--fanout", metavar="SIZE:DEVICES",
                   help="compare fan-out latency instead (schema " + " or ".join(SIZES) + ", e.g. large:1000)")
    p.add_argument("--pushes", type=int, default=10, help="fan-out: pushes of each update type per round [10]")
    p.add_argument("--generators", type=int, default=2)
    p.add_argument("--daemon-arg", action="append", default=[], help="extra daemon option, repeatable")
    p.add_argument("--workdir", default=None, help="keep daemon logs here")
    args = p.parse_args(argv)
    if min(args.rounds, args.devices, args.generators, args.pushes) < 1 or args.seconds <= 0:
        p.error("--rounds, --seconds, --devices, --pushes and --generators must be positive")
    if args.fanout is not None:
        size, _, count = args.fanout.partition(":")
        if size not in SIZES or not count.isdigit() or int(count) < 1:
            p.error(f"--fanout takes SIZE:DEVICES with SIZE one of {', '.join(SIZES)}, e.g. large:1000")
        args.fanout = (size, int(count))
    args.checkouts = [os.path.abspath(c) for c in args.checkouts]
    for c in args.checkouts:
        if not os.path.isdir(os.path.join(c, "lumora_reload")):
            p.error(f"{c} holds no lumora_reload/")
    if len(args.checkouts) < 2:
        p.error("give at least two checkouts")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with harness.workdir(args.workdir) as wd:
        compare(args, wd)


def checkout_names(checkouts):
    """A short name per checkout; one named twice gets its position too."""
    names = [os.path.basename(c.rstrip("/")) or c for c in checkouts]
    return [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _throughput(args, gens, workdir, checkout):
    d = throughput.run(args.devices, args.seconds, gens, workdir, args.daemon_arg, floors=())["daemon"]
    if not d["all_devices_have_last"] or d["gaps"] or d["missed"] or d["reorders"] or d["http_errors"]:
        raise RuntimeError(f"{checkout}: not every update reached every device in order: {d}")
    return {
        "daemon CPU ms/push": d["server_cpu_per_push_ms"],
        "generators' CPU ms/push": d["generator_cpu_per_push_ms"],
        "updates/s": d["delivered_rate"],
    }


def _fanout(args, gens, workdir, checkout):
    size, devices = args.fanout
    rows, _ = fanout.run(size, devices, args.pushes, gens, workdir, args.daemon_arg, floor=False)
    figures = {}
    for row in rows:
        if row["gaps"] or row["reorders"]:
            raise RuntimeError(f"{checkout}: devices saw gaps or reorders: {row}")
        figures[f"{row['update']} p50 ms"] = row["p50_ms"]
        figures[f"{row['update']} push in the daemon p50 ms"] = row["daemon_push_p50_ms"]
    return figures


def compare(args, workdir):
    measure = _fanout if args.fanout else _throughput
    n = len(args.checkouts)
    names = checkout_names(args.checkouts)
    # by position: the same checkout may be measured twice
    figures = [{} for _ in range(n)]  # figure -> values, one per round
    ratios = [{} for _ in range(n)]  # figure -> ratios to the first checkout
    gens = harness.Generators(args.generators)
    saved = os.environ.get("PYTHONPATH")
    try:
        for r in range(args.rounds):
            k = r % n
            row = [None] * n
            for i in list(range(k, n)) + list(range(k)):
                checkout = args.checkouts[i]
                os.environ["PYTHONPATH"] = os.pathsep.join([checkout] + ([saved] if saved else []))
                row[i] = measure(args, gens, workdir, checkout)
                for name, value in row[i].items():
                    figures[i].setdefault(name, []).append(value)
            for i in range(n):
                for name, value in row[i].items():
                    base = row[0].get(name)
                    if base:
                        ratios[i].setdefault(name, []).append(value / base)
            print(f"round {r + 1}: " + "; ".join(
                f"{names[i]} " + ", ".join(f"{name} {value}" for name, value in row[i].items()) for i in range(n)),
                flush=True)
    finally:
        gens.stop()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    print()
    print("| checkout | figure | median | median ratio to the first | rounds lower than the first | by chance |")
    print("|---|---|---|---|---|---|")
    for name in figures[0]:
        for i in range(n):
            values, rel = figures[i].get(name, []), ratios[i].get(name, [])
            if not values:
                continue
            lowered, higher = sum(x < 1 for x in rel), sum(x > 1 for x in rel)
            tied = len(rel) - lowered - higher
            lower = "-" if i == 0 else f"{lowered} of {len(rel)}" + (f" ({tied} tied)" if tied else "")
            # a tied round says neither: the sign test leaves it out
            chance = "-" if i == 0 or not rel else f"{sign_test(lowered, lowered + higher):.3f}"
            ratio = f"{statistics.median(rel):.3f}" if rel else "-"
            print(f"| {names[i]} | {name} | {statistics.median(values):.2f} | {ratio} | {lower} | {chance} |")
    if args.rounds % n:
        print(f"({args.rounds} rounds for {n} checkouts: the order rotated unevenly)")


def sign_test(lower, rounds):
    """The chance of `lower` of `rounds` or a split more uneven (either
    way) if each round were a coin toss: a two-sided sign test.

    >>> round(sign_test(13, 16), 4), round(sign_test(8, 16), 4), sign_test(0, 3)
    (0.0213, 1.0, 0.25)
    """
    far = max(lower, rounds - lower)
    tail = sum(math.comb(rounds, k) for k in range(far, rounds + 1)) / 2 ** rounds
    return min(1.0, 2 * tail)


if __name__ == "__main__":
    main()
