"""Sessions, devices, sequence numbers and update history: the domain.

Nothing here knows about WebSockets, HTTP or the global reactor. Time comes
from an injected clock (``clock.seconds()``); devices are reached through
`IDeviceLink`, which the WebSocket layer implements. Every update is
serialized once (an `Outgoing`) and the same object is handed to every
device, so a transport can prepare the frame once per broadcast.

Sequence numbers number the session's schema *states*: each accepted push
that changes something takes the next number. A full resync of one device
carries the current number and never advances it.
"""

import collections
import secrets

import attrs
import orjson
from zope.interface import Interface

from lumora_reload import errors, messages, schema as schemas
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

    __slots__ = ("payload", "sequence", "kind", "cache")

    def __init__(self, payload, sequence=None, kind=None):
        self.payload = payload
        self.sequence = sequence
        self.kind = kind
        self.cache = {}

    def __len__(self):
        return len(self.payload)


@attrs.frozen
class Limits:
    """Bounds and knobs of the domain; the daemon's options fill them."""

    session_timeout: float = 28800.0
    connection_timeout: float = 60.0
    incremental_threshold: int = 10
    history_size: int = 64
    max_sessions: int = 10000
    max_devices_per_session: int = 10000
    log_lines: int = 1000
    max_ack_lag: int = 10
    tombstone_seconds: float = 86400.0


@attrs.frozen
class HistoryEntry:
    """One past update, kept so a reconnecting device can catch up.

    Only incremental updates are replayable; a full update is recorded as a
    marker (no payload), because replaying across it is never smaller than
    sending the current schema.
    """

    sequence: int
    update_type: str
    legacy_ok: bool = False
    payload: bytes | None = None


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
    sent_sequence: int = 0

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
    last_activity: float  # clock seconds
    schema: dict | None = None
    checksum: str | None = None
    sequence: int = 0
    preserve_state: bool = True
    history: collections.deque = attrs.field(factory=collections.deque)
    devices: dict = attrs.field(factory=dict)  # connection_id -> Device
    by_device_id: dict = attrs.field(factory=dict)  # deviceId -> Device
    logs: collections.deque = attrs.field(factory=collections.deque)
    # Set when a push could not be stored: devices may hold a state the
    # history cannot explain, so the next push goes out full.
    force_full: bool = False
    _full: Outgoing | None = None
    _schema_json: tuple | None = None  # (sequence, bytes)

    def schema_json(self):
        """The current schema serialized once per state, spliced into the
        messages that carry it (`connected`, full updates)."""
        if self._schema_json is None or self._schema_json[0] != self.sequence:
            self._schema_json = (self.sequence, messages.encode(self.schema))
        return orjson.Fragment(self._schema_json[1])

    @property
    def expires_at_seconds(self):
        return self.last_activity + self.timeout

    def expires_at(self):
        return int(self.expires_at_seconds * 1000)

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


def short_id(session_id):
    """A session id is a capability: never log it in full."""
    return session_id[:6] + "…"


def _ms(seconds):
    return int(seconds * 1000)


class Hub:
    """All sessions of one daemon and what happens to them.

    `store` receives every durable change (see lumora_reload.store); its
    methods may return Deferreds, which the service layer waits on. The
    hub itself is synchronous.
    """

    def __init__(self, clock, limits=Limits(), log=None):
        self.clock = clock
        self.limits = limits
        self.sessions = {}
        self.tombstones = collections.OrderedDict()  # id -> expired at (s)
        self._log = log

    # -- time ----------------------------------------------------------

    def now(self):
        return self.clock.seconds()

    def now_ms(self):
        return _ms(self.clock.seconds())

    # -- sessions ------------------------------------------------------

    def new_session_id(self):
        return secrets.token_hex(16)  # 128 bits

    def create_session(self, schema=None, timeout_seconds=None, session_id=None):
        if len(self.sessions) >= self.limits.max_sessions:
            raise LumoraError(
                errors.RATE_LIMIT_EXCEEDED,
                f"Too many sessions (limit {self.limits.max_sessions}); delete unused ones",
                status=429,
            )
        timeout = self.limits.session_timeout if timeout_seconds is None else timeout_seconds
        if schema is not None:
            self.validate(schema)
        now = self.now()
        session = Session(
            id=session_id or self.new_session_id(),
            created_at=_ms(now),
            timeout=timeout,
            last_activity=now,
        )
        if schema is not None:
            session.schema = schema
            session.checksum = schemas.checksum(schema)
            session.sequence = 1
        self.sessions[session.id] = session
        return session

    def add_loaded(self, session):
        """Register a session restored from a store."""
        self.sessions[session.id] = session

    def get_session(self, session_id):
        session = self.sessions.get(session_id)
        if session is not None:
            if self.now() > session.expires_at_seconds and not session.devices:
                # the expiry sweep removes (and unstores) it; until then it
                # already answers as expired
                raise errors.session_expired()
            return session
        if session_id in self.tombstones:
            raise errors.session_expired()
        raise errors.session_not_found()

    def touch(self, session):
        session.last_activity = max(session.last_activity, self.now())

    def extend_session(self, session_id, seconds=None):
        """Push the expiry to `seconds` from now (default: the session's
        timeout); never shortens it."""
        session = self.get_session(session_id)
        seconds = session.timeout if seconds is None else seconds
        target = self.now() + seconds
        if target > session.expires_at_seconds:
            session.last_activity = target - session.timeout
        return session

    def delete_session(self, session_id, code=messages.CLOSE_NORMAL, reason="Session closed"):
        session = self.get_session(session_id)
        self._drop(session, code, reason)
        self.tombstones.pop(session_id, None)
        return session

    def expire(self, session):
        self._drop(session, messages.CLOSE_EXPIRED, "Session expired")
        self.tombstones[session.id] = self.now()
        while len(self.tombstones) > self.limits.max_sessions:
            self.tombstones.popitem(last=False)

    def _drop(self, session, code, reason):
        self.sessions.pop(session.id, None)
        for device in list(session.devices.values()):
            session.remove_device(device)
            device.link.close(code, reason)

    def expired_sessions(self):
        """Sessions past their expiry with no device connected; a session
        with a connected device is in use and slides forward instead."""
        now = self.now()
        found = []
        for session in list(self.sessions.values()):
            if session.devices:
                session.last_activity = now
            elif now > session.expires_at_seconds:
                found.append(session)
        horizon = now - self.limits.tombstone_seconds
        while self.tombstones and next(iter(self.tombstones.values())) < horizon:
            self.tombstones.popitem(last=False)
        return found

    # -- schemas and pushes -------------------------------------------

    @staticmethod
    def validate(schema):
        try:
            schemas.validate(schema)
        except schemas.SchemaError as e:
            raise LumoraError(
                errors.SCHEMA_VALIDATION_FAILED,
                str(e),
                status=400,
                details={"path": e.path, "message": e.message},
            )

    def prepare_push(self, session_id, schema, preserve_state=True):
        """Validate and compute the update; advance the session's state.

        Returns ``(session, update)`` where `update` is None when nothing
        changed, else a dict describing what to store and send.
        """
        session = self.get_session(session_id)
        self.validate(schema)
        self.touch(session)
        choice = schemas.choose_update(
            session.schema, schema, self.limits.incremental_threshold
        )
        if choice.update_type == "none" and not session.force_full:
            return session, None
        update_type = choice.update_type
        if session.force_full or update_type == "none":
            update_type = "full"
        session.force_full = False
        sequence = session.sequence + 1
        checksum = schemas.checksum(schema)
        now_ms = self.now_ms()
        session.schema = schema
        session.checksum = checksum
        session.sequence = sequence
        session.preserve_state = preserve_state
        session._full = None
        if choice.new_json is not None:
            session._schema_json = (sequence, choice.new_json)
        if update_type == "incremental":
            payload = {
                "type": "incremental",
                "delta": choice.delta,
                "preserveState": preserve_state,
                "sequenceNumber": sequence,
                "checksum": checksum,
            }
            outgoing = Outgoing(
                messages.encode(messages.envelope("update", session.id, now_ms, payload)),
                sequence,
                "incremental",
            )
            entry = HistoryEntry(sequence, "incremental", choice.legacy_ok, outgoing.payload)
        else:
            outgoing = self.full_update(session)
            entry = HistoryEntry(sequence, "full")
        session.history.append(entry)
        while len(session.history) > self.limits.history_size:
            session.history.popleft()
        return session, {
            "sequence": sequence,
            "update_type": update_type,
            "outgoing": outgoing,
            "entry": entry,
            "legacy_ok": update_type == "full" or choice.legacy_ok,
        }

    def full_update(self, session):
        """The full update of the session's current state (cached per state)."""
        if session._full is None or session._full.sequence != session.sequence:
            payload = {
                "type": "full",
                "schema": session.schema_json(),
                "preserveState": session.preserve_state,
                "sequenceNumber": session.sequence,
                "checksum": session.checksum,
            }
            session._full = Outgoing(
                messages.encode(messages.envelope("update", session.id, self.now_ms(), payload)),
                session.sequence,
                "full",
            )
        return session._full

    def deliver(self, session, update):
        """Hand one prepared update to every device of the session."""
        outgoing = update["outgoing"]
        full = None
        count = 0
        for device in list(session.devices.values()):
            if device.legacy and not update["legacy_ok"]:
                if full is None:
                    full = self.full_update(session)
                device.link.send(full)
            else:
                device.link.send(outgoing)
            device.sent_sequence = update["sequence"]
            count += 1
        return count

    def resync_device(self, session, device):
        """Send one device the full current schema (does not advance)."""
        if session.schema is None:
            return False
        device.link.send(self.full_update(session))
        device.sent_sequence = session.sequence
        return True

    def reload_all(self, session_id):
        session = self.get_session(session_id)
        if session.schema is None:
            raise errors.not_found("No schema has been pushed to this session yet")
        self.touch(session)
        count = 0
        for device in list(session.devices.values()):
            if self.resync_device(session, device):
                count += 1
        return session, count

    # -- devices -------------------------------------------------------

    def attach(self, session_id, link, payload):
        """A device sent `connect`. Returns ``(device, messages)`` where
        `messages` are the Outgoings to send, `connected` first."""
        session = self.get_session(session_id)
        replaced = session.device_by_id(payload["deviceId"])
        if replaced is not None:
            session.remove_device(replaced)
            replaced.link.close(messages.CLOSE_REPLACED, "Replaced")
        if len(session.devices) >= self.limits.max_devices_per_session:
            raise LumoraError(
                errors.RATE_LIMIT_EXCEEDED,
                f"Too many devices in this session (limit {self.limits.max_devices_per_session})",
                close_code=messages.CLOSE_RATE_LIMIT,
            )
        client_version = payload["clientVersion"]
        version = messages.parse_version(client_version)
        now = self.now()
        device = Device(
            connection_id="c_" + secrets.token_hex(8),
            device_id=payload["deviceId"],
            platform=payload["platform"],
            device_name=payload.get("deviceName"),
            client_version=client_version,
            connected_at=_ms(now),
            last_seen=now,
            link=link,
            legacy=version is not None and version[:2] == (1, 0),
        )
        self.touch(session)
        outgoing = self._catch_up(session, device, payload.get("lastSequence"))
        session.add_device(device)
        return session, device, outgoing

    def _catch_up(self, session, device, last_sequence):
        replay = self._replay(session, device, last_sequence)
        resumed = replay is not None
        connected = {
            "connectionId": device.connection_id,
            "serverVersion": messages.SERVER_VERSION,
            "sequenceNumber": session.sequence,
            "resumed": resumed,
            "capabilities": {
                "incrementalUpdates": True,
                "compression": False,
                "statePreservation": True,
                "resume": True,
            },
        }
        if not resumed and session.schema is not None:
            connected["initialSchema"] = session.schema_json()
            connected["checksum"] = session.checksum
        if resumed:
            device.last_ack_sequence = int(last_sequence)
        else:
            device.last_ack_sequence = 0
        device.sent_sequence = session.sequence
        first = Outgoing(
            messages.encode(messages.envelope("connected", session.id, self.now_ms(), connected)),
            session.sequence,
            "connected",
        )
        return [first] + (replay or [])

    def _replay(self, session, device, last_sequence):
        """The updates that bring a device from `last_sequence` to now, or
        None when it must start from the full schema."""
        if last_sequence is None or last_sequence != int(last_sequence):
            return None
        last_sequence = int(last_sequence)
        if last_sequence == session.sequence:
            return []
        if last_sequence > session.sequence or last_sequence < 0:
            return None
        wanted = [e for e in session.history if e.sequence > last_sequence]
        if not wanted or wanted[0].sequence != last_sequence + 1:
            return None
        size = 0
        for entry in wanted:
            if entry.update_type != "incremental" or (device.legacy and not entry.legacy_ok):
                return None
            size += len(entry.payload)
        if size > len(self.full_update(session)):
            return None
        return [Outgoing(e.payload, e.sequence, "incremental") for e in wanted]

    def detach(self, session_id, device):
        """Forget a device whose connection closed (idempotent)."""
        session = self.sessions.get(session_id)
        if session is None:
            return
        if session.remove_device(device):
            self.touch(session)

    def seen(self, session_id, device):
        device.last_seen = self.now()
        session = self.sessions.get(session_id)
        if session is not None:
            session.last_activity = device.last_seen

    def ack(self, device, payload):
        sequence = int(payload["sequenceNumber"])
        if sequence > device.last_ack_sequence:
            device.last_ack_sequence = sequence

    def add_log(self, session, device, level, message):
        line = {
            "time": self.now_ms(),
            "deviceId": device.device_id,
            "deviceName": device.device_name,
            "level": level,
            "message": message,
        }
        session.logs.append(line)
        while len(session.logs) > self.limits.log_lines:
            session.logs.popleft()
        return line

    def find_device(self, session_id, connection_id):
        session = self.get_session(session_id)
        device = session.devices.get(connection_id)
        if device is None:
            raise errors.not_found("Device not found")
        return session, device

    def disconnect_device(self, session_id, connection_id, reason=None):
        session, device = self.find_device(session_id, connection_id)
        session.remove_device(device)
        device.link.close(messages.CLOSE_NORMAL, reason or "Disconnected by server")
        return device

    # -- liveness and health ------------------------------------------

    def is_healthy(self, session, device):
        silent = self.now() - device.last_seen
        lag = session.sequence - device.last_ack_sequence
        return silent <= self.limits.connection_timeout and lag <= self.limits.max_ack_lag

    def device_health(self, session, device):
        now = self.now()
        return {
            "connectionId": device.connection_id,
            "deviceId": device.device_id,
            "healthy": self.is_healthy(session, device),
            "lastPing": _ms(device.last_seen),
            "timeSinceLastPing": _ms(now - device.last_seen),
            "lastAckSequence": device.last_ack_sequence,
            "ackLag": max(0, session.sequence - device.last_ack_sequence),
        }

    def stale_devices(self):
        """(session, device) pairs silent for longer than the timeout."""
        limit = self.now() - self.limits.connection_timeout
        return [
            (session, device)
            for session in self.sessions.values()
            for device in session.devices.values()
            if device.last_seen < limit
        ]

    def total_devices(self):
        return sum(len(s.devices) for s in self.sessions.values())

    def stats(self):
        return {
            "sessions": len(self.sessions),
            "totalDevices": self.total_devices(),
            "sessionDetails": [
                {
                    "id": s.id,
                    "devices": len(s.devices),
                    "createdAt": s.created_at,
                    "expiresAt": s.expires_at(),
                }
                for s in self.sessions.values()
            ],
        }
