"""Error codes of the contract and the one exception type that
carries them from the domain to a transport.

The REST layer turns a `LumoraError` into `{"error", "code"}` with its HTTP
status; the WebSocket layer turns it into an `error` frame (and a close code
when it is fatal).
"""

INVALID_MESSAGE = "INVALID_MESSAGE"
UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
SESSION_EXPIRED = "SESSION_EXPIRED"
AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
SCHEMA_VALIDATION_FAILED = "SCHEMA_VALIDATION_FAILED"
UPDATE_FAILED = "UPDATE_FAILED"
CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
INTERNAL_ERROR = "INTERNAL_ERROR"

# HTTP-only codes
BAD_REQUEST = "BAD_REQUEST"
FORBIDDEN = "FORBIDDEN"
NOT_FOUND = "NOT_FOUND"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"

PROTOCOL_CODES = (
    INVALID_MESSAGE,
    UNSUPPORTED_VERSION,
    SESSION_NOT_FOUND,
    SESSION_EXPIRED,
    AUTHENTICATION_FAILED,
    SCHEMA_VALIDATION_FAILED,
    UPDATE_FAILED,
    CHECKSUM_MISMATCH,
    RATE_LIMIT_EXCEEDED,
    INTERNAL_ERROR,
)


class LumoraError(Exception):
    """A failure the contract names.

    `status` is the HTTP status for the REST API; `close_code` is set when a
    WebSocket connection must be closed after the error frame (fatal).
    """

    status = 400

    def __init__(self, code, message, status=None, details=None, close_code=None):
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status = status
        self.details = details
        self.close_code = close_code

    @property
    def fatal(self):
        return self.close_code is not None

    def __repr__(self):
        return f"LumoraError({self.code!r}, {self.message!r})"


def session_not_found():
    return LumoraError(SESSION_NOT_FOUND, "Session not found", status=404)


def session_expired():
    return LumoraError(SESSION_EXPIRED, "Session expired", status=410)


def not_found(message):
    return LumoraError(NOT_FOUND, message, status=404)
