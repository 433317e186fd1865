"""Lumora IR schemas: validation, deltas, the checksum and the wire encoding.

Pure code: standard library only (``orjson`` is used when importable), no
Twisted. Everything here works on the plain Python objects that
``json.loads`` produces and never mutates its arguments. Every walk over a
schema is iterative, so deeply nested schemas cannot exhaust the stack.

The parts, one module each:

`lumora_reload.schema.validation`
    `validate`: the shape of a schema (root fields, nodes, unique ids),
    reporting the JSON path of the first problem in a `SchemaError`;
    `NodeIndex` / `node_index`: a valid tree's ids and node count, from
    which `choose_update` vouches for the next schema by walking only what
    changed.
`lumora_reload.schema.delta`
    The delta format and `compute_delta`, `is_empty_delta`, `delta_size`,
    `DeltaNotRepresentable`.
`lumora_reload.schema.apply`
    `apply_delta` (as a device applies a delta, protocol 1.0 included) and
    `legacy_compatible`.
`lumora_reload.schema.choose`
    `choose_update` and `Choice`: nothing, a delta, or the full schema
    (and, given the old tree's `NodeIndex`, whether the new one is valid).
`lumora_reload.schema.canonical`
    `canonical_json` / `checksum` / `checksum_update`, byte-identical to the TypeScript
    ``calculateChecksum``, and `parse_json_strict`.
`lumora_reload.schema.encode`
    `encode_schema`, `check_json_values`, `find_unencodable`, `MAX_DEPTH`:
    what a schema must be to travel as JSON, and its wire bytes.
`lumora_reload.schema._common`
    What several parts share: `SchemaError`, the optional orjson module and
    small helpers.

The wire protocol that carries schemas, deltas and checksums to devices is
documented in docs/protocol.md.

Import from this package (``from lumora_reload import schema``); the names
below are the whole public interface. A few private names stay reachable
here for tests and benchmarks; note that replacing one of them on this
package (e.g. with ``monkeypatch.setattr``) does not change what the
submodules call: patch the module that uses it (``_orjson_bytes`` is called
by `lumora_reload.schema.choose`). Public functions are called through this
package by the rest of the daemon, so patching ``encode_schema`` here does
reach its callers.
"""

from __future__ import annotations

from lumora_reload.schema._common import SchemaError, _orjson
from lumora_reload.schema.apply import apply_delta, legacy_compatible
from lumora_reload.schema.canonical import (
    Checksum,
    _fast_canonical_bytes,
    _normalized,
    _reference_canonical_json,
    _reference_serialize,
    canonical_json,
    checksum,
    checksum_update,
    parse_json_strict,
)
from lumora_reload.schema.choose import MIN_NODE_JSON, Choice, _orjson_bytes, choose_update
from lumora_reload.schema.delta import (
    DeltaNotRepresentable,
    _count,
    compute_delta,
    delta_size,
    is_empty_delta,
)
from lumora_reload.schema.encode import (
    MAX_DEPTH,
    check_json_values,
    encode_schema,
    find_unencodable,
    orjson_encodes,
)
from lumora_reload.schema.validation import NodeIndex, node_index, validate

# internals the tests and benchmarks reach through the package
_INTERNALS = (
    _orjson, _fast_canonical_bytes, _normalized, _reference_canonical_json, _reference_serialize,
    _orjson_bytes, _count,
)

__all__ = [
    "SchemaError",
    "DeltaNotRepresentable",
    "Choice",
    "validate",
    "NodeIndex",
    "node_index",
    "compute_delta",
    "is_empty_delta",
    "delta_size",
    "apply_delta",
    "legacy_compatible",
    "choose_update",
    "MIN_NODE_JSON",
    "canonical_json",
    "checksum",
    "Checksum",
    "checksum_update",
    "parse_json_strict",
    "MAX_DEPTH",
    "check_json_values",
    "encode_schema",
    "find_unencodable",
    "orjson_encodes",
]

# the public classes keep the module name they always had (tracebacks,
# reprs and pickles name them lumora_reload.schema.X)
for _cls in (SchemaError, DeltaNotRepresentable, Choice):
    _cls.__module__ = __name__
del _cls
