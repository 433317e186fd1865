"""The pytest plugin of the test kit (registered as ``pytest11``).

Fixtures:

``lumora_server``
    a started `LumoraServer` for the test (options from
    ``@pytest.mark.lumora(**options)``), stopped after it with nothing left
    pending.
``lumora_server_factory``
    ``lumora_server_factory(**options)``: a Deferred of another started
    `LumoraServer` (in an ``inlineCallbacks``/``ensureDeferred`` test:
    ``server = yield lumora_server_factory(heartbeat_interval=0.2)``).
``lumora_device``
    ``lumora_device(session_id=None, **options)``: a Deferred of a started
    `DeviceClient` that has the server's ``connected`` (a new session when
    `session_id` is None; the client's ``session_id`` says which).
``lumora_memory``
    a `MemoryNetwork`: the same daemon without sockets, everything on one
    ``task.Clock`` (options from ``@pytest.mark.lumora``), stopped after
    the test. Plain synchronous tests; no reactor, no pytest-twisted.

The first three drive the reactor through pytest-twisted, which must be installed.
Nothing here imports the reactor until a fixture is used.
"""

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "lumora(**options): HotReloadServer options (heartbeat_interval, connection_timeout, ...) "
        "for the lumora_server and lumora_memory fixtures",
    )


def _blockon(d):
    try:
        import pytest_twisted
    except ImportError:  # pragma: no cover - the message is the point
        raise pytest.UsageError(
            "the lumora_server fixtures need pytest-twisted: pip install pytest-twisted"
        ) from None
    return pytest_twisted.blockon(d)


class _Servers:
    def __init__(self):
        self.started = []

    def __call__(self, **options):
        from lumora_reload.testing.server import LumoraServer

        server = LumoraServer(**options)
        self.started.append(server)
        return server.start()

    def stop(self):
        for server in reversed(self.started):
            _blockon(server.stop())
        # only once all are stopped: a running server's timers are no leak
        leaks = {id(c): c for server in self.started for c in server.pending_calls()}.values()
        for call in leaks:
            call.cancel()
        assert not leaks, "timers left pending by lumora_server: " + "; ".join(map(repr, leaks))


@pytest.fixture
def lumora_server_factory():
    """Start more `LumoraServer`s: ``server = yield lumora_server_factory(**options)``."""
    servers = _Servers()
    yield servers
    servers.stop()


@pytest.fixture
def lumora_server(request, lumora_server_factory):
    """An in-process lumora-reload daemon on 127.0.0.1 (ephemeral port,
    in-memory store); ``url``, ``ws_url(id)``, ``create_session()``,
    ``push(id, schema)``, ``server``, and the misbehaviours."""
    marker = request.node.get_closest_marker("lumora")
    options = dict(marker.kwargs) if marker is not None else {}
    return _blockon(lumora_server_factory(**options))


@pytest.fixture
def lumora_memory(request):
    """The daemon without sockets (`MemoryNetwork`, on a task.Clock):
    ``device(id)``, ``pump()``, ``advance(seconds)``, ``push(id, schema)``,
    and the misbehaviours."""
    from lumora_reload.testing.memory import MemoryNetwork

    marker = request.node.get_closest_marker("lumora")
    network = MemoryNetwork(**(dict(marker.kwargs) if marker is not None else {}))
    yield network
    network.stop()


@pytest.fixture
def lumora_device(lumora_server):
    """Connect `DeviceClient`s: ``client = yield lumora_device(session_id)``."""

    def connect(session_id=None, **options):
        if session_id is None:
            session_id = lumora_server.create_session()
        return lumora_server.device(session_id, **options)

    return connect
