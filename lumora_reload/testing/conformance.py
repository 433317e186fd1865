"""A conformance run for device clients: a fixed script of scenarios
played against one client, each judged from what the client sent.

`Runner` holds a `LumoraServer` with one session; the client under test
joins its URL (`Runner.url`) and stays connected. Every scenario waits
until the client is connected and in sync, does one thing to it, and
judges from the client's own messages whether it behaved as
docs/protocol.md says and ended on the session's exact schema: a client
holds state N exactly when it acknowledged N with ``success: true``
(it has checked N's checksum) and sent no failed ack after. A client
that reconnects must send ``lastSequence`` (the number it holds).

A `launcher` (anything with ``start(url)``, ``stop()`` returning a
Deferred, and ``running``) starts the client; after a final close
(4404, 4410) the runner stops it and starts it again for the next
scenario. Without one the runner waits for the client to come back.
``lumora-reload conformance`` is the command line; docs/conformance.md
describes the report.
"""

import time

import attrs
import orjson
from twisted.internet import defer, task
from zope.interface import implementer

from lumora_reload import messages
from lumora_reload.connection import Flow
from lumora_reload.sessions import IDeviceLink, Outgoing
from lumora_reload.testing.misbehave import WRONG_CHECKSUM, Once

POLL = 0.02  # seconds between looks at what the client did


@attrs.define
class Check:
    name: str
    passed: bool
    detail: str = ""

    def to_json(self):
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@attrs.define
class Outcome:
    name: str
    title: str
    checks: list
    seconds: float = 0.0

    @property
    def passed(self):
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_json(self):
        return {
            "name": self.name, "title": self.title, "passed": self.passed,
            "seconds": round(self.seconds, 3), "checks": [c.to_json() for c in self.checks],
        }


@attrs.define
class Report:
    url: str
    outcomes: list

    @property
    def passed(self):
        return bool(self.outcomes) and all(o.passed for o in self.outcomes)

    def to_json(self):
        failed = [o.name for o in self.outcomes if not o.passed]
        return {
            "format": "lumora-conformance/1",
            "sessionUrl": self.url,
            "passed": self.passed,
            "summary": {"scenarios": len(self.outcomes), "passed": len(self.outcomes) - len(failed),
                        "failed": len(failed), "failedScenarios": failed},
            "scenarios": [o.to_json() for o in self.outcomes],
        }


class Seen:
    """One connection to the session, as the daemon saw it."""

    def __init__(self, connection, now):
        self.connection = connection
        self.opened_at = now
        self.connect = None  # the `connect` payload
        self.messages = []  # (time, type, payload) from the device
        self.sent = []  # (time, update type, sequence) to the device
        self.pongs = 0  # answers to WebSocket pings
        self.closed_at = None

    @property
    def connection_id(self):
        device = self.connection.device
        return None if device is None else device.connection_id

    @property
    def open(self):
        return self.closed_at is None and self.connect is not None


class Recorder:
    """Records every device connection of the server: what each device
    sends and which updates it is sent."""

    def __init__(self, server, clock):
        self.clock = clock
        self.seen = []
        factory = server.server.ws_factory
        opened = factory.opened

        def recording(protocol):
            opened(protocol)
            self._watch(protocol.connection)

        factory.opened = recording

    def _watch(self, connection):
        seen = Seen(connection, self.clock.seconds())
        self.seen.append(seen)
        received, closed, ponged, send = connection.received, connection.closed, connection.ponged, connection.send

        def on_received(data, binary=False):
            try:
                message = orjson.loads(data)
                kind, payload = message.get("type"), message.get("payload") or {}
            except (orjson.JSONDecodeError, AttributeError):
                kind, payload = None, {}
            if kind == "connect" and seen.connect is None and isinstance(payload, dict):
                seen.connect = payload
            seen.messages.append((self.clock.seconds(), kind, payload))
            received(data, binary)

        def on_closed(code=None):
            if seen.closed_at is None:
                seen.closed_at = self.clock.seconds()
            closed(code)

        def on_ponged():
            seen.pongs += 1
            ponged()

        def on_send(outgoing):
            try:
                message = orjson.loads(outgoing.payload)
                if message.get("type") == "update":
                    payload = message["payload"]
                    seen.sent.append((self.clock.seconds(), payload.get("type"), payload.get("sequenceNumber")))
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                pass
            send(outgoing)

        connection.received, connection.closed = on_received, on_closed
        connection.ponged, connection.send = on_ponged, on_send

    def current(self):
        """The client's latest open connection, or None."""
        live = [s for s in self.seen if s.open]
        return live[-1] if live else None


@implementer(IDeviceLink)
class _Impostor:
    """A second device with the client's deviceId and no socket: joining
    replaces the client's connection (4409)."""

    def __init__(self):
        self.closes = []

    def send(self, outgoing):
        pass

    def close(self, code, reason):
        self.closes.append(code)


def _schema(nodes):
    return {"version": "1.0", "metadata": {"sourceFramework": "conformance", "sourceFile": "app", "generatedAt": 0},
            "nodes": nodes}


def _node(node_id, text=None, children=()):
    return {"id": node_id, "type": "Text" if text is not None else "View",
            "props": {} if text is None else {"text": text}, "children": list(children), "metadata": {}}


def _screen(prefix, count, title="Hello"):
    """A schema of `count` top-level nodes under `prefix`, the first a View
    holding a title."""
    first = _node(f"{prefix}-0", children=[_node(f"{prefix}-title", title)])
    return _schema([first] + [_node(f"{prefix}-{i}", f"item {i}") for i in range(1, count)])


SCENARIOS = (
    ("full", "a full update (a new screen)"),
    ("incremental", "an incremental update (one text changed)"),
    ("deltas", "deltas of protocol 1.1 (nested insert) and 1.0 (top-level append)"),
    ("checksum-mismatch", "an update whose checksum is wrong is refused, then repaired"),
    ("latest-wins", "a slow reader skips to a full update of the latest state"),
    ("ping-pong", "the daemon's WebSocket ping is answered"),
    ("resume-1012", "after 1012 the client reconnects at once and resumes with lastSequence"),
    ("replaced-4409", "after 4409 the client reconnects with backoff and resumes"),
    ("final-4404", "after 4404 the client does not reconnect"),
    ("final-4410", "after 4410 the client does not reconnect"),
)
NAMES = tuple(name for name, _ in SCENARIOS)


class Runner:
    """Plays the scenarios against the client on `server` (a started
    `LumoraServer`). `timeout`: seconds the client has for each step;
    `connect_timeout`: for joining (default `timeout`); `final_wait`: how
    long it is watched after a final close;
    `say(text)`: progress lines."""

    def __init__(self, server, launcher=None, timeout=10.0, final_wait=3.0, connect_timeout=None, say=None):
        self.server = server
        self.clock = server.reactor
        self.launcher = launcher
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self.final_wait = final_wait
        self.say = say or (lambda text: None)
        self.recorder = Recorder(server, self.clock)
        self.session_id = server.create_session(_screen("start", 3))
        self.url = server.ws_url(self.session_id)
        self._text = 0

    @property
    def session(self):
        return self.server.session(self.session_id)

    @defer.inlineCallbacks
    def run(self, names=None):
        """Play the scenarios (all, or those `names`); a Deferred of the `Report`."""
        outcomes = []
        restart = False
        if self.launcher is not None:
            self.launcher.start(self.url)
        try:
            for name, title in SCENARIOS:
                if names and name not in names:
                    continue
                self.say(f"{name}: {title}")
                if restart:
                    yield self._restart_client()
                started = time.monotonic()
                ready = yield self._ready()
                checks = [ready]
                if ready.passed:
                    checks += yield getattr(self, "scenario_" + name.replace("-", "_"))()
                outcome = Outcome(name, title, checks, time.monotonic() - started)
                outcomes.append(outcome)
                self.say(f"  {'pass' if outcome.passed else 'FAIL'}")
                # the client stopped for good (or is lost): start it again
                # before the next scenario
                restart = name.startswith("final-") or not ready.passed
        finally:
            if self.launcher is not None:
                yield self.launcher.stop()
        return Report(self.url, outcomes)

    # -- waiting ---------------------------------------------------------

    @defer.inlineCallbacks
    def _until(self, predicate, timeout=None):
        """Poll `predicate` until it holds (True) or `timeout` passes (False)."""
        deadline = self.clock.seconds() + (self.timeout if timeout is None else timeout)
        while True:
            if predicate():
                return True
            if self.clock.seconds() >= deadline:
                return False
            yield task.deferLater(self.clock, POLL, lambda: None)

    def _acks(self, since=0.0):
        """(time, sequence, success, error) of every ack from the client since `since`."""
        return [
            (t, p.get("sequenceNumber"), p.get("success"), p.get("error"))
            for s in self.recorder.seen for (t, kind, p) in s.messages
            if kind == "ack" and t >= since and isinstance(p, dict)
        ]

    def _holds(self, sequence, since=0.0):
        acks = self._acks(since)
        return bool(acks) and acks[-1][1] == sequence and acks[-1][2] is True

    def _in_sync(self):
        """The client's open connection holds the session's state: it
        acked it, or it has had nothing since `connected` gave it the
        state (a client need not ack ``initialSchema``)."""
        seen = self.recorder.current()
        if seen is None:
            return False
        if self._holds(self.session.sequence):
            return True
        return not self._acks(seen.opened_at) and not seen.sent

    @defer.inlineCallbacks
    def _ready(self):
        ok = yield self._until(self._in_sync, self.connect_timeout)
        if ok:
            return Check("client connected and in sync", True, f"at #{self.session.sequence}")
        seen = self.recorder.current()
        why = "no client connected" if seen is None else "it does not hold the session's state"
        return Check("client connected and in sync", False, f"{why} after {self.connect_timeout:g} s")

    @defer.inlineCallbacks
    def _synced(self, since, name="ends on the exact schema"):
        sequence = self.session.sequence
        ok = yield self._until(lambda: self._holds(sequence, since))
        if ok:
            return Check(name, True, f"acked #{sequence} (checksum {self.session.checksum[:12]})")
        acks = self._acks(since)
        last = acks[-1] if acks else None
        got = "no ack" if last is None else f"last ack #{last[1]} success={last[2]}" + (
            f" ({last[3]})" if last[3] else "")
        return Check(name, False, f"expected a successful ack of #{sequence} within {self.timeout:g} s; {got}")

    @defer.inlineCallbacks
    def _restart_client(self):
        if self.launcher is None:
            self.say("  waiting for the client to connect again (restart it if it stopped)")
            return
        yield self.launcher.stop()
        self.launcher.start(self.url)

    def _push(self, schema):
        result = []
        self.server.push(self.session_id, schema).addBoth(result.append)
        return result[0]

    def _next_text(self):
        self._text += 1
        return f"text {self._text}"

    def _edit(self):
        """The current schema with its title's text changed."""
        schema = orjson.loads(orjson.dumps(self.session.schema))
        title = schema["nodes"][0]["children"][0]
        title["props"]["text"] = self._next_text()
        return schema

    # -- the scenarios ---------------------------------------------------

    @defer.inlineCallbacks
    def scenario_full(self):
        since = self.clock.seconds()
        result = self._push(_screen("full", 12, "A new screen"))
        return [Check("daemon sent a full update", result.update_type == "full", result.update_type),
                (yield self._synced(since))]

    @defer.inlineCallbacks
    def scenario_incremental(self):
        since = self.clock.seconds()
        result = self._push(self._edit())
        return [Check("daemon sent an incremental update", result.update_type == "incremental", result.update_type),
                (yield self._synced(since))]

    @defer.inlineCallbacks
    def scenario_deltas(self):
        seen = self.recorder.current()
        version = str(seen.connect.get("clientVersion", ""))
        legacy = tuple(version.split(".")[:2]) == ("1", "0")
        checks = []
        # a nested insert at index 0: only a 1.1 device can take it as a delta
        schema = orjson.loads(orjson.dumps(self.session.schema))
        schema["nodes"][0]["children"].insert(0, _node(f"nested-{self._text}", "inserted first"))
        since = self.clock.seconds()
        sent = len(seen.sent)
        self._push(schema)
        expected = "full" if legacy else "incremental"
        got = [kind for _, kind, _ in seen.sent[sent:]]
        checks.append(Check(f"a {version or '?'} client was sent {expected} for a nested insert",
                            got[:1] == [expected], ", ".join(got) or "nothing"))
        checks.append((yield self._synced(since, "applied the nested insert")))
        # a top-level append: a delta for 1.0 and 1.1 alike
        schema = orjson.loads(orjson.dumps(self.session.schema))
        schema["nodes"].append(_node(f"appended-{self._text}", "appended last"))
        since = self.clock.seconds()
        sent = len(seen.sent)
        self._push(schema)
        got = [kind for _, kind, _ in seen.sent[sent:]]
        checks.append(Check("was sent incremental for a top-level append", got[:1] == ["incremental"],
                            ", ".join(got) or "nothing"))
        checks.append((yield self._synced(since, "applied the top-level append")))
        return checks

    @defer.inlineCallbacks
    def scenario_checksum_mismatch(self):
        seen = self.recorder.current()
        (tap,) = self.server._taps_of(self.session_id, seen.connection_id)
        tap.rules.append(Once({"update"}, lambda tap, outgoing: tap.deliver(_with_wrong_checksum(outgoing))))
        since = self.clock.seconds()
        self._push(self._edit())
        bad = self.session.sequence

        def refusal():
            for t, kind, p in (m for s in self.recorder.seen for m in s.messages):
                if t < since or not isinstance(p, dict):
                    continue
                if kind == "ack" and p.get("sequenceNumber") == bad:
                    return "accepted" if p.get("success") is True else "failed ack"
                if kind == "error" and p.get("code") == "CHECKSUM_MISMATCH":
                    return "error CHECKSUM_MISMATCH"
            return None

        yield self._until(lambda: refusal() is not None)
        answer = refusal()
        refused = answer in ("failed ack", "error CHECKSUM_MISMATCH")
        detail = {None: f"no answer within {self.timeout:g} s",
                  "accepted": f"acked #{bad} as applied although its checksum is wrong"}.get(answer, answer)
        return [Check("refused the update with the wrong checksum", refused, detail),
                (yield self._synced(since, "ends on the exact schema after the full update"))]

    @defer.inlineCallbacks
    def scenario_latest_wins(self):
        seen = self.recorder.current()
        connection = seen.connection
        # as a socket that stopped draining past --max-buffer: updates are
        # not queued; when it drains the device gets the latest state, full
        connection.flow = Flow.CONGESTED
        since = self.clock.seconds()
        first = self.session.sequence + 1
        for _ in range(4):
            self._push(self._edit())
        sent = len(seen.sent)
        connection.resumed()
        got = seen.sent[sent:]
        skipped = bool(got) and got[0][1] == "full" and got[0][2] == self.session.sequence
        return [Check(f"took a full update of #{self.session.sequence} after #{first - 1}", skipped,
                      ", ".join(f"{k} #{n}" for _, k, n in got) or "nothing sent"),
                (yield self._synced(since))]

    @defer.inlineCallbacks
    def scenario_ping_pong(self):
        seen = self.recorder.current()
        before = seen.pongs
        seen.connection.wire.sendPing(b"conformance")
        ok = yield self._until(lambda: seen.pongs > before)
        pings = sum(1 for s in self.recorder.seen for _, kind, _ in s.messages if kind == "ping")
        return [Check("answered a WebSocket ping", ok,
                      f"pong received; {pings} ping message(s) sent by the client so far" if ok
                      else f"no pong within {self.timeout:g} s")]

    @defer.inlineCallbacks
    def scenario_resume_1012(self):
        return (yield self._reconnect(messages.CLOSE_RESTART, "Service restart"))

    @defer.inlineCallbacks
    def scenario_replaced_4409(self):
        seen = self.recorder.current()
        payload = {"deviceId": seen.connect.get("deviceId"), "platform": "conformance", "clientVersion": "1.1.0"}
        impostor = _Impostor()
        _, device, _ = self.server.hub.attach(self.session_id, impostor, payload)
        try:
            return (yield self._reconnect(None, None, seen=seen))
        finally:
            self.server.hub.detach(self.session_id, device)

    @defer.inlineCallbacks
    def _reconnect(self, code, reason, seen=None):
        if seen is None:
            seen = self.recorder.current()
            self.server.close_device(self.session_id, code, reason, device=seen.connection_id)
        held, held_checksum = self.session.sequence, self.session.checksum
        yield self._until(lambda: seen.closed_at is not None)
        since = self.clock.seconds()
        self._push(self._edit())  # missed while away: the resume replays it
        back = yield self._until(lambda: any(s.connect is not None for s in self.recorder.seen[
            self.recorder.seen.index(seen) + 1:]))
        if not back:
            return [Check("reconnected", False, f"no new connection within {self.timeout:g} s")]
        new = next(s for s in self.recorder.seen[self.recorder.seen.index(seen) + 1:] if s.connect is not None)
        waited = new.opened_at - (seen.closed_at or new.opened_at)
        checks = [Check("reconnected", True, f"after {waited:.2f} s")]
        if code is None:  # 4409: with backoff, not in a tight loop
            checks.append(Check("waited before reconnecting", waited >= 0.1, f"{waited:.2f} s"))
        last = new.connect.get("lastSequence")
        checks.append(Check("resumed with lastSequence of the state it held", last == held,
                            f"lastSequence {last!r}, held #{held}"))
        if "lastChecksum" in new.connect:  # optional; wrong is worse than absent
            sent = new.connect["lastChecksum"]
            checks.append(Check("lastChecksum is that state's checksum", sent == held_checksum,
                                f"{str(sent)[:12]}, state #{held} is {held_checksum[:12]}"))
        checks.append((yield self._synced(since)))
        return checks

    @defer.inlineCallbacks
    def scenario_final_4404(self):
        return (yield self._final(messages.CLOSE_NOT_FOUND, "Session not found"))

    @defer.inlineCallbacks
    def scenario_final_4410(self):
        return (yield self._final(messages.CLOSE_EXPIRED, "Session expired"))

    @defer.inlineCallbacks
    def _final(self, code, reason):
        seen = self.recorder.current()
        count = len(self.recorder.seen)
        self.server.close_device(self.session_id, code, reason, device=seen.connection_id)
        yield self._until(lambda: seen.closed_at is not None)
        closed_at = self.clock.seconds()
        again = yield self._until(lambda: len(self.recorder.seen) > count, timeout=self.final_wait)
        if again:
            after = self.recorder.seen[count].opened_at - closed_at
            return [Check(f"did not reconnect after {code}", False, f"reconnected after {after:.2f} s")]
        return [Check(f"did not reconnect after {code}", True, f"watched {self.final_wait:g} s")]


def _with_wrong_checksum(outgoing):
    message = orjson.loads(outgoing.payload)
    message["payload"]["checksum"] = WRONG_CHECKSUM
    return Outgoing(messages.encode(message), outgoing.sequence)
