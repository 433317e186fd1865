"""What to send after a push: nothing, a delta, or the full schema.

`choose_update` computes the delta from the schema devices hold to the new
one and sends it only when it is both small (fewer entries than a
threshold) and shorter on the wire than the full schema; `Choice` carries
the decision, including whether protocol-1.0 devices can take the delta and
the compact JSON of the new schema when the size check produced it (so the
caller does not serialize the schema twice).
"""

from __future__ import annotations

import json
from typing import NamedTuple

from lumora_reload.schema._common import _orjson
from lumora_reload.schema.apply import legacy_compatible
from lumora_reload.schema.canonical import _reference_serialize, checksum
from lumora_reload.schema.delta import (
    DeltaNotRepresentable,
    Regions,
    compute_delta,
    delta_size,
    is_empty_delta,
)
from lumora_reload.schema.validation import NodeIndex, index_if_valid, validate_root

__all__ = ["Choice", "choose_update"]


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
    # with `old_index`: the new schema's NodeIndex when the delta's walk
    # vouched for it, else None (then it is not yet known to be valid)
    new_index: NodeIndex | None = None


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


# The fewest bytes one node takes in compact JSON: {"id":"x","type":"y"}.
# A node's own braces, id and type lie outside its children's text, so a
# tree of n nodes serializes to at least n times this.
MIN_NODE_JSON = len(b'{"id":"x","type":"y"}')


def choose_update(old, new, threshold=10, new_len=None, old_checksum=None, nodes=None, old_index=None):
    """Decide how to send `new` to devices that hold `old`.

    "none" when the delta is empty (only ``generatedAt`` differs, or
    nothing) and the checksums agree; "incremental" when ``delta_size <
    threshold`` and the compact JSON of the delta is shorter than the
    compact JSON of `new` (both measured with orjson, not the exact wire
    envelope); else "full". `old` None (no schema yet) -> "full". `new_len`,
    when the caller already serialized `new`, saves serializing it again;
    `old_checksum`, when known, saves computing `old`'s. `nodes`, the number
    of nodes in `new` when the caller counted them, settles the size check
    without serializing `new` whenever the delta is shorter than the least
    JSON that many nodes take (`Choice.new_json` is then None).

    `old_index`, the `NodeIndex` of `old`, lets `new` come unvalidated, as
    JSON values (dicts, lists, strings, numbers, booleans, None) whose
    objects `old` does not share: the delta's walk then vouches for it
    where it can (`Choice.new_index`, whose node count serves as `nodes`).
    Without `Choice.new_index` the caller must validate `new`; so too when
    this raises (`SchemaError` for the root, or whatever a malformed tree
    makes the walk raise).
    """
    if old is None:
        return Choice("full", None, True)
    regions = None
    if old_index is not None:
        validate_root(new)
        regions = Regions()
    try:
        delta = compute_delta(old, new, regions)
    except DeltaNotRepresentable:
        return Choice("full", None, True)
    index = None
    if regions is not None:
        index = index_if_valid(old_index, regions)
        if index is not None and nodes is None:
            nodes = index.nodes
    if is_empty_delta(delta):
        # Python's == takes true for 1 (and 1.0): trees it finds equal can
        # differ as JSON, and then the checksums differ (1 and 1.0 do not)
        if (old_checksum or checksum(old)) != checksum(new):
            return Choice("full", None, True, new_index=index)
        return Choice("none", None, True, new_index=index)
    if delta_size(delta) >= threshold:
        return Choice("full", None, True, new_index=index)
    delta_len = _wire_len(delta)
    if new_len is None and nodes is not None and delta_len < nodes * MIN_NODE_JSON:
        return Choice("incremental", delta, legacy_compatible(old, delta), new_index=index)
    new_json = None
    if new_len is None:
        new_json = _orjson_bytes(new)
        new_len = len(new_json) if new_json is not None else _wire_len(new)
    if delta_len < new_len:
        return Choice("incremental", delta, legacy_compatible(old, delta), new_json, index)
    return Choice("full", None, True, new_json, index)
