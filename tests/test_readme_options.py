"""The README's options table lists every option of the daemon."""

import pathlib
import re

from lumora_reload.tap import Options


def test_every_daemon_option_is_in_the_readme_options_table():
    """Each option `twistd lumora-reload --help` lists has a row in the README's options table."""
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("\n## Options\n"):readme.index("\n## Control API\n")]
    options = Options()
    flags = [row[0] for row in options.optParameters + options.optFlags if row[0] not in ("help", "version")]
    flags += ["allowed-host", "allowed-origin"]
    missing = [flag for flag in flags if f"`--{flag}" not in table]
    assert not missing, f"options missing from the README's table: {missing}"


def test_help_gives_the_data_dir_defaults_the_readme_gives():
    """Both places name the XDG state directory and its fallback when XDG_STATE_HOME is unset."""
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `--data-dir D`"))
    help_text = " ".join(str(Options()).split())
    for default in ("$XDG_STATE_HOME/lumora-reload", "~/.local/state/lumora-reload"):
        assert default in row and default in help_text, default


def test_the_options_table_gives_the_daemon_defaults():
    """Each default in the README's options table is the one the daemon takes."""
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("\n## Options\n"):readme.index("\n## Control API\n")]
    options = Options()
    options.parseOptions([])
    checked = []
    for line in table.splitlines():
        if not line.startswith("| `--"):
            continue
        option_cell, default_cell = line.split(" | ")[:2]
        flags = re.findall(r"`--([a-z-]+)", option_cell)
        if flags == ["data-dir"] or flags == ["public-url"]:
            continue  # their own tests: the XDG fallback, the request's Host
        defaults = re.findall(r"`([^`]*)`", default_cell) or [default_cell.strip()] * len(flags)
        assert len(defaults) == len(flags), line
        for flag, text in zip(flags, defaults):
            value = options[{"allowed-host": "allowed-hosts", "allowed-origin": "allowed-origins"}.get(flag, flag)]
            if text in ("none", "off"):
                assert not value, (flag, value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                assert type(value)(text) == value, (flag, text, value)
            else:
                assert text == value, (flag, text, value)
            checked.append(flag)
    assert len(checked) == len(set(checked)) >= 28, checked


def test_the_security_limits_table_gives_the_daemon_defaults():
    """The README's limits table names each limit's option and its default; both are the daemon's."""
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("\n**Limits**"):readme.index("\n**Behind a tunnel**")]
    options = Options()
    options.parseOptions([])
    units = {"": 1, "MiB": 1024 * 1024, "s": 1, "/s": 1}
    checked = []
    for line in section.splitlines():
        cells = line.split(" | ")
        flags = re.findall(r"`--([a-z-]+)`", cells[1]) if len(cells) > 2 else []
        if not flags:
            continue
        texts = [t for group in re.findall(r"\(([^)]*)\)", cells[1]) for t in group.split(", ")]
        texts += texts[-1:] * (len(flags) - len(texts))  # one default for several options
        for flag, text in zip(flags, texts):
            number, unit = re.fullmatch(r"(\d+) ?(MiB|s|/s|)", text).groups()
            assert int(number) * units[unit] == options[flag], (flag, text, options[flag])
            checked.append(flag)
    assert len(checked) == 14, checked


def test_the_ready_line_of_the_default_port_is_the_one_the_readme_shows():
    """`twistd -n lumora-reload` (every interface, port 8080) logs the line the Options section quotes."""
    from twisted.internet.address import IPv4Address

    from lumora_reload.listen import ready_line

    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("\n## Options\n"):readme.index("\n## Control API\n")]
    shown = section.split("what to do next:\n\n```\n", 1)[1].split("\n```", 1)[0]
    assert ready_line(IPv4Address("TCP", "0.0.0.0", 8080)) == shown
