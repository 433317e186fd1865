"""Validation of a Lumora IR schema.

Schema
    ``{"version": str, "metadata": {...}, "nodes": [node...], ...}``; a node is
    ``{"id", "type", "props"?, "children"?, "metadata"?, ...}``. Node ids are
    unique across the whole tree. `validate` checks this and reports the JSON
    path of the first problem (document order) in a `SchemaError`.

A fast pass that keeps no paths accepts the usual, valid schema; only when
it finds a problem does a second, path-keeping walk name the first one.
Both are iterative, so any depth is fine.

`node_index` validates as `validate` does and answers the tree's
`NodeIndex` (its ids and node count). `index_if_valid` vouches for a new
schema from that of a valid one and the regions a delta between the two
found changed (`delta.Regions`), checking only those regions: the rest of
the new tree is the old tree's, unchanged. It answers the new `NodeIndex`,
or None when it cannot vouch; then `node_index` decides.
"""

from __future__ import annotations

from typing import NamedTuple

from lumora_reload.schema._common import _MISSING, SchemaError, _json_type

__all__ = ["NodeIndex", "index_if_valid", "node_index", "validate", "validate_root"]


class NodeIndex(NamedTuple):
    """The node ids of a valid schema's tree and how many nodes it has."""

    ids: frozenset
    nodes: int


def validate(schema):
    """Raise `SchemaError` for the first problem of `schema`, else return
    the number of nodes in its tree.

    Root: an object with ``version`` (string), ``metadata`` (object whose
    ``sourceFramework``/``sourceFile`` are strings and ``generatedAt`` a
    number, string or null when present) and ``nodes`` (array). Nodes: objects
    with non-empty string ``id`` and ``type``; ``props`` and ``metadata``
    objects and ``children`` an array of nodes when present. Ids are unique
    in the whole tree. Iterative: any depth is fine.
    """
    validate_root(schema)
    nodes = schema["nodes"]
    count = _nodes_ok_fast(nodes)
    if count is not None:
        return count
    return _validate_nodes_slow(nodes)  # raises with the exact path


def node_index(schema):
    """Check `schema` as `validate` does (raising the same `SchemaError`);
    its `NodeIndex`."""
    validate_root(schema)
    nodes = schema["nodes"]
    ids = _ids_if_ok(nodes)
    if ids is None or len(set(ids)) != len(ids):
        _validate_nodes_slow(nodes)  # raises with the exact path
        ids = _subtree_ids(nodes)  # valid after all (a str subclass for an id, say)
    return NodeIndex(frozenset(ids), len(ids))


def index_if_valid(old_index, regions):
    """`NodeIndex` of a new schema when it is certainly valid, else None.

    `old_index` is that of a valid schema, and `regions` what a delta from
    it to the new schema found changed: the old subtrees that are gone and
    the new ones that came in. Every other node of the new tree equals one
    of the old tree's in every field validation looks at, and for JSON
    values ``==`` finds a string equal only to a string, an object only to
    an object, an array only to an array: those nodes need no check. The
    new subtrees are checked node by node; ids stay unique when the new
    subtrees' ids are distinct and none is still held by a node that
    stayed. The caller has checked the root (`validate_root`).
    """
    if not regions.old_subtrees and not regions.new_subtrees:
        return old_index
    came = _ids_if_ok(regions.new_subtrees)  # one walk over every new subtree
    if came is None:
        return None
    came_set = set(came)
    if len(came_set) != len(came):
        return None
    gone = set(_subtree_ids(regions.old_subtrees))
    old_ids = old_index.ids
    for i in came_set:
        if i in old_ids and i not in gone:
            return None  # still held by a node that stayed
    return NodeIndex(old_ids.difference(gone).union(came_set), old_index.nodes - len(gone) + len(came))


def _subtree_ids(nodes):
    """The ids of `nodes` and their subtrees (valid nodes)."""
    ids = []
    add = ids.append
    stack = [nodes]
    while stack:
        for n in stack.pop():
            add(n["id"])
            c = n.get("children")
            if c:
                stack.append(c)
    return ids


def validate_root(schema):
    """Check everything of `schema` but its tree of nodes."""
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
    """The number of nodes when the tree is certainly valid, else None (no
    paths kept)."""
    ids = _ids_if_ok(nodes)
    return len(ids) if ids is not None and len(set(ids)) == len(ids) else None


def _ids_if_ok(nodes):
    """The ids of `nodes` and their subtrees when every node is certainly
    valid on its own (not counting unique ids), else None."""
    ids = []
    add_id = ids.append
    stack = [nodes]
    pop = stack.pop
    push = stack.append
    missing = _MISSING
    while stack:
        for n in pop():
            if type(n) is not dict:
                return None
            i = n.get("id")
            if type(i) is not str or not i:
                return None
            add_id(i)
            t = n.get("type")
            if type(t) is not str or not t:
                return None
            v = n.get("props", missing)
            if v is not missing and type(v) is not dict:
                return None
            v = n.get("metadata", missing)
            if v is not missing and type(v) is not dict:
                return None
            v = n.get("children", missing)
            if v is not missing:
                if type(v) is not list:
                    return None
                if v:
                    push(v)
    return ids


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
    """Pre-order walk in document order keeping paths; raises on the first
    problem, else returns the number of nodes."""
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
    return len(first)
