"""What every part of `lumora_reload.schema` shares: the optional orjson
accelerator, `SchemaError`, and the few helpers that name JSON types and
paths. Kept small on purpose: a helper lives here only when two or more of
the submodules need it."""

from __future__ import annotations

import re

try:  # optional accelerator
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only without orjson
    _orjson = None  # type: ignore[assignment]

_MISSING = object()


class SchemaError(ValueError):
    """A schema problem at a JSON path (``""`` is the root)."""

    def __init__(self, path, message):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")

    def __str__(self):
        return f"{self.path}: {self.message}"


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


# a UTF-16 surrogate code point: in a Python str, never valid Unicode
_SURROGATE = re.compile("[\ud800-\udfff]")
