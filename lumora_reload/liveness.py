"""The two periodic sweeps: device liveness and session expiry.

Both run as LoopingCalls on an injected clock. Each catches and logs its
own exceptions, because an exception stops a LoopingCall for good.
"""

from twisted.internet import task
from twisted.logger import Logger

from lumora_reload import messages


class Sweeps:
    def __init__(self, hub, on_expired, clock, heartbeat_interval, cleanup_interval, on_active=None,
                 expire=None):
        self._hub = hub
        self._on_expired = on_expired
        self._expire = expire
        self._on_active = on_active
        self._log = Logger()
        self._heartbeat = task.LoopingCall(self.sweep_devices)
        self._heartbeat.clock = clock
        self._cleanup = task.LoopingCall(self.sweep_sessions)
        self._cleanup.clock = clock
        self._intervals = (heartbeat_interval, cleanup_interval)

    def start(self):
        self._heartbeat.start(self._intervals[0], now=False)
        self._cleanup.start(self._intervals[1], now=False)

    def stop(self):
        for loop in (self._heartbeat, self._cleanup):
            if loop.running:
                loop.stop()

    def sweep_devices(self):
        """Close every device silent for longer than the connection timeout."""
        try:
            stale = self._hub.stale_devices()
            for session, device in stale:
                self._log.info(
                    "device {device} timed out", device=device.device_name or device.device_id, event="device.timeout"
                )
                session.remove_device(device)
                device.link.close(messages.CLOSE_NORMAL, "Connection timeout")
            return len(stale)
        except Exception:
            self._log.failure("device liveness sweep failed")
            return 0

    def sweep_sessions(self):
        """Expire sessions idle past their timeout."""
        try:
            expired = self._hub.expired_sessions()
            for session in expired:
                if self._expire is not None:  # the caller decides (cluster mode)
                    self._expire(session)
                else:
                    self._hub.expire(session)
                    self._on_expired(session)
            if self._on_active is not None:
                # sessions kept alive by their devices: persist the slid
                # expiry, so a crash does not expire them early
                for session in list(self._hub.sessions.values()):
                    if session.devices:
                        self._on_active(session)
            return len(expired)
        except Exception:
            self._log.failure("session expiry sweep failed")
            return 0
