"""Schema files (read, checked as JSON, pushed) and the `push` command."""

import json
import sys
import time
from urllib.parse import quote

from lumora_reload.cli.control import ApiError, describe
from lumora_reload.cli.output import EXIT_OK, CliError


def read_schema(path):
    """``(raw bytes, parsed)`` of a schema file, or `-` for stdin."""
    name = "stdin" if path == "-" else path
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except OSError as e:
        raise CliError(f"{name}: {e.strerror or e}")
    return strip_bom(raw), parse_schema(raw, name)


def strip_bom(raw):
    return raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw


def parse_schema(raw, name):
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CliError(f"{name}: not UTF-8 text (byte {e.start})")
    if not text.strip():
        raise CliError(f"{name}: file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"{name}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")
    except RecursionError:
        raise CliError(f"{name}: JSON nested too deeply")


def count_nodes(schema):
    """Nodes in a schema's tree (0 when it is not an object)."""
    if not isinstance(schema, dict):
        return 0
    stack = list(schema.get("nodes") or [])
    n = 0
    while stack:
        node = stack.pop()
        n += 1
        if isinstance(node, dict):
            stack.extend(node.get("children") or [])
    return n



def push_raw(api, session_id, raw, source, preserve_state=True):
    """POST one schema; returns (answer, latency ms) or raises CliError."""
    query = "" if preserve_state else "?preserveState=false"
    started = time.perf_counter()
    try:
        answer = api.call("POST", f"/send/{quote(session_id, safe='')}{query}", raw=raw)
    except ApiError as e:
        e.args = (describe(e, session_id, source),)
        raise
    return answer, (time.perf_counter() - started) * 1000


def push_line(answer, ms):
    kind = answer.get("updateType")
    seq = answer.get("sequenceNumber")
    if kind == "none":
        return f"no change (still #{seq}) in {ms:.0f} ms"
    n = answer.get("devicesUpdated", 0)
    return f"{kind} update #{seq} -> {n} device{'s' if n != 1 else ''} in {ms:.0f} ms"


def cmd_push(args, api, out):
    raw, _ = read_schema(args.file)
    source = "stdin" if args.file == "-" else args.file
    answer, ms = push_raw(api, args.session, raw, source, not args.reset_state)
    if out.as_json:
        out.json(dict(answer, latencyMs=round(ms, 2)))
    else:
        out.line(push_line(answer, ms))
    return EXIT_OK
