"""lumora-reload: a hot-reload daemon for Lumora UI schemas.

Developers push Lumora IR schemas to a session over a small REST API; every
device previewing that session receives the new schema (full or as a delta)
over a WebSocket. See README.md ("Embedding") to use it as a library and
docs/protocol.md for the protocol.
"""

__version__ = "0.1.0"

__all__ = ["HotReloadServer", "__version__"]


def __getattr__(name):
    # Lazy so that `import lumora_reload` (e.g. for __version__ in setup.cfg)
    # does not pull in Twisted.
    if name == "HotReloadServer":
        from lumora_reload.server import HotReloadServer

        return HotReloadServer
    raise AttributeError(name)
