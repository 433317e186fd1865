"""Applying a delta as a device does, and the legacy (protocol 1.0) rules.

`apply_delta` is the device side of `lumora_reload.schema.delta`: it applies
``removed``, then ``modified``, then ``added`` (adds into one parent in
ascending ``index`` order), then the top-level field changes, and returns a
new schema without touching the old one. The reference device
(`lumora_reload.client`) and the tests use it to check that what the daemon
sends lands on the right tree.

Protocol-1.0 devices ignore ``parentId`` and ``index`` and append every
added node at the top level; `apply_delta(..., legacy=True)` reads a delta
that way, and `legacy_compatible` says whether such a device would still end
with the right tree (otherwise it must be sent the full schema).
"""

from __future__ import annotations

__all__ = ["apply_delta", "legacy_compatible"]


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
