"""Checksums byte-identical to the TypeScript calculateChecksum
(docs/protocol.md, section 4; the vectors in tests/data/checksum-vectors.json),
and the fast path agreeing with the reference serializer."""

import contextlib
import copy
import hashlib
import json
import math
import os
import pathlib
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lumora_reload import schema as S
from lumora_reload.schema import canonical
from tests import test_schema as schema_tests

VECTORS = json.loads(
    (pathlib.Path(__file__).parent / "data" / "checksum-vectors.json").read_text("utf-8")
)
EXAMPLES = 3000 if os.environ.get("HYPOTHESIS_PROFILE") == "slow" else 200
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_vector_file_is_complete():
    assert len(VECTORS) == 59
    assert sum(1 for v in VECTORS if v["canonical"] is None) == 10
    assert len({v["name"] for v in VECTORS}) == 59


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS if v["canonical"] is not None], ids=lambda v: v["name"]
)
def test_vector(vector):
    schema = S.parse_json_strict(vector["input_json"])
    assert S.canonical_json(schema) == vector["canonical"]
    assert S.checksum(schema) == vector["sha256"]
    assert S._reference_canonical_json(schema) == vector["canonical"]
    # bytes input parses the same
    assert S.checksum(S.parse_json_strict(vector["input_json"].encode("utf-8"))) == vector["sha256"]


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS if v["canonical"] is None], ids=lambda v: v["name"]
)
def test_error_vector_refused(vector):
    with pytest.raises(ValueError):
        S.checksum(S.parse_json_strict(vector["input_json"]))
    with pytest.raises(ValueError):
        S.canonical_json(S.parse_json_strict(vector["input_json"]))


@pytest.mark.parametrize(
    "doc, path",
    [
        ([], ""),
        (None, ""),
        ("s", ""),
        (3.0, ""),
        ({"version": "1"}, "metadata"),
        ({"metadata": None}, "metadata"),
        ({"metadata": "x"}, "metadata"),
        ({"metadata": 0}, "metadata"),
        ({"metadata": False}, "metadata"),
    ],
)
def test_refusals_are_schema_errors(doc, path):
    with pytest.raises(S.SchemaError) as info:
        S.checksum(doc)
    assert info.value.path == path


def test_parse_json_strict():
    assert S.parse_json_strict('{"a":1,"a":2}') == {"a": 2.0}
    assert type(S.parse_json_strict("[1]")[0]) is float
    assert S.parse_json_strict("9007199254740993") == 9007199254740992.0
    assert S.parse_json_strict("1" + "0" * 400) == math.inf
    assert S.parse_json_strict('"\\ud83d\\ude00"') == "\U0001f600"
    assert S.parse_json_strict('"\\ud800"') == "\ud800"
    for bad in ("NaN", "[Infinity]", '{"x":-Infinity}', "{", "[1,]"):
        with pytest.raises(ValueError):
            S.parse_json_strict(bad)


def test_python_ints_are_doubles():
    # the daemon parses with plain json.loads: ints stay ints but must hash
    # like the doubles JavaScript sees
    base = {"metadata": {}, "n": [1, -5, 2**53, 2**53 + 1, 10**21, 10**400, -(10**400)]}
    as_floats = {"metadata": {}, "n": [1.0, -5.0, 2.0**53, 2.0**53, 1e21, math.inf, -math.inf]}
    assert S.canonical_json(base) == S.canonical_json(as_floats)
    assert S.canonical_json(base) == (
        '{"metadata":{"generatedAt":0},"n":[1,-5,9007199254740992,9007199254740992,1e+21,null,null]}'
    )
    assert S.checksum({"metadata": {}, "b": True}) != S.checksum({"metadata": {}, "b": 1})


def test_generated_at_ignored_and_input_not_mutated():
    a = {"version": "1.0", "metadata": {"generatedAt": 1, "sourceFile": "A"}, "nodes": []}
    b = {"version": "1.0", "metadata": {"generatedAt": "x", "sourceFile": "A"}, "nodes": []}
    assert S.checksum(a) == S.checksum(b)
    assert a["metadata"]["generatedAt"] == 1
    assert S.checksum(a) == hashlib.sha256(S.canonical_json(a).encode()).hexdigest()


def _realistic(n):
    nodes = []
    for i in range(n):
        nodes.append(
            {
                "id": f"node-{i}",
                "type": "Text",
                "props": {"text": f"héllo {i} — “quoted” \"x\"", "style": {"padding": i, "opacity": 0.5}},
                "children": [],
                "metadata": {"lineNumber": i + 1},
            }
        )
    return {
        "version": "1.0",
        "metadata": {"sourceFramework": "react", "sourceFile": "App.tsx", "generatedAt": 1732550000000},
        "nodes": nodes,
    }


def test_realistic_schema_takes_fast_path():
    doc = _realistic(50)
    assert S._fast_canonical_bytes(S._normalized(doc)) is not None
    assert S.canonical_json(doc) == S._reference_canonical_json(doc)


@pytest.mark.parametrize(
    "value",
    [1.0, -0.0, 1e16, 1e-7, 1e21, 2**53 + 1, 10**30, "\ud800", {"10": 1}, {"__proto__": 1},
     {"\U0001f600": 1, "\ue000": 2}, 123456789012345678],
)
def test_fast_path_declines_what_js_formats_differently(value):
    doc = {"metadata": {}, "v": value}
    assert S._fast_canonical_bytes(S._normalized(doc)) is None
    assert S.canonical_json(doc) == S._reference_canonical_json(doc)


def test_deep_tree_checksum():
    root = node = {"id": "n0", "type": "View", "children": []}
    for i in range(1, 5000):
        child = {"id": f"n{i}", "type": "View", "children": []}
        node["children"].append(child)
        node = child
    doc = {"version": "1", "metadata": {}, "nodes": [root]}
    text = S.canonical_json(doc)
    assert text.count('"children":[') == 5000
    assert S.checksum(doc) == hashlib.sha256(text.encode()).hexdigest()


def test_nan_and_infinity_are_null():
    doc = {"metadata": {}, "v": [float("nan"), float("inf"), -float("inf")]}
    assert S.canonical_json(doc) == '{"metadata":{"generatedAt":0},"v":[null,null,null]}'


# -- fast path == reference on random JSON ----------------------------------

KEYS = st.one_of(
    st.text(max_size=5),
    st.sampled_from(
        ["0", "1", "2", "10", "01", "-1", "1.0", "4294967294", "4294967295", "__proto__",
         "a", "B", "", "😀", "\ue000", "\uffff", "é", "\ud800", "a\udc00", "k", "ab"]
    ),
    st.from_regex(r"[0-9]{1,3}", fullmatch=True),
)
FLOATS = st.one_of(
    st.floats(),
    st.sampled_from([0.0, -0.0, 1.0, 0.5, 1e21, 1e-7, 1e-6, 123.0, 1e16, 5e-324, 0.1, 100.5]),
)
STRINGS = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["\ud800", "x\udfffy", "\ud83d\ude00", "\x00\x1f\x7f", '"\\/', "\u2028", ":1.0,", ',"1":']),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**63), 2**63), FLOATS, STRINGS
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=25,
)
DOCS = st.builds(
    lambda meta, extra: {**extra, "metadata": meta},
    st.one_of(st.dictionaries(KEYS, JSON, max_size=3), st.lists(JSON, max_size=2)),
    st.dictionaries(KEYS, JSON, max_size=4),
)


@SETTINGS
@given(DOCS)
def test_fast_path_matches_reference(doc):
    expected = S._reference_canonical_json(doc)
    assert S.canonical_json(doc) == expected
    assert S.checksum(doc) == hashlib.sha256(expected.encode("utf-8")).hexdigest()


@settings(SETTINGS, max_examples=max(50, EXAMPLES // 4))
@given(DOCS)
def test_json_dumps_fallback_matches_reference(doc):
    expected = S._reference_canonical_json(doc)
    with mock.patch.object(S, "_orjson", None):
        assert S.canonical_json(doc) == expected


@SETTINGS
@given(st.lists(FLOATS | st.integers(), max_size=20))
def test_numbers_fast_path_matches_reference(numbers):
    doc = {"metadata": {}, "n": numbers}
    assert S.canonical_json(doc) == S._reference_canonical_json(doc)


# -- the checksum of a push: after a plain state only the delta is scanned --------

# (key, value) pairs that JavaScript formats differently from orjson, or that
# only look like such a construct (inside a string)
UNLIKE_JS = [
    ("w", 1.0), ("w", -0.0), ("w", 1e16), ("w", 1e-7), ("w", 2**60), ("w", 12345678901234567),
    ("10", "x"), ("0", 1), ("__proto__", 1), ("\U0001f600", 1), ("a\U0001f600", {"b": 1}),
    ("w", "1e+16"), ("w", "x.0,"), ("w", '"7":'), ("w", [1.5, 2.0]),
]


def _reference_hex(doc):
    return hashlib.sha256(S._reference_canonical_json(doc).encode("utf-8")).hexdigest()


def _plainly(value):
    """`value` without floats or digit-only / astral / __proto__ keys."""
    if isinstance(value, float):
        return int(value) % 1000 if math.isfinite(value) else 0
    if isinstance(value, list):
        return [_plainly(v) for v in value]
    if isinstance(value, dict):
        return {
            ("k" + k if k.isdigit() or k == "__proto__" or any(ord(c) > 0xFFFF for c in k) else k): _plainly(v)
            for k, v in value.items()
        }
    return value


def _retyped(value, mode):
    """`value` with its numbers and booleans turned into values Python
    finds equal: ints into floats (1 -> 1.0), booleans into ints, or ints
    0 and 1 into booleans."""
    if isinstance(value, list):
        return [_retyped(v, mode) for v in value]
    if isinstance(value, dict):
        return {k: _retyped(v, mode) for k, v in value.items()}
    if mode == "int to float" and type(value) is int and abs(value) < 2**53:
        return float(value)
    if mode == "bool to int" and type(value) is bool:
        return int(value)
    if mode == "int to bool" and type(value) is int and value in (0, 1):
        return bool(value)
    return value


def _put(doc, where, key, value):
    nodes = list(schema_tests.walk(doc["nodes"]))
    if nodes and where < len(nodes):
        nodes[where].setdefault("props", {})[key] = value
    else:
        doc["metadata"][key] = value


@SETTINGS
@given(schema_tests.edits(), st.data())
def test_checksum_update_after_a_delta_matches_reference(pair, data):
    """Whatever the base and the edit, the delta-scanned checksum is the
    reference one, and it is called plain only when the whole text is."""
    old, new = pair
    if data.draw(st.booleans(), "plain values"):
        old, new = _plainly(old), _plainly(new)
    for doc, label in ((old, "in the base"), (new, "in the new schema")):
        if data.draw(st.booleans(), f"unlike JS {label}"):
            key, value = data.draw(st.sampled_from(UNLIKE_JS))
            _put(doc, data.draw(st.integers(0, 30)), key, value)
    mode = data.draw(st.sampled_from([None, "int to float", "bool to int", "int to bool"]), "retyped")
    if mode is not None:  # changes the delta cannot see: Python finds 1 == 1.0 == True
        new = _retyped(new, mode)
    base = S.checksum_update(old)
    assert base == (_reference_hex(old), S._fast_canonical_bytes(S._normalized(old)) is not None)
    delta = S.compute_delta(old, new)
    summed = S.checksum_update(new, delta, base.plain)
    assert summed.hex == _reference_hex(new)
    if summed.plain:
        assert S._fast_canonical_bytes(S._normalized(new)) is not None


@SETTINGS
@given(schema_tests.edits(), st.sampled_from(["int to float", "bool to int", "int to bool"]))
def test_checksum_update_after_unseen_number_changes_matches_reference(pair, mode):
    """From a plain base, numbers that change type where the delta cannot
    see it (1 -> 1.0, True -> 1) still get the reference checksum."""
    old, new = _plainly(pair[0]), _retyped(_plainly(pair[1]), mode)
    base = S.checksum_update(old)
    summed = S.checksum_update(new, S.compute_delta(old, new), base.plain)
    assert summed.hex == _reference_hex(new)
    if summed.plain:
        assert S._fast_canonical_bytes(S._normalized(new)) is not None


def _bring_in(doc, where, key, value):
    """Put `key: value` where a delta carries it: in a modified node, in an
    added node, in a new top-level field or in a changed ``metadata``."""
    if where == "modified":
        doc["nodes"][1]["props"][key] = value
    elif where == "added":
        doc["nodes"].append(schema_tests.leaf("new", **{key: value}))
    elif where == "top-level":
        doc[key] = value
    else:
        doc["metadata"][key] = value


@pytest.mark.parametrize("where", ["modified", "added", "top-level", "metadata"])
@pytest.mark.parametrize("key, value", UNLIKE_JS)
def test_what_a_delta_brings_in_is_scanned(key, value, where):
    """A construct JavaScript formats differently, arriving in a delta
    after a plain state, is found: the checksum is still the reference one."""
    old = schema_tests.schema([schema_tests.leaf("a", text="x"), schema_tests.leaf("b", text="y")])
    new = copy.deepcopy(old)
    _bring_in(new, where, key, value)
    base = S.checksum_update(old)
    assert base.plain
    delta = S.compute_delta(old, new)
    assert not S.is_empty_delta(delta)
    summed = S.checksum_update(new, delta, base.plain)
    assert summed.hex == _reference_hex(new)
    assert summed.plain == (S._fast_canonical_bytes(S._normalized(new)) is not None)


@pytest.mark.parametrize("where", ["props", "top-level", "metadata"])
@pytest.mark.parametrize("before, after", [(1, 1.0), (0, -0.0), (True, 1.0), (123456789012345, 123456789012345.0)])
def test_a_number_that_changes_type_unseen_by_the_delta_is_found(before, after, where):
    """Python finds 1 == 1.0, so the delta of a push that turns 1 into 1.0
    does not carry it; the checksum still formats it as JavaScript does."""
    old = schema_tests.schema([schema_tests.leaf("a", w=before), schema_tests.leaf("b", text="x")])
    old["w"] = before
    old["metadata"]["w"] = before
    new = copy.deepcopy(old)
    if where == "props":
        new["nodes"][0]["props"]["w"] = after
    elif where == "top-level":
        new["w"] = after
    else:
        new["metadata"]["w"] = after
    new["nodes"][1]["props"]["text"] = "y"
    base = S.checksum_update(old)
    assert base.plain
    delta = S.compute_delta(old, new)
    assert [n["id"] for n in delta["modified"]] == ["b"]  # the delta does not see the 1.0
    assert S.checksum_update(new, delta, base.plain) == (_reference_hex(new), False)


@contextlib.contextmanager
def scanned_lengths():
    """The lengths of the texts searched for constructs JavaScript formats
    differently, while the block runs."""
    scanned = []
    real = canonical._unlike_js

    def recording(out):
        scanned.append(len(out))
        return real(out)

    with mock.patch.object(canonical, "_unlike_js", recording):
        yield scanned


def test_after_a_plain_state_only_the_delta_is_scanned():
    """A one-leaf edit of a large schema scans the delta, not the whole
    canonical text; without a plain base the whole text is scanned."""
    old = _realistic(400)
    new = copy.deepcopy(old)
    new["nodes"][7]["props"]["text"] = "edited"
    delta = S.compute_delta(old, new)
    whole = len(S.canonical_json(new).encode("utf-8"))
    expected = S.checksum(new)
    with scanned_lengths() as scanned:
        summed = S.checksum_update(new, delta, base_plain=True)
        assert summed == (expected, True)
        assert scanned and max(scanned) < whole / 20
        scanned.clear()
        assert S.checksum_update(new, delta, base_plain=False) == (expected, True)
        assert scanned == [whole]
