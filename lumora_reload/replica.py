"""What a device does, without the network: its replica of the session's
schema (`Replica`), what a close code means for it (`close_action`), and how
long it waits before reconnecting (`Backoff`). Pure: no reactor, no clock.
`lumora_reload.client.DeviceClient` puts them on a WebSocket.
"""

import attrs

from lumora_reload import errors, messages
from lumora_reload import schema as schemas

# closes that a reconnect cannot fix: the request, the session or the
# device's protocol version is wrong, or a message was too big
FINAL_CLOSE_CODES = frozenset({
    messages.CLOSE_BAD_REQUEST,
    messages.CLOSE_AUTH,
    messages.CLOSE_FORBIDDEN,
    messages.CLOSE_NOT_FOUND,
    messages.CLOSE_EXPIRED,
    messages.CLOSE_UNSUPPORTED,
    messages.CLOSE_TOO_BIG,
})

STOP = "stop"
RETRY = "retry"
RESTART = "restart"


def close_action(code, reason=None):
    """What a device does after a close: `STOP`, `RETRY` (with backoff) or
    `RESTART` (the daemon is restarting: reconnect at once)."""
    if code in FINAL_CLOSE_CODES:
        return STOP
    if code == messages.CLOSE_NORMAL:
        return RETRY if reason == "Connection timeout" else STOP
    if code == messages.CLOSE_RESTART:
        return RESTART
    return RETRY


@attrs.frozen
class Backoff:
    """Delays between reconnection attempts: ``initial * factor**attempt``
    capped at `maximum`, minus up to `jitter` of it at random (so a crowd of
    devices spreads out and the cap is never exceeded)."""

    initial: float = 1.0
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25

    def delay(self, attempt, rand):
        """The delay before retry number `attempt` (0 = the first retry);
        `rand` is a number in [0, 1)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * rand)


class UpdateError(Exception):
    """An update the replica could not take (`code` is an error code of the wire protocol)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class Replica:
    """The device's copy of the session's schema and sequence number.

    Pure: no network, no clock. `apply` takes an ``update`` payload and
    either moves to the new state or raises `UpdateError`, leaving the
    replica as it was (a failed update never leaves a half-applied tree).
    """

    def __init__(self, legacy=False, verify=True):
        self.legacy = legacy
        self.verify = verify
        self.schema = None
        self.sequence = 0
        self.checksum = None
        self.synced = False  # set by the first `connected`

    def reset(self, schema, sequence, checksum=None):
        """Start over from a full schema (``connected`` without resume)."""
        if schema is not None:
            actual = self._check(schema, checksum)
        else:
            actual = None
        self.schema, self.sequence, self.checksum, self.synced = schema, sequence, actual, True

    def apply(self, payload):
        """Apply one ``update`` payload; returns True when the state changed,
        False for an update already held (a replayed duplicate)."""
        kind = payload.get("type")
        sequence = payload.get("sequenceNumber")
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            raise UpdateError(errors.UPDATE_FAILED, "update without a sequenceNumber")
        expected = payload.get("checksum")
        if kind == messages.UPDATE_FULL:
            schema = payload.get("schema")
            if not isinstance(schema, dict):
                raise UpdateError(errors.UPDATE_FAILED, "full update without a schema")
            actual = self._check(schema, expected)
        elif kind == messages.UPDATE_INCREMENTAL:
            if self.schema is None:
                raise UpdateError(errors.UPDATE_FAILED, "incremental update but no schema held")
            if sequence <= self.sequence:
                return False
            if sequence != self.sequence + 1:
                raise UpdateError(
                    errors.UPDATE_FAILED,
                    f"missed updates: holding {self.sequence}, got {sequence}",
                )
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                raise UpdateError(errors.UPDATE_FAILED, "incremental update without a delta")
            try:
                schema = schemas.apply_delta(self.schema, delta, legacy=self.legacy)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise UpdateError(errors.UPDATE_FAILED, f"delta does not apply: {e}")
            actual = self._check(schema, expected)
        else:
            raise UpdateError(errors.UPDATE_FAILED, f"unknown update type {kind!r}")
        self.schema, self.sequence, self.checksum = schema, sequence, actual
        return True

    def _check(self, schema, expected):
        if not self.verify:
            return expected
        actual = schemas.checksum(schema)
        if expected and actual != expected:
            raise UpdateError(
                errors.CHECKSUM_MISMATCH,
                f"checksum mismatch: expected {expected[:12]}…, computed {actual[:12]}…",
            )
        return actual


@attrs.frozen
class UpdateEvent:
    """What happened to one update."""

    sequence: int
    update_type: str
    ok: bool
    changed: bool
    apply_ms: float
    checksum: str | None
    error: str | None = None
    code: str | None = None


@attrs.frozen
class Closed:
    """How a connection ended. `retry_in` is the delay before the next
    attempt, or None when the client stops (`final` says it gave up)."""

    code: int | None
    reason: str | None
    retry_in: float | None
    final: bool = False
