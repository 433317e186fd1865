"""`conformance`: run the conformance scenarios against a device client.

Starts an in-process daemon (in-memory store, 127.0.0.1, an ephemeral
port unless ``--port``), creates one session, prints the URL the client
under test joins (and writes it to ``--session-url-file``), then plays
`lumora_reload.testing.conformance.SCENARIOS`. With ``--client-cmd`` it
starts the client itself (``{url}``, ``{session}`` and ``{http}`` in the
command are replaced) and starts it again after each final close; without
it, it waits for the client to connect. Exit status 0 only when every
scenario passed. docs/conformance.md describes the report.
"""

import json
import os
import shlex
import shutil
import sys

from lumora_reload.cli.output import EXIT_ERROR, EXIT_OK, CliError, table

STOP_GRACE = 3.0  # seconds a client command has to exit after SIGTERM

# the scenario names, here so that building the parser imports no Twisted
# (a test keeps them equal to lumora_reload.testing.conformance.NAMES)
NAMES = ("full", "incremental", "deltas", "checksum-mismatch", "latest-wins", "ping-pong",
         "resume-1012", "replaced-4409", "final-4404", "final-4410")


def add_parser(commands, common):
    parser = commands.add_parser(
        "conformance", help="test a device client against the protocol (a daemon of its own)", parents=[common],
        description="Start a daemon, let a device client join its session, play a fixed script of "
                    "scenarios and report whether the client followed the protocol.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--session-url-file", metavar="F", help="write the session URL the client joins to F")
    parser.add_argument("--client-cmd", metavar="CMD",
                        help="command that runs the client; {url}, {session}, {http} are replaced")
    parser.add_argument("--report", choices=("text", "json"), default=None,
                        help="report format on stdout (default text; json with --json)")
    parser.add_argument("--report-file", metavar="F", help="also write the JSON report to F")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds the client has for each step (default 10)")
    parser.add_argument("--connect-timeout", type=float, default=None, metavar="S",
                        help="seconds to wait for the client to (re)join (default: --timeout with "
                             "--client-cmd, else 60)")
    parser.add_argument("--final-wait", type=float, default=3.0, metavar="S",
                        help="seconds the client is watched after 4404/4410 (default 3)")
    parser.add_argument("--scenario", action="append", choices=NAMES, metavar="NAME",
                        help=f"run only this scenario (repeatable): {', '.join(NAMES)}")
    parser.set_defaults(run=cmd_conformance)
    return parser


def cmd_conformance(args, api, out):
    from lumora_reload.cli.device import run_reactor

    for name in ("timeout", "final_wait", "connect_timeout"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be more than 0")
    if not 0 <= args.port <= 65535:
        raise CliError("--port must be between 0 and 65535")
    as_json = args.report == "json" or (args.report is None and args.json)
    if args.client_cmd is not None:
        argv = shlex.split(args.client_cmd)
        if not argv or shutil.which(argv[0]) is None:
            raise CliError(f"--client-cmd: cannot find {argv[0] if argv else 'a command'!r}")
    return run_reactor(lambda reactor: _run(reactor, args, as_json))


async def _run(reactor, args, as_json):
    from lumora_reload.testing import LumoraServer
    from lumora_reload.testing.conformance import Runner

    # progress goes to stderr when stdout carries the JSON report
    progress = sys.stderr if as_json else sys.stdout

    def say(text):
        print(text, file=progress, flush=True)

    server = LumoraServer(reactor, port=args.port)
    try:
        await server.start()
    except Exception as e:
        raise CliError(f"cannot listen on 127.0.0.1:{args.port}: {e}") from None
    try:
        launcher = None
        if args.client_cmd is not None:
            launcher = ProcessLauncher(reactor, args.client_cmd, server.url, say)
            # Ctrl-C: the client must not outlive the run
            reactor.addSystemEventTrigger("before", "shutdown", launcher.stop)
        connect_timeout = args.connect_timeout or (args.timeout if launcher is not None else 60.0)
        runner = Runner(server, launcher=launcher, timeout=args.timeout, final_wait=args.final_wait,
                        connect_timeout=connect_timeout, say=say)
        say(f"Session URL: {runner.url}")
        if args.session_url_file:
            with open(args.session_url_file, "w", encoding="utf-8") as f:
                f.write(runner.url + "\n")
        if launcher is None:
            say(f"Waiting up to {connect_timeout:g} s for the client to join")
        report = await runner.run(args.scenario)
    finally:
        await server.stop()
    document = report.to_json()
    if args.report_file:
        with open(args.report_file, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
    if as_json:
        print(json.dumps(document, indent=2), flush=True)
    else:
        print(human_report(report), flush=True)
    return EXIT_OK if report.passed else EXIT_ERROR


def human_report(report):
    """The report as a table: one row per scenario, then each failed check."""
    rows = []
    for outcome in report.outcomes:
        failed = [c for c in outcome.checks if not c.passed]
        why = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        rows.append([outcome.name, "pass" if outcome.passed else "FAIL", f"{outcome.seconds:.2f}s", why])
    passed = sum(1 for o in report.outcomes if o.passed)
    lines = [table(rows, ["scenario", "result", "time", "why it failed"]), ""]
    lines.append(f"{passed} passed, {len(report.outcomes) - passed} failed")
    return "\n".join(lines)


class ProcessLauncher:
    """Runs ``--client-cmd`` for the session; `stop` ends it (SIGTERM,
    then SIGKILL after `STOP_GRACE` seconds). Its output goes to stderr."""

    def __init__(self, reactor, template, http_url, say):
        self.reactor = reactor
        self.template = template
        self.http_url = http_url
        self.say = say
        self.process = None
        self.ended = None

    @property
    def running(self):
        return self.ended is not None and not self.ended.called

    def start(self, url):
        from twisted.internet import defer, protocol

        session = url.rsplit("session=", 1)[-1]
        argv = [part.replace("{url}", url).replace("{session}", session).replace("{http}", self.http_url)
                for part in shlex.split(self.template)]
        ended = self.ended = defer.Deferred()

        class Watch(protocol.ProcessProtocol):
            def processEnded(self, reason):
                ended.callback(getattr(reason.value, "exitCode", None))

        self.say(f"  starting the client: {shlex.join(argv)}")
        executable = shutil.which(argv[0]) or argv[0]
        self.process = self.reactor.spawnProcess(
            Watch(), executable, argv, env=dict(os.environ), childFDs={0: "w", 1: 2, 2: 2}
        )

    def stop(self):
        from twisted.internet import defer

        if not self.running:
            return defer.succeed(None)
        ended = self.ended
        self._signal("TERM")
        kill = self.reactor.callLater(STOP_GRACE, self._signal, "KILL")
        d = defer.Deferred()

        def done(code):
            if kill.active():
                kill.cancel()
            d.callback(code)
            return code

        ended.addBoth(done)
        return d

    def _signal(self, name):
        from twisted.internet import error

        try:
            self.process.signalProcess(name)
        except error.ProcessExitedAlready:
            pass
