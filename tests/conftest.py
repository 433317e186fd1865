"""Shared fixtures: a lazily-imported reactor, a Clock, a log observer that
fails the test on any logged failure, and a real daemon on loopback."""

import os
import random

import pytest
import pytest_twisted
from hypothesis import HealthCheck, settings
from twisted.internet import task
from twisted.logger import globalLogPublisher

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "slow", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run slow (soak, crash-loop) tests")
    parser.addoption(
        "--seed", type=int, default=None,
        help="seed of the tests that draw random choices (each prints its seed: replay a failure with it)",
    )


# a property test's budget under the slow profile: its thousands of examples
# take longer than the default run's per-test timeout
SLOW_PROFILE_TIMEOUT = 3600


def pytest_collection_modifyitems(config, items):
    if os.environ.get("HYPOTHESIS_PROFILE") == "slow":
        for item in items:
            if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
                item.add_marker(pytest.mark.timeout(SLOW_PROFILE_TIMEOUT))
    if config.getoption("--run-slow") or os.environ.get("LUMORA_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow: use --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def choose_seed(option, environ):
    """--seed, else LUMORA_SEED, else a fresh random seed."""
    if option is not None:
        return option
    return int(environ.get("LUMORA_SEED") or random.randrange(2**32))


@pytest.fixture
def seed(request):
    """A seed for a test's own random choices: printed (shown with a
    failure), and taken from --seed or LUMORA_SEED to replay one."""
    value = choose_seed(request.config.getoption("--seed"), os.environ)
    print(f"random seed {value} (replay: pytest --seed {value} {request.node.nodeid})")
    return value


@pytest.fixture
def reactor():
    from twisted.internet import reactor as global_reactor

    return global_reactor


@pytest.fixture
def clock():
    return task.Clock()


class _Failures:
    """Collects logged failures; a test that expects some says so with
    `logged_failures.expect(SomeError)`."""

    def __init__(self):
        self.events = []
        self.expected = []

    def __call__(self, event):
        if event.get("log_failure") is not None:
            self.events.append(event)
        elif event.get("isError") and event.get("failure") is not None:
            # an old-style `log.err` (Twisted's reactor logs a failed
            # protocol callback this way): the same, under its new name
            self.events.append({**event, "log_failure": event["failure"]})

    def expect(self, *types):
        self.expected.extend(types)

    def unexpected(self):
        return [e for e in self.events if not (self.expected and e["log_failure"].check(*self.expected))]


def _ours(call):
    """Whether a pending DelayedCall was scheduled by lumora-reload's code."""
    func = getattr(call, "func", None)
    owner = getattr(func, "__self__", None)
    # a LoopingCall schedules itself and keeps what it calls as .f
    for candidate in (func, owner, getattr(func, "f", None), getattr(owner, "f", None)):
        module = getattr(candidate, "__module__", "") or ""
        if module.startswith("lumora_reload"):
            return True
    return False


def leaked_timers(reactor, before):
    """Our timers pending on `reactor` that were not there `before` (a set
    of ids); they are cancelled, so one leak does not fail later tests."""
    leaked = [c for c in reactor.getDelayedCalls() if id(c) not in before and c.active() and _ours(c)]
    for call in leaked:
        call.cancel()
    return leaked


@pytest.fixture(autouse=True)
def no_leaked_timers(request):
    """A test leaves none of our timers pending on the global reactor (the
    dirty-reactor check of trial, for the timers lumora-reload schedules)."""
    if "reactor" not in request.fixturenames:
        yield
        return
    from twisted.internet import reactor as global_reactor

    before = set(map(id, global_reactor.getDelayedCalls()))
    yield
    leaked = leaked_timers(global_reactor, before)
    assert not leaked, "timers left pending: " + "; ".join(repr(c) for c in leaked)


@pytest.fixture(autouse=True)
def logged_failures():
    observer = _Failures()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)
    bad = observer.unexpected()
    assert not bad, "logged failures: " + "; ".join(
        e["log_failure"].getTraceback() for e in bad
    )


@pytest.fixture
def daemon_factory(reactor):
    """Start HotReloadServer instances on real loopback ports: inside a test,
    ``daemon = await daemon_factory(option=value)``."""
    from tests.helpers import Daemon

    started = []

    def start(**options):
        daemon = Daemon(reactor, **options)
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        if daemon.port is not None:
            pytest_twisted.blockon(daemon.stop())


@pytest.fixture
def daemon(daemon_factory):
    return pytest_twisted.blockon(daemon_factory())
