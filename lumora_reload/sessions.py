"""Sessions, devices, sequence numbers and update history: the domain.

Nothing here knows about WebSockets, HTTP or the global reactor. Time comes
from an injected clock (``clock.seconds()``); devices are reached through
`IDeviceLink`, which the WebSocket layer implements. The values the hub
works on (`Session`, `State`, `PreparedUpdate`, ...) are in
lumora_reload.model and importable from here too.

Sequence numbers number the session's schema *states*: each accepted push
that changes something takes the next number. A full resync of one device
carries the current number and never advances it.
"""

import collections
import secrets

import orjson

from lumora_reload import errors, messages
from lumora_reload import schema as schemas
from lumora_reload.errors import LumoraError
from lumora_reload.model import (
    EMPTY,
    Device,
    HistoryEntry,
    IDeviceLink,
    Limits,
    Outgoing,
    PreparedUpdate,
    PushResult,
    Session,
    State,
    _log_size,
    _ms,
    schema_checked,
    short_id,
)

__all__ = ["EMPTY", "Device", "HistoryEntry", "Hub", "IDeviceLink", "Limits", "Outgoing", "PreparedUpdate",
           "PushResult", "Session", "State", "short_id"]


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
        # called when a session gets its first device or loses its last:
        # what other daemons must know (the claim on the session); not on
        # every join, which in a connect storm was a store write per device
        self.on_devices_changed = None
        # called with True or False when a device naming the state it holds
        # was resumed (sent only what it missed) or not (sent it all)
        self.on_resume = None

    # -- time ----------------------------------------------------------

    def now(self):
        return self.clock.seconds()

    def now_ms(self):
        return _ms(self.clock.seconds())

    # -- sessions ------------------------------------------------------

    def new_session_id(self):
        return secrets.token_hex(16)  # 128 bits

    def new_session(self, schema=None, timeout_seconds=None, session_id=None, fresh=False):
        """A session not yet registered, with its first state planned.

        Returns ``(session, update)``; `update` (a `PreparedUpdate` from the
        empty state, or None without a schema) is what the store commits
        before `add_session` makes the session visible (`fresh`: see `plan_push`).
        """
        if len(self.sessions) >= self.limits.max_sessions:
            raise LumoraError(
                errors.RATE_LIMIT_EXCEEDED,
                f"Too many sessions (limit {self.limits.max_sessions}); delete unused ones",
                status=429,
            )
        timeout = self.limits.session_timeout if timeout_seconds is None else timeout_seconds
        now = self.now()
        session = Session(
            id=session_id or self.new_session_id(),
            created_at=_ms(now),
            timeout=timeout,
            last_activity=now,
        )
        update = None
        if schema is not None:
            update = self._plan(session, schema, True, force_full=True, fresh=fresh)
        return session, update

    def create_session(self, schema=None, timeout_seconds=None, session_id=None):
        """Create and register a session at once (no store involved)."""
        session, update = self.new_session(schema, timeout_seconds, session_id)
        if update is not None:
            session.state = update.state
        self.add_session(session)
        return session

    def add_session(self, session):
        """Register a new session, or one restored from a store."""
        self.sessions[session.id] = session
        self.tombstones.pop(session.id, None)

    def get_session(self, session_id):
        session = self.sessions.get(session_id)
        if session is not None:
            if session.idle_past_expiry(self.now()):
                # the expiry sweep removes (and unstores) it; until then it
                # already answers as expired
                raise errors.session_expired()
            return session
        if session_id in self.tombstones:
            raise errors.session_expired()
        raise errors.session_not_found()

    def touch(self, session):
        session.active_until(self.now())

    def extended_activity(self, session, seconds=None):
        """The `last_activity` that puts expiry `seconds` from now (default:
        the session's timeout), or the current one when that is later:
        extending never shortens."""
        seconds = session.timeout if seconds is None else seconds
        return max(session.last_activity, self.now() + seconds - session.timeout)

    def extend_session(self, session_id, seconds=None):
        session = self.get_session(session_id)
        session.active_until(self.extended_activity(session, seconds))
        return session

    def delete_session(self, session_id, code=messages.CLOSE_NORMAL, reason="Session closed"):
        session = self.get_session(session_id)
        self.drop(session, code, reason)
        return session

    def expire(self, session):
        self.drop(session, messages.CLOSE_EXPIRED, "Session expired")
        self.tombstones[session.id] = self.now()
        while len(self.tombstones) > self.limits.max_sessions:
            self.tombstones.popitem(last=False)

    def drop(self, session, code, reason):
        """Forget a session and close its devices (idempotent)."""
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
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
                session.active_until(now)
            elif session.idle_past_expiry(now):
                found.append(session)
        horizon = now - self.limits.tombstone_seconds
        while self.tombstones and next(iter(self.tombstones.values())) < horizon:
            self.tombstones.popitem(last=False)
        return found

    # -- schemas and pushes: plan, then (after the store) apply ------

    @staticmethod
    def validate(schema):
        """Check `schema`; returns the number of nodes in its tree."""
        return schema_checked(schemas.validate, schema)

    @staticmethod
    def index_of(schema):
        """`validate`, answering the tree's `schemas.NodeIndex`."""
        return schema_checked(schemas.node_index, schema)

    @staticmethod
    def encode(schema, json_values=False):
        """`schemas.encode_schema`, refusing what JSON cannot carry to a
        device as an invalid schema."""
        return schema_checked(schemas.encode_schema, schema, json_values)

    def plan_push(self, session_id, schema, preserve_state=True, fresh=False):
        """Plan a push from the session's committed state; change nothing.

        Returns a `PreparedUpdate`, or None when the schema equals the
        current one. Everything that can fail on the input (validation,
        nesting depth, values JSON cannot carry) raises here, as a 400
        ``SCHEMA_VALIDATION_FAILED`` naming the path. `fresh`: `schema` was
        parsed for this push (nothing else holds its objects); after a state
        made the same way, only what the delta finds changed is validated.
        """
        session = self.get_session(session_id)
        return self._plan(session, schema, preserve_state, fresh=fresh)

    def _plan(self, session, schema, preserve_state, force_full=False, fresh=False):
        base = session.state
        # both trees the daemon's alone, the old one indexed: the delta's walk vouches
        vouch = fresh and not force_full and base.index is not None
        nodes = index = summed = None
        if fresh and not vouch:
            index = self.index_of(schema)
            nodes = index.nodes
        elif not fresh:
            nodes = self.validate(schema)
            schema_checked(schemas.check_json_values, schema)  # made in Python: may hold NaN, a datetime
        if force_full:
            choice = schemas.Choice(messages.UPDATE_FULL, None, True)
        else:
            try:
                choice = schemas.choose_update(
                    base.schema, schema, self.limits.incremental_threshold, nodes=nodes,
                    old_checksum=base.checksum, old_index=base.index if vouch else None,
                )
                if vouch:  # what the walk could not vouch for is validated whole
                    index = choice.new_index or self.index_of(schema)
                if choice.update_type == messages.UPDATE_INCREMENTAL:  # no JSON of the schema yet: State.wire_bytes
                    summed = schemas.checksum_update(schema, choice.delta, base.checksum_plain)
            except LumoraError:
                raise
            except Exception:  # an invalid schema, or one JSON cannot carry, is refused as such, naming the path
                if vouch:
                    self.validate(schema)
                self.encode(schema)
                raise
        # The wire JSON waits only where orjson is known to serialize the
        # schema: a plain checksum is orjson's output of it, and "none" found
        # it equal to the committed one; both leave generatedAt out
        serializes = (
            (choice.update_type == messages.UPDATE_NONE or (summed is not None and summed.plain))
            and schemas.orjson_encodes(schema["metadata"].get("generatedAt"))
        )
        schema_bytes = choice.new_json
        if schema_bytes is None and not serializes:  # refuses what JSON cannot carry, naming the path
            schema_bytes = self.encode(schema, json_values=True)
        if choice.update_type == messages.UPDATE_NONE:
            return None
        sequence = base.sequence + 1
        if choice.update_type == messages.UPDATE_INCREMENTAL:
            frame = messages.incremental_update_frame(
                session.id, self.now_ms(), choice.delta, preserve_state, sequence, summed.hex
            )
            entry = HistoryEntry(sequence, messages.UPDATE_INCREMENTAL, choice.legacy_ok, frame, summed.hex)
        else:
            summed = schemas.checksum_update(schema)
            entry = HistoryEntry(sequence, messages.UPDATE_FULL, True, checksum=summed.hex)
        return self._prepared(session.id, base, entry, schema, schema_bytes, preserve_state, summed.plain, index)

    def plan_received(self, session_id, entry, schema, schema_bytes, preserve_state):
        """The same kind of plan for an update another daemon committed
        (cluster mode), from this daemon's state of the session."""
        session = self.get_session(session_id)
        return self._prepared(session.id, session.state, entry, schema, schema_bytes, preserve_state)

    def _prepared(self, session_id, base, entry, schema, schema_bytes, preserve_state, checksum_plain=False,
                  index=None):
        full = entry.update_type != messages.UPDATE_INCREMENTAL
        if full and entry.payload is None and schema_bytes is not None:
            # its frame goes into the (in-memory) history too, to be replayed to a device that missed it
            frame = messages.full_update_frame(session_id, self.now_ms(), orjson.Fragment(schema_bytes),
                                               preserve_state, entry.sequence, entry.checksum)
            entry = HistoryEntry(entry.sequence, entry.update_type, True, frame, entry.checksum)
        history = self.limits.history_after(base.history, entry)
        state = State(entry.sequence, schema, entry.checksum, preserve_state, schema_bytes, history, checksum_plain,
                      index)
        if full and entry.payload is not None:
            state._cache[messages.UPDATE_FULL] = Outgoing(entry.payload, entry.sequence)
        outgoing = self._full_update(session_id, state) if full else Outgoing(entry.payload, entry.sequence)
        return PreparedUpdate(session_id, base, state, entry.update_type, outgoing, entry, full or entry.legacy_ok,
                              self.now())

    def apply_update(self, update):
        """Make a committed update the session's state and send it to the
        session's devices. Returns the number of devices, or None when the
        session is gone or no longer at the update's base (nothing sent)."""
        session = self.sessions.get(update.session_id)
        if session is None or session.state is not update.base:
            return None
        session.state = update.state
        self.touch(session)
        return self.deliver(session, update)

    def replace_state(self, session, state):
        """Adopt a state read from the store (cluster reload, conflict):
        devices that were not sent exactly this state get it in full."""
        session.state = state
        count = 0
        for device in list(session.devices.values()):
            if (device.sent_sequence, device.sent_checksum) != (state.sequence, state.checksum):
                if self.resync_device(session, device):
                    count += 1
        return count

    def _full_update(self, session_id, state):
        """The full update of one state (made once per state)."""
        outgoing = state._cache.get(messages.UPDATE_FULL)
        if outgoing is None:
            frame = messages.full_update_frame(
                session_id, self.now_ms(), state.schema_json(), state.preserve_state, state.sequence, state.checksum
            )
            outgoing = state._cache[messages.UPDATE_FULL] = Outgoing(frame, state.sequence)
        return outgoing

    def full_update(self, session):
        """The full update of the session's current state."""
        return self._full_update(session.id, session.state)

    def deliver(self, session, update):
        """Hand one applied update to every device of the session."""
        full, state, outgoing = None, update.state, update.outgoing
        sequence, checksum = state.sequence, state.checksum  # read once: a thousand devices take this loop
        devices = list(session.devices.values())
        for device in devices:
            if device.legacy and not update.legacy_ok:
                if full is None:
                    full = self._full_update(session.id, state)
                device.link.send(full)
            else:
                device.link.send(outgoing)
            device.sent_sequence = sequence
            device.sent_checksum = checksum
        return len(devices)

    def resync_device(self, session, device):
        """Send one device the full current schema (does not advance)."""
        if session.schema is None:
            return False
        device.link.send(self.full_update(session))
        device.sent_sequence = session.sequence
        device.sent_checksum = session.checksum
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
        """A device sent `connect`. Returns ``(session, device, messages)``
        where `messages` are the Outgoings to send, `connected` first."""
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
        outgoing = self._catch_up(session, device, payload.get("lastSequence"), payload.get("lastChecksum"))
        session.add_device(device)
        if self.on_devices_changed is not None and len(session.devices) == 1:
            self.on_devices_changed(session)
        return session, device, outgoing

    def _catch_up(self, session, device, last_sequence, last_checksum=None):
        replay = self._replay(session, device, last_sequence, last_checksum)
        resumed = replay is not None
        if last_sequence is not None and self.on_resume is not None:
            self.on_resume(resumed)
        initial = None
        if not resumed and session.schema is not None:
            initial = (session.schema_json(), session.checksum)
        device.last_ack_sequence = int(last_sequence) if resumed else 0
        device.sent_sequence = session.sequence
        device.sent_checksum = session.checksum
        first = Outgoing(
            messages.connected_frame(
                session.id, self.now_ms(), device.connection_id, session.sequence, resumed, initial
            ),
            session.sequence,
        )
        return [first] + (replay or [])

    def _replay(self, session, device, last_sequence, last_checksum=None):
        """The updates that bring a device from state `last_sequence` to
        now, or None when it must start from the full schema.

        A number ahead of ours, or known here with another checksum than the
        device says it holds (a number reused after a crash), is never
        resumed. Every replayed entry must follow the one before it.
        """
        if last_sequence is None or last_sequence != int(last_sequence):
            return None
        last_sequence = int(last_sequence)
        if last_sequence > session.sequence or last_sequence < 0:
            return None
        if last_checksum is not None and self._checksum_of(session, last_sequence) != last_checksum:
            return None
        if last_sequence == session.sequence:
            return []
        replay = []
        for entry in (e for e in session.history if e.sequence > last_sequence):
            if entry.sequence != last_sequence + 1 + len(replay):
                return None
            if entry.payload is not None and (entry.legacy_ok or not device.legacy):  # full ones are legacy_ok
                replay.append(Outgoing(entry.payload, entry.sequence))
            elif entry.update_type == messages.UPDATE_FULL and entry.sequence == session.sequence:
                # read back from a store without its frame: the current state's
                replay.append(self.full_update(session))
            else:  # an earlier full update read back from a store (no frame), or a delta 1.0 cannot take
                return None
        return replay if last_sequence + len(replay) == session.sequence else None

    @staticmethod
    def _checksum_of(session, sequence):
        """The checksum of state `sequence` if this daemon still knows it."""
        if sequence == session.sequence:
            return session.checksum
        for entry in session.history:
            if entry.sequence == sequence:
                return entry.checksum
        return None

    def detach(self, session_id, device):
        """Forget a device whose connection closed (idempotent)."""
        session = self.sessions.get(session_id)
        if session is None:
            return
        if session.remove_device(device):
            self.touch(session)
            if self.on_devices_changed is not None and not session.devices:
                self.on_devices_changed(session)

    def seen(self, session_id, device):
        device.last_seen = self.now()
        session = self.sessions.get(session_id)
        if session is not None:
            session.active_until(device.last_seen)

    def acked(self, session, device, sequence):
        """`device` applied update `sequence`: a sign of life, and what it holds."""
        now = device.last_seen = self.clock.seconds()
        session.active_until(now)
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
        session.log_bytes += _log_size(line)
        while len(session.logs) > self.limits.log_lines or (
            session.log_bytes > self.limits.log_bytes and len(session.logs) > 1
        ):
            session.log_bytes -= _log_size(session.logs.popleft())
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
