"""The CLI finds its daemon and sessions the short way: $LUMORA_RELOAD_URL,
session-id prefixes, hints that carry --url, and a warning when the LAN URL
it prints cannot work. Run for real against a daemon on loopback."""

import os
import sys

import pytest_twisted
from twisted.internet import utils

from tests.helpers import make_schema
from tests.test_cli import ENV, free_port, one_error_line

ensure = pytest_twisted.ensureDeferred


async def cli(daemon, *args, env=None):
    """Run `lumora-reload ARGS` (no --url unless given); (code, out, err)."""
    environ = dict(ENV)
    environ.pop("LUMORA_RELOAD_URL", None)
    environ.update(env or {})
    d = utils.getProcessOutputAndValue(sys.executable, ["-m", "lumora_reload", *args], env=environ)
    out, err, code = await d.addTimeout(30, daemon.reactor)
    return code, out.decode(), err.decode()


@ensure
async def test_lumora_reload_url_is_the_default_for_url(daemon):
    """$LUMORA_RELOAD_URL points every command at a daemon not on 8080."""
    sid = await daemon.new_session(make_schema())
    env = {"LUMORA_RELOAD_URL": daemon.url}
    code, out, err = await cli(daemon, "status", sid, env=env)
    assert code == 0, err
    assert f"Session {sid}: state #1" in out
    # --url still wins over it
    port = free_port()
    code, out, err = await cli(daemon, "--url", f"http://127.0.0.1:{port}", "status", sid, env=env)
    line = one_error_line(code, out, err)
    assert "cannot reach the daemon" in line
    # the hint starts a daemon there, or names that URL to `dev`
    assert f"`twistd -n lumora-reload --port {port}`" in line
    assert f"`lumora-reload --url http://127.0.0.1:{port} dev`" in line
    # a bad value names the variable
    code, out, err = await cli(daemon, "status", env={"LUMORA_RELOAD_URL": "localhost:8080"})
    assert code == 2 and "$LUMORA_RELOAD_URL must look like" in err


def fixed_ids(daemon, *ids):
    """The daemon gives out these session ids, in order."""
    queue = list(ids)
    daemon.server.hub.new_session_id = lambda: queue.pop(0)


@ensure
async def test_a_unique_prefix_of_six_or_more_stands_for_the_session(daemon):
    """Commands take a unique prefix; too short, unknown or ambiguous is one line."""
    fixed_ids(daemon, "abcdef01" + "0" * 24, "abcdef02" + "0" * 24, "123456ff" + "0" * 24)
    first, second, third = [await daemon.new_session(make_schema()) for _ in range(3)]
    url = ["--url", daemon.url]
    code, out, err = await cli(daemon, *url, "reload", "123456")
    assert code == 0, err
    assert out.strip() == "full update #1 sent to 0 devices"
    code, out, err = await cli(daemon, *url, "status", "abcdef02")
    assert code == 0 and f"Session {second}:" in out, err
    line = one_error_line(*await cli(daemon, *url, "status", "abcdef"))
    assert "'abcdef' matches 2 sessions" in line and "give more characters" in line
    line = one_error_line(*await cli(daemon, *url, "push", "abcde", os.devnull))
    assert "'abcde' is too short" in line and "6 characters" in line
    line = one_error_line(*await cli(daemon, *url, "logs", "fedcba"))
    assert "no session id starts with 'fedcba'" in line and f"lumora-reload --url {daemon.url} status" in line
    assert first and third


@ensure
async def test_hints_carry_url_when_it_is_not_the_default(daemon):
    """`Next:` and error hints name --url when the daemon is not the default one."""
    code, out, err = await cli(daemon, "--url", daemon.url, "session", "new", "--no-qr")
    assert code == 0, err
    sid = out.split()[1]
    assert f"Next: lumora-reload --url {daemon.url} push {sid} app.json" in out
    assert f"lumora-reload --url {daemon.url} watch {sid} app.json" in out
    line = one_error_line(*await cli(daemon, "--url", daemon.url, "status", "0" * 32))
    assert f"create one with `lumora-reload --url {daemon.url} session new`" in line
    # the same daemon given by $LUMORA_RELOAD_URL is the default: no --url
    code, out, err = await cli(daemon, "session", "new", "--no-qr", env={"LUMORA_RELOAD_URL": daemon.url})
    assert code == 0, err
    assert "Next: lumora-reload push " in out and "--url" not in out


@ensure
async def test_session_new_warns_when_the_daemon_listens_on_loopback_only(daemon):
    """A LAN URL for a daemon bound to 127.0.0.1 comes with a warning and the fix."""
    daemon.server.loopback_only = True
    code, out, err = await cli(daemon, "--url", daemon.url, "session", "new", "--host", "10.1.2.3", "--no-qr")
    assert code == 0, err
    port = daemon.port.getHost().port
    assert f"Warning: the daemon listens on this machine only, so phones cannot reach 10.1.2.3:{port}" in out
    assert f"restart it with --port {port}" in out
    daemon.server.loopback_only = False
    code, out, err = await cli(daemon, "--url", daemon.url, "session", "new", "--host", "10.1.2.3", "--no-qr")
    assert code == 0 and "Warning" not in out, err
