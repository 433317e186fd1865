"""A test kit for device-client authors: lumora-reload inside your tests.

Three ways in, one object underneath (`LumoraServer`, a real
`HotReloadServer` with an in-memory store on an ephemeral loopback port):

- pytest: installing lumora-reload registers the plugin
  (`lumora_reload.testing.pytest_plugin`, entry point ``pytest11``) with the
  fixtures ``lumora_server``, ``lumora_server_factory`` and
  ``lumora_device``, and the marker ``@pytest.mark.lumora(**options)``.
  The fixtures need pytest-twisted (``pip install pytest-twisted``).
- Trial: `LumoraServerMixin` (``lumora_reload.testing.trial``) starts the
  same server from ``setUp`` and stops it with ``addCleanup``.
- Misbehaviour on demand: methods of `LumoraServer` (``close_device``,
  ``drop_device``, ``stall_device``, ``send_wrong_checksum``,
  ``withhold_next_update``, ``reorder_next_updates``,
  ``send_duplicate``, ``delay_pongs``, ``refuse_resume``), each documented
  with what a device client is expected to do.

Importing this package imports no reactor.
"""

from lumora_reload.testing.memory import MemoryLink, MemoryNetwork
from lumora_reload.testing.server import LumoraServer

__all__ = ["LumoraServer", "MemoryLink", "MemoryNetwork"]
