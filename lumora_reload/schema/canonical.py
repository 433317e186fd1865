"""The schema checksum, byte-identical to the TypeScript ``calculateChecksum``.

`canonical_json` / `checksum` reproduce ``calculateChecksum`` byte for byte
(``metadata.generatedAt`` set to 0, JS key order, JS number and string
formatting). A fast path serializes with orjson (or ``json.dumps``) and
scans the output for the few constructs whose formatting differs from
JavaScript's (array-index keys, ``__proto__`` keys, keys with non-BMP
characters, exponent or integral float notation, integers of 16+ digits,
lone surrogates, nesting deeper than the C serializers allow); when any is
present (or merely looks present, e.g. inside a string) the exact reference
serializer, `_reference_serialize`, is used instead.

tests/data/checksum-vectors.json holds the cases both serializers are
checked against: for each input JSON, the canonical string and SHA-256
that the TypeScript implementation produces, or ``null`` where it throws
(a root that is not an object; ``metadata`` missing, null or a scalar;
NaN or Infinity literals, which ``JSON.parse`` refuses): a ValueError here.

`checksum_update` is the checksum the daemon computes on a push: it also
says whether the fast path's output was taken as is ("plain"), and after a
plain state it scans only what the delta brings in (a one-leaf edit to a
500 KB schema then skips about 1.5 ms of scanning).

`parse_json_strict` reads JSON as JavaScript's ``JSON.parse`` does (every
number a double), as a device reads the schema it checksums.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import NamedTuple

from lumora_reload.schema._common import _SURROGATE, SchemaError, _json_type, _orjson

__all__ = ["Checksum", "canonical_json", "checksum", "checksum_update", "parse_json_strict"]


# --------------------------------------------------------------------------
# checksum: reference serializer (exact JS semantics, iterative)

_INDEX_KEY = re.compile(r"0|[1-9][0-9]*")
_MAX_INDEX = 4294967294
_STR_ESCAPE = re.compile('["\\\\\x00-\x1f\ud800-\udfff]')
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
        # a subclass (an IntEnum) is its value, as the wire carries it: its
        # own str() may say something else
        elif isinstance(v, int):
            out.append(_js_int(v if type(v) is int else int.__index__(v)))
        elif isinstance(v, float):
            out.append(_js_float(v if type(v) is float else float(v)))
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
_KEY_ENDS_IN_DIGIT_B = b'0":'
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


def _unlike_js(out):
    """Whether orjson's sorted output `out` holds (or seems to hold) a
    construct that JavaScript formats differently."""
    if _PROTO_KEY_B in out or _INTEGRAL_FLOAT_B.search(out):
        return True
    digits = out.translate(_DIGITS_TO_0)
    if (
        _LONG_INT_B in digits
        or _EXPONENT_B.search(digits)
        # a key ending in a digit is rare: the plain search (several
        # times faster than the pattern) rules most schemas out
        or (_KEY_ENDS_IN_DIGIT_B in digits and _INDEX_KEY_B.search(digits))
    ):
        return True
    if not out.isascii() and any(b in out for b in _ASTRAL_LEADS):
        if _ASTRAL_KEY_B.search(out):
            return True
    return False


def _fast_canonical_bytes(normalized):
    """UTF-8 canonical bytes via a C serializer, or None when the output
    might differ from JavaScript's (then use the reference serializer)."""
    if _orjson is not None:
        try:
            out = _orjson.dumps(normalized, option=_ORJSON_OPTS)
        except (TypeError, ValueError, RecursionError):
            return None  # lone surrogates, >64-bit ints, depth > 255, odd types
        return None if _unlike_js(out) else out
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


class Checksum(NamedTuple):
    """`hex` is `checksum(schema)`. `plain` says that orjson's sorted output
    was the canonical text as it is: it holds none of the constructs that
    JavaScript formats differently (nor text that looks like one)."""

    hex: str
    plain: bool


def _delta_material(delta):
    """Everything a delta brings into a schema: added and modified nodes
    with their subtrees, and the new top-level values (``metadata`` as the
    checksum reads it, ``generatedAt`` 0)."""
    changes = delta.get("metadataChanges") or {}
    meta = changes.get("metadata")
    if isinstance(meta, dict):
        changes = dict(changes, metadata=dict(meta, generatedAt=0))
    return [delta.get("added") or [], delta.get("modified") or [], changes]


def checksum_update(schema, delta=None, base_plain=False):
    """`Checksum` of `schema`, the state a push leads to.

    Given the `delta` that turns a state whose checksum was plain into
    `schema`, only what the delta brings in is scanned for constructs
    JavaScript formats differently, not the whole canonical text: every
    such construct sits inside one key or value (plus the ``,`` ``]`` ``}``
    or ``:`` after it), and every key and value of `schema` is either in
    the base state or in the delta, or is a number the delta could not see
    change type (1 became 1.0: Python finds them equal), which one search
    of the whole text finds. The result is exactly `checksum`'s.
    """
    normalized = _normalized(schema)
    if base_plain and delta is not None and _orjson is not None:
        out = _plain_after_delta(normalized, delta)
    else:
        out = _fast_canonical_bytes(normalized)
    if out is not None:
        return Checksum(hashlib.sha256(out).hexdigest(), True)
    return Checksum(hashlib.sha256(_reference_serialize(normalized).encode("utf-8")).hexdigest(), False)


def _plain_after_delta(normalized, delta):
    """`_fast_canonical_bytes` after a plain base: the whole text is searched
    only when what `delta` brings in holds a suspect construct."""
    try:
        material = _orjson.dumps(_delta_material(delta), option=_ORJSON_OPTS)
        out = _orjson.dumps(normalized, option=_ORJSON_OPTS)
    except (TypeError, ValueError, RecursionError):
        return None  # what orjson refuses, the reference serializer handles
    # Python's == takes 1 for 1.0 (and True): a number can turn into an
    # integral float with no delta entry. From a plain base that is the only
    # construct that can (an int there has < 16 digits, so its float prints
    # as "123.0"), and this search finds it.
    if not _unlike_js(material) and not _INTEGRAL_FLOAT_B.search(out):
        return out
    return None if _unlike_js(out) else out


def _reject_constant(name):
    raise ValueError(f"invalid JSON: {name} is not a JSON value")


def parse_json_strict(text):
    """Parse JSON as JavaScript's ``JSON.parse`` does: every number becomes a
    double, NaN/Infinity literals are rejected (ValueError), the last of
    duplicate keys wins."""
    return json.loads(text, parse_int=float, parse_constant=_reject_constant)
