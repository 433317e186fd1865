"""lumora-reload inside your own Twisted application, as a .tac file.

Run it with ``twistd -ny examples/embed.tac`` (``-y``: a .tac file, ``-n``:
stay in the foreground). It serves the REST API and the device WebSocket on
127.0.0.1:9000 (``PORT=...`` to change it), creates a session, pushes a first
schema and prints where devices connect. ``LUMORA_EXAMPLE_EXIT_AFTER=S``
stops it after S seconds.
"""

import os

from twisted.application import service, strports
from twisted.internet import reactor
from twisted.web import server as web_server

from lumora_reload import HotReloadServer
from lumora_reload.accesslog import access_log_line

PORT = int(os.environ.get("PORT", "9000"))
SCHEMA = {
    "version": "1.0",
    "metadata": {"sourceFramework": "react", "sourceFile": "App.tsx", "generatedAt": 0},
    "nodes": [{"id": "title", "type": "Text", "props": {"text": "Hello"}, "children": []}],
}

hot = HotReloadServer(session_timeout=3600)
application = service.Application("my-tool")
hot.setServiceParent(application)
# the daemon's access-log lines: session ids cut, as a device joins with one
site = web_server.Site(hot.resource(), logFormatter=access_log_line)
strports.service(f"tcp:{PORT}:interface=127.0.0.1", site).setServiceParent(application)


def first_push():
    session = hot.create_session()
    print(f"devices connect to ws://127.0.0.1:{PORT}/ws?session={session.id}", flush=True)
    d = hot.push_update(session.id, SCHEMA)  # Deferred -> PushResult
    d.addCallback(lambda r: print("pushed", r.update_type, "to", r.devices_updated, "devices, #", r.sequence_number,
                                  flush=True))


reactor.callWhenRunning(first_push)  # once the services have started

if os.environ.get("LUMORA_EXAMPLE_EXIT_AFTER"):
    reactor.callLater(float(os.environ["LUMORA_EXAMPLE_EXIT_AFTER"]), reactor.stop)
