"""What a schema must be to travel as JSON, and its wire bytes.

`encode_schema` turns a schema into the compact JSON (bytes) that full
updates carry, and refuses with a `SchemaError` naming the path of the first
value a device could not receive: nesting deeper than `MAX_DEPTH`, a number
that is not finite or that no double can hold, a string or key with an
unpaired surrogate, or a value that is not JSON at all. `find_unencodable`
finds that value without raising, for callers that report it themselves.
"""

from __future__ import annotations

import json
import math

from lumora_reload.schema._common import _SURROGATE, SchemaError, _join, _orjson

__all__ = ["MAX_DEPTH", "check_json_values", "encode_schema", "find_unencodable", "orjson_encodes"]


# Nesting of JSON objects and arrays a schema may have, the schema object
# itself counting as one level (about 125 levels of nested nodes). Every
# step of a push handles this depth without recursion (validation, delta,
# apply, checksum) and the encoder serializes it natively.
MAX_DEPTH = 254
# from here on an integer rounds past the largest double, 2**1024 - 2**971
# (half way to the next power of two, 2**1024, rounds up): no double holds it
_MAX_DOUBLE_INT = (1 << 1024) - (1 << 970)


def encode_schema(schema, json_values=False):
    """The compact JSON of `schema` (bytes), as the wire carries it.

    Raises `SchemaError` with the path of the first value JSON cannot carry
    to a device: nesting deeper than `MAX_DEPTH`, a number that is not
    finite or that no double can hold, a string or key with an unpaired
    surrogate, a value that is not JSON at all. Integers beyond 64 bits that
    a double can hold are encoded by the standard library. `json_values`:
    `check_json_values` need not run (see there).
    """
    if not json_values:
        check_json_values(schema)
    if _orjson is not None:
        try:
            return _orjson.dumps(schema)
        except _orjson.JSONEncodeError:
            pass
    problem = find_unencodable(schema)
    if problem is not None:
        raise SchemaError(*problem)
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def check_json_values(schema):
    """Raise `SchemaError` with the path of the first value that is not one
    of JSON's: orjson does not refuse them all, it writes NaN and ±Infinity
    as ``null`` and serializes a datetime, a UUID, an Enum or a dataclass.
    A subclass of ``int``, ``float``, ``str``, ``dict`` or ``list`` (an
    ``IntEnum``) counts as its value, a tuple as an array; a tree that
    holds itself is too deep. A schema parsed from JSON text holds nothing
    else; one made in Python may."""
    if not _only_json_types(schema):
        problem = find_unencodable(schema)
        if problem is not None:
            raise SchemaError(*problem)


def _only_json_types(value):
    """Whether `value` and all it holds are of JSON's exact types (a tuple
    counting as an array), with finite numbers and at most `MAX_DEPTH`
    levels: one quick pass, no paths kept."""
    # level by level, holding the containers themselves: no new objects (a
    # thousand pending views would wake the garbage collector), and the
    # depth is the number of levels (a tree that holds itself never ends)
    level, depth = [[value]], 0
    while level:
        if depth > MAX_DEPTH:
            return False
        below = []
        push = below.append
        for container in level:
            for v in container.values() if type(container) is dict else container:
                t = type(v)
                if t is str or t is int or t is bool or v is None:
                    continue
                if t is dict or t is list or t is tuple:
                    push(v)
                elif t is not float or v - v != 0.0:  # inf - inf and NaN - NaN are NaN
                    return False
        level, depth = below, depth + 1
    return True


def orjson_encodes(value):
    """Whether orjson serializes `value`: for a JSON value (see
    `check_json_values`), `encode_schema` then cannot fail on it."""
    if _orjson is None:
        return False
    try:
        _orjson.dumps(value)
    except _orjson.JSONEncodeError:
        return False
    return True


def find_unencodable(value):
    """``(path, message)`` for the first value that cannot travel as JSON
    (see `encode_schema`), or None. Iterative: any depth is fine."""
    stack = [(value, "", 1)]
    while stack:
        v, path, depth = stack.pop()
        # the real type, not isinstance: a proxy can claim any __class__
        t = type(v)
        if issubclass(t, (dict, list, tuple)):
            if depth > MAX_DEPTH:
                return path, f"nested deeper than {MAX_DEPTH} levels of objects and arrays"
            if issubclass(t, dict):
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
        # a subclass of a JSON type (an IntEnum) is taken as its value
        elif issubclass(t, str):
            if _SURROGATE.search(v):
                return path, "string has an unpaired surrogate (not valid Unicode)"
        elif issubclass(t, float):
            if not math.isfinite(v):
                return path, f"number {v} is not finite"
        elif issubclass(t, int):
            if abs(v) >= _MAX_DOUBLE_INT:
                return path, "integer is too large for a double"
        elif v is not None:
            return path, f"{t.__name__} is not a JSON value"
    return None


def _visible(key):
    """`key` with each unpaired surrogate written as a ``\\uXXXX`` escape."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", key)
