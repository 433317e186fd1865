"""The access log's line: the combined format, with session ids cut to
their first characters and tokens hidden (an id is what lets a device
join), no referrer (it can hold the same), and Twisted's escaping of
every field."""

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
        log_text(request.method),
        log_text(redact_uri(request.uri).encode("latin-1")),
        log_text(request.clientproto),
        request.code,
        request.sentLength or "-",
        log_text((request.getHeader(b"user-agent") or b"-")[:_AGENT_CHARS]),
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
