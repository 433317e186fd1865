"""Testing a device client with lumora-reload's pytest fixtures.

Run with ``pytest examples/test_client_pytest.py`` (lumora-reload and
pytest-twisted installed; the fixtures come from the ``pytest11`` plugin).

The client under test is `Preview`: it keeps the text of the node
``title`` from the schemas lumora-reload sends.
"""

import pytest
import pytest_twisted

from lumora_reload.client import Backoff, DeviceClient

SCHEMA = {
    "version": "1.0",
    "metadata": {"sourceFramework": "react", "sourceFile": "App.tsx", "generatedAt": 0},
    "nodes": [{"id": "title", "type": "Text", "props": {"text": "Hello"}}],
}


def with_title(text):
    return {**SCHEMA, "nodes": [{"id": "title", "type": "Text", "props": {"text": text}}]}


class Preview:
    """A tiny client: the title a screen would show."""

    def __init__(self, client: DeviceClient):
        self.client = client
        self.title = None
        client.subscribe("schema", self._schema)

    def _schema(self, schema, sequence):
        self.title = schema["nodes"][0]["props"]["text"]


@pytest_twisted.inlineCallbacks
def test_shows_every_push(lumora_server, lumora_device):
    session_id = lumora_server.create_session(SCHEMA)
    preview = Preview((yield lumora_device(session_id)))
    assert preview.client.replica.schema == SCHEMA
    result = yield lumora_server.push(session_id, with_title("Bye"))
    yield preview.client.wait_for_sequence(result.sequence_number)
    assert preview.title == "Bye"


@pytest_twisted.inlineCallbacks
def test_recovers_from_a_bad_checksum(lumora_server, lumora_device):
    session_id = lumora_server.create_session(SCHEMA)
    preview = Preview((yield lumora_device(session_id)))
    repaired = preview.client.when("update", lambda event: event.ok)
    lumora_server.send_wrong_checksum(session_id)
    yield repaired
    assert preview.client.replica.checksum == lumora_server.session(session_id).checksum


@pytest.mark.lumora(heartbeat_interval=0.5)
@pytest_twisted.inlineCallbacks
def test_resumes_after_a_dropped_connection(lumora_server, lumora_device):
    session_id = lumora_server.create_session(SCHEMA)
    preview = Preview((yield lumora_device(session_id, backoff=Backoff(initial=0.05))))
    again = preview.client.when("connected")
    lumora_server.drop_device(session_id)
    assert (yield again)["resumed"] is True
    yield lumora_server.push(session_id, with_title("after"))
    yield preview.client.wait_for_sequence(2)
    assert preview.title == "after"
