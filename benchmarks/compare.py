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
makes one); each daemon runs with it first on PYTHONPATH.
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


def compare(args, workdir):
    names = [os.path.basename(c.rstrip("/")) or c for c in args.checkouts]
    cpu = {c: [] for c in args.checkouts}
    ratios = {c: [] for c in args.checkouts}
    gens = harness.Generators(args.generators)
    saved = os.environ.get("PYTHONPATH")
    try:
        for r in range(args.rounds):
            k = r % len(args.checkouts)
            row = {}
            for checkout in args.checkouts[k:] + args.checkouts[:k]:
                os.environ["PYTHONPATH"] = checkout
                out = throughput.run(args.devices, args.seconds, gens, workdir, args.daemon_arg, floor=False)
                d = out["daemon"]
                if not d["all_devices_have_last"] or d["gaps"]:
                    raise RuntimeError(f"{checkout}: devices missed updates: {d}")
                row[checkout] = d["server_cpu_per_push_ms"]
                cpu[checkout].append(row[checkout])
            base = row[args.checkouts[0]]
            for checkout in args.checkouts:
                ratios[checkout].append(row[checkout] / base)
            print(f"round {r + 1}: daemon CPU ms/push " + ", ".join(
                f"{n} {row[c]}" for n, c in zip(names, args.checkouts)), flush=True)
    finally:
        gens.stop()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    print()
    print("| checkout | daemon CPU ms/push, median | median ratio to the first | rounds lower than the first |")
    print("|---|---|---|---|")
    for n, c in zip(names, args.checkouts):
        lower = "-" if c == args.checkouts[0] else f"{sum(x < 1 for x in ratios[c])} of {args.rounds}"
        print(f"| {n} | {statistics.median(cpu[c]):.2f} | {statistics.median(ratios[c]):.3f} | {lower} |")


if __name__ == "__main__":
    main()
