"""`Pusher` on a Clock with a scripted daemon: one push at a time, the
newest submission wins, and a push the daemon could not take is retried
with the latest content until it answers."""

import io
import json

from twisted.internet import defer

from lumora_reload.cli.output import CliError, Output
from lumora_reload.cli.watch import Pusher
from tests.helpers import make_schema, with_text

ANSWER = {"success": True, "updateType": "full", "sequenceNumber": 1, "devicesUpdated": 0}


class Daemon:
    """Answers pushes as told: "ok", "down" (cannot be reached) or "hold"
    (answers when `release` is called)."""

    def __init__(self):
        self.mode = "ok"
        self.sent = []
        self.held = []

    def push(self, raw, source):
        self.sent.append(json.loads(raw)["nodes"][0]["children"][0]["props"]["text"])
        if self.mode == "down":
            return defer.fail(CliError("cannot reach the daemon at http://127.0.0.1:8080 (connection refused)"))
        if self.mode == "hold":
            d = defer.Deferred()
            self.held.append(d)
            return d
        return defer.succeed((ANSWER, 1.0))

    def release(self):
        self.held.pop(0).callback((ANSWER, 1.0))


def schema(text):
    return json.dumps(with_text(make_schema(), text)).encode()


def pusher(clock):
    stream = io.StringIO()
    daemon = Daemon()
    p = Pusher(None, None, Output(as_json=True, stream=stream), "s" * 32, clock=clock, push=daemon.push)
    return p, daemon, stream


def events(stream):
    return [json.loads(line)["event"] for line in stream.getvalue().splitlines()]


def submit(p, text):
    p.submit(lambda: (schema(text), "app.json"))


def test_a_push_the_daemon_could_not_take_is_retried_until_it_answers(clock):
    """Down: reported once, retried every second; back: pushed, said so."""
    p, daemon, stream = pusher(clock)
    daemon.mode = "down"
    submit(p, "a")
    clock.advance(1.0)
    clock.advance(1.0)
    assert daemon.sent == ["a", "a", "a"] and events(stream) == ["unreachable"]
    daemon.mode = "ok"
    clock.advance(1.0)
    assert daemon.sent == ["a"] * 4 and events(stream) == ["unreachable", "reachable", "push"]
    clock.advance(10.0)
    assert len(daemon.sent) == 4 and not clock.getDelayedCalls()  # nothing left to retry


def test_a_newer_save_replaces_the_one_waiting_for_the_daemon(clock):
    """While the daemon is down, only the latest content is tried again."""
    p, daemon, stream = pusher(clock)
    daemon.mode = "down"
    submit(p, "old")
    submit(p, "new")
    daemon.mode = "ok"
    clock.advance(1.0)
    assert daemon.sent == ["old", "new", "new"]  # "old" is never tried again
    clock.advance(5.0)
    assert daemon.sent == ["old", "new", "new"]


def test_one_push_at_a_time_and_the_newest_submission_wins(clock):
    """Submissions made during a push collapse into the newest one."""
    p, daemon, stream = pusher(clock)
    daemon.mode = "hold"
    submit(p, "1")
    submit(p, "2")
    submit(p, "3")
    assert daemon.sent == ["1"]
    daemon.release()
    assert daemon.sent == ["1", "3"]
    daemon.release()
    submit(p, "3")  # the same content again: nothing to push
    assert daemon.sent == ["1", "3"] and events(stream) == ["push", "push"]


def test_the_stop_cancels_a_pending_retry(clock):
    """Stopping leaves no timer behind."""
    p, daemon, _ = pusher(clock)
    daemon.mode = "down"
    submit(p, "a")
    assert clock.getDelayedCalls()
    p.stop()
    assert not clock.getDelayedCalls()
