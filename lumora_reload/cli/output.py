"""Terminal output: exit statuses, one-line errors, colours, JSON lines,
tables and times."""

import json
import os
import re
import sys
import time

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure to report as one line (and exit non-zero)."""


def print_error(message):
    """The one line on stderr that reports a failure."""
    print(f"lumora-reload: {message}", file=sys.stderr, flush=True)


# C0 and C1 controls but tab and newline: what starts an escape sequence,
# moves the cursor back or rings the bell
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text):
    """Text a device sent (its name, its log lines), safe to print: control
    characters are shown as ``\\xNN`` instead of reaching the terminal,
    where an escape sequence could clear the screen, retitle the window or
    write the clipboard."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


_COLOURS = {
    "error": "31",
    "fatal": "1;31",
    "warn": "33",
    "warning": "33",
    "info": "",
    "log": "",
    "debug": "2",
    "trace": "2",
    "ok": "32",
    "dim": "2",
    "bold": "1",
}


class Output:
    def __init__(self, as_json=False, colour="auto", stream=None):
        self.as_json = as_json
        self.stream = stream or sys.stdout
        if colour == "auto":
            colour = "always" if (self.stream.isatty() and not os.environ.get("NO_COLOR")) else "never"
        self.colour = colour == "always" and not as_json

    def paint(self, text, style):
        code = _COLOURS.get(style, "")
        if not self.colour or not code:
            return text
        return f"\x1b[{code}m{text}\x1b[0m"

    def line(self, text=""):
        print(text, file=self.stream, flush=True)

    def json(self, obj):
        print(json.dumps(obj, ensure_ascii=False), file=self.stream, flush=True)

    def event(self, human, **data):
        """One line: `human` for people, `data` as a JSON line with --json."""
        if self.as_json:
            self.json(data)
        else:
            self.line(human)


def table(rows, headers):
    """Plain left-aligned columns."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for row in cells:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(out)


def clock_time(ms):
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000.0)) + f".{int(ms) % 1000:03d}"


def relative(seconds):
    seconds = int(round(seconds))
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{sign}{seconds}s"
    if seconds < 3600:
        return f"{sign}{seconds // 60}m{seconds % 60:02d}s"
    return f"{sign}{seconds // 3600}h{seconds % 3600 // 60:02d}m"
