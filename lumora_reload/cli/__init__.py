"""`lumora-reload`: the developer's side of the daemon.

    lumora-reload [--url URL] [--api-token T] [--json] COMMAND ...

    session new [--host H] [--schema FILE] [--timeout S] [--no-qr]
    push SESSION FILE|-
    watch SESSION PATH [--debounce MS]
    status [SESSION]
    logs SESSION [--follow]
    reload SESSION
    device SESSION [--count N] [--updates N]
    conformance [--client-cmd CMD] [--session-url-file F] [--report json]

Simple commands are synchronous HTTP calls (stdlib urllib, no proxies: the
daemon is local). `logs --follow` is a poll loop; `watch` and `dev` run the
reactor with file events from the operating system; `device` runs the
reactor with `lumora_reload.client.DeviceClient`. Every failure is one
line on stderr and a non-zero exit status, never a traceback.

Modules: `control` (the control API over HTTP), `output` (terminal output,
exit statuses, one-line errors), `lan` (the LAN address and QR code),
`push` (schema files, `push`), `watcher` (file events), `watch` (and the
pusher `dev` shares), `dev` and `devserver` (the one-process loop),
`session` (`session new`, `status`, `logs`, `reload`), `device` (the device
simulator), `conformance` (the conformance run for device clients) and `parser` (the
command line and `main`). The names below are re-exported for callers of
`lumora_reload.cli`.
"""

from lumora_reload.cli.control import DEFAULT_URL, TOKEN_ENV, Api, ApiError, describe
from lumora_reload.cli.device import Simulator, ws_base
from lumora_reload.cli.lan import choose_host, device_url, list_interfaces, print_qr, with_host
from lumora_reload.cli.output import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Output,
    clock_time,
    relative,
    table,
)
from lumora_reload.cli.parser import build_parser, main
from lumora_reload.cli.push import count_nodes, parse_schema, push_line, push_raw, read_schema, strip_bom
from lumora_reload.cli.session import new_lines
from lumora_reload.cli.watch import Pusher, Watch
from lumora_reload.cli.watcher import Debouncer, FileWatcher

__all__ = [
    "DEFAULT_URL",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "TOKEN_ENV",
    "Api",
    "ApiError",
    "CliError",
    "Debouncer",
    "FileWatcher",
    "Output",
    "Pusher",
    "Simulator",
    "Watch",
    "build_parser",
    "choose_host",
    "clock_time",
    "count_nodes",
    "describe",
    "device_url",
    "list_interfaces",
    "main",
    "new_lines",
    "parse_schema",
    "print_qr",
    "push_line",
    "push_raw",
    "read_schema",
    "relative",
    "strip_bom",
    "table",
    "with_host",
    "ws_base",
]
