"""Lumora IR schemas: validation, deltas and checksums (SPEC §4).

A pure module: standard library only (``orjson`` is used when importable), no
Twisted. Everything here works on the plain Python objects that ``json.loads``
produces and never mutates its arguments.

Schema
    ``{"version": str, "metadata": {...}, "nodes": [node...], ...}``; a node is
    ``{"id", "type", "props"?, "children"?, "metadata"?, ...}``. Node ids are
    unique across the whole tree. `validate` checks this and reports the JSON
    path of the first problem (document order) in a `SchemaError`.

Delta
    ``{"added": [...], "modified": [...], "removed": [...]}`` plus
    ``"metadataChanges"`` and ``"removedFields"`` only when non-empty. A device
    applies it in the order removed -> modified -> added:

    * ``removed``: ids; removing a node removes its subtree. Only the topmost
      removed ids are listed (never a descendant of another removed id).
    * ``modified``: complete new nodes (with their complete new subtrees),
      each replacing the node with that id in place (same parent, same
      position).
    * ``added``: complete new nodes plus ``parentId`` (``None`` = top level)
      and ``index`` (position in the parent's children after the update).
      Adds into one parent are applied in ascending ``index`` order; the
      device strips ``parentId``/``index`` from the node it inserts.
    * ``metadataChanges``: every top-level field other than ``nodes`` that is
      new or changed, with its new value. ``metadata`` counts as changed only
      if a key other than ``generatedAt`` changed; it is then carried whole.
    * ``removedFields``: top-level fields that disappeared.

    How `compute_delta` builds it. The two trees are walked top-down together
    and only where they differ (``==`` on whole subtrees, at C speed, prunes
    every unchanged subtree). For a node present in both trees under the same
    parent:

    * if a field other than ``children`` changed (props, type, state, events,
      ...), the node goes into ``modified`` (its subtree rides along);
    * otherwise its children lists are compared as lists of ids. The largest
      common subsequence of ids (weighted by subtree size for reorders) stays
      in place; the other new children are ``added`` with their subtrees and
      the other old children are ``removed``. A move between parents or a
      reorder is therefore a remove plus an add of the moved node.
    * When that costs more than sending the node whole (cost = nodes carried
      by adds/modifies + one per removed id), the node goes into ``modified``
      instead (e.g. a reversed list of children). Top-level nodes have no
      parent node, so top-level reorders are always remove + add.

    Nothing is listed twice: changes inside a modified or added subtree are
    carried by that subtree. When a node moves out of one modified subtree
    into another region of the tree, its id is also listed in ``removed`` so
    that no id ever exists twice while a device applies the delta (every
    ``removed`` / ``modified`` id, and every ``parentId``, is found exactly
    once at the step that uses it).

    A node whose own keys include ``parentId`` or ``index`` cannot travel as an
    add (the device strips those keys): its parent is sent as ``modified``
    instead, or, at top level, `compute_delta` raises `DeltaNotRepresentable`
    and `choose_update` answers ``full``.

    Trees nested deeper than C comparison allows (RecursionError, roughly
    300+ levels of nodes) are compared through memoized per-subtree
    fingerprints instead (blake2b over orjson bytes, computed iteratively), so
    any depth works; validation, apply and the checksum are iterative too.

    `delta_size` counts entries: ``len(added) + len(modified) +
    len(removed)``; an added or modified subtree counts as one node (the
    wire-size check in `choose_update` guards against big subtrees).

Checksum
    `canonical_json` / `checksum` reproduce the TypeScript ``calculateChecksum``
    byte for byte (``metadata.generatedAt`` set to 0, JS key order, JS number
    and string formatting); see ``vectors/README.md``. A fast path serializes
    with orjson (or ``json.dumps``) and scans the output for the few
    constructs whose formatting differs from JavaScript's (array-index keys,
    ``__proto__`` keys, keys with non-BMP characters, exponent or integral
    float notation, integers of 16+ digits, lone surrogates, nesting deeper
    than the C serializers allow); when any is present (or merely looks
    present, e.g. inside a string) the exact reference serializer is used.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
from operator import itemgetter
from typing import NamedTuple

try:  # optional accelerator
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only without orjson
    _orjson = None

__all__ = [
    "SchemaError",
    "DeltaNotRepresentable",
    "Choice",
    "validate",
    "compute_delta",
    "is_empty_delta",
    "delta_size",
    "apply_delta",
    "legacy_compatible",
    "choose_update",
    "canonical_json",
    "checksum",
    "parse_json_strict",
    "MAX_DEPTH",
    "encode_schema",
    "find_unencodable",
]

_MISSING = object()
_get_id = itemgetter("id")


# --------------------------------------------------------------------------
# errors


class SchemaError(ValueError):
    """A schema problem at a JSON path (``""`` is the root)."""

    def __init__(self, path, message):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")

    def __str__(self):
        return f"{self.path}: {self.message}"


class DeltaNotRepresentable(ValueError):
    """The change cannot be expressed as a delta (send the full schema)."""


def _json_type(value):
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _join(prefix, key):
    return f"{prefix}.{key}" if prefix else key


# --------------------------------------------------------------------------
# validation


def validate(schema):
    """Raise `SchemaError` for the first problem of `schema`, else return None.

    Root: an object with ``version`` (string), ``metadata`` (object whose
    ``sourceFramework``/``sourceFile`` are strings and ``generatedAt`` a
    number, string or null when present) and ``nodes`` (array). Nodes: objects
    with non-empty string ``id`` and ``type``; ``props`` and ``metadata``
    objects and ``children`` an array of nodes when present. Ids are unique
    in the whole tree. Iterative: any depth is fine.
    """
    _validate_root(schema)
    nodes = schema["nodes"]
    if _nodes_ok_fast(nodes):
        return
    _validate_nodes_slow(nodes)  # raises with the exact path


def _validate_root(schema):
    if not isinstance(schema, dict):
        raise SchemaError("", f"schema must be a JSON object, got {_json_type(schema)}")
    if "version" not in schema:
        raise SchemaError("version", "missing required field 'version'")
    if not isinstance(schema["version"], str):
        raise SchemaError("version", f"must be a string, got {_json_type(schema['version'])}")
    if "metadata" not in schema:
        raise SchemaError("metadata", "missing required field 'metadata'")
    meta = schema["metadata"]
    if not isinstance(meta, dict):
        raise SchemaError("metadata", f"must be an object, got {_json_type(meta)}")
    for key in ("sourceFramework", "sourceFile"):
        if key in meta and not isinstance(meta[key], str):
            raise SchemaError(
                f"metadata.{key}", f"must be a string, got {_json_type(meta[key])}"
            )
    if "generatedAt" in meta:
        g = meta["generatedAt"]
        if not (g is None or isinstance(g, str) or (
            isinstance(g, (int, float)) and not isinstance(g, bool)
        )):
            raise SchemaError(
                "metadata.generatedAt", f"must be a number or a string, got {_json_type(g)}"
            )
    if "nodes" not in schema:
        raise SchemaError("nodes", "missing required field 'nodes'")
    if not isinstance(schema["nodes"], list):
        raise SchemaError("nodes", f"must be an array, got {_json_type(schema['nodes'])}")


def _nodes_ok_fast(nodes):
    """True when the node tree is certainly valid (no paths kept)."""
    ids = []
    add_id = ids.append
    stack = [nodes]
    pop = stack.pop
    push = stack.append
    missing = _MISSING
    while stack:
        for n in pop():
            if type(n) is not dict:
                return False
            i = n.get("id")
            if type(i) is not str or not i:
                return False
            add_id(i)
            t = n.get("type")
            if type(t) is not str or not t:
                return False
            v = n.get("props", missing)
            if v is not missing and type(v) is not dict:
                return False
            v = n.get("metadata", missing)
            if v is not missing and type(v) is not dict:
                return False
            v = n.get("children", missing)
            if v is not missing:
                if type(v) is not list:
                    return False
                if v:
                    push(v)
    return len(set(ids)) == len(ids)


def _check_node(n, path):
    if not isinstance(n, dict):
        raise SchemaError(path, f"node must be an object, got {_json_type(n)}")
    for key in ("id", "type"):
        if key not in n:
            raise SchemaError(f"{path}.{key}", f"missing required field '{key}'")
        v = n[key]
        if not isinstance(v, str):
            raise SchemaError(f"{path}.{key}", f"must be a non-empty string, got {_json_type(v)}")
        if not v:
            raise SchemaError(f"{path}.{key}", "must be a non-empty string, got an empty string")
    for key in ("props", "metadata"):
        if key in n and not isinstance(n[key], dict):
            raise SchemaError(f"{path}.{key}", f"must be an object, got {_json_type(n[key])}")
    if "children" in n and not isinstance(n["children"], list):
        raise SchemaError(
            f"{path}.children", f"must be an array, got {_json_type(n['children'])}"
        )


def _validate_nodes_slow(nodes):
    """Pre-order walk in document order keeping paths; raises on the first problem."""
    first = {}
    stack = [(nodes, "nodes", 0)]
    while stack:
        lst, prefix, i = stack.pop()
        if i >= len(lst):
            continue
        stack.append((lst, prefix, i + 1))
        n = lst[i]
        path = f"{prefix}[{i}]"
        _check_node(n, path)
        nid = n["id"]
        if nid in first:
            raise SchemaError(path, f"duplicate node id {nid!r} (first at {first[nid]})")
        first[nid] = path
        children = n.get("children")
        if children:
            stack.append((children, f"{path}.children", 0))


# --------------------------------------------------------------------------
# deltas


def _count(node, limit=1 << 62):
    """Nodes in the subtree of `node` (stops counting past `limit`)."""
    count = 0
    stack = [node]
    pop = stack.pop
    extend = stack.extend
    while stack:
        x = pop()
        count += 1
        if count > limit:
            return count
        c = x.get("children")
        if c:
            extend(c)
    return count


def _values_differ(a, b):
    try:
        return a != b
    except RecursionError:  # nested deeper than C comparison allows
        return _value_bytes(a) != _value_bytes(b)


def _value_bytes(value):
    if _orjson is not None:
        try:
            return _orjson.dumps(value, option=_orjson.OPT_SORT_KEYS)
        except (TypeError, ValueError, RecursionError):
            pass
    return _reference_serialize(value).encode("utf-8", "surrogatepass")


class _Cmp:
    """Subtree comparison: ``!=`` at C speed; once a tree proves deeper than
    C comparison allows (RecursionError), memoized subtree fingerprints
    computed iteratively (each node hashed once per delta)."""

    __slots__ = ("deep", "memo")

    def __init__(self):
        self.deep = False
        self.memo = {}

    def differ(self, a, b):
        if a is b:
            return False
        if not self.deep:
            try:
                return a != b
            except RecursionError:
                self.deep = True
        return self.fingerprint(a) != self.fingerprint(b)

    def children_differ(self, a, b):
        if type(a) is not list or type(b) is not list:
            return _values_differ(a, b)
        return len(a) != len(b) or any(self.differ(x, y) for x, y in zip(a, b))

    def fingerprint(self, root):
        memo = self.memo
        found = memo.get(id(root))
        if found is not None:
            return found
        stack = [(root, False)]
        while stack:
            node, done = stack.pop()
            if not done:
                if id(node) in memo:
                    continue
                stack.append((node, True))
                ch = node.get("children")
                if type(ch) is list:
                    stack.extend((c, False) for c in ch)
                continue
            h = hashlib.blake2b(digest_size=20)
            own = _value_bytes({k: v for k, v in node.items() if k != "children"})
            h.update(b"%d:" % len(own))
            h.update(own)
            ch = node.get("children", _MISSING)
            if type(ch) is list:
                h.update(b"C%d:" % len(ch))
                for c in ch:
                    h.update(memo[id(c)])
            elif ch is not _MISSING:
                h.update(b"X")
                h.update(_value_bytes(ch))
            memo[id(node)] = h.digest()
        return memo[id(root)]


def _own_equal(o, n):
    """Same fields except ``children`` (whose presence still counts)."""
    if o.keys() != n.keys():
        return False
    for k, v in n.items():
        if k != "children" and _values_differ(o[k], v):
            return False
    return True


def _lis(seq, weights=None):
    """Indexes into `seq` (distinct ints) of a longest (heaviest) increasing
    subsequence."""
    n = len(seq)
    if weights is None:
        tails = []  # values
        tails_idx = []
        prev = [-1] * n
        for i, v in enumerate(seq):
            k = bisect.bisect_left(tails, v)
            if k == len(tails):
                tails.append(v)
                tails_idx.append(i)
            else:
                tails[k] = v
                tails_idx[k] = i
            prev[i] = tails_idx[k - 1] if k else -1
        out = []
        i = tails_idx[-1] if tails_idx else -1
        while i >= 0:
            out.append(i)
            i = prev[i]
        return out[::-1]
    best = [0] * n
    prev = [-1] * n
    for i in range(n):
        b, p = 0, -1
        vi = seq[i]
        for j in range(i):
            if seq[j] < vi and best[j] > b:
                b, p = best[j], j
        best[i] = b + weights[i]
        prev[i] = p
    i = max(range(n), key=best.__getitem__) if n else -1
    out = []
    while i >= 0:
        out.append(i)
        i = prev[i]
    return out[::-1]


class _Frame:
    """A node present in both trees, at the same place, whose subtree differs
    (or the virtual root: the top-level ``nodes`` list)."""

    __slots__ = (
        "parent", "o", "n", "oc", "nc", "own", "adds", "removes", "kids",
        "need", "cost", "modify", "force", "covered",
    )

    def __init__(self, parent, o, n):
        self.parent = parent
        self.o = o
        self.n = n
        self.oc = self.nc = None
        self.own = False  # a non-children field changed: must be modified
        self.adds = ()  # (index, new node)
        self.removes = ()  # old child ids
        self.kids = []
        self.need = False  # an ancestor needs this frame's cost
        self.cost = 0
        self.modify = False
        self.force = False
        self.covered = False


def _diff_children(f, frames, stack, cmp):
    """Compare f.oc/f.nc; fill f.adds/f.removes and create kid frames."""
    oc, nc = f.oc, f.nc
    oi = list(map(_get_id, oc))
    ni = list(map(_get_id, nc))
    if oi == ni:
        pairs = None
        if not cmp.deep:
            try:
                pairs = [(a, b) for a, b in zip(oc, nc) if a is not b and a != b]
            except RecursionError:
                cmp.deep = True
        if pairs is None:
            pairs = [(a, b) for a, b in zip(oc, nc) if cmp.differ(a, b)]
    else:
        pos = {x: i for i, x in enumerate(oi)}
        common = [(j, pos[x]) for j, x in enumerate(ni) if x in pos]
        seq = [p for _, p in common]
        if all(seq[k] < seq[k + 1] for k in range(len(seq) - 1)):
            keep = common
        else:
            weights = None
            if len(seq) <= 256:
                weights = [_count(nc[j]) + 1 for j, _ in common]
            keep = [common[k] for k in _lis(seq, weights)]
        kept_new = {j for j, _ in keep}
        kept_old = {p for _, p in keep}
        f.adds = [(j, nc[j]) for j in range(len(nc)) if j not in kept_new]
        f.removes = [oi[i] for i in range(len(oc)) if i not in kept_old]
        pairs = [(oc[p], nc[j]) for j, p in keep if cmp.differ(oc[p], nc[j])]
        for _, node in f.adds:
            if "parentId" in node or "index" in node:
                f.force = True
    structural = bool(f.adds or f.removes)
    kid_need = f.need or (structural and f.parent is not None)
    for a, b in pairs:
        k = _Frame(f, a, b)
        k.need = kid_need
        frames.append(k)
        f.kids.append(k)
        ac = a.get("children", _MISSING)
        bc = b.get("children", _MISSING)
        if type(ac) is list and type(bc) is list and _own_equal(a, b):
            k.oc, k.nc = ac, bc
            stack.append(k)
        else:
            k.own = True


def _plan(old_nodes, new_nodes):
    root = _Frame(None, None, None)
    root.oc, root.nc = old_nodes, new_nodes
    frames = [root]
    stack = [root]
    cmp = _Cmp()
    while stack:
        _diff_children(stack.pop(), frames, stack, cmp)

    # costs and decisions, children before parents
    for f in reversed(frames):
        if f.own:
            f.modify = True
            if f.need:
                f.cost = _count(f.n)
            continue
        if f.force:
            if f.parent is None:
                raise DeltaNotRepresentable(
                    "a top-level node carries its own 'parentId'/'index' keys"
                )
            f.modify = True
            if f.need:
                f.cost = _count(f.n)
            continue
        if f.parent is not None and (f.adds or f.removes):
            incr = len(f.removes) + sum(_count(n) for _, n in f.adds)
            incr += sum(k.cost for k in f.kids)
            whole = _count(f.n, incr)
            if whole < incr:  # ties stay incremental (moved-out kids would
                # need an explicit remove anyway)
                f.modify = True
                f.cost = whole
            else:
                f.cost = incr
        elif f.need:
            f.cost = sum(k.cost for k in f.kids)
    return frames, cmp


def _walk_ids(node, include_self, parent_id=None):
    """(id, parent id) for the subtree of `node`."""
    out = []
    if include_self:
        stack = [(node, parent_id)]
    else:
        pid = node["id"]
        stack = [(c, pid) for c in node.get("children") or ()]
    while stack:
        x, p = stack.pop()
        xid = x["id"]
        out.append((xid, p))
        c = x.get("children")
        if c:
            stack.extend((y, xid) for y in c)
    return out


def _meta_equal(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        if not _values_differ(a, b):
            return True
        return not _values_differ(
            {k: v for k, v in a.items() if k != "generatedAt"},
            {k: v for k, v in b.items() if k != "generatedAt"},
        )
    return not _values_differ(a, b)


def compute_delta(old, new):
    """The delta that turns schema `old` into schema `new` (see module doc).

    Both must be valid schemas. Raises `DeltaNotRepresentable` in the one
    case the wire format cannot express (a top-level node that itself has
    ``parentId``/``index`` keys would have to be added).
    """
    added, modified, removed = [], [], []
    old_nodes = old.get("nodes") or []
    new_nodes = new.get("nodes") or []
    if old_nodes is not new_nodes:
        frames, cmp = _plan(old_nodes, new_nodes)
        m_regions = []
        a_regions = []
        for f in frames:
            parent = f.parent
            if parent is not None and (parent.covered or parent.modify):
                f.covered = True
                continue
            if f.modify:
                modified.append(f.n)
                if cmp.children_differ(f.o.get("children"), f.n.get("children")):
                    m_regions.append(f)
                continue
            pid = None if parent is None else f.n["id"]
            for j, node in f.adds:
                entry = dict(node)
                entry["parentId"] = pid
                entry["index"] = j
                added.append(entry)
                a_regions.append(node)
            removed.extend(f.removes)
        if m_regions:
            # ids that leave a modified subtree for another region must be
            # removed first, so no id ever exists twice mid-apply
            vacated = {}
            for f in m_regions:
                mid = f.o["id"]
                for xid, p in _walk_ids(f.o, False):
                    vacated[xid] = (mid, p)
            explicit = set()
            for f in m_regions:
                mid = f.n["id"]
                for xid, _ in _walk_ids(f.n, False):
                    v = vacated.get(xid)
                    if v is not None and v[0] != mid:
                        explicit.add(xid)
            for node in a_regions:
                for xid, _ in _walk_ids(node, True):
                    if xid in vacated:
                        explicit.add(xid)
            if explicit:
                for xid in sorted(explicit, key=str):
                    mid, p = vacated[xid]
                    top = True
                    while p != mid:
                        if p in explicit:
                            top = False
                            break
                        p = vacated[p][1]
                    if top:
                        removed.append(xid)
        # frames point at their parents and kids: break the cycles so old
        # schemas are freed at once, not by a full (slow) gc collection
        for f in frames:
            f.parent = f.kids = None
    delta = {"added": added, "modified": modified, "removed": removed}
    changes = {}
    for k, v in new.items():
        if k == "nodes":
            continue
        if k not in old:
            changes[k] = v
        elif k == "metadata":
            if not _meta_equal(old[k], v):
                changes[k] = v
        elif _values_differ(old[k], v):
            changes[k] = v
    if changes:
        delta["metadataChanges"] = changes
    gone = [k for k in old if k not in new and k != "nodes"]
    if gone:
        delta["removedFields"] = gone
    return delta


def is_empty_delta(delta):
    """True when applying `delta` changes nothing."""
    return not (
        delta.get("added")
        or delta.get("modified")
        or delta.get("removed")
        or delta.get("metadataChanges")
        or delta.get("removedFields")
    )


def delta_size(delta):
    """Number of nodes the delta touches: one per added, modified and removed
    entry (a carried subtree counts as one; field changes count zero)."""
    return (
        len(delta.get("added") or ())
        + len(delta.get("modified") or ())
        + len(delta.get("removed") or ())
    )


def _json_copy(value):
    """Deep copy of JSON-like data, iterative (any depth)."""
    if isinstance(value, dict):
        root = {}
    elif isinstance(value, list):
        root = []
    else:
        return value
    stack = [(value, root)]

    def child(v):
        if isinstance(v, dict):
            c = {}
        elif isinstance(v, list):
            c = []
        else:
            return v
        stack.append((v, c))
        return c

    while stack:
        src, dst = stack.pop()
        if isinstance(src, dict):
            for k, v in src.items():
                dst[k] = child(v)
        else:
            dst.extend(child(v) for v in src)
    return root


def _index(nodes):
    """id -> (containing list, node) for the whole tree."""
    idx = {}
    stack = [nodes]
    while stack:
        lst = stack.pop()
        for n in lst:
            idx[n["id"]] = (lst, n)
            c = n.get("children")
            if c:
                stack.append(c)
    return idx


def _position(lst, node):
    for i, x in enumerate(lst):
        if x is node:
            return i
    raise ValueError("node not in its list")  # pragma: no cover


def apply_delta(old, delta, legacy=False):
    """Apply `delta` to schema `old` and return the new schema (`old` is not
    modified). Order: removed -> modified -> added, then field changes.

    ``legacy=True`` reads the delta as a protocol-1.0 device does: ``parentId``
    and ``index`` are ignored and added nodes are appended at the top level in
    list order. Raises ValueError when the delta does not fit `old` (unknown
    removed/modified id or parent, index out of range).
    """
    result = _json_copy(old)
    nodes = result.get("nodes")
    if nodes is None:
        nodes = result["nodes"] = []
    removed = delta.get("removed") or ()
    modified = delta.get("modified") or ()
    added = delta.get("added") or ()
    if removed:
        idx = _index(nodes)
        for rid in removed:
            hit = idx.pop(rid, None)
            if hit is None:
                raise ValueError(f"removed id {rid!r} not found")
            lst, node = hit
            del lst[_position(lst, node)]
            # forget the removed subtree so a later lookup cannot find it
            stack = list(node.get("children") or ())
            while stack:
                x = stack.pop()
                idx.pop(x.get("id"), None)
                stack.extend(x.get("children") or ())
    if modified:
        idx = _index(nodes)
        for m in modified:
            hit = idx.get(m["id"])
            if hit is None:
                raise ValueError(f"modified id {m['id']!r} not found")
            lst, node = hit
            new_node = _json_copy(m)
            lst[_position(lst, node)] = new_node
            stack = list(node.get("children") or ())
            while stack:
                x = stack.pop()
                idx.pop(x.get("id"), None)
                stack.extend(x.get("children") or ())
            idx.update(_index([new_node]))
            idx[new_node["id"]] = (lst, new_node)
    if added:
        entries = [
            {k: v for k, v in a.items() if k != "parentId" and k != "index"}
            for a in added
        ]
        if legacy:
            nodes.extend(_json_copy(e) for e in entries)
        else:
            idx = _index(nodes)
            order = sorted(range(len(added)), key=lambda i: added[i].get("index", 0))
            for i in order:
                a = added[i]
                pid = a.get("parentId")
                if pid is None:
                    target = nodes
                else:
                    hit = idx.get(pid)
                    if hit is None:
                        raise ValueError(f"parent id {pid!r} of added node not found")
                    parent = hit[1]
                    target = parent.get("children")
                    if target is None:
                        target = parent["children"] = []
                index = a.get("index", len(target))
                if isinstance(index, float) and index.is_integer():
                    index = int(index)  # parsed with parse_int=float
                if not isinstance(index, int) or not 0 <= index <= len(target):
                    raise ValueError(f"index {index!r} out of range for added node")
                node = _json_copy(entries[i])
                target.insert(index, node)
                idx.update(_index([node]))
    for k, v in (delta.get("metadataChanges") or {}).items():
        result[k] = _json_copy(v)
    for k in delta.get("removedFields") or ():
        result.pop(k, None)
    return result


def legacy_compatible(old, delta):
    """True when a protocol-1.0 device (which ignores ``parentId``/``index``
    and appends every add at the top level) ends with the right tree: every
    add is top-level and the adds, in list order, are exactly the positions
    after the surviving top-level nodes. A delta with ``removedFields`` is
    not legacy-compatible (1.0 devices do not know that key)."""
    if delta.get("removedFields"):
        return False
    added = delta.get("added") or ()
    if not added:
        return True
    top = old.get("nodes") or []
    top_ids = {n.get("id") for n in top}
    gone = sum(1 for r in delta.get("removed") or () if r in top_ids)
    expected = len(top) - gone
    for a in added:
        if a.get("parentId") is not None or a.get("index") != expected:
            return False
        expected += 1
    return True


class Choice(NamedTuple):
    """What to send after a push: ``update_type`` is "none", "incremental" or
    "full"; ``delta`` is set for "incremental" only; ``legacy_ok`` says
    whether protocol-1.0 devices can take the incremental (True otherwise)."""

    update_type: str
    delta: dict | None
    legacy_ok: bool
    # compact JSON of the new schema when the size check made it (orjson
    # bytes, as the wire uses), so the caller need not serialize it again
    new_json: bytes | None = None


def _orjson_bytes(obj):
    if _orjson is None:
        return None
    try:
        return _orjson.dumps(obj)
    except (TypeError, ValueError, RecursionError):
        return None


def _wire_len(obj):
    if _orjson is not None:
        try:
            return len(_orjson.dumps(obj))
        except (TypeError, ValueError, RecursionError):
            pass
    try:
        return len(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError, RecursionError):
        return len(_reference_serialize(obj).encode("utf-8"))


def choose_update(old, new, threshold=10, new_len=None):
    """Decide how to send `new` to devices that hold `old` (SPEC §4).

    "none" when the delta is empty (only ``generatedAt`` differs, or
    nothing); "incremental" when ``delta_size < threshold`` and the compact
    JSON of the delta is shorter than the compact JSON of `new` (both
    measured with orjson, not the exact wire envelope); else "full". `old`
    None (no schema yet) -> "full". `new_len`, when the caller already
    serialized `new`, saves serializing it again.
    """
    if old is None:
        return Choice("full", None, True)
    try:
        delta = compute_delta(old, new)
    except DeltaNotRepresentable:
        return Choice("full", None, True)
    if is_empty_delta(delta):
        return Choice("none", None, True)
    if delta_size(delta) >= threshold:
        return Choice("full", None, True)
    new_json = None
    if new_len is None:
        new_json = _orjson_bytes(new)
        new_len = len(new_json) if new_json is not None else _wire_len(new)
    if _wire_len(delta) < new_len:
        return Choice("incremental", delta, legacy_compatible(old, delta), new_json)
    return Choice("full", None, True, new_json)


# --------------------------------------------------------------------------
# encoding: what a schema must be to travel as JSON

# Nesting of JSON objects and arrays a schema may have, the schema object
# itself counting as one level (about 125 levels of nested nodes). Every
# step of a push handles this depth without recursion (validation, delta,
# apply, checksum) and the encoder serializes it natively.
MAX_DEPTH = 254
_MAX_DOUBLE_INT = 1 << 1024  # from here on a double cannot hold the integer


def encode_schema(schema):
    """The compact JSON of `schema` (bytes), as the wire carries it.

    Raises `SchemaError` with the path of the first value JSON cannot carry
    to a device: nesting deeper than `MAX_DEPTH`, a number that is not
    finite or that no double can hold, a string or key with an unpaired
    surrogate, a value that is not JSON at all. Integers beyond 64 bits that
    a double can hold are encoded by the standard library.
    """
    if _orjson is not None:
        try:
            return _orjson.dumps(schema)
        except _orjson.JSONEncodeError:
            pass
    problem = find_unencodable(schema)
    if problem is not None:
        raise SchemaError(*problem)
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def find_unencodable(value):
    """``(path, message)`` for the first value that cannot travel as JSON
    (see `encode_schema`), or None. Iterative: any depth is fine."""
    stack = [(value, "", 1)]
    while stack:
        v, path, depth = stack.pop()
        t = type(v)
        if t is dict or t is list:
            if depth > MAX_DEPTH:
                return path, f"nested deeper than {MAX_DEPTH} levels of objects and arrays"
            if t is dict:
                items = list(v.items())
                for key, _ in items:
                    if type(key) is not str:
                        return path, f"object key {key!r} is not a string"
                    if _SURROGATE.search(key):
                        # the path names the key with the surrogate written as
                        # a \uXXXX escape: the error body that carries the path
                        # must itself be valid JSON (a raw lone surrogate made
                        # the 400 answer fail to encode: an HTML 500 instead)
                        return (_join(path, _visible(key)),
                                "key has an unpaired surrogate (not valid Unicode)")
                stack.extend((x, _join(path, k), depth + 1) for k, x in reversed(items))
            else:
                stack.extend((x, f"{path}[{i}]", depth + 1) for i, x in reversed(list(enumerate(v))))
        elif t is str:
            if _SURROGATE.search(v):
                return path, "string has an unpaired surrogate (not valid Unicode)"
        elif t is float:
            if not math.isfinite(v):
                return path, f"number {v} is not finite"
        elif t is int:
            if abs(v) >= _MAX_DOUBLE_INT:
                return path, "integer is too large for a double"
        elif v is not None and t is not bool and not isinstance(v, (int, float, str)):
            return path, f"{t.__name__} is not a JSON value"
    return None


def _visible(key):
    """`key` with each unpaired surrogate written as a ``\\uXXXX`` escape."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", key)


# --------------------------------------------------------------------------
# checksum: reference serializer (exact JS semantics, iterative)

_INDEX_KEY = re.compile(r"0|[1-9][0-9]*")
_MAX_INDEX = 4294967294
_STR_ESCAPE = re.compile('["\\\\\x00-\x1f\ud800-\udfff]')
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _escape_char(m):
    c = m.group()
    e = _ESCAPES.get(c)
    return e if e is not None else "\\u%04x" % ord(c)


def _js_string(s):
    if _SURROGATE.search(s):
        # re-pair adjacent surrogates as a UTF-16 string would
        s = s.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "surrogatepass")
    return '"' + _STR_ESCAPE.sub(_escape_char, s) + '"'


def _js_float(x):
    """ECMAScript Number::toString for a double."""
    if x != x or x in (math.inf, -math.inf):
        return "null"
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    mant, _, exp = repr(abs(x)).partition("e")
    exp = int(exp) if exp else 0
    ip, _, fp = mant.partition(".")
    digits = ip + fp
    n = len(ip) + exp
    stripped = digits.lstrip("0")
    n -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        s = digits + "0" * (n - k)
    elif 0 < n <= 21:
        s = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        s = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        s = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + s


def _js_int(i):
    if -(1 << 53) <= i <= (1 << 53):
        return str(i)
    try:
        return _js_float(float(i))
    except OverflowError:
        return "null"


def _key_order(d):
    index, other = [], []
    for k in d:
        if not isinstance(k, str):
            raise TypeError(f"object keys must be strings, got {type(k).__name__}")
        if k == "__proto__":
            continue
        if _INDEX_KEY.fullmatch(k) and int(k) <= _MAX_INDEX:
            index.append(k)
        else:
            other.append(k)
    index.sort(key=int)
    other.sort(key=lambda k: k.encode("utf-16-be", "surrogatepass"))
    return index + other


class _Raw(str):
    """Literal output text on the serializer's stack."""


def _reference_serialize(value):
    """JSON.stringify semantics (with the checksum's key order), iterative."""
    out = []
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        v = pop()
        if type(v) is _Raw:
            out.append(v)
        elif v is None:
            out.append("null")
        elif v is True:
            out.append("true")
        elif v is False:
            out.append("false")
        elif isinstance(v, str):
            out.append(_js_string(v))
        elif isinstance(v, int):
            out.append(_js_int(v))
        elif isinstance(v, float):
            out.append(_js_float(v))
        elif isinstance(v, dict):
            keys = _key_order(v)
            if not keys:
                out.append("{}")
                continue
            out.append("{")
            push(_Raw("}"))
            for i in range(len(keys) - 1, -1, -1):
                k = keys[i]
                push(v[k])
                push(_Raw(("," if i else "") + _js_string(k) + ":"))
        elif isinstance(v, (list, tuple)):
            if not v:
                out.append("[]")
                continue
            out.append("[")
            push(_Raw("]"))
            for i in range(len(v) - 1, -1, -1):
                push(v[i])
                if i:
                    push(_Raw(","))
        else:
            raise TypeError(f"not JSON-serializable: {type(v).__name__}")
    return "".join(out)


def _normalized(schema):
    """The checksum's input: `schema` with metadata.generatedAt = 0 (copies
    only the root and metadata dicts)."""
    if not isinstance(schema, dict):
        raise SchemaError("", f"schema must be a JSON object, got {_json_type(schema)}")
    if "metadata" not in schema:
        raise SchemaError("metadata", "missing required field 'metadata'")
    meta = schema["metadata"]
    if isinstance(meta, dict):
        meta = dict(meta)
        meta["generatedAt"] = 0
        root = dict(schema)
        root["metadata"] = meta
        return root
    if isinstance(meta, (list, tuple)):
        return schema
    raise SchemaError("metadata", f"must be an object, got {_json_type(meta)}")


def _reference_canonical_json(schema):
    """The canonical string by the exact (slow) serializer."""
    return _reference_serialize(_normalized(schema))


# --------------------------------------------------------------------------
# checksum: fast path

# What the fast path must not handle (JS formats it differently), found with
# cheap C-level searches over the serializer's output. Every test may also
# fire on text inside a string: that only costs a trip through the reference
# serializer. On bytes (orjson), with digits first mapped to "0":
#   - exponent notation ("1e+16", "1e-7"; JS: 10000000000000000, 1e-7 differ),
#   - an integral float ("1.0", "-0.0"; JS: 1, 0),
#   - 16+ digit integers (beyond 2**53 JS prints the nearest double),
#   - an array-index-like key ('"123":' can only be a key in compact JSON),
#   - a "__proto__" key (JS drops it),
#   - a key holding a non-BMP character (JS sorts keys by UTF-16 units).
# orjson itself refuses lone surrogates, ints beyond 64 bits, depth > 255.
_DIGITS_TO_0 = bytes.maketrans(b"123456789", b"000000000")
_INTEGRAL_FLOAT_B = re.compile(rb"\.0[,\]}]")
_EXPONENT_B = re.compile(rb"0e[-+]")  # orjson always signs exponents
_LONG_INT_B = b"0" * 16
_INDEX_KEY_B = re.compile(rb'"0+":')
_PROTO_KEY_B = b'"__proto__":'
_ASTRAL_LEADS = (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")
# a key (followed by ':') containing a non-BMP character
_ASTRAL_KEY_B = re.compile(
    rb'[{,]"(?:[^"\\\xf0-\xf4]|\\.)*[\xf0-\xf4](?:[^"\\]|\\.)*":', re.S
)
# the same tests for json.dumps output (used only when orjson is missing)
_SUSPECT_S = re.compile(
    r'[:,\[]-?(?:[0-9]{16}|[0-9]+(?:\.[0-9]+)?[eE]|[0-9]+\.0[,\]}]|NaN|Infinity)'
    r'|"[0-9]+":'
    r'|"__proto__":'
)
_ASTRAL_S = re.compile("[\U00010000-\U0010ffff]")
_ASTRAL_KEY_S = re.compile(
    '[{,]"(?:[^"\\\\\U00010000-\U0010ffff]|\\\\.)*[\U00010000-\U0010ffff](?:[^"\\\\]|\\\\.)*":',
    re.S,
)
if _orjson is not None:
    _ORJSON_OPTS = (
        _orjson.OPT_SORT_KEYS
        | _orjson.OPT_PASSTHROUGH_SUBCLASS
        | _orjson.OPT_PASSTHROUGH_DATETIME
        | _orjson.OPT_PASSTHROUGH_DATACLASS
    )


def _fast_canonical_bytes(normalized):
    """UTF-8 canonical bytes via a C serializer, or None when the output
    might differ from JavaScript's (then use the reference serializer)."""
    if _orjson is not None:
        try:
            out = _orjson.dumps(normalized, option=_ORJSON_OPTS)
        except (TypeError, ValueError, RecursionError):
            return None  # lone surrogates, >64-bit ints, depth > 255, odd types
        if _PROTO_KEY_B in out or _INTEGRAL_FLOAT_B.search(out):
            return None
        digits = out.translate(_DIGITS_TO_0)
        if (
            _LONG_INT_B in digits
            or _EXPONENT_B.search(digits)
            or _INDEX_KEY_B.search(digits)
        ):
            return None
        if not out.isascii() and any(b in out for b in _ASTRAL_LEADS):
            if _ASTRAL_KEY_B.search(out):
                return None
        return out
    try:  # pragma: no cover - only without orjson
        text = json.dumps(normalized, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return None
    if _SUSPECT_S.search(text):
        return None
    if _ASTRAL_S.search(text) and _ASTRAL_KEY_S.search(text):
        return None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return None


def _canonical_bytes(schema):
    normalized = _normalized(schema)
    out = _fast_canonical_bytes(normalized)
    if out is None:
        out = _reference_serialize(normalized).encode("utf-8")
    return out


def canonical_json(schema):
    """The exact string the TypeScript ``calculateChecksum`` hashes.

    Raises `SchemaError` (a ValueError) when the root is not an object or
    ``metadata`` is missing, null or a scalar (the reference throws there).
    Integers are read as doubles (``float(i)``; beyond the double range they
    become ``null`` as ±Infinity does in JavaScript).
    """
    return _canonical_bytes(schema).decode("utf-8")


def checksum(schema):
    """SHA-256 hex of `canonical_json(schema)` encoded as UTF-8."""
    return hashlib.sha256(_canonical_bytes(schema)).hexdigest()


def _reject_constant(name):
    raise ValueError(f"invalid JSON: {name} is not a JSON value")


def parse_json_strict(text):
    """Parse JSON as JavaScript's ``JSON.parse`` does: every number becomes a
    double, NaN/Infinity literals are rejected (ValueError), the last of
    duplicate keys wins."""
    return json.loads(text, parse_int=float, parse_constant=_reject_constant)
