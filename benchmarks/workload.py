"""Schemas and push sequences the benchmarks send.

`make_schema(nodes, size)` builds a deterministic Lumora IR tree of about
`nodes` nodes and `size` bytes of JSON: a root View, sections of about
sqrt(nodes) children each, leaves carrying text and a style. `Pushes`
yields the request bodies (pre-serialized, outside any timing) of a push
sequence that alternates

* a one-leaf change (one leaf's text): the daemon sends it incremental;
* a many-node change (a quarter of the leaves, at least 20): full.

Every push also stamps ``metadata.generatedAt`` as a converter would.
"""

import math
import random

import orjson

SMALL = {"name": "small", "nodes": 50, "bytes": 10_000}
LARGE = {"name": "large", "nodes": 2000, "bytes": 500_000}
SIZES = {"small": SMALL, "large": LARGE}

_TYPES = ("Text", "Button", "Image", "TextInput")
_WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()


def _leaf(rng, i, text_len):
    kind = _TYPES[i % len(_TYPES)]
    return {
        "id": f"n{i}",
        "type": kind,
        "props": {
            "text": _text(rng, text_len),
            "style": {"fontSize": 12 + i % 8, "color": "#%06x" % rng.randrange(1 << 24), "padding": i % 5},
        },
        "children": [],
        "metadata": {"lineNumber": i + 1},
    }


def _text(rng, n):
    words = []
    size = 0
    while size < n:
        w = rng.choice(_WORDS)
        words.append(w)
        size += len(w) + 1
    return " ".join(words)[:n]


def _build(n_nodes, text_len, seed):
    rng = random.Random(seed)
    fan = max(2, int(math.sqrt(n_nodes)))
    sections = []
    counter = 1  # n0 is the root
    leaves = []
    while counter < n_nodes:
        section = {
            "id": f"n{counter}",
            "type": "View",
            "props": {"style": {"flexDirection": "column", "padding": 8}},
            "children": [],
            "metadata": {"lineNumber": counter + 1},
        }
        counter += 1
        for _ in range(fan - 1):
            if counter >= n_nodes:
                break
            leaf = _leaf(rng, counter, text_len)
            section["children"].append(leaf)
            leaves.append(leaf)
            counter += 1
        sections.append(section)
    root = {
        "id": "n0",
        "type": "View",
        "props": {"style": {"flex": 1}},
        "children": sections,
        "metadata": {"lineNumber": 1},
    }
    schema = {
        "version": "1.0",
        "metadata": {"sourceFramework": "react", "sourceFile": "App.tsx", "generatedAt": 1700000000000},
        "nodes": [root],
    }
    return schema, leaves


def make_schema(n_nodes, size, seed=7):
    """A schema of `n_nodes` nodes, about `size` bytes; and its leaves."""
    schema, leaves = _build(n_nodes, 0, seed)
    base = len(orjson.dumps(schema))
    text_len = max(4, (size - base) // max(1, len(leaves)))
    return _build(n_nodes, text_len, seed)


class Pushes:
    """Request bodies of an alternating incremental/full push sequence."""

    def __init__(self, spec, seed=7):
        self.spec = spec
        self.schema, self.leaves = make_schema(spec["nodes"], spec["bytes"], seed)
        self.initial = orjson.dumps(self.schema)
        self.many = max(20, len(self.leaves) // 4)
        self.count = 0

    def _edit(self, leaf, tag):
        text = leaf["props"]["text"]
        leaf["props"]["text"] = (tag + text)[: len(text)]

    def next(self, kind=None):
        """(intended kind, body bytes) of the next push; kind alternates
        'incremental', 'full' unless given."""
        i = self.count
        self.count += 1
        if kind is None:
            kind = "incremental" if i % 2 == 0 else "full"
        tag = f"#{i} "
        if kind == "incremental":
            self._edit(self.leaves[i % len(self.leaves)], tag)
        else:
            start = (i * 7) % len(self.leaves)
            for k in range(self.many):
                self._edit(self.leaves[(start + k) % len(self.leaves)], tag)
        self.schema["metadata"]["generatedAt"] = 1700000000000 + i
        return kind, orjson.dumps(self.schema)
