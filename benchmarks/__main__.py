"""``python -m benchmarks [--quick] [--only fanout,latency,throughput,idle] [--profile]``"""

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

from benchmarks import fanout, harness, idle, loadgen, probe, report, spy, throughput, workers

SECTIONS = ("fanout", "latency", "throughput", "idle")
# long and needs redis-server: only when asked for (--only ...,workers)
EXTRA_SECTIONS = ("workers",)


def _ints(text):
    return [int(x) for x in text.split(",") if x]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="reduced sizes and counts (about 1-2 minutes)")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help="comma-separated sections: " + ", ".join(SECTIONS + EXTRA_SECTIONS)
                   + " [all but workers]")
    p.add_argument("--workers-plan", default="1:18000,2:36000",
                   help="workers section: workers:devices pairs [1:18000,2:36000]")
    p.add_argument("--profile", action="store_true",
                   help="also profile the fan-out path (large schema, most devices) and the throughput loop with py-spy")
    p.add_argument("--devices", type=_ints, help="fan-out device counts [10,100,1000]")
    p.add_argument("--schemas", help="fan-out schemas: small,large [both]")
    p.add_argument("--pushes", type=int, help="fan-out pushes per update type [20; quick 5]")
    p.add_argument("--latency-pushes", type=int, help="one-device pushes per update type [100; quick 25]")
    p.add_argument("--throughput-devices", type=int, default=100)
    p.add_argument("--throughput-seconds", type=float, help="[10; quick 3]")
    p.add_argument("--throughput-rate-limit", type=float, default=1000.0,
                   help="also run throughput with the daemon's --rate-limit raised to this (0: skip) [1000]")
    p.add_argument("--throughput-floors",
                   help="floors of the throughput loop: asyncio (the trivial server), stock and lean (the "
                        "same server built from Twisted, twisted.web and Autobahn; lean with the daemon's "
                        "transport layer) [asyncio,stock,lean; quick asyncio]")
    p.add_argument("--idle", type=_ints, help="idle device counts [1000,10000,18000; quick 1000,2000]")
    p.add_argument("--generators", type=int, default=max(2, os.cpu_count() or 2),
                   help="load-generator processes [number of CPUs, at least 2]")
    p.add_argument("--parse", action="store_true",
                   help="generators parse every message with orjson instead of scanning for the sequence number")
    p.add_argument("--no-floor", action="store_true", help="skip the floor measurements")
    p.add_argument("--daemon-arg", action="append", default=[],
                   help="extra daemon option, repeatable (e.g. --daemon-arg=--rate-limit=500)")
    p.add_argument("--json", help="write results here [benchmarks/results.json; quick: lumora-bench-quick.json "
                                  "in the temporary directory]")
    p.add_argument("--markdown", help="also write the printed report (markdown) to this file")
    p.add_argument("--workdir", help="keep logs and profiles here instead of a temporary directory")
    args = p.parse_args(argv)
    q = args.quick
    args.only = [s for s in args.only.split(",") if s]
    for s in args.only:
        if s not in SECTIONS + EXTRA_SECTIONS:
            p.error(f"unknown section {s!r}")
    args.devices = args.devices or [10, 100, 1000]
    args.schemas = (args.schemas or "small,large").split(",")
    args.pushes = args.pushes or (5 if q else 20)
    args.latency_pushes = args.latency_pushes or (25 if q else 100)
    args.throughput_seconds = args.throughput_seconds or (3.0 if q else 10.0)
    # each floor once, in the order given
    args.throughput_floors = list(dict.fromkeys(
        (args.throughput_floors or ("asyncio" if q else "asyncio,stock,lean")).split(",")))
    for kind in args.throughput_floors:
        if kind not in throughput.FLOOR_KEYS:
            p.error(f"unknown floor {kind!r}")
    args.idle = args.idle or ([1000, 2000] if q else [1000, 10000, 18000])
    here = os.path.dirname(os.path.abspath(__file__))
    args.json = args.json or (os.path.join(tempfile.gettempdir(), "lumora-bench-quick.json") if q
                              else os.path.join(here, "results.json"))
    return args


_printed = []


def say(text=""):
    _printed.append(text)
    print(text, flush=True)


def profile_runs(args, gens, wd):
    """The fan-out path (large schema, most devices) and the throughput
    loop, each once under py-spy with C frames (which pauses the daemon at
    every sample: these runs are slower than the measured ones)."""
    if spy.py_spy() is None:
        say("py-spy not installed (pip install py-spy): profile skipped")
        return None
    out = {}
    size = "large" if "large" in args.schemas else args.schemas[0]
    n = max(args.devices)
    say(f"profile: fan-out, {size} schema, {n} devices, under py-spy ...")
    rows, profile = fanout.run(size, n, args.pushes, gens, wd, args.daemon_arg, False,
                               lambda pid: spy.Spy(pid, os.path.join(wd, f"profile-fanout-{size}-{n}.txt"), native=True))
    out["fanout"] = {"schema": size, "devices": n, "rows": rows, **profile}
    say(f"profile: throughput, {args.throughput_devices} acking devices, under py-spy ...")
    run = throughput.run(args.throughput_devices, args.throughput_seconds, gens, wd, args.daemon_arg, (),
                         lambda pid: spy.Spy(pid, os.path.join(wd, "profile-throughput.txt"), native=True))
    out["throughput"] = {"devices": args.throughput_devices, "daemon": run["daemon"], **run["profile"]}
    say()
    say("## Profile")
    say(f"### Fan-out: {size} schema, {n} devices")
    say(report.profile_text(out["fanout"]))
    say()
    say(f"### Throughput: {args.throughput_devices} acking devices, daemon defaults")
    say(report.profile_text(out["throughput"]))
    say()
    return out


def _probes_text(found):
    return f"compute {found['compute_ms']} ms, wakeup {found['wakeup_us']} µs per round trip"


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    limit = loadgen.raise_fd_limit()
    floor = not args.no_floor
    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": harness.git_commit(),
        "machine": harness.machine_info(),
        "loadavg_at_start": os.getloadavg(),
        "options": {k: v for k, v in vars(args).items() if k != "json"},
        "fd_limit": limit,
    }
    m = results["machine"]
    say(f"# lumora-reload benchmarks — {results['date']}, commit {results['commit']}")
    say(f"{m['cpu']}, {m['cores']} cores, {m['memory_mb']} MB, Linux {m['kernel']}, Python {m['python']}; "
        f"load average at start {results['loadavg_at_start'][0]:.2f}; {args.generators} generator processes"
        + (" (full JSON parse)" if args.parse else ""))
    results["probes"] = {"start": probe.probes()}
    say("box probes: " + _probes_text(results["probes"]["start"])
        + " (benchmarks/probe.py; runs whose probes differ much do not compare)")
    started = time.monotonic()
    gens = harness.Generators(args.generators, parse=args.parse)
    try:
        with harness.workdir(args.workdir) as wd:
            if "fanout" in args.only:
                rows = []
                for size in args.schemas:
                    for n in args.devices:
                        say(f"fan-out: {size} schema, {n} devices ...")
                        got, _ = fanout.run(size, n, args.pushes, gens, wd, args.daemon_arg, floor)
                        rows += got
                results["fanout"] = rows
                say()
                say("## Fan-out")
                say(report.fanout_table(rows))
                say()
            if args.profile:
                results["profile"] = profile_runs(args, gens, wd)
            if "latency" in args.only:
                say("one device ...")
                rows, _ = fanout.run("small", 1, args.latency_pushes, gens, wd, args.daemon_arg, floor)
                results["latency"] = rows
                say()
                say("## Push latency (one device)")
                say(report.latency_table(rows))
                say()
            if "workers" in args.only:
                plan = [tuple(int(x) for x in item.split(":")) for item in args.workers_plan.split(",")]
                runs = []
                for n_workers, n_devices in plan:
                    say(f"workers: {n_workers} worker(s), {n_devices} idle devices ...")
                    runs.append(workers.run_one(n_workers, n_devices, gens, wd, args.pushes))
                results["workers"] = runs
                say()
                say("## Workers")
                say(workers.table(runs))
                say()
            if "throughput" in args.only:
                variants = [("daemon defaults", [])]
                if args.throughput_rate_limit:
                    rl = args.throughput_rate_limit
                    variants.append((f"--rate-limit {rl:g} --rate-burst {2 * rl:g}",
                                     ["--rate-limit", f"{rl:g}", "--rate-burst", f"{int(2 * rl)}"]))
                runs = []
                for i, (variant, extra) in enumerate(variants):
                    say(f"throughput: {args.throughput_devices} acking devices, {args.throughput_seconds:g} s, "
                        f"{variant} ...")
                    run = throughput.run(args.throughput_devices, args.throughput_seconds, gens, wd,
                                         list(args.daemon_arg) + extra,
                                         args.throughput_floors if floor and i == 0 else ())
                    run["variant"] = variant
                    runs.append(run)
                results["throughput"] = runs
                say()
                say("## Throughput")
                say(report.throughput_table(runs))
                say()
            if "idle" in args.only:
                say(f"idle: {', '.join(map(str, args.idle))} devices ...")
                results["idle"] = idle.run(args.idle, gens, wd, args.daemon_arg, floor)
                say()
                say("## Idle connections")
                say(report.idle_table(results["idle"]))
                say()
    finally:
        gens.stop()
    results["seconds"] = round(time.monotonic() - started, 1)
    results["loadavg_at_end"] = os.getloadavg()
    results["probes"]["end"] = probe.probes()
    say("box probes at the end: " + _probes_text(results["probes"]["end"]))
    say("## Targets")
    say(report.targets_table(results))
    say()
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1, default=str)
    say(f"{results['seconds']} s; JSON results: {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(line for line in _printed if not line.endswith(" ...")) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
