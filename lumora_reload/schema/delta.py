"""Deltas between two schemas: their format, and how `compute_delta` finds
the smallest one it can.

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

    Subtrees are compared with Python's ``==``, which takes ``True`` for
    ``1`` (and ``1`` for ``1.0``, the same number to a device): a value
    that turns from a boolean into the number equal to it, in a node that
    changes in no other way, is not in the delta. The update's checksum
    catches it on the device (which then gets the full schema), and
    `choose_update` compares checksums before it answers "none".

    `delta_size` counts entries: ``len(added) + len(modified) +
    len(removed)``; an added or modified subtree counts as one node (the
    wire-size check in `choose_update` guards against big subtrees).

Applying a delta (as a device does) is `lumora_reload.schema.apply`;
deciding between no update, a delta and the full schema is
`lumora_reload.schema.choose`.
"""

from __future__ import annotations

import bisect
import hashlib
from operator import itemgetter

from lumora_reload.schema._common import _MISSING, _orjson
from lumora_reload.schema.canonical import _reference_serialize

__all__ = ["DeltaNotRepresentable", "Regions", "compute_delta", "is_empty_delta", "delta_size"]


_get_id = itemgetter("id")


class DeltaNotRepresentable(ValueError):
    """The change cannot be expressed as a delta (send the full schema)."""


class Regions:
    """Where the walk of `compute_delta` found the trees differ:
    `old_subtrees`, those of the old tree that are not in the new one as
    they were, and `new_subtrees`, those of the new tree that replace them
    or are added. Every other node of the new tree equals an old one: inside
    a subtree equal to the old one at its place, or a node whose fields
    other than ``children`` equal the old node's (its children are then
    walked in turn)."""

    __slots__ = ("old_subtrees", "new_subtrees")

    def __init__(self):
        self.old_subtrees = []
        self.new_subtrees = []


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


def _diff_children(f, frames, stack, cmp, regions):
    """Compare f.oc/f.nc; fill f.adds/f.removes and create kid frames (and
    `regions`, when not None)."""
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
        if regions is not None:
            regions.old_subtrees.extend(oc[i] for i in range(len(oc)) if i not in kept_old)
            regions.new_subtrees.extend(node for _, node in f.adds)
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
            if regions is not None:
                regions.old_subtrees.append(a)
                regions.new_subtrees.append(b)


def _plan(old_nodes, new_nodes, regions=None):
    root = _Frame(None, None, None)
    root.oc, root.nc = old_nodes, new_nodes
    frames = [root]
    stack = [root]
    cmp = _Cmp()
    while stack:
        _diff_children(stack.pop(), frames, stack, cmp, regions)

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


def compute_delta(old, new, regions=None):
    """The delta that turns schema `old` into schema `new` (see module doc).

    Both must be valid schemas. Raises `DeltaNotRepresentable` in the one
    case the wire format cannot express (a top-level node that itself has
    ``parentId``/``index`` keys would have to be added). `regions`, a
    `Regions`, is filled with where the trees differ; then `new` may also
    be JSON values not yet validated (with a valid root): the walk then
    raises, or fills `regions` so that `validation.index_if_valid` finds
    the problem.
    """
    added, modified, removed = [], [], []
    old_nodes = old.get("nodes") or []
    new_nodes = new.get("nodes") or []
    if old_nodes is not new_nodes:
        frames, cmp = _plan(old_nodes, new_nodes, regions)
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
