"""Options, the twistd plugin and the service wiring."""

import os
import subprocess
import sys

import pytest
from twisted.application.service import IService, IServiceMaker
from twisted.plugin import getPlugins

from lumora_reload import tap


def parse(*argv):
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_defaults():
    options = parse()
    assert options["port"] == "tcp:8080"
    assert options["ws-path"] == "/ws"
    assert options["session-timeout"] == 28800.0
    assert options["heartbeat-interval"] == 30.0
    assert options["connection-timeout"] == 60.0
    assert options["cleanup-interval"] == 60.0
    assert options["incremental-threshold"] == 10
    assert options["data-dir"].endswith("lumora-reload")
    assert options["in-memory"] is False or options["in-memory"] == 0


def test_fractional_seconds_and_repeatable_options():
    options = parse(
        "--session-timeout", "0.2",
        "--heartbeat-interval", "0.2",
        "--allowed-host", "a.example",
        "--allowed-host", "b.example",
        "--allowed-origin", "http://c.example:3000",
        "--in-memory",
    )
    assert options["session-timeout"] == 0.2
    assert options["allowed-hosts"] == ["a.example", "b.example"]
    assert options["allowed-origins"] == ["http://c.example:3000"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--session-timeout", "abc"], "--session-timeout"),
        (["--session-timeout", "1e20"], "at most 2592000 seconds (30 days)"),
        (["--session-timeout", "2592000.5"], "--session-timeout"),
        (["--max-body-size", str(2**63 - 1)], "--max-body-size"),
        (["--heartbeat-interval", "-1"], "--heartbeat-interval"),
        (["--incremental-threshold", "1.5"], "--incremental-threshold"),
        (["--port", "nope:1"], "--port"),
        (["--ws-path", "ws"], "--ws-path"),
        (["--ws-path", "/ws?x=1"], "--ws-path '/ws?x=1' has '?'"),
        (["--ws-path", "/ws#top"], "'#'"),
        (["--ws-path", "/a b"], "' '"),
        (["--ws-path", "/ws\t"], "--ws-path"),
        (["--ws-path", "/a%20b"], "'%'"),
        (["--ws-path", "/caf\u00e9"], "--ws-path"),
        (["--api-token", "a", "--api-token-file", "/x"], "not both"),
        (["--api-token-file", "/does/not/exist"], "--api-token-file"),
        (["--api-token", ""], "--api-token must not be empty"),
        (["--api-token", " "], "--api-token must not be empty"),
        (["--api-token", " tok"], "--api-token must not begin or end with spaces"),
        (["--public-url", "https://user:secret@preview.example"], "must not hold a user name or password"),
        (["--api-token", "", "--api-token-file", "/dev/null"], "--api-token must not be empty"),
        (["--api-token-file", "/dev/null"], "--api-token-file is empty"),
        (["--bogus"], "--bogus"),
        (["--allowed-host", "tunnel.example:8443"],
         "--allowed-host takes a host name or address without scheme or port: tunnel.example"),
        (["--allowed-host", "http://t2.example"],
         "--allowed-host takes a host name or address without scheme or port: t2.example"),
        (["--allowed-host", "[::1]:8080"], "without scheme or port: ::1"),
        (["--allowed-host", "bad host!"], "--allowed-host takes a host name or address without scheme or port"),
        (["--allowed-host", "h.example/x"], "--allowed-host"),
        (["--allowed-origin", "http://"], "--allowed-origin 'http://' must look like http://host:port"),
        (["--allowed-origin", "http://:3000"], "--allowed-origin 'http://:3000' must look like"),
        (["--allowed-origin", "http://o.example:abc"], "--allowed-origin"),
        (["--allowed-origin", "http://[::1"], "--allowed-origin"),
        (["--allowed-origin", "o.example"], "--allowed-origin"),
        (["--public-url", "http://"], "--public-url must name a host"),
        (["--public-url", "http://:8080"], "--public-url must name a host"),
        (["--public-url", "http://host:abc"], "--public-url 'http://host:abc' has a bad port"),
        (["--public-url", "https://host:99999"], "bad port"),
        (["--public-url", "http://[::1"], "--public-url"),
        (["--public-url", "https://bad host!/"], "--public-url must name a host"),
    ],
)
def test_bad_values_exit_with_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


@pytest.mark.parametrize("url", [
    "https://p.example", "https://preview.example.dev/", "http://127.0.0.1:8080/lumora", "https://[::1]:8443",
    "wss://T.example:443", "ws://tunnel_1.example",
])
def test_public_urls_with_a_host_are_taken(url):
    assert parse("--public-url", url)["config"].public_url == url


def test_a_public_url_path_and_port_lead_the_ws_url(reactor):
    from lumora_reload.server import HotReloadServer

    server = HotReloadServer(reactor=reactor, public_url="https://preview.example:8443/lumora/")
    assert server.ws_url("abc") == "wss://preview.example:8443/lumora/ws?session=abc"


@pytest.mark.parametrize("path", ["/ws", "/lumora/ws", "/Dev-1.v2_~/ws", "/a:b@c+d=e;f,g!$&'()*"])
def test_ws_paths_of_url_path_characters_are_taken(path):
    assert parse("--ws-path", path)["config"].ws_path == path


def test_allowed_hosts_are_names_and_addresses(reactor):
    from lumora_reload.server import HotReloadServer

    config = parse(*[arg for name in ["Tunnel.Example", "tunnel_1.example", "192.168.1.20", "::1", "[2001:db8::1]"]
                     for arg in ("--allowed-host", name)])["config"]
    assert config.allowed_hosts == ("tunnel.example", "tunnel_1.example", "192.168.1.20", "::1", "2001:db8::1")
    policy = HotReloadServer(reactor=reactor, config=config).policy
    assert policy.host_ok("[2001:db8::1]:8080") and policy.host_ok("TUNNEL.example:443")


def test_allowed_origins_with_a_host_are_taken():
    origins = ["http://c.example:3000", "https://snack.example/", "capacitor://localhost", "http://[::1]:8080"]
    config = parse(*[arg for origin in origins for arg in ("--allowed-origin", origin)])["config"]
    assert config.allowed_origins == tuple(origins)


def test_a_session_timeout_of_30_days_is_the_longest_taken():
    assert parse("--session-timeout", "2592000")["config"].session_timeout == 2592000


def test_token_file(tmp_path):
    token = tmp_path / "token"
    token.write_text("abc\n")
    assert parse("--api-token-file", str(token))["api-token"] == "abc"


def test_make_service_builds_a_service(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    options = parse("--in-memory", "--port", "tcp:0:interface=127.0.0.1")
    service = tap.build(options, reactor=MemoryReactorClock())
    assert IService.providedBy(service)


def test_plugin_is_discovered():
    names = [p.tapname for p in getPlugins(IServiceMaker)]
    assert "lumora-reload" in names


def test_plugin_is_discovered_from_installed_copy(tmp_path):
    """Run outside the checkout so only the installed package is seen."""
    code = (
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "print([p.tapname for p in getPlugins(IServiceMaker)])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "lumora-reload" in out.stdout


@pytest.mark.parametrize("value", ["never", "1e20"])
def test_twistd_rejects_bad_option_without_traceback(tmp_path, value):
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    out = subprocess.run(
        [twistd, "-n", "lumora-reload", "--session-timeout", value],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    assert "--session-timeout" in out.stderr


def test_make_service_passes_every_option_through(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    from lumora_reload.server import HotReloadServer

    options = parse(
        "--in-memory", "--port", "tcp:0:interface=127.0.0.1", "--ws-path", "/lumora/ws",
        "--session-timeout", "0.2", "--connection-timeout", "7", "--incremental-threshold", "3",
        "--history-size", "5", "--max-sessions", "9", "--max-devices-per-session", "4",
        "--max-body-size", "1000", "--rate-limit", "12", "--rate-burst", "13", "--max-buffer", "14",
        "--max-ack-lag", "2", "--api-token", "tok", "--public-url", "https://p.example",
        "--allowed-host", "h.example", "--allowed-origin", "http://o.example", "--verbose",
    )
    root = tap.build(options, reactor=MemoryReactorClock())
    (hot,) = [s for s in root if isinstance(s, HotReloadServer)]
    limits = hot.hub.limits
    assert (limits.session_timeout, limits.connection_timeout, limits.incremental_threshold) == (0.2, 7, 3)
    assert (limits.history_size, limits.max_sessions, limits.max_devices_per_session, limits.max_ack_lag) == (5, 9, 4, 2)
    assert hot.ws_path == "/lumora/ws" and hot.max_body_size == 1000 and hot.verbose
    factory = hot.ws_factory
    assert (factory.rate_limit, factory.rate_burst, factory.max_buffer) == (12, 13, 14)
    assert hot.policy.api_token == "tok" and "h.example" in hot.policy.allowed_hosts
    assert "p.example" in hot.policy.allowed_hosts and "http://o.example" in hot.policy.allowed_origins
    assert hot.public_url == "https://p.example"


def test_error_codes_are_the_contracts():
    from lumora_reload import errors

    assert set(errors.PROTOCOL_CODES) == set(
        "INVALID_MESSAGE UNSUPPORTED_VERSION SESSION_NOT_FOUND SESSION_EXPIRED AUTHENTICATION_FAILED "
        "SCHEMA_VALIDATION_FAILED UPDATE_FAILED CHECKSUM_MISMATCH RATE_LIMIT_EXCEEDED INTERNAL_ERROR".split()
    )


def test_embedders_get_the_same_validation_as_the_command_line():
    from lumora_reload.server import HotReloadServer

    for option, value in [("history_size", -1), ("session_timeout", 0), ("rate_burst", 1.5),
                          ("max_body_size", float("inf")), ("public_url", "ftp://x"),
                          ("session_timeout", 1e20), ("max_body_size", 2**63 - 1), ("public_url", "http://"),
                          ("allowed_hosts", ["t.example:8443"]), ("allowed_origins", ["http://"]),
                          ("api_token", "")]:
        with pytest.raises(ValueError) as e:
            HotReloadServer(**{option: value})
        # a repeatable option is named as it is given, once
        assert "--" + option.replace("_", "-").removesuffix("s") in str(e.value)


def test_every_config_setting_with_a_kind_is_an_option():
    from lumora_reload.config import Config

    options = tap.Options()
    for field in Config.option_fields():
        assert field.name.replace("_", "-") in options, field.name


def test_max_history_bytes_bounds_what_a_session_keeps_for_resume(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    from lumora_reload.server import HotReloadServer
    from tests.helpers import make_schema, node, with_text

    options = parse("--in-memory", "--port", "tcp:0:interface=127.0.0.1", "--max-history-bytes", "2000")
    root = tap.build(options, reactor=MemoryReactorClock())
    (hot,) = [s for s in root if isinstance(s, HotReloadServer)]
    assert hot.hub.limits.history_bytes == 2000
    schema = make_schema([node("root", "View", [node("title", text="x"), node("pad", text="p" * 5000)])])
    sid = hot.create_session(schema).id
    for i in range(10):
        hot.push_update(sid, with_text(schema, f"edit {i}"))
    history = hot.get_session(sid).history
    assert sum(len(e.payload or b"") for e in history) <= 2000 or len(history) == 1
    assert history[-1].sequence == 11 and len(history) < 10


def test_only_the_twistd_entry_point_tunes_the_process(monkeypatch):
    """The garbage collector's settings and the reactor's lean poll loop."""
    import gc

    from twisted.internet.testing import MemoryReactorClock

    from lumora_reload import leanpoll

    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "set_threshold", lambda *a: calls.append(a))
    monkeypatch.setattr(leanpoll, "install", lambda reactor: calls.append(reactor))
    options = parse("--in-memory", "--port", "tcp:0:interface=127.0.0.1")
    tap.build(options, reactor=MemoryReactorClock())
    assert calls == []
    reactor = MemoryReactorClock()
    tap.makeService(options, reactor=reactor)
    assert calls == ["freeze", (20000, 2, 115), reactor]
