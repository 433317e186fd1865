"""The access log's line: the combined format, with session ids cut to
their first characters and tokens hidden (an id is what lets a device
join), no referrer (it can hold the same), and Twisted's escaping of
every field. Beyond the places an id belongs, any run that may be a
session id is cut too, wherever a client put it."""

import re
from urllib.parse import unquote

from twisted.web.http import _escape


def access_log_line(timestamp, request):
    """One access-log line in the combined format, with session ids cut
    to their first characters (an id is what lets a device join) and no
    referrer (it can hold the same)."""
    peer = request.getClientAddress()
    ip = getattr(peer, "host", "-")
    line = '"%s" - - %s "%s %s %s" %d %s "-" "%s"' % (
        log_text(ip),
        timestamp,
        redact_ids(log_text(request.method)),
        redact_ids(log_text(redact_uri(request.uri).encode("latin-1"))),
        log_text(request.clientproto),
        request.code,
        request.sentLength or "-",
        redact_ids(log_text((request.getHeader(b"user-agent") or b"-")[:_AGENT_CHARS])),
    )
    return line


_AGENT_CHARS = 200
# printable ASCII but the two characters the log's quoting escapes
_PLAIN = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\')


def log_text(value):
    """Twisted's `_escape` of `value` (bytes or ASCII text): what it gives
    for printable ASCII without quotes or backslashes, the usual case, is
    the text itself, found without its repr() round trip."""
    raw = value if isinstance(value, bytes) else value.encode("ascii")
    if not raw.translate(None, _PLAIN):
        return raw.decode("ascii")
    return _escape(raw)


# A session id is 32 hex digits (`secrets.token_hex(16)`). A client may put
# one anywhere: an absolute-form target, `//session/ID`, `/./session/ID`,
# `/session//ID`, `;session=ID`, another parameter, its User-Agent, the
# method. Served or refused, the line must not hold it in full. Any run of
# 32 or more hex digits, each as it is or percent-encoded, is cut as `_cut`
# cuts an id. A line is written per request, so each field a client writes
# (method, target, User-Agent) is checked on its own, a short one cannot
# hold a run, and a longer one is first mapped, one C call, to "x" for each
# character such a run is made of and a space for the others; most hold no
# 32 in a row and skip the regex.
_ID_RUN = re.compile(r"(?:[0-9A-Fa-f]|%(?:3[0-9]|[46][1-6])){32,}")
_PLAIN_ID_RUN = re.compile(r"[0-9A-Fa-f]{32,}")  # the same without "%": about 40 times faster
_ID_CHARS = bytes(0x78 if b in b"0123456789ABCDEFabcdef%" else 0x20 for b in range(256))
_ID_SPAN = b"x" * 32


def redact_ids(text):
    """`text` with every run that may be a session id cut."""
    if len(text) < 32 or _ID_SPAN not in text.encode("ascii", "replace").translate(_ID_CHARS):
        return text
    return (_ID_RUN if "%" in text else _PLAIN_ID_RUN).sub(_cut_run, text)


def _cut_run(match):
    return _cut(match.group())


def redact_uri(uri):
    """The request URI with every session id shortened (the path segment
    after /session/, /send/ or /preview/, and a `session` query parameter)
    and a `token` query parameter hidden. Names are read as twisted.web
    reads them when it serves the request: path segments and query names
    percent-decoded, query fields split on ``&`` and ``;``, ``+`` a space."""
    text = uri.decode("latin-1") if isinstance(uri, bytes) else uri
    path, mark, query = text.partition("?")
    parts = path.split("/")
    # /session/:id, /send/:id, /preview/:id: the first segment (a nested
    # --ws-path such as /dev/session/ws stays as it is)
    if len(parts) > 2 and unquote(parts[1]) in ("session", "send", "preview") and unquote(parts[2]) not in ("", "new"):
        parts[2] = _cut(parts[2])
    if query:
        fields = _QUERY_FIELDS.split(query)  # fields at even places, separators between
        for i in range(0, len(fields), 2):
            name, eq, value = fields[i].partition("=")
            name_read = unquote(name.replace("+", " "))
            if name_read == "session" and value:
                fields[i] = name + eq + _cut(value)
            elif name_read == "token" and value:  # the dashboard page's token
                fields[i] = name + eq + "..."
        query = "".join(fields)
    return "/".join(parts) + mark + query


_QUERY_FIELDS = re.compile("([&;])")


def _cut(session_id):
    # like short_id, in ASCII: the access log is an ASCII format
    return session_id[:6] + "..."
