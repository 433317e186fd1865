"""Two or more checkouts of the daemon, measured against each other in one
run: the throughput loop (100 acking devices, one-leaf pushes back to
back) of each in turn, round after round, the order rotating.

This machine's speed drifts by tens of percent within minutes (see
benchmarks/probe.py), so figures from separate runs do not compare; loops
a few seconds apart do. Each round prints every checkout's daemon CPU per
push; the summary gives the median over rounds of each checkout's ratio to
the first one's, and in how many rounds it was lower.

    python -m benchmarks.compare BASE_CHECKOUT OTHER_CHECKOUT [...] [--rounds 16] [--seconds 3]

A checkout is a directory holding ``lumora_reload/`` (``git worktree add``
makes one); each daemon runs with it first on PYTHONPATH, ahead of what
PYTHONPATH already holds (twistd finds the ``lumora-reload`` command
through the installed project or a checkout there). The same checkout may
be given twice: the two should then come out alike.
"""

import argparse
import os
import statistics
import sys

from benchmarks import harness, throughput


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("checkouts", nargs="+", help="directories holding lumora_reload/; the first is the base")
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--seconds", type=float, default=3.0, help="length of each throughput loop [3]")
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--generators", type=int, default=2)
    p.add_argument("--daemon-arg", action="append", default=[], help="extra daemon option, repeatable")
    p.add_argument("--workdir", default=None, help="keep daemon logs here")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.devices < 1 or args.generators < 1:
        p.error("--rounds, --seconds, --devices and --generators must be positive")
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


def _names(checkouts):
    names = [os.path.basename(c.rstrip("/")) or c for c in checkouts]
    return [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def compare(args, workdir):
    n = len(args.checkouts)
    names = _names(args.checkouts)
    # by position: the same checkout may be measured twice
    cpu = [[] for _ in range(n)]
    ratios = [[] for _ in range(n)]
    gens = harness.Generators(args.generators)
    saved = os.environ.get("PYTHONPATH")
    try:
        for r in range(args.rounds):
            k = r % n
            row = [None] * n
            for i in list(range(k, n)) + list(range(k)):
                checkout = args.checkouts[i]
                os.environ["PYTHONPATH"] = os.pathsep.join([checkout] + ([saved] if saved else []))
                out = throughput.run(args.devices, args.seconds, gens, workdir, args.daemon_arg, floor=False)
                d = out["daemon"]
                if not d["all_devices_have_last"] or d["gaps"] or d["missed"] or d["reorders"] or d["http_errors"]:
                    raise RuntimeError(f"{checkout}: not every update reached every device in order: {d}")
                row[i] = d["server_cpu_per_push_ms"]
                cpu[i].append(row[i])
            for i in range(n):
                ratios[i].append(row[i] / row[0])
            print(f"round {r + 1}: daemon CPU ms/push " + ", ".join(
                f"{names[i]} {row[i]}" for i in range(n)), flush=True)
    finally:
        gens.stop()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    print()
    print("| checkout | daemon CPU ms/push, median | median ratio to the first | rounds lower than the first |")
    print("|---|---|---|---|")
    for i in range(n):
        lower = "-" if i == 0 else f"{sum(x < 1 for x in ratios[i])} of {args.rounds}"
        print(f"| {names[i]} | {statistics.median(cpu[i]):.2f} | {statistics.median(ratios[i]):.3f} | {lower} |")
    if args.rounds % n:
        print(f"({args.rounds} rounds for {n} checkouts: the order rotated unevenly)")


if __name__ == "__main__":
    main()
