"""lumora-reload inside a plain Python program, with ``task.react``.

Run it with ``python examples/embed_script.py [PORT]`` (default 9000, on
127.0.0.1; 0 picks a free port). It serves the REST API and the device
WebSocket, creates a session, pushes a first schema, prints where devices
connect, and runs until interrupted. ``--exit-after S`` stops it after S
seconds.
"""

import argparse

from twisted.internet import defer, endpoints, task
from twisted.web import server as web_server

from lumora_reload import HotReloadServer
from lumora_reload.accesslog import access_log_line

SCHEMA = {
    "version": "1.0",
    "metadata": {"sourceFramework": "react", "sourceFile": "App.tsx", "generatedAt": 0},
    "nodes": [{"id": "title", "type": "Text", "props": {"text": "Hello"}, "children": []}],
}


async def main(reactor, port=9000, exit_after=None):
    hot = HotReloadServer(reactor=reactor, session_timeout=3600)
    hot.startService()
    site = web_server.Site(hot.resource(), reactor=reactor, logFormatter=access_log_line)
    listening = await endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(site)
    port = listening.getHost().port
    print(f"serving on http://127.0.0.1:{port}", flush=True)

    session = hot.create_session()
    print(f"devices connect to ws://127.0.0.1:{port}/ws?session={session.id}", flush=True)
    result = await hot.push_update(session.id, SCHEMA)
    print("pushed", result.update_type, "to", result.devices_updated, "devices, #", result.sequence_number, flush=True)

    # Runs until interrupted (Ctrl-C, SIGTERM) or for --exit-after seconds.
    # Stopping closes every device with 1012 "Service restart" first.
    async def stop():
        await hot.stopService()
        await listening.stopListening()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(stop()))
    if exit_after is not None:
        await task.deferLater(reactor, exit_after, lambda: None)
    else:
        await defer.Deferred()  # never fires: the reactor's shutdown ends the program

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", nargs="?", type=int, default=9000)
    parser.add_argument("--exit-after", type=float, metavar="S")
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args.port, args.exit_after)))
