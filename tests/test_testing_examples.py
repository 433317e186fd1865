"""The test kit as its users meet it: the plugin is found by pytest in any
directory, and the two examples pass under pytest and under Trial."""

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(args, cwd):
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    return result.returncode, result.stdout + result.stderr


def test_fixtures_listed_in_an_empty_directory(tmp_path):
    code, out = _run(["-m", "pytest", "--fixtures", "-p", "no:cacheprovider"], tmp_path)
    assert code in (0, 5), out  # 5: no tests collected
    for name in ("lumora_server", "lumora_server_factory", "lumora_device", "lumora_memory"):
        assert f"\n{name} -- " in out, out


def test_pytest_example_passes(tmp_path):
    example = str(EXAMPLES / "test_client_pytest.py")
    code, out = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", example], tmp_path)
    assert code == 0, out
    assert "3 passed" in out, out


def test_trial_example_passes(tmp_path):
    code, out = _run(["-m", "twisted.trial", str(EXAMPLES / "test_client_trial.py")], tmp_path)
    assert code == 0, out
    assert "PASSED (successes=4)" in out, out
