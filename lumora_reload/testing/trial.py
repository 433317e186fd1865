"""The test kit for Trial: `LumoraServerMixin`.

    from twisted.trial import unittest
    from lumora_reload.testing.trial import LumoraServerMixin

    class ClientTests(LumoraServerMixin, unittest.TestCase):
        @defer.inlineCallbacks
        def setUp(self):
            self.lumora = yield self.start_lumora_server(heartbeat_interval=1.0)

        @defer.inlineCallbacks
        def test_update(self):
            session_id = self.lumora.create_session()
            client = yield self.lumora.device(session_id)
            result = yield self.lumora.push(session_id, schema)
            yield client.wait_for_sequence(result.sequence_number)

Every server is stopped by a cleanup that waits until its devices,
connections, port and timers are gone, so Trial's dirty-reactor check
passes.
"""

from lumora_reload.testing.server import LumoraServer


class LumoraServerMixin:
    """Mix into a `twisted.trial.unittest.TestCase`."""

    def start_lumora_server(self, **options):
        """A Deferred of a started `LumoraServer` (options as
        `HotReloadServer`'s), stopped when the test ends."""
        server = LumoraServer(**options)
        self.addCleanup(server.stop)  # type: ignore[attr-defined]
        return server.start()

    def lumora_device(self, server, session_id=None, **options):
        """A Deferred of a connected `DeviceClient` on `server` (a new
        session when `session_id` is None); stopped with the server."""
        if session_id is None:
            session_id = server.create_session()
        return server.device(session_id, **options)
