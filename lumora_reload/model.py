"""The domain's values: sessions, devices, committed states, planned
updates, history entries, limits, and how the domain reaches a device.

Pure data with the few methods that read it; what happens to them is in
lumora_reload.sessions (`Hub`). Every update is serialized once (an
`Outgoing`) and the same object is handed to every device, so a transport
can prepare the frame once per broadcast.
"""

import collections

import attrs
import orjson
from zope.interface import Interface

from lumora_reload import errors, messages
from lumora_reload import schema as schemas
from lumora_reload.errors import LumoraError


class IDeviceLink(Interface):
    """How the domain reaches one connected device."""

    def send(outgoing):
        """Queue an `Outgoing` message for the device (never blocks)."""

    def close(code, reason):
        """Close the device's connection with a WebSocket close code."""


class Outgoing:
    """One serialized server message, shared by every device it goes to.

    `cache` lets a transport keep its own encoding of the same bytes (the
    WebSocket layer stores the prepared frame there), so a broadcast costs
    one serialization and one framing.
    """

    __slots__ = ("payload", "sequence", "cache")

    def __init__(self, payload, sequence=None):
        self.payload = payload
        self.sequence = sequence
        self.cache = {}

    def __len__(self):
        return len(self.payload)


# how long an expired session's id still answers 410, in memory and in a
# durable store
TOMBSTONE_SECONDS = 86400.0


@attrs.frozen
class Limits:
    """Bounds and knobs of the domain; the daemon's options fill them."""

    session_timeout: float = 28800.0
    connection_timeout: float = 60.0
    incremental_threshold: int = 10
    history_size: int = 64
    history_bytes: int = 16 * 1024 * 1024  # replayable frames kept per session
    max_sessions: int = 10000
    max_devices_per_session: int = 10000
    log_lines: int = 1000
    log_bytes: int = 1024 * 1024  # of log text kept per session
    max_ack_lag: int = 10
    tombstone_seconds: float = TOMBSTONE_SECONDS

    def history_after(self, history, entry):
        """`history` + `entry`, bounded by count and by replay bytes; kept
        consecutive (an entry that does not follow starts it afresh)."""
        if history and history[-1].sequence + 1 != entry.sequence:
            history = ()
        return self.bounded(tuple(history) + (entry,))

    def bounded(self, history):
        """The newest entries of `history` within the count and the replay
        bytes (the last one is always kept)."""
        kept = list(history[-self.history_size:])
        size = sum(len(e.payload or b"") for e in kept)
        while size > self.history_bytes and len(kept) > 1:
            size -= len(kept.pop(0).payload or b"")
        return tuple(kept)


@attrs.frozen
class HistoryEntry:
    """One past update, kept so a reconnecting device can catch up: its
    encoded frame (`payload`) is replayed as it was sent.

    A history read back from a store may hold a full update as a marker
    without its frame (`payload` None): Redis keeps them so, and so did
    SQLite databases written before it kept full frames. Such a history
    replays no further back than that update, unless it made the current
    state (whose schema makes the frame again).
    `checksum` is the checksum of the state the update leads to, so a
    device's claim "I hold state k" can be checked.
    """

    sequence: int
    update_type: str
    legacy_ok: bool = False
    payload: bytes | None = None
    checksum: str | None = None


@attrs.frozen(eq=False)
class State:
    """One committed schema state of a session: a value, never changed.

    A session moves from one `State` to the next in a single assignment
    (`Hub.apply_update`), so nothing can see half of a push. Everything that
    is derived from one state (its compact JSON, its full update frame) is
    cached on the state itself, so a cache can never outlive its state.
    """

    sequence: int = 0
    schema: dict | None = None
    checksum: str | None = None
    preserve_state: bool = True
    # compact JSON of `schema`; None until asked for when the push that made
    # this state had no need of it (see `wire_bytes`)
    schema_bytes: bytes | None = None
    history: tuple = ()  # HistoryEntry, consecutive sequence numbers
    # the checksum came from orjson's output as is (see schema.Checksum):
    # the next push's checksum need only scan what its delta brings in
    checksum_plain: bool = False
    # the tree's ids and node count (schema.NodeIndex), kept only when the
    # push that made this state parsed the schema itself (so nothing else
    # holds its objects): the next such push validates only what changed
    index: schemas.NodeIndex | None = attrs.field(default=None, repr=False)
    _cache: dict = attrs.field(factory=dict, repr=False)

    def wire_bytes(self):
        """The schema's compact JSON (bytes), None without a schema.

        An incremental push sends a delta and needs no JSON of the whole
        schema; its state serializes the schema the first time something
        asks (a full update, the store, another daemon), once. The hub
        leaves `schema_bytes` unset only after the checksum showed orjson
        serializes the schema, and a state's schema is never changed, so
        this gives the bytes the push would have made.
        """
        if self.schema_bytes is not None or self.schema is None:
            return self.schema_bytes
        made = self._cache.get("wire")
        if made is None:
            # its values are JSON's: parsed from JSON text, or checked when planned
            made = self._cache["wire"] = schemas.encode_schema(self.schema, json_values=True)
        return made

    def schema_json(self):
        """The schema's JSON, spliced into the messages that carry it."""
        made = self.wire_bytes()
        return None if made is None else orjson.Fragment(made)


EMPTY = State()


def restored(state, limits):
    """A state read back from a store, made ready for this daemon: its
    history within `limits` (they may have changed since it was stored),
    and a stored frame of its own full update used as that update."""
    history = limits.bounded(state.history)
    if history != state.history:
        state = attrs.evolve(state, history=history)
    last = history[-1] if history else None
    if (last is not None and last.sequence == state.sequence and last.payload is not None
            and last.update_type == messages.UPDATE_FULL):
        state._cache[messages.UPDATE_FULL] = Outgoing(last.payload, last.sequence)
    return state


@attrs.frozen(eq=False)
class PreparedUpdate:
    """A push planned from a session's committed state, before anything
    changed: what the store must make durable and what devices will get.

    `base` is the state it was computed from; the store refuses the update
    when its own current number is not `base.sequence` (another writer got
    there first), and the hub refuses to apply it on any other state.
    """

    session_id: str
    base: State
    state: State
    update_type: str  # messages.UPDATE_INCREMENTAL | messages.UPDATE_FULL
    outgoing: Outgoing  # what protocol-1.1 devices receive
    entry: HistoryEntry
    legacy_ok: bool  # protocol-1.0 devices may take `outgoing` too
    # the hub's clock when it was planned: the session's activity the store
    # keeps with it (0: none)
    planned_at: float = 0.0

    @property
    def sequence(self):
        return self.state.sequence


@attrs.frozen
class PushResult:
    success: bool
    devices_updated: int
    update_type: str
    sequence_number: int

    def to_json(self):
        return {
            "success": self.success,
            "clientsUpdated": self.devices_updated,
            "devicesUpdated": self.devices_updated,
            "updateType": self.update_type,
            "sequenceNumber": self.sequence_number,
        }


@attrs.define(eq=False)
class Device:
    connection_id: str
    device_id: str
    platform: str
    device_name: str | None
    client_version: str
    connected_at: int  # Unix ms
    last_seen: float  # clock seconds
    link: object
    legacy: bool = False
    last_ack_sequence: int = 0
    # the state the device was last sent (or resumed at): a reload from the
    # store compares both, so a number reused for another schema is noticed
    sent_sequence: int = 0
    sent_checksum: str | None = None

    def to_json(self):
        return {
            "connectionId": self.connection_id,
            "deviceId": self.device_id,
            "platform": self.platform,
            "deviceName": self.device_name,
            "connectedAt": self.connected_at,
            "lastAckSequence": self.last_ack_sequence,
        }


@attrs.define(eq=False)
class Session:
    id: str
    created_at: int  # Unix ms
    timeout: float  # seconds of inactivity before expiry
    last_activity: float  # clock seconds; only ever moves forward
    state: State = EMPTY
    devices: dict = attrs.field(factory=dict)  # connection_id -> Device
    by_device_id: dict = attrs.field(factory=dict)  # deviceId -> Device
    logs: collections.deque = attrs.field(factory=collections.deque)
    # cluster mode: other daemons holding devices of this session, and until
    # when their claim runs (node -> clock seconds)
    held: dict = attrs.field(factory=dict)
    log_bytes: int = 0  # UTF-8 bytes of the messages in `logs`

    # read-only views of the committed state
    @property
    def schema(self):
        return self.state.schema

    @property
    def checksum(self):
        return self.state.checksum

    @property
    def sequence(self):
        return self.state.sequence

    @property
    def preserve_state(self):
        return self.state.preserve_state

    @property
    def history(self):
        return self.state.history

    def schema_json(self):
        return self.state.schema_json()

    @property
    def expires_at_seconds(self):
        return self.last_activity + self.timeout

    def expires_at(self):
        return int(self.expires_at_seconds * 1000)

    def idle_past_expiry(self, now):
        """Expired: past its time, and no device here or on another daemon."""
        if now <= self.expires_at_seconds or self.devices:
            return False
        return not any(until >= now for until in self.held.values())

    def active_until(self, when):
        """Record activity up to `when`; never moves expiry back."""
        if when > self.last_activity:
            self.last_activity = when

    def device_by_id(self, device_id):
        return self.by_device_id.get(device_id)

    def add_device(self, device):
        self.devices[device.connection_id] = device
        self.by_device_id[device.device_id] = device

    def remove_device(self, device):
        """Forget `device` if it is still the registered one (idempotent)."""
        if self.devices.get(device.connection_id) is not device:
            return False
        del self.devices[device.connection_id]
        if self.by_device_id.get(device.device_id) is device:
            del self.by_device_id[device.device_id]
        return True


def _invalid_schema(error):
    return LumoraError(
        errors.SCHEMA_VALIDATION_FAILED,
        str(error),
        status=400,
        details={"path": error.path, "message": error.message},
    )


def schema_checked(check, schema, *args):
    """`check(schema, *args)`, its `schemas.SchemaError` raised as the 400
    every refused schema gets."""
    try:
        return check(schema, *args)
    except schemas.SchemaError as e:
        raise _invalid_schema(e)


def _log_size(line):
    # what a log line holds beyond its fixed fields
    return sum(len(line[k].encode("utf-8", "replace")) for k in ("message", "deviceId", "level")) + len(
        (line["deviceName"] or "").encode("utf-8", "replace"))


def short_id(session_id):
    """A session id is a capability: never log it in full."""
    return session_id[:6] + "…"


def _ms(seconds):
    return int(seconds * 1000)


def consecutive_history(entries, sequence):
    """The run of history entries that leads, without a gap, up to state
    `sequence` (older entries behind a gap cannot be replayed). `entries` are
    oldest first, as every store keeps them."""
    kept = []
    for entry in reversed(list(entries)):
        if entry.sequence != sequence - len(kept):
            break
        kept.append(entry)
    return tuple(reversed(kept))
