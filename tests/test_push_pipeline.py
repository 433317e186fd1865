"""The push pipeline against a model, as a hypothesis state machine.

An in-process `HotReloadServer` on a `task.Clock`, with fake devices that
keep a replica of the schema (applying every update with
`schema.apply_delta` and checking `schema.checksum`), is driven through
random interleavings of:

- pushes (random small trees, and no-change pushes of the current schema);
- pushes whose store write fails (an injected `StoreError`, or, on SQLite,
  the database really locked by another connection);
- slow store writes (a Deferred the test fires later, or fails), so that
  two pushes to one session are in flight at once;
- devices connecting, disconnecting, resuming with `lastSequence` (and
  sometimes `lastChecksum`), or resuming with a claim the daemon must not
  believe (a number ahead of it, a checksum that differs);
- time passing (liveness sweeps close silent devices), reloads;
- daemon restarts (SQLite: stop the server, close the store, open a new
  store on the same dir, start a new server).

The model is the list of committed states per session: a state is committed
when the store's `commit_push` returned (or its Deferred fired). After every
step: each device's replica is exactly the committed schema for the number
it holds (and its checksum); connected devices hold the newest one; the
numbers are gapless and never reused (also across restarts, also on disk);
`session_info`, the session's schema, its full update and its history match
the last committed state; at most one write per session is in flight; a
failed write changed nothing and sent nothing.

Runs against the in-memory store, the SQLite store, and an asynchronous
wrapper over each. ``HYPOTHESIS_PROFILE=slow`` runs many more examples.
"""

import collections
import copy
import os
import shutil
import sqlite3
import tempfile

import orjson
from hypothesis import HealthCheck, event, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from lumora_reload import schema as schemas
from lumora_reload.errors import LumoraError
from lumora_reload.server import HotReloadServer
from lumora_reload.sessions import IDeviceLink, PushResult
from lumora_reload.sqlite_store import SQLiteStore, StoreError
from lumora_reload.store import ISessionStore, MemoryStore

SLOW = os.environ.get("HYPOTHESIS_PROFILE") == "slow"
SETTINGS = settings(
    max_examples=400 if SLOW else 30,
    stateful_step_count=60 if SLOW else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# -- schemas -------------------------------------------------------------------

IDS = ["a", "b", "c", "d", "e", "f"]
# a field that never changes: it makes the full schema bigger than a few
# incremental updates, so that resuming devices replay them
ASSETS = "asset " * 200


@st.composite
def trees(draw):
    """A valid schema of up to six nodes drawn from a small id pool, so that
    consecutive pushes share nodes (incremental updates: modifications,
    adds, removes, moves, top-level field changes) or not (full updates)."""
    ids = draw(st.lists(st.sampled_from(IDS), unique=True, max_size=len(IDS)))
    by_id = {}
    top = []
    for i, node_id in enumerate(ids):
        node = {
            "id": node_id,
            "type": draw(st.sampled_from(["View", "Text"])),
            "props": {"text": draw(st.sampled_from(["", "x", "hello"])), "n": draw(st.integers(0, 2))},
            "children": [],
        }
        parent = draw(st.integers(-1, i - 1))
        (top if parent < 0 else by_id[ids[parent]]["children"]).append(node)
        by_id[node_id] = node
    schema = {
        "version": draw(st.sampled_from(["1.0", "1.1"])),
        "metadata": {"sourceFramework": "react", "sourceFile": "App.tsx",
                     "generatedAt": draw(st.integers(1, 2))},
        "nodes": top,
        "assets": ASSETS,
    }
    theme = draw(st.sampled_from([None, "dark", "light"]))
    if theme is not None:
        schema["theme"] = theme
    return schema


def next_schema():
    return {"version": "1.0", "metadata": {"sourceFramework": "react", "sourceFile": "App.tsx",
            "generatedAt": 1}, "nodes": [], "assets": ASSETS}


def unchanged(a, b):
    """True when pushing `b` over `a` changes nothing (`generatedAt` aside)."""
    if a is None or b is None:
        return a is b

    def strip(s):
        s = copy.deepcopy(s)
        s["metadata"].pop("generatedAt", None)
        return s

    return strip(a) == strip(b)


# -- the store, with failures and slowness on demand ---------------------------


@implementer(ISessionStore)
class Switchboard:
    """Wraps a real store; its `commit_push` can fail (`fail_next`) or, with
    `slow`, return a Deferred the test fires (`release`) or fails (`fail`).
    Everything else goes straight to the real store. Tells the model about
    every write: attempted, committed (before the caller hears of it), failed."""

    def __init__(self, inner, model):
        self.inner = inner
        self.model = model
        self.slow = False
        self.fail_next = False
        self.pending = []  # (update, Deferred)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def commit_push(self, update):
        self.model.attempted(update)
        if self.slow:
            d = defer.Deferred()
            self.pending.append((update, d))
            return d
        if self.fail_next:
            self.fail_next = False
            self.model.failed(update)
            raise StoreError("injected: the disk is full")
        self._write(update)
        return None

    def _write(self, update):
        try:
            self.inner.commit_push(update)
        except Exception:
            self.model.failed(update)
            raise
        self.model.committed(update)

    def release(self, i):
        update, d = self.pending.pop(i)
        try:
            self._write(update)
        except Exception:
            d.errback(Failure())
        else:
            d.callback(None)

    def fail(self, i):
        update, d = self.pending.pop(i)
        self.model.failed(update)
        d.errback(StoreError("injected: the slow write failed"))


# -- devices -------------------------------------------------------------------


@implementer(IDeviceLink)
class Link:
    """One connection of a `FakeDevice`."""

    def __init__(self, device):
        self.device = device

    def send(self, outgoing):
        if self.device.link is not self:
            self.device.model.problem(f"{self.device.name}: sent a message on a closed connection")
            return
        self.device.receive(orjson.loads(outgoing.payload))

    def close(self, code, reason):
        if self.device.link is self:
            self.device.link = None
            self.device.hub_device = None


class FakeDevice:
    """A device as a client would be: it applies what it gets to its replica
    and checks every checksum; it remembers its state while offline."""

    def __init__(self, model, sid, name, legacy):
        self.model = model
        self.sid = sid
        self.name = name
        self.legacy = legacy
        self.link = None
        self.hub_device = None
        self.sequence = 0
        self.schema = None
        self.checksum = None
        self.messages = 0
        self.lying = False  # the last connect claimed a state it does not hold
        self.resumed = None

    @property
    def online(self):
        return self.link is not None

    def receive(self, message):
        self.messages += 1
        p = message["payload"]
        problem = self.model.problem
        if message["type"] == "connected":
            self.resumed = p["resumed"]
            event(f"connected: resumed={p['resumed']}")
            if p["resumed"]:
                if self.lying:
                    problem(f"{self.name}: resumed on a false claim {p}")
                if p["sequenceNumber"] > self.sequence:
                    event("resumed with a replay")
                return
            self.sequence, self.schema = p["sequenceNumber"], p.get("initialSchema")
            self.checksum = p.get("checksum")
            if self.schema is not None and self.checksum != schemas.checksum(self.schema):
                problem(f"{self.name}: initialSchema does not match its checksum")
        elif message["type"] == "update":
            event(f"update: {p['type']}{' (legacy)' if self.legacy else ''}")
            if p["type"] == "full":
                new = p["schema"]
            else:
                if p["sequenceNumber"] != self.sequence + 1:
                    problem(f"{self.name}: incremental {p['sequenceNumber']} on state {self.sequence}")
                    return
                try:
                    new = schemas.apply_delta(self.schema, p["delta"], legacy=self.legacy)
                except (ValueError, KeyError, TypeError) as e:
                    problem(f"{self.name}: delta {p['sequenceNumber']} does not apply: {e}")
                    return
            if schemas.checksum(new) != p["checksum"]:
                problem(f"{self.name}: update {p['sequenceNumber']} ({p['type']}) leaves a checksum mismatch")
            self.sequence, self.schema, self.checksum = p["sequenceNumber"], new, p["checksum"]
        else:
            problem(f"{self.name}: unexpected {message['type']}")
            return
        self.model.check_replica(self)


class Request:
    """One push handed to the server, until its Deferred fires."""

    def __init__(self, sid, schema):
        self.sid = sid
        self.schema = schema
        self.planned = False
        self.update = None
        self.outcome = None  # None (no write) | "committed" | "failed"


# -- the machine ---------------------------------------------------------------


class PushPipeline(RuleBasedStateMachine):
    INNER = "memory"  # or "sqlite"
    ASYNC = False  # every commit is a Deferred the machine fires later

    def __init__(self):
        super().__init__()
        self.clock = task.Clock()
        self.reactor = MemoryReactorClock()
        self.dir = tempfile.mkdtemp(prefix="pipeline-") if self.INNER == "sqlite" else None
        self.reader = None
        self.problems = []
        self.devices = []
        self.requests = collections.defaultdict(collections.deque)
        self.inflight = {}
        self._start()
        self.sids = [self.server.create_session().id for _ in range(2)]
        # committed states per session: sequence -> (schema, checksum)
        self.states = {sid: {0: (None, None)} for sid in self.sids}
        self.sequence = {sid: 0 for sid in self.sids}
        self.preserve = {sid: True for sid in self.sids}

    def _start(self):
        if self.INNER == "sqlite":
            inner = SQLiteStore.open(self.dir, clock=self.clock)
            self.reader = self.reader or sqlite3.connect(inner.path, isolation_level=None)
        else:
            inner = MemoryStore()
        self.store = Switchboard(inner, self)
        self.store.slow = self.ASYNC
        self.server = HotReloadServer(reactor=self.reactor, clock=self.clock, store=self.store)
        self.server.startService()
        plan = self.server.hub.plan_push

        def planning(session_id, schema, *args, **kwargs):
            self.planned(session_id, schema)
            return plan(session_id, schema, *args, **kwargs)

        self.server.hub.plan_push = planning

    def teardown(self):
        if self.store is not None:
            while self.store.pending:
                self.store.fail(0)
        if self.server is not None and self.server.running:
            self.server.stopService()
        if self.reader is not None:
            self.reader.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- what the model is told -------------------------------------------

    def problem(self, text):
        self.problems.append(text)

    def current(self, sid):
        return self.states[sid][self.sequence[sid]][0]

    def planned(self, session_id, schema):
        """The hub plans a push: it must be the oldest push of the session
        not planned yet (pushes to one session run in order)."""
        waiting = [r for r in self.requests[session_id] if not r.planned]
        if not waiting or waiting[0].schema != schema:
            self.problem("a push planned out of order")
        else:
            waiting[0].planned = True

    def attempted(self, update):
        sid = update.session_id
        if self.inflight.get(sid) is not None:
            self.problem(f"two writes of one session in flight: {self.inflight[sid].sequence}, {update.sequence}")
        self.inflight[sid] = update
        planned = [r for r in self.requests[sid] if r.planned]
        if not planned or planned[-1].update is not None:
            self.problem(f"a write ({update.sequence}) of no push being planned")
            return
        req = planned[-1]
        req.update = update
        if update.state.schema != req.schema:
            self.problem("the write carries another schema than the push")
        if update.base.sequence != self.sequence[sid] or update.sequence != self.sequence[sid] + 1:
            self.problem(f"planned {update.base.sequence}->{update.sequence}, committed is {self.sequence[sid]}")
        if update.state.checksum != schemas.checksum(req.schema):
            self.problem("the planned checksum is not the schema's")
        if unchanged(self.current(sid), req.schema):
            self.problem("a push that changes nothing was written")

    def committed(self, update):
        sid = update.session_id
        self.inflight[sid] = None
        n = update.sequence
        if n in self.states[sid]:
            self.problem(f"sequence {n} reused")
        self.sequence[sid] = n
        self.states[sid][n] = (copy.deepcopy(update.state.schema), schemas.checksum(update.state.schema))
        self.preserve[sid] = update.state.preserve_state
        event("write committed")
        for req in self.requests[sid]:
            if req.update is update:
                req.outcome = "committed"

    def failed(self, update):
        sid = update.session_id
        event("write failed")
        self.inflight[sid] = None
        for req in self.requests[sid]:
            if req.update is update:
                req.outcome = "failed"

    def finished(self, req, result):
        # (answers may nest: a push that ends lets the next one run before
        # its own callbacks do, so the order of answers is not checked here;
        # the order of planning is, in `planned`)
        self.requests[req.sid].remove(req)
        event(f"answered after {req.outcome or 'no write'}")
        if not req.planned:
            self.problem("a push answered before it was planned")
        if isinstance(result, Failure):
            if not (result.check(LumoraError) and result.value.status == 500):
                self.problem(f"push failed with {result!r}")
            elif req.outcome != "failed":
                self.problem(f"push answered 500 but its write was {req.outcome}")
            return None
        if not isinstance(result, PushResult) or not result.success:
            self.problem(f"push answered {result!r}")
        elif req.outcome == "committed":
            if (result.sequence_number, result.update_type) != (req.update.sequence, req.update.update_type):
                self.problem(f"push answered {result} for write {req.update.sequence}")
        elif req.outcome is None:
            n = result.sequence_number
            if result.update_type != "none" or n not in self.states[req.sid]:
                self.problem(f"push without a write answered {result}")
            elif not unchanged(self.states[req.sid][n][0], req.schema):
                self.problem("a push that changes the schema answered 'none'")
        else:
            self.problem("push answered 200 but its write failed")
        return None

    def check_replica(self, device):
        known = self.states[device.sid].get(device.sequence)
        if known is None:
            self.problem(f"{device.name} holds state {device.sequence}, never committed")
        elif device.checksum != known[1] or not unchanged(device.schema, known[0]):
            # `generatedAt` does not travel in an incremental update (docs/protocol.md, section 4)
            self.problem(f"{device.name} holds another schema than committed state {device.sequence}")

    # -- helpers ------------------------------------------------------------

    def push(self, sid, schema, preserve=True):
        req = Request(sid, copy.deepcopy(schema))
        self.requests[sid].append(req)
        d = self.server.push_update(sid, schema, preserve)
        d.addBoth(lambda result: self.finished(req, result))
        return req

    def attach(self, device, **claim):
        link = Link(device)
        device.link = link
        payload = {"deviceId": device.name, "platform": "ios",
                   "clientVersion": "1.0.0" if device.legacy else "1.1.0", **claim}
        _, device.hub_device, outgoing = self.server.hub.attach(device.sid, link, payload)
        for o in outgoing:
            link.send(o)

    def seen_by_devices(self):
        return [d.messages for d in self.devices]

    def assert_nothing_changed(self, before_states, before_seen):
        for sid in self.sids:
            assert self.server.hub.get_session(sid).state is before_states[sid], "a failed write changed the state"
        assert self.seen_by_devices() == before_seen, "a failed write sent something to a device"

    def snapshot(self):
        return {sid: self.server.hub.get_session(sid).state for sid in self.sids}, self.seen_by_devices()

    def offline(self):
        return [d for d in self.devices if not d.online]

    def online(self):
        return [d for d in self.devices if d.online]

    # -- rules ----------------------------------------------------------------

    @precondition(lambda self: sum(map(len, self.requests.values())) < 6)
    @rule(which=st.integers(0, 1), schema=trees(), preserve=st.booleans())
    def push_schema(self, which, schema, preserve):
        self.push(self.sids[which], schema, preserve)

    @precondition(lambda self: sum(map(len, self.requests.values())) < 6)
    @rule(which=st.integers(0, 1), generated_at=st.integers(1, 3))
    def push_unchanged(self, which, generated_at):
        sid = self.sids[which]
        schema = copy.deepcopy(self.current(sid))
        if schema is None:
            return
        schema["metadata"]["generatedAt"] = generated_at
        self.push(sid, schema)

    @precondition(lambda self: sum(map(len, self.requests.values())) < 6)
    @rule(which=st.integers(0, 1), edit=st.sampled_from(["text", "add", "remove", "theme"]),
          pick=st.integers(0, 20), text=st.sampled_from(["x", "y", "z"]))
    def push_edit(self, which, edit, pick, text):
        """A small change of the current schema: what a developer saving a
        file sends, and what travels as an incremental update."""
        sid = self.sids[which]
        schema = copy.deepcopy(self.current(sid)) or next_schema()
        found = []  # (parent's children list, node)
        stack = [(schema["nodes"], n) for n in schema["nodes"]]
        while stack:
            siblings, n = stack.pop()
            found.append((siblings, n))
            stack.extend((n["children"], c) for c in n["children"])
        if edit == "text" and found:
            found[pick % len(found)][1]["props"]["text"] += text
        elif edit == "remove" and found:
            siblings, n = found[pick % len(found)]
            siblings.remove(n)
        elif edit == "theme":
            schema["theme"] = text
        else:
            used = {n["id"] for _, n in found}
            free = [i for i in IDS + ["g", "h"] if i not in used]
            if free:
                node = {"id": free[0], "type": "Text", "props": {"text": text}, "children": []}
                target = found[pick % len(found)][1]["children"] if found and pick % 3 else schema["nodes"]
                target.insert(pick % (len(target) + 1), node)
        self.push(sid, schema)

    @precondition(lambda self: not self.ASYNC)
    @rule(which=st.integers(0, 1), schema=trees(), locked=st.booleans())
    def push_failing(self, which, schema, locked):
        """The store refuses the write: SQLite really locked by another
        connection (busy_timeout is 0), or an injected StoreError."""
        sid = self.sids[which]
        before = self.snapshot()
        if locked and self.INNER == "sqlite":
            locker = sqlite3.connect(self.store.inner.path, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            try:
                req = self.push(sid, schema)
            finally:
                locker.execute("ROLLBACK")
                locker.close()
        else:
            self.store.fail_next = True
            req = self.push(sid, schema)
            self.store.fail_next = False
        if req.outcome is not None:
            assert req.outcome == "failed", req.outcome
            self.assert_nothing_changed(*before)

    @precondition(lambda self: self.store.pending)
    @rule(pick=st.integers(0, 10), fails=st.integers(0, 3))
    def settle_write(self, pick, fails):
        """A slow write lands (3 in 4) or fails; a failure changes nothing."""
        i = pick % len(self.store.pending)
        if fails:
            self.store.release(i)
            return
        before = self.snapshot()
        self.store.fail(i)
        self.assert_nothing_changed(*before)

    @precondition(lambda self: len(self.devices) < 6)
    @rule(which=st.integers(0, 1), legacy=st.booleans())
    def connect(self, which, legacy):
        device = FakeDevice(self, self.sids[which], f"device-{len(self.devices)}", legacy)
        self.devices.append(device)
        self.attach(device)
        assert device.resumed is False

    @precondition(lambda self: any(d.online for d in self.devices))
    @rule(pick=st.integers(0, 10))
    def disconnect(self, pick):
        online = self.online()
        device = online[pick % len(online)]
        hub_device, device.link, device.hub_device = device.hub_device, None, None
        self.server.hub.detach(device.sid, hub_device)

    @precondition(lambda self: any(not d.online for d in self.devices))
    @rule(pick=st.integers(0, 10), with_checksum=st.booleans())
    def resume(self, pick, with_checksum):
        offline = self.offline()
        device = offline[pick % len(offline)]
        device.lying = False
        claim = {"lastSequence": device.sequence}
        if with_checksum and device.checksum is not None:
            claim["lastChecksum"] = device.checksum
        missed = self.sequence[device.sid] - device.sequence
        self.attach(device, **claim)
        if missed == 0:
            assert device.resumed is True, "a device that missed nothing was not resumed"

    @precondition(lambda self: any(d.online for d in self.devices))
    @rule(pick=st.integers(0, 10), edits=st.lists(st.tuples(
        st.sampled_from(["text", "add", "remove", "theme"]), st.integers(0, 20)), max_size=3),
        with_checksum=st.booleans())
    def miss_updates_and_resume(self, pick, edits, with_checksum):
        """A device drops, a few edits are pushed (and land, if writes are
        slow), the device resumes: it replays them or starts afresh."""
        online = self.online()
        device = online[pick % len(online)]
        self.disconnect(pick % len(online))
        for edit, n in edits:
            self.push_edit(self.sids.index(device.sid), edit, n, "w")
            while self.store.pending:
                self.store.release(0)
        self.resume(self.offline().index(device), with_checksum)

    @precondition(lambda self: any(not d.online for d in self.devices))
    @rule(pick=st.integers(0, 10), ahead=st.integers(0, 3))
    def resume_with_false_claim(self, pick, ahead):
        """A number the daemon never reached, or a checksum that is not the
        one of that number: `resumed: false` and the full schema."""
        offline = self.offline()
        device = offline[pick % len(offline)]
        device.lying = True
        if ahead:
            claim = {"lastSequence": self.sequence[device.sid] + ahead}
        else:
            claim = {"lastSequence": device.sequence, "lastChecksum": "0" * 64}
        self.attach(device, **claim)
        device.lying = False
        assert device.resumed is False

    @rule(seconds=st.floats(1, 45), ping=st.booleans())
    def time_passes(self, seconds, ping):
        """Heartbeat and cleanup sweeps run; devices that stay silent past
        the connection timeout are closed."""
        if ping:
            for device in self.online():
                self.server.hub.seen(device.sid, device.hub_device)
        self.clock.advance(seconds)

    @rule(which=st.integers(0, 1))
    def reload(self, which):
        sid = self.sids[which]
        if self.current(sid) is not None:
            self.server.hub.reload_all(sid)

    @precondition(lambda self: self.INNER == "sqlite")
    @rule()
    def restart(self):
        """The daemon goes down (writes still in flight never land) and a new
        one starts on the same data dir; devices reconnect later."""
        while self.store.pending:
            self.store.fail(0)
        d = self.server.stopService()
        assert d.called
        for device in self.devices:
            device.link = device.hub_device = None
        self._start()

    # -- invariants -----------------------------------------------------------

    @invariant()
    def no_problems(self):
        assert not self.problems, self.problems

    @invariant()
    def views_match_the_committed_state(self):
        hub = self.server.hub
        for sid in self.sids:
            n = self.sequence[sid]
            schema, checksum = self.states[sid][n]
            assert sorted(self.states[sid]) == list(range(n + 1)), "numbers are not gapless"
            session = hub.get_session(sid)
            assert (session.sequence, session.checksum) == (n, checksum)
            assert session.schema == schema
            if n:
                assert session.preserve_state == self.preserve[sid]
            info = self.server.session_info(sid)
            assert info["sequenceNumber"] == n
            assert info["connectedDevices"] == sum(1 for d in self.online() if d.sid == sid)
            if schema is not None:
                full = orjson.loads(hub.full_update(session).payload)["payload"]
                assert (full["sequenceNumber"], full["checksum"], full["schema"]) == (n, checksum, schema)
            history = [e.sequence for e in session.history]
            assert history == list(range(n - len(history) + 1, n + 1)), history
            for entry in session.history:
                assert entry.checksum == self.states[sid][entry.sequence][1]

    @invariant()
    def devices_hold_committed_states(self):
        for device in self.devices:
            self.check_replica(device)
            if device.online:
                assert device.sequence == self.sequence[device.sid], (
                    f"{device.name} is at {device.sequence}, committed is {self.sequence[device.sid]}"
                )
        assert not self.problems, self.problems

    @invariant()
    def writes_are_settled_or_pending(self):
        if not self.ASYNC:
            assert not any(self.requests.values()), "a push with a synchronous store did not answer"
        for sid in self.sids:
            pending = [u for u, _ in self.store.pending if u.session_id == sid]
            assert len(pending) <= 1

    @invariant()
    def the_database_holds_the_committed_state(self):
        if self.reader is None:
            return
        for sid in self.sids:
            n = self.sequence[sid]
            schema, checksum = self.states[sid][n]
            row = self.reader.execute(
                "SELECT sequence, checksum, schema FROM states WHERE session_id = ?", (sid,)
            ).fetchone()
            if n == 0:
                assert row is None
            else:
                assert (row[0], row[1], orjson.loads(row[2])) == (n, checksum, schema)
            stored = self.reader.execute(
                "SELECT sequence, checksum FROM history WHERE session_id = ? ORDER BY sequence", (sid,)
            ).fetchall()
            # exactly the history the live session keeps (what a restart resumes from)
            live = [e.sequence for e in self.server.hub.get_session(sid).history]
            assert [s for s, _ in stored] == live
            assert all(c == self.states[sid][s][1] for s, c in stored)


def run(logged_failures, inner, asynchronous):
    logged_failures.expect(StoreError)  # a failed write is logged as one
    machine = type(
        f"{inner.title()}{'Async' if asynchronous else ''}Pipeline",
        (PushPipeline,),
        {"INNER": inner, "ASYNC": asynchronous},
    )
    run_state_machine_as_test(machine, settings=SETTINGS)


def test_memory_store(logged_failures):
    run(logged_failures, "memory", False)


def test_sqlite_store_with_failures_and_restarts(logged_failures):
    run(logged_failures, "sqlite", False)


def test_asynchronous_store(logged_failures):
    run(logged_failures, "memory", True)


def test_asynchronous_sqlite_store_with_restarts(logged_failures):
    run(logged_failures, "sqlite", True)
