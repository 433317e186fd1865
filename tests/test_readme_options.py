"""The README's options table lists every option of the daemon."""

import pathlib

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
