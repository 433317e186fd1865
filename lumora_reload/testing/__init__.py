"""A test kit for device-client authors: lumora-reload inside your tests.

Every way in is a real `HotReloadServer` with an in-memory store: on an
ephemeral loopback port (`LumoraServer`) or on no socket at all
(`MemoryNetwork`).

- pytest: installing lumora-reload registers the plugin
  (`lumora_reload.testing.pytest_plugin`, entry point ``pytest11``) with the
  fixtures ``lumora_server``, ``lumora_server_factory`` and
  ``lumora_device``, and the marker ``@pytest.mark.lumora(**options)``.
  The fixtures need pytest-twisted (``pip install pytest-twisted``).
- Trial: `LumoraServerMixin` (``lumora_reload.testing.trial``) starts the
  same server from ``setUp`` and stops it with ``addCleanup``.
- Without sockets: `MemoryNetwork` (``lumora_reload.testing.memory``) is
  the same daemon with its devices joined by in-memory transports
  (`MemoryLink`) and every timer -- the daemon's sweeps and WebSocket
  pings, the clients' heartbeats and backoff -- on one `task.Clock`:
  ``pump()`` moves bytes, ``advance(seconds)`` moves time, so a client's
  timeouts and reconnect schedule are tested exactly, in milliseconds,
  without the real reactor.
- Misbehaviour on demand: methods of `LumoraServer` and `MemoryNetwork`
  (``close_device``, ``drop_device``, ``stall_device``,
  ``send_wrong_checksum``, ``withhold_next_update``,
  ``reorder_next_updates``, ``send_duplicate``, ``delay_pongs``,
  ``stall_pings``, ``refuse_resume``), each documented with what a device
  client is expected to do.
- A conformance run: `lumora_reload.testing.conformance.Runner` plays a
  fixed script of scenarios against one client and judges it from its
  acks and reconnects; ``lumora-reload conformance`` is its command line
  (docs/conformance.md).

Importing this package imports no reactor.
"""

from lumora_reload.testing.memory import CLIENT_PROTOCOL_OPTIONS, MemoryLink, MemoryNetwork
from lumora_reload.testing.server import LumoraServer

__all__ = ["CLIENT_PROTOCOL_OPTIONS", "LumoraServer", "MemoryLink", "MemoryNetwork"]
