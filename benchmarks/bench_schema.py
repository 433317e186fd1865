"""Micro-benchmarks of lumora_reload.schema (delta, checksum, validation).

Run: ``python benchmarks/bench_schema.py [--runs N]``. Prints a markdown
table of median wall times (ms) over N runs. Targets:
delta of a 10,000-node tree with one changed leaf <= 10 ms, validation of a
10,000-node tree <= 10 ms, checksum of a ~500 KB schema <= 15 ms.
"""

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lumora_reload import schema as S  # noqa: E402

TYPES = ["View", "Text", "Button", "Image", "ScrollView", "TextInput", "FlatList"]
WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod".split()


def make_node(rng, i):
    t = rng.choice(TYPES)
    props = {
        "style": {
            "padding": rng.randint(0, 24),
            "margin": rng.randint(0, 16),
            "backgroundColor": "#%06x" % rng.randrange(1 << 24),
            "flexDirection": rng.choice(["row", "column"]),
        },
        "testID": f"t{i}",
    }
    if t in ("Text", "Button"):
        props["text"] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
    if t == "Image":
        props["source"] = {"uri": f"https://example.com/img/{i}.png", "width": 64, "height": 64}
    node = {
        "id": f"node-{i}",
        "type": t,
        "props": props,
        "children": [],
        "metadata": {"lineNumber": i + 1},
    }
    if rng.random() < 0.1:
        node["events"] = [{"name": "onPress", "handler": f"handle{i}", "parameters": []}]
    if rng.random() < 0.05:
        node["state"] = {"type": "local", "variables": [{"name": "count", "type": "number", "initialValue": 0}]}
    return node


def make_schema(n_nodes, seed=1, fanout=(2, 8)):
    """A nested tree of `n_nodes` nodes (breadth-first filling, random fanout)."""
    rng = random.Random(seed)
    top = [make_node(rng, i) for i in range(min(3, n_nodes))]
    count = len(top)
    frontier = list(top)
    k = 0
    while count < n_nodes:
        parent = frontier[k % len(frontier)]
        k += 1
        for _ in range(rng.randint(*fanout)):
            if count >= n_nodes:
                break
            child = make_node(rng, count)
            count += 1
            parent["children"].append(child)
            frontier.append(child)
    return {
        "version": "1.0",
        "metadata": {
            "sourceFramework": "react",
            "sourceFile": "App.tsx",
            "generatedAt": 1732550000000,
        },
        "nodes": top,
        "navigationSchema": {"routes": [{"name": "Home", "path": "/"}]},
    }


def all_nodes(schema):
    out = []
    stack = list(schema["nodes"])
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n.get("children") or ())
    return out


def clone(schema):
    # as the daemon sees it: a freshly parsed document
    return json.loads(json.dumps(schema))


class Timing(float):
    """Median ms; str() shows "median (min)" (the machine may be shared)."""

    def __new__(cls, times):
        self = super().__new__(cls, statistics.median(times))
        self.min = min(times)
        return self

    def __str__(self):
        return f"{float(self):.2f} ({self.min:.2f})"


def median_ms(fn, runs):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return Timing(times)


def bench(n_nodes, runs):
    old = clone(make_schema(n_nodes))
    rng = random.Random(7)
    nodes = all_nodes(old)

    one = clone(old)
    leaves = [n for n in all_nodes(one) if not n["children"]]
    rng.choice(leaves)["props"]["style"]["padding"] = 999
    one["metadata"]["generatedAt"] += 1

    five = clone(old)
    fnodes = all_nodes(five)
    for n in rng.sample(fnodes, max(1, len(fnodes) // 20)):
        n["props"]["testID"] = n["props"]["testID"] + "-x"

    # structural: move a subtree to another parent, add a node, remove a leaf
    moved = clone(old)
    mnodes = [n for n in all_nodes(moved) if n["children"]]
    src, dst = mnodes[len(mnodes) // 3], mnodes[-1]
    dst["children"].insert(0, src["children"].pop())
    mnodes[len(mnodes) // 2]["children"].append(make_node(rng, 10**6))
    victim = next(n for n in mnodes[::-1] if n["children"] and n is not dst)
    victim["children"].pop(0)
    S.validate(moved)
    assert S.apply_delta(old, S.compute_delta(old, moved)) == moved

    d1 = S.compute_delta(old, one)
    assert len(d1["modified"]) == 1 and not d1["added"] and not d1["removed"], d1
    assert S.apply_delta(old, S.compute_delta(old, five)) == five

    base_plain = S.checksum_update(old).plain
    assert base_plain
    size_kb = len(json.dumps(old, separators=(",", ":"))) / 1024
    row = {
        "nodes": len(nodes),
        "KB": size_kb,
        "validate": median_ms(lambda: S.validate(one), runs),
        "delta 1 leaf": median_ms(lambda: S.compute_delta(old, one), runs),
        "choose_update 1 leaf": median_ms(lambda: S.choose_update(old, one), runs),
        "delta 5%": median_ms(lambda: S.compute_delta(old, five), runs),
        "delta move/add/remove": median_ms(lambda: S.compute_delta(old, moved), runs),
        "checksum": median_ms(lambda: S.checksum(one), runs),
        # what a push computes after a plain state: only the delta scanned
        "checksum after 1-leaf delta": median_ms(lambda: S.checksum_update(one, d1, base_plain), runs),
    }
    return row


def bench_500kb(runs):
    # find the node count that gives ~500 KB
    n = 2500
    while True:
        s = clone(make_schema(n, seed=3))
        size = len(json.dumps(s, separators=(",", ":")).encode())
        if size >= 500 * 1024:
            break
        n = int(n * 500 * 1024 / size) + 50
    ref = median_ms(lambda: S._reference_canonical_json(s), max(3, runs // 4))
    return {
        "nodes": len(all_nodes(s)),
        "KB": size / 1024,
        "checksum": median_ms(lambda: S.checksum(s), runs),
        "reference serializer": ref,
        "fast path taken": S._fast_canonical_bytes(S._normalized(s)) is not None,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=21)
    args = ap.parse_args(argv)
    print(
        f"# lumora_reload.schema benchmark\n\n{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
        f"Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, orjson={'yes' if S._orjson else 'no'}, "
        f"ms: median (min) of {args.runs} runs\n"
    )
    rows = [bench(n, args.runs) for n in (1_000, 10_000, 50_000)]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(
            f"{r[c]:.0f}" if c == "KB" else str(r[c])
            for c in cols
        ) + " |")
    big = bench_500kb(args.runs)
    print("\n| ~500 KB schema | nodes | KB | checksum | reference serializer | fast path |")
    print("|---|---|---|---|---|---|")
    print(
        f"| | {big['nodes']} | {big['KB']:.0f} | {big['checksum']} | "
        f"{big['reference serializer']} | {big['fast path taken']} |"
    )
    print("\nTargets: validate 10k <= 10 ms; delta 10k one leaf <= 10 ms; checksum 500 KB <= 15 ms.")


if __name__ == "__main__":
    main()
