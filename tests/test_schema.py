"""Schema validation and deltas (docs/protocol.md, section 4): exact error paths, and the one rule
that matters, apply_delta(old, compute_delta(old, new)) == new, on random
trees and random edit scripts."""

import copy
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from lumora_reload import schema as S

# Profiles: tests/conftest.py registers and loads them; register here too
# (idempotently) so this module also runs on its own.
for _name, _n in (("default", 100), ("slow", 5000)):
    try:
        settings.get_profile(_name)
    except InvalidArgument:
        settings.register_profile(_name, max_examples=_n, deadline=None)

EXAMPLES = 3000 if os.environ.get("HYPOTHESIS_PROFILE") == "slow" else 200
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def schema(nodes, **extra):
    doc = {
        "version": "1.0",
        "metadata": {"sourceFramework": "react", "sourceFile": "App.tsx", "generatedAt": 1},
        "nodes": nodes,
    }
    doc.update(extra)
    return doc


def node(nid, children=None, **fields):
    n = {"id": nid, "type": fields.pop("type", "View"), "props": fields.pop("props", {})}
    if children is not None:
        n["children"] = children
    n.update(fields)
    return n


# -- validation ---------------------------------------------------------------


def error_of(doc):
    with pytest.raises(S.SchemaError) as info:
        S.validate(doc)
    return info.value


def test_valid_schema_passes_and_counts_its_nodes():
    assert S.validate(schema([node("a", [node("b"), node("c", [])], metadata={"lineNumber": 3})])) == 3
    assert S.validate(schema([])) == 0
    S.validate({"version": "1", "metadata": {}, "nodes": []})  # lenient metadata
    S.validate({"version": "1", "metadata": {"generatedAt": "2024-01-01"}, "nodes": []})
    S.validate({"version": "1", "metadata": {"generatedAt": 1.5}, "nodes": [], "extra": [1]})


@pytest.mark.parametrize(
    "doc, path, words",
    [
        ([], "", "object"),
        (None, "", "object"),
        ({"metadata": {}, "nodes": []}, "version", "missing"),
        ({"version": 1, "metadata": {}, "nodes": []}, "version", "string"),
        ({"version": "1", "nodes": []}, "metadata", "missing"),
        ({"version": "1", "metadata": [], "nodes": []}, "metadata", "object"),
        ({"version": "1", "metadata": {"sourceFile": 3}, "nodes": []}, "metadata.sourceFile", "string"),
        ({"version": "1", "metadata": {"sourceFramework": None}, "nodes": []},
         "metadata.sourceFramework", "string"),
        ({"version": "1", "metadata": {"generatedAt": {}}, "nodes": []}, "metadata.generatedAt", "number"),
        ({"version": "1", "metadata": {"generatedAt": True}, "nodes": []}, "metadata.generatedAt", "number"),
        ({"version": "1", "metadata": {}}, "nodes", "missing"),
        ({"version": "1", "metadata": {}, "nodes": {}}, "nodes", "array"),
        (schema([node("a"), "x"]), "nodes[1]", "object"),
        (schema([{"type": "View"}]), "nodes[0].id", "missing required field 'id'"),
        (schema([node("a", [node("b"), node("c"), {"type": "T", "props": {}}])]),
         "nodes[0].children[2].id", "missing"),
        (schema([node("")]), "nodes[0].id", "non-empty"),
        (schema([node(7)]), "nodes[0].id", "got number"),
        (schema([{"id": "a"}]), "nodes[0].type", "missing"),
        (schema([node("a", type="")]), "nodes[0].type", "non-empty"),
        (schema([node("a", props=[])]), "nodes[0].props", "got array"),
        (schema([node("a", props=None)]), "nodes[0].props", "got null"),
        (schema([node("a", children={})]), "nodes[0].children", "array"),
        (schema([{"id": "a", "type": "View", "children": None}]), "nodes[0].children", "got null"),
        (schema([node("a", metadata="x")]), "nodes[0].metadata", "object"),
        (schema([node("a", [node("b", [node("c", [1])])])]), "nodes[0].children[0].children[0].children[0]",
         "object"),
    ],
)
def test_validation_errors(doc, path, words):
    e = error_of(doc)
    assert isinstance(e, ValueError)
    assert e.path == path
    assert words in e.message
    assert str(e) == f"{path}: {e.message}"


def test_duplicate_ids_name_both_places():
    doc = schema([node("a", [node("b"), node("c", [node("x")])]), node("d", [node("x")])])
    e = error_of(doc)
    assert e.path == "nodes[1].children[0]"
    assert e.message == "duplicate node id 'x' (first at nodes[0].children[1].children[0])"
    e = error_of(schema([node("x"), node("x")]))
    assert (e.path, e.message) == ("nodes[1]", "duplicate node id 'x' (first at nodes[0])")
    # a duplicate of an ancestor
    e = error_of(schema([node("a", [node("b", [node("a")])])]))
    assert e.path == "nodes[0].children[0].children[0]"


def test_first_problem_in_document_order():
    doc = schema([node("a", [node("b", props=3)]), node("c", type=None)])
    assert error_of(doc).path == "nodes[0].children[0].props"
    doc = schema([node("a", [node("b")]), node("b", props=3)])
    assert error_of(doc).path == "nodes[1].props"  # a node's fields, then its id's uniqueness
    doc = schema([node("a", [node("b")]), node("b", [node("c", props=3)])])
    assert error_of(doc).path == "nodes[1]"  # the duplicate comes before its subtree


def deep_chain(depth, leaf_props=None):
    root = cur = node("n0", [])
    for i in range(1, depth):
        nxt = node(f"n{i}", [], props={"i": i})
        cur["children"].append(nxt)
        cur = nxt
    if leaf_props is not None:
        cur["props"] = leaf_props
    return schema([root])


def test_deep_tree_validates_without_recursion_error():
    doc = deep_chain(5000)
    assert S.validate(doc) == 5000
    leaf = doc["nodes"][0]
    for _ in range(4999):
        leaf = leaf["children"][0]
    leaf["children"].append(node("n17"))
    e = error_of(doc)
    assert e.path.endswith(".children[0]") and e.path.count("children") == 5000
    assert "'n17'" in e.message


def test_deep_tree_delta():
    old, new = deep_chain(5000), deep_chain(5000, {"changed": True})
    d = S.compute_delta(old, new)
    assert [m["id"] for m in d["modified"]] == ["n4999"] and not d["added"] and not d["removed"]
    assert S.canonical_json(S.apply_delta(old, d)) == S.canonical_json(new)
    assert S.is_empty_delta(S.compute_delta(old, deep_chain(5000)))
    assert S.choose_update(old, new).update_type == "incremental"
    # the deepest node moves to the top level, and a middle node changes
    moved = deep_chain(5000)
    cur = moved["nodes"][0]
    for _ in range(4998):
        if cur["id"] == "n2500":
            cur["props"] = {"mid": True}
        cur = cur["children"][0]
    moved["nodes"].append(cur["children"].pop())
    d = S.compute_delta(old, moved)
    assert [m["id"] for m in d["modified"]] == ["n2500"]
    assert d["removed"] == ["n4999"] and [a["id"] for a in d["added"]] == ["n4999"]
    assert S.canonical_json(S.apply_delta(old, d)) == S.canonical_json(moved)


# -- delta unit cases -----------------------------------------------------------


def leaf(nid, **props):
    return node(nid, props=props)


BASE = schema(
    [
        node("root", [leaf("a", t=1), node("b", [leaf("b1"), leaf("b2")]), leaf("c")]),
        leaf("top2"),
    ],
    navigationSchema={"routes": ["home"]},
)


def check(old, new):
    delta = S.compute_delta(old, new)
    snapshot = copy.deepcopy(old)
    result = S.apply_delta(old, delta)
    assert old == snapshot, "apply_delta mutated its input"
    assert strip_generated(result) == strip_generated(new)
    assert strict_apply(old, delta) == result
    json.dumps(delta)  # wire-ready
    assert S.apply_delta(old, json.loads(json.dumps(delta))) == result
    return delta


def edited(fn):
    new = copy.deepcopy(BASE)
    fn(new)
    return new


def test_unchanged_and_generated_at_only():
    assert S.compute_delta(BASE, copy.deepcopy(BASE)) == {"added": [], "modified": [], "removed": []}
    new = edited(lambda s: s["metadata"].update(generatedAt=999))
    assert S.is_empty_delta(S.compute_delta(BASE, new))
    assert S.choose_update(BASE, new) == S.Choice("none", None, True)
    new = edited(lambda s: s["metadata"].pop("generatedAt"))
    assert S.is_empty_delta(S.compute_delta(BASE, new))


def test_single_leaf_change_is_one_modified_node():
    new = edited(lambda s: s["nodes"][0]["children"][1]["children"][0]["props"].update(x=2))
    d = check(BASE, new)
    assert d == {"added": [], "modified": [new["nodes"][0]["children"][1]["children"][0]], "removed": []}
    assert S.delta_size(d) == 1


def test_metadata_change_carries_whole_metadata():
    new = edited(lambda s: s["metadata"].update(sourceFile="B.tsx", generatedAt=5))
    d = check(BASE, new)
    assert d["metadataChanges"] == {"metadata": new["metadata"]}
    assert S.apply_delta(BASE, d) == new


def test_top_level_fields():
    def fn(s):
        del s["navigationSchema"]
        s["version"] = "1.1"
        s["theme"] = {"dark": True}

    d = check(BASE, edited(fn))
    assert d["metadataChanges"] == {"version": "1.1", "theme": {"dark": True}}
    assert d["removedFields"] == ["navigationSchema"]
    assert S.delta_size(d) == 0


def test_add_nested_carries_parent_and_index():
    d = check(BASE, edited(lambda s: s["nodes"][0]["children"][1]["children"].insert(1, leaf("new"))))
    assert d["added"] == [{**leaf("new"), "parentId": "b", "index": 1}]
    assert not d["modified"] and not d["removed"]
    assert not S.legacy_compatible(BASE, d)


def test_append_top_level_is_legacy_compatible():
    new = edited(lambda s: s["nodes"].extend([leaf("z1"), leaf("z2")]))
    d = check(BASE, new)
    assert [(a["id"], a["parentId"], a["index"]) for a in d["added"]] == [("z1", None, 2), ("z2", None, 3)]
    assert S.legacy_compatible(BASE, d)
    assert S.apply_delta(BASE, d, legacy=True) == new
    new = edited(lambda s: s["nodes"].insert(0, leaf("z0")))
    d = check(BASE, new)
    assert not S.legacy_compatible(BASE, d)


def test_remove_lists_only_topmost():
    d = check(BASE, edited(lambda s: s["nodes"][0]["children"].pop(1)))
    assert d == {"added": [], "modified": [], "removed": ["b"]}


def test_move_between_parents():
    def fn(s):
        moved = s["nodes"][0]["children"][1]["children"].pop(0)
        s["nodes"][0]["children"][2]["children"] = [moved]

    d = check(BASE, edited(fn))
    assert S.delta_size(d) <= 3


def test_reorder_prefers_modifying_parent_when_cheaper():
    def fn(s):
        s["nodes"][0]["children"] = [leaf(f"k{i}") for i in range(8)]

    base = edited(fn)
    new = copy.deepcopy(base)
    new["nodes"][0]["children"].reverse()
    d = check(base, new)
    assert [m["id"] for m in d["modified"]] == ["root"] and not d["added"] and not d["removed"]
    # moving one child: remove + add
    new = copy.deepcopy(base)
    new["nodes"][0]["children"].append(new["nodes"][0]["children"].pop(0))
    d = check(base, new)
    assert d["removed"] == ["k0"] and [a["id"] for a in d["added"]] == ["k0"]


def test_top_level_reorder():
    new = edited(lambda s: s["nodes"].reverse())
    check(BASE, new)


def test_node_moved_out_of_modified_subtree_is_removed_first():
    def fn(s):
        root = s["nodes"][0]
        root["props"]["changed"] = True
        b1 = root["children"][1]["children"].pop(0)
        s["nodes"][1]["children"] = [b1]

    d = check(BASE, edited(fn))
    assert "b1" in d["removed"]


def test_parent_child_swap():
    def fn(s):
        b = s["nodes"][0]["children"][1]
        b1 = b["children"].pop(0)
        b1["children"] = [b]
        s["nodes"][0]["children"][1] = b1

    check(BASE, edited(fn))


def test_node_with_own_parent_id_or_index_keys():
    # nested: the parent is sent whole
    new = edited(lambda s: s["nodes"][0]["children"].append(node("x", index=3, parentId="q")))
    d = check(BASE, new)
    assert [m["id"] for m in d["modified"]] == ["root"]
    # top level: not expressible as a delta
    new = edited(lambda s: s["nodes"].append(node("x", index=3)))
    with pytest.raises(S.DeltaNotRepresentable):
        S.compute_delta(BASE, new)
    assert S.choose_update(BASE, new).update_type == "full"


def test_choose_update():
    assert S.choose_update(None, BASE) == S.Choice("full", None, True)
    new = edited(lambda s: s["nodes"][0]["children"][0]["props"].update(t=2))
    c = S.choose_update(BASE, new)
    assert c.update_type == "incremental" and c.legacy_ok and S.delta_size(c.delta) == 1
    assert S.choose_update(BASE, new, threshold=1).update_type == "full"

    many = schema([leaf(f"l{i}", v=i) for i in range(30)])
    changed = copy.deepcopy(many)
    for i in range(10):
        changed["nodes"][i]["props"]["v"] = -1
    assert S.choose_update(many, changed, threshold=10).update_type == "full"
    assert S.choose_update(many, changed, threshold=11).update_type == "incremental"
    # a delta bigger on the wire than the schema goes full
    small = schema([leaf(f"l{i}") for i in range(5)])
    assert S.choose_update(small, schema([]), threshold=100).update_type in ("incremental", "full")
    big_old = schema([leaf("a" * 500)])
    assert S.choose_update(big_old, schema([leaf("b")]), threshold=100).update_type == "full"


def test_the_node_count_settles_the_size_check_only_when_it_can():
    # nine nodes of the least JSON a node can take: added into an empty
    # tree, the delta (each with parentId and index) is longer than the schema
    least = schema([{"id": str(i), "type": "T"} for i in range(9)])
    assert len(json.dumps(least["nodes"][0], separators=(",", ":"))) == S.MIN_NODE_JSON
    assert S.choose_update(schema([]), least).update_type == "full"
    assert S.choose_update(schema([]), least, nodes=9).update_type == "full"
    # a delta much shorter than that least JSON is settled by the count alone
    new = edited(lambda s: s["nodes"][0]["children"][0]["props"].update(t=2))
    counted = S.choose_update(BASE, new, nodes=S.validate(new))
    assert counted.update_type == "incremental" and counted.new_json is None


@pytest.mark.parametrize("before, after, kind", [
    (True, 1, "full"), (1, True, "full"), (False, 0, "full"), (True, 1.0, "full"),
    (1, 1.0, "none"), (0, -0.0, "none"),  # the same JSON number to a device
])
def test_a_value_python_finds_equal_but_json_does_not_is_sent(before, after, kind):
    """Python finds True == 1, so the delta of true -> 1 is empty; the push
    is still sent (whole). 1 and 1.0 are the same number to a device."""
    old = schema([leaf("a", w=before)])
    new = copy.deepcopy(old)
    new["nodes"][0]["props"]["w"] = after
    assert S.is_empty_delta(S.compute_delta(old, new))
    assert S.choose_update(old, new).update_type == kind
    assert S.choose_update(old, new, old_checksum=S.checksum(old)).update_type == kind


def test_legacy_compatible_rules():
    assert S.legacy_compatible(BASE, {"added": [], "modified": [], "removed": ["a"]})
    assert not S.legacy_compatible(
        BASE, {"added": [], "modified": [], "removed": [], "removedFields": ["x"]}
    )
    # after removing top2 the next top-level position is 1
    d = {"added": [{**leaf("n"), "parentId": None, "index": 1}], "modified": [], "removed": ["top2"]}
    assert S.legacy_compatible(BASE, d)
    d["added"][0]["index"] = 2
    assert not S.legacy_compatible(BASE, d)


def test_apply_delta_rejects_deltas_that_do_not_fit():
    for bad in (
        {"added": [], "modified": [], "removed": ["nope"]},
        {"added": [], "modified": [leaf("nope")], "removed": []},
        {"added": [{**leaf("n"), "parentId": "nope", "index": 0}], "modified": [], "removed": []},
        {"added": [{**leaf("n"), "parentId": None, "index": 9}], "modified": [], "removed": []},
    ):
        with pytest.raises(ValueError):
            S.apply_delta(BASE, bad)


def test_delta_size_and_is_empty():
    assert S.is_empty_delta({"added": [], "modified": [], "removed": []})
    assert not S.is_empty_delta({"added": [], "modified": [], "removed": [], "metadataChanges": {"v": 1}})
    assert not S.is_empty_delta({"added": [], "modified": [], "removed": [], "removedFields": ["x"]})
    assert S.delta_size({"added": [1, 2], "modified": [3], "removed": ["a", "b", "c"]}) == 6


def test_a_subtree_carried_whole_counts_as_one_node_against_the_threshold():
    """An added node with fifteen children is one entry of the delta: under the default threshold of 10."""
    big = [leaf(f"pad{i}", text="x" * 40) for i in range(40)]
    old = schema([node("root", children=big)])
    new = copy.deepcopy(old)
    new["nodes"][0]["children"].append(node("panel", children=[leaf(f"p{i}", v=i) for i in range(15)]))
    c = S.choose_update(old, new)
    assert c.update_type == "incremental" and S.delta_size(c.delta) == 1 and len(c.delta["added"]) == 1


# -- an independent, strict applier for the property tests ----------------------


def all_ids(nodes):
    out, stack = [], list(nodes)
    while stack:
        n = stack.pop()
        out.append(n["id"])
        stack.extend(n.get("children") or ())
    return out


def locate(nodes, nid):
    """Every (list, index) holding a node with this id."""
    hits, stack = [], [nodes]
    while stack:
        lst = stack.pop()
        for i, n in enumerate(lst):
            if n["id"] == nid:
                hits.append((lst, i))
            if n.get("children"):
                stack.append(n["children"])
    return hits


def assert_unique(nodes, step):
    ids = all_ids(nodes)
    assert len(ids) == len(set(ids)), f"duplicate ids after {step}"


def strict_apply(old, delta):
    """Apply as a naive device would (find by id each time) while checking
    that every step finds exactly one node and never duplicates an id."""
    doc = copy.deepcopy(old)
    nodes = doc["nodes"]
    carried = []
    for m in delta["modified"]:
        carried.append(all_ids([m]))
    for a in delta["added"]:
        carried.append(all_ids([a]))
    roots = [m["id"] for m in delta["modified"]] + [a["id"] for a in delta["added"]]
    for i, r in enumerate(roots):
        for j, ids in enumerate(carried):
            if i != j:
                assert r not in ids, f"{r} is listed and also inside another carried subtree"
    for rid in delta["removed"]:
        hits = locate(nodes, rid)
        assert len(hits) == 1, f"removed id {rid} found {len(hits)} times"
        lst, i = hits[0]
        del lst[i]
    for m in delta["modified"]:
        hits = locate(nodes, m["id"])
        assert len(hits) == 1, f"modified id {m['id']} found {len(hits)} times"
        lst, i = hits[0]
        lst[i] = copy.deepcopy(m)
        assert_unique(nodes, f"modified {m['id']}")
    for a in sorted(delta["added"], key=lambda a: a["index"]):
        clean = {k: copy.deepcopy(v) for k, v in a.items() if k not in ("parentId", "index")}
        if a["parentId"] is None:
            target = nodes
        else:
            hits = locate(nodes, a["parentId"])
            assert len(hits) == 1
            lst, i = hits[0]
            target = lst[i].setdefault("children", [])
        assert 0 <= a["index"] <= len(target)
        target.insert(a["index"], clean)
        assert_unique(nodes, f"added {a['id']}")
    for k, v in delta.get("metadataChanges", {}).items():
        doc[k] = copy.deepcopy(v)
    for k in delta.get("removedFields", ()):
        del doc[k]
    return doc


def strip_generated(doc):
    doc = dict(doc)
    if isinstance(doc.get("metadata"), dict):
        doc["metadata"] = {k: v for k, v in doc["metadata"].items() if k != "generatedAt"}
    return doc


# -- strategies -------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["a", "b", "x", "é", "😀", "10"]), inner, max_size=3),
    max_leaves=6,
)
PROPS = st.dictionaries(
    st.sampled_from(["text", "color", "padding", "style", "items", "onPress", "ünï", "0"]),
    VALUES,
    max_size=3,
)
TYPES = st.sampled_from(["View", "Text", "Button", "Image", "List"])
OPTIONAL = ("state", "events", "lifecycle", "animations")
ID_PREFIXES = ["n", "é", "😀", "0", "node-"]


class Ids:
    def __init__(self, prefix):
        self.prefix = prefix
        self.n = 0

    def __call__(self):
        self.n += 1
        return f"{self.prefix}{self.n}"


def draw_node(draw, ids, budget):
    """A node with a random subtree of at most budget[0] more nodes."""
    n = {"id": ids(), "type": draw(TYPES)}
    if draw(st.integers(0, 9)):
        n["props"] = draw(PROPS)
    if draw(st.booleans()):
        n["metadata"] = {"lineNumber": draw(st.integers(1, 500))}
    for key in OPTIONAL:
        if not draw(st.integers(0, 6)):
            n[key] = draw(VALUES)
    kids = []
    if budget[0] > 0:
        for _ in range(draw(st.integers(0, min(4, budget[0])))):
            if budget[0] <= 0:
                break
            budget[0] -= 1
            kids.append(draw_node(draw, ids, budget))
    if kids or draw(st.booleans()):
        n["children"] = kids
    return n


@st.composite
def trees(draw, max_nodes=24):
    ids = Ids(draw(st.sampled_from(ID_PREFIXES)))
    budget = [draw(st.integers(0, max_nodes))]
    top = []
    for _ in range(draw(st.integers(0, 4))):
        top.append(draw_node(draw, ids, budget))
    doc = {
        "version": draw(st.sampled_from(["1.0", "1.1"])),
        "metadata": {
            "sourceFramework": draw(st.sampled_from(["react", "flutter"])),
            "sourceFile": "App.tsx",
            "generatedAt": draw(st.integers(0, 2**41)),
        },
        "nodes": top,
    }
    for key in ("navigationSchema", "theme"):
        if draw(st.booleans()):
            doc[key] = draw(VALUES)
    doc["_ids"] = ids  # removed by edits(); lets edits mint fresh ids
    return doc


def containers(doc):
    """(owner node or None, children list) for every list a node can live in."""
    out = [(None, doc["nodes"])]
    for n in walk(doc["nodes"]):
        if "children" in n:
            out.append((n, n["children"]))
    return out


def walk(nodes):
    stack = list(nodes)
    while stack:
        n = stack.pop()
        yield n
        stack.extend(n.get("children") or ())


def subtree_ids(n):
    return set(all_ids([n]))


def detach(doc, target):
    for _, lst in containers(doc):
        for i, n in enumerate(lst):
            if n is target:
                del lst[i]
                return
    raise AssertionError("not found")


EDITS = [
    "prop", "prop", "type", "field", "add", "remove", "move", "reorder", "rename",
    "readd", "wrap", "unwrap", "top", "meta", "generatedAt",
]


@st.composite
def edits(draw, base=trees()):
    old = draw(base)
    ids = old.pop("_ids")
    new = copy.deepcopy(old)
    script = draw(st.lists(st.sampled_from(EDITS), min_size=1, max_size=4))
    for kind in script:
        nodes = list(walk(new["nodes"]))
        pick = (lambda: nodes[draw(st.integers(0, len(nodes) - 1))]) if nodes else None
        if kind == "prop" and nodes:
            n = pick()
            n.setdefault("props", {})[draw(st.sampled_from(["text", "color", "new"]))] = draw(VALUES)
        elif kind == "type" and nodes:
            pick()["type"] = draw(TYPES)
        elif kind == "field" and nodes:
            n = pick()
            key = draw(st.sampled_from(OPTIONAL + ("props", "metadata", "children")))
            if key in n and (key != "children" or not n[key]):
                del n[key]
            elif key == "children":
                n.setdefault("children", [])
            elif key in ("props", "metadata"):
                n[key] = {"k": draw(VALUES)}
            else:
                n[key] = draw(VALUES)
        elif kind == "add":
            owner_list = containers(new)
            _, lst = owner_list[draw(st.integers(0, len(owner_list) - 1))]
            lst.insert(draw(st.integers(0, len(lst))), draw_node(draw, ids, [draw(st.integers(0, 3))]))
        elif kind == "remove" and nodes:
            detach(new, pick())
        elif kind == "move" and nodes:
            n = pick()
            inside = subtree_ids(n)
            targets = [(o, l) for o, l in containers(new) if o is None or o["id"] not in inside]
            detach(new, n)
            _, lst = targets[draw(st.integers(0, len(targets) - 1))]
            lst.insert(draw(st.integers(0, len(lst))), n)
        elif kind == "reorder":
            cands = [l for _, l in containers(new) if len(l) >= 2]
            if cands:
                lst = cands[draw(st.integers(0, len(cands) - 1))]
                lst[:] = draw(st.permutations(lst))
        elif kind == "rename" and nodes:
            pick()["id"] = ids()
        elif kind == "readd" and nodes:
            # a node disappears and a different node with its id shows up elsewhere
            n = pick()
            detach(new, n)
            fresh = draw_node(draw, ids, [draw(st.integers(0, 2))])
            fresh["id"] = n["id"]
            owner_list = containers(new)
            _, lst = owner_list[draw(st.integers(0, len(owner_list) - 1))]
            lst.insert(draw(st.integers(0, len(lst))), fresh)
        elif kind == "wrap" and nodes:
            n = pick()
            for _, lst in containers(new):
                for i, x in enumerate(lst):
                    if x is n:
                        lst[i] = {"id": ids(), "type": "View", "props": {}, "children": [n]}
                        break
                else:
                    continue
                break
        elif kind == "unwrap" and nodes:
            n = pick()
            for _, lst in containers(new):
                for i, x in enumerate(lst):
                    if x is n:
                        lst[i : i + 1] = n.get("children") or []
                        break
                else:
                    continue
                break
        elif kind == "top":
            key = draw(st.sampled_from(["navigationSchema", "theme", "version", "extra"]))
            if key in new and key != "version" and draw(st.booleans()):
                del new[key]
            else:
                new[key] = draw(VALUES) if key != "version" else draw(st.sampled_from(["1.0", "2.0"]))
        elif kind == "meta":
            new["metadata"]["sourceFile"] = draw(st.sampled_from(["App.tsx", "Other.tsx"]))
        elif kind == "generatedAt":
            new["metadata"]["generatedAt"] += 1
    S.validate(old)
    S.validate(new)
    return old, new


# -- properties -------------------------------------------------------------------


@SETTINGS
@given(edits())
def test_apply_delta_yields_new(pair):
    old, new = pair
    snapshot = copy.deepcopy(old)
    delta = S.compute_delta(old, new)
    result = S.apply_delta(old, delta)
    assert old == snapshot
    assert strip_generated(result) == strip_generated(new)
    if old["metadata"].get("generatedAt") == new["metadata"].get("generatedAt") or (
        "metadata" in delta.get("metadataChanges", {})
    ):
        assert result == new
    assert strict_apply(old, delta) == result
    assert S.apply_delta(old, json.loads(json.dumps(delta))) == result
    if S.legacy_compatible(old, delta):
        assert strip_generated(S.apply_delta(old, delta, legacy=True)) == strip_generated(new)
    assert S.is_empty_delta(delta) == (strip_generated(old) == strip_generated(new))
    # never more than sending every node of the new tree as one entry each
    assert len(delta["modified"]) + len(delta["added"]) <= max(1, len(all_ids(new["nodes"])))


@SETTINGS
@given(edits())
def test_choose_update_is_consistent(pair):
    old, new = pair
    choice = S.choose_update(old, new, threshold=5)
    # the node count settles the size check without serializing `new`,
    # never differently
    counted = S.choose_update(old, new, threshold=5, nodes=S.validate(new))
    assert counted[:3] == choice[:3]
    delta = S.compute_delta(old, new)
    if S.is_empty_delta(delta):
        # none, unless a value turned between a boolean and a number (== in Python)
        kind = "none" if S.checksum(old) == S.checksum(new) else "full"
        assert choice == S.Choice(kind, None, True)
    elif choice.update_type == "incremental":
        assert S.delta_size(choice.delta) < 5
        assert strip_generated(S.apply_delta(old, choice.delta)) == strip_generated(new)
        assert choice.legacy_ok == S.legacy_compatible(old, choice.delta)
    else:
        assert choice.update_type == "full" and choice.delta is None


@SETTINGS
@given(trees())
def test_a_tree_serializes_to_at_least_the_least_json_of_its_nodes(doc):
    doc.pop("_ids")
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert len(text) >= S.validate(doc) * S.MIN_NODE_JSON


@SETTINGS
@given(trees(), st.data())
def test_unchanged_tree_gives_empty_delta(doc, data):
    doc.pop("_ids")
    same = copy.deepcopy(doc)
    assert S.compute_delta(doc, same) == {"added": [], "modified": [], "removed": []}
    same["metadata"]["generatedAt"] = data.draw(st.integers(0, 2**41) | st.text(max_size=3))
    assert S.is_empty_delta(S.compute_delta(doc, same))
    assert S.choose_update(doc, same).update_type == "none"


@SETTINGS
@given(trees(max_nodes=30), st.data())
def test_single_leaf_prop_change_is_one_modified_leaf(doc, data):
    doc.pop("_ids")
    leaves = [n for n in walk(doc["nodes"]) if not n.get("children")]
    if not leaves:
        return
    new = copy.deepcopy(doc)
    target = [n for n in walk(new["nodes"]) if not n.get("children")][
        data.draw(st.integers(0, len(leaves) - 1))
    ]
    props = target.setdefault("props", {})
    props["text"] = [props.get("text"), "changed"]
    delta = S.compute_delta(doc, new)
    assert delta == {"added": [], "modified": [target], "removed": []}
    assert S.apply_delta(doc, delta) == new


# -- vouching for a schema from the delta's walk --------------------------------------


def dict_nodes(doc):
    """Every node of `doc` that is an object, in lists that are arrays (a
    broken tree included)."""
    out, stack = [], [doc["nodes"]] if isinstance(doc.get("nodes"), list) else []
    while stack:
        for n in stack.pop():
            if isinstance(n, dict):
                out.append(n)
                if isinstance(n.get("children"), list):
                    stack.append(n["children"])
    return out


BREAKS = ["copy", "same id", "id", "type", "props", "metadata", "children", "not a node", "root"]


@st.composite
def broken_edits(draw):
    """An edit (as `edits`) and then up to two changes that may make the
    new schema invalid: a pasted copy of a subtree, an id reused anywhere,
    fields of the wrong type or missing, a node that is not an object, a
    bad root."""
    old, new = draw(edits())
    for kind in draw(st.lists(st.sampled_from(BREAKS), max_size=2)):
        nodes = dict_nodes(new)
        lists = [new["nodes"]] if isinstance(new.get("nodes"), list) else []
        lists += [n["children"] for n in nodes if isinstance(n.get("children"), list)]
        pick = (lambda: nodes[draw(st.integers(0, len(nodes) - 1))]) if nodes else None
        if kind == "copy" and nodes and lists:
            lst = lists[draw(st.integers(0, len(lists) - 1))]
            lst.insert(draw(st.integers(0, len(lst))), copy.deepcopy(pick()))
        elif kind == "same id" and nodes:
            pick()["id"] = pick()["id"]
        elif kind in ("id", "type") and nodes:
            n = pick()
            value = draw(st.sampled_from([None, "", 5, ["x"], {"a": 1}, "missing"]))
            if value == "missing":
                n.pop(kind, None)
            else:
                n[kind] = value
        elif kind in ("props", "metadata") and nodes:
            pick()[kind] = draw(st.sampled_from([[], "x", 3, None]))
        elif kind == "children" and nodes:
            pick()["children"] = draw(st.sampled_from([{}, "abc", [3], ["x"], [[]], [None], [{}]]))
        elif kind == "not a node" and lists:
            lst = lists[draw(st.integers(0, len(lists) - 1))]
            lst.insert(draw(st.integers(0, len(lst))), draw(st.sampled_from([7, "x", None, []])))
        elif kind == "root":
            where, value = draw(st.sampled_from([
                ("version", 1), ("nodes", {}), ("metadata", []), ("generatedAt", []), ("sourceFile", 3),
            ]))
            if where in ("generatedAt", "sourceFile"):
                if isinstance(new.get("metadata"), dict):
                    new["metadata"][where] = value
            else:
                new[where] = value
    return old, new


@SETTINGS
@given(broken_edits())
def test_the_delta_vouches_for_a_schema_only_when_it_is_valid(pair):
    old, new = pair
    try:
        count = S.validate(new)
    except S.SchemaError:
        count = None
    snapshot = copy.deepcopy(new)
    try:
        choice = S.choose_update(old, new, threshold=5, old_index=S.node_index(old))
    except Exception:
        assert count is None  # only a tree validation refuses makes the walk fail
        return
    assert new == snapshot
    if choice.new_index is not None:
        # never for an invalid schema; and then exactly the new tree's ids and size
        assert count is not None
        assert choice.new_index == S.NodeIndex(set(all_ids(new["nodes"])), count)
    elif count is not None:
        # a valid schema goes without only when no delta can carry the change
        with pytest.raises(S.DeltaNotRepresentable):
            S.compute_delta(old, new)
    if count is not None:
        assert choice[:3] == S.choose_update(old, new, threshold=5)[:3]


def test_vouching_follows_a_run_of_pushes_that_never_validates_whole():
    doc = schema([node("a", [node("b"), node("c", [node("d")])]), node("e")])
    index = S.node_index(doc)
    steps = [
        lambda s: s["nodes"][0]["children"][1]["children"].append(node("f")),  # add
        lambda s: s["nodes"][0]["children"].pop(0),  # remove b
        lambda s: s["nodes"][1].setdefault("children", []).append(s["nodes"][0]["children"].pop()),  # move c
        lambda s: s["nodes"].append(node("b")),  # b comes back elsewhere
        lambda s: s["nodes"][0].update(id="a2"),  # rename
    ]
    for step in steps:
        new = copy.deepcopy(doc)
        step(new)
        index = S.choose_update(doc, new, old_index=index).new_index
        assert index == S.NodeIndex(set(all_ids(new["nodes"])), S.validate(new))
        doc = new
    pasted = copy.deepcopy(doc)
    pasted["nodes"].append(copy.deepcopy(pasted["nodes"][1]))  # every id of e's subtree twice
    assert S.choose_update(doc, pasted, old_index=index).new_index is None
    with pytest.raises(S.SchemaError, match="duplicate node id"):
        S.validate(pasted)
