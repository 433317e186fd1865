"""twistd plugin: ``twistd lumora-reload``.

Twisted imports ``lumora_reload.tap`` only when the command runs, so plugin
discovery stays cheap.
"""
from twisted.application.service import ServiceMaker

lumora_reload = ServiceMaker(
    "lumora-reload",
    "lumora_reload.tap",
    "Push live Lumora UI-schema updates to previewing devices",
    "lumora-reload",
)
