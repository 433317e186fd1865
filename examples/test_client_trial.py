"""Testing a device client with lumora-reload under Trial.

Run with ``python -m twisted.trial examples/test_client_trial.py``. The
mixin stops the server (and the devices it made) in a cleanup, so Trial's
dirty-reactor check passes.
"""

from twisted.internet import defer
from twisted.trial import unittest

from lumora_reload.client import Backoff
from lumora_reload.testing.trial import LumoraServerMixin

SCHEMA = {
    "version": "1.0",
    "metadata": {"sourceFramework": "react", "sourceFile": "App.tsx", "generatedAt": 0},
    "nodes": [{"id": "title", "type": "Text", "props": {"text": "Hello"}}],
}


def with_title(text):
    return {**SCHEMA, "nodes": [{"id": "title", "type": "Text", "props": {"text": text}}]}


class PreviewTests(LumoraServerMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.lumora = yield self.start_lumora_server(heartbeat_interval=0.5)
        self.session_id = self.lumora.create_session(SCHEMA)
        self.client = yield self.lumora_device(self.lumora, self.session_id, backoff=Backoff(initial=0.05))

    @defer.inlineCallbacks
    def test_follows_pushes(self):
        result = yield self.lumora.push(self.session_id, with_title("Bye"))
        yield self.client.wait_for_sequence(result.sequence_number)
        self.assertEqual(self.client.replica.schema, with_title("Bye"))

    @defer.inlineCallbacks
    def test_gap_is_repaired(self):
        self.lumora.withhold_next_update(self.session_id)
        yield self.lumora.push(self.session_id, with_title("two"))
        yield self.lumora.push(self.session_id, with_title("three"))
        yield self.client.wait_for_sequence(3)
        self.assertEqual(self.client.replica.schema, with_title("three"))

    @defer.inlineCallbacks
    def test_stops_on_a_final_close(self):
        stopped = self.client.when("stopped")
        self.lumora.close_device(self.session_id, 4410, "Session expired")
        closed = yield stopped
        self.assertTrue(closed.final)

    @defer.inlineCallbacks
    def test_refused_resume_starts_over(self):
        self.lumora.refuse_resume(self.session_id)
        again = self.client.when("connected")
        self.lumora.drop_device(self.session_id)
        connected = yield again
        self.assertFalse(connected["resumed"])
        self.assertEqual(self.client.replica.schema, SCHEMA)
