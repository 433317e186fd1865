"""The command line: global options, one subcommand per command, and `main`
(the `lumora-reload` console script), which turns every failure into one
line on stderr and a non-zero exit status."""

import argparse
import math
import os
import sys
from urllib.parse import urlsplit

from lumora_reload import __version__
from lumora_reload.cli import conformance
from lumora_reload.cli.control import DEFAULT_URL, TOKEN_ENV, URL_ENV, Api, default_url, resolve_session
from lumora_reload.cli.dev import cmd_dev
from lumora_reload.cli.device import cmd_device
from lumora_reload.cli.output import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, CliError, Output, print_error
from lumora_reload.cli.push import cmd_push
from lumora_reload.cli.session import cmd_logs, cmd_reload, cmd_session_new, cmd_status
from lumora_reload.cli.watch import cmd_watch


def _global_options(parser, suppress):
    kw = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument(
        "--url", help=f"the daemon's base URL (default ${URL_ENV}, else {DEFAULT_URL})",
        **({"default": default_url()} | kw),
    )
    parser.add_argument("--api-token", help=f"bearer token for the control API (default: ${TOKEN_ENV})", **kw)
    parser.add_argument("--json", action="store_true", help="machine-readable output (JSON)", **kw)
    parser.add_argument(
        "--color", choices=("auto", "always", "never"), help="colour output (default auto)",
        **({"default": "auto"} | kw),
    )
    parser.add_argument("--http-timeout", type=float, help="HTTP timeout in seconds (default 10)",
                        **({"default": 10.0} | kw))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="lumora-reload",
        description="Push live Lumora UI-schema updates to devices through a running lumora-reload daemon.",
        epilog="Start the daemon first (twistd -n lumora-reload), or run the whole loop in one process: "
               "lumora-reload dev app.json",
    )
    parser.add_argument("--version", action="version", version=f"lumora-reload {__version__}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    session = commands.add_parser("session", help="create a session", parents=[common])
    session_commands = session.add_subparsers(dest="session_command", metavar="SUBCOMMAND")
    session_commands.required = True
    new = session_commands.add_parser(
        "new", help="create a session; print its URL and a QR code", parents=[common]
    )
    new.add_argument(
        "--host", help="host name or address phones use to reach this machine (default: chosen LAN address)"
    )
    new.add_argument("--schema", metavar="FILE", help="initial schema")
    new.add_argument("--timeout", dest="timeout", type=float, metavar="S", help="seconds of inactivity before expiry")
    new.add_argument("--no-qr", action="store_true", help="do not draw the QR code")
    new.set_defaults(run=cmd_session_new)

    push = commands.add_parser("push", help="push a schema file (or - for stdin)", parents=[common])
    push.add_argument("session", metavar="SESSION")
    push.add_argument("file", metavar="FILE")
    push.add_argument("--reset-state", action="store_true", help="send preserveState=false")
    push.set_defaults(run=cmd_push)

    watch = commands.add_parser("watch", help="push a schema file whenever it changes", parents=[common])
    watch.add_argument("session", metavar="SESSION")
    watch.add_argument("path", metavar="PATH")
    watch.add_argument("--debounce", type=float, default=100.0, metavar="MS",
                       help="wait this long after the last change before pushing (default 100)")
    watch.add_argument("--no-initial", action="store_true", help="do not push the file at start")
    watch.set_defaults(run=cmd_watch)

    status = commands.add_parser("status", help="sessions, or one session's devices", parents=[common])
    status.add_argument("session", metavar="SESSION", nargs="?")
    status.set_defaults(run=cmd_status)

    logs = commands.add_parser("logs", help="device log lines", parents=[common])
    logs.add_argument("session", metavar="SESSION")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--interval", type=float, default=0.5, metavar="S", help="poll interval with --follow")
    logs.set_defaults(run=cmd_logs)

    reload_ = commands.add_parser("reload", help="send every device a full update", parents=[common])
    reload_.add_argument("session", metavar="SESSION")
    reload_.set_defaults(run=cmd_reload)

    device = commands.add_parser("device", help="run simulated devices", parents=[common])
    device.add_argument("session", metavar="SESSION")
    device.add_argument("--count", type=int, default=1, metavar="N", help="number of devices (default 1)")
    device.add_argument("--updates", type=int, default=0, metavar="N",
                        help="exit after each device applied N updates (default: run until Ctrl-C)")
    device.add_argument("--name", default="Simulator", help="device name (numbered with --count)")
    device.add_argument("--device-id", help="device id prefix (default: random)")
    device.add_argument("--platform", default="simulator")
    device.add_argument("--client-version", default="1.1.0", help="protocol version to announce")
    device.add_argument("--ws-path", default="/ws", help="the daemon's WebSocket path (default /ws)")
    device.add_argument("--ping-interval", type=float, default=20.0, metavar="S")
    device.add_argument("--no-log", action="store_true",
                        help="do not send a log line to the session for each update")
    device.add_argument("--keep-going", action="store_true",
                        help="on a checksum mismatch, ask for the full schema instead of exiting")
    device.set_defaults(run=cmd_device)

    conformance.add_parser(commands, common)
    dev = commands.add_parser(
        "dev", parents=[common],
        help="the whole loop in one process: daemon, session, QR code, preview, watch, device logs",
        description="Use the daemon at --url if one answers, else run one here; reuse this project's "
                    "session; print the device URL, its QR code and the preview URL; push PATH on every "
                    "save; show device logs. Keys: r reload, o open the preview, c clear, q quit.",
    )
    dev.add_argument("path", metavar="PATH", nargs="?",
                     help="a schema file, or a folder with --run (default: watch nothing)")
    dev.add_argument("--run", dest="converter", metavar="CMD",
                     help="converter run on each change ({file} = the changed file); its stdout is pushed")
    dev.add_argument("--port", metavar="PORT",
                     help="port (or endpoint) of the daemon run here when none answers "
                          "(default: the port of --url, 8080)")
    dev.add_argument("--data-dir", metavar="D", help="where sessions live (default: the daemon's default)")
    dev.add_argument("--in-memory", action="store_true", help="the daemon run here keeps nothing on disk")
    dev.add_argument("--host", help="host name or address phones use to reach this machine")
    dev.add_argument("--debounce", type=float, default=100.0, metavar="MS",
                     help="wait this long after the last change before pushing (default 100)")
    dev.add_argument("--no-qr", action="store_true", help="do not draw the QR code")
    dev.add_argument("--plain", action="store_true", help="no keys, even in a terminal")
    dev.add_argument("--verbose", action="store_true", help="show every line of the daemon's log")
    dev.set_defaults(run=cmd_dev)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    token = args.api_token if args.api_token is not None else os.environ.get(TOKEN_ENV)
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        where = f"${URL_ENV}" if args.url == os.environ.get(URL_ENV, "").strip() else "--url"
        parser.error(f"{where} must look like {DEFAULT_URL}, not {args.url!r}")
    if not 0 < args.http_timeout < math.inf:
        parser.error("--http-timeout must be more than 0 seconds")
    api = Api(args.url, token=token or None, timeout=args.http_timeout)
    out = Output(as_json=args.json, colour=args.color)
    try:
        if getattr(args, "session", None):
            args.session = resolve_session(api, args.session)
        code = args.run(args, api, out)
    except CliError as e:
        print_error(e)
        code = EXIT_ERROR
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # e.g. `lumora-reload logs ID | head`
        sys.stderr.close()
        code = EXIT_OK
    sys.exit(code)
