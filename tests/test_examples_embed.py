"""The embedding examples run as their docstrings say (`twistd -ny
examples/embed.tac`, `python examples/embed_script.py`): each really serves
REST and devices, and the README's Embedding snippets are copied from them."""

import os
import re
import socket
import sys
from pathlib import Path

import pytest
import pytest_twisted

from tests.helpers import make_schema
from tests.processes import TWISTD, Remote, spawn_child  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WS_URL = rb"devices connect to (ws://127\.0\.0\.1:(\d+)/ws\?session=(\w+))"
PUSHED = rb"pushed full to 0 devices, # 1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def check_serves(reactor, child):
    """The example's session is live: /health counts it, a device on the
    printed URL gets its schema, a REST push reaches the device, and
    stopping closes the device with 1012."""
    found = await child.wait_for(WS_URL)
    await child.wait_for(PUSHED)
    url, port, sid = (g.decode() for g in found.groups())
    remote = Remote(reactor, f"http://127.0.0.1:{port}")
    status, health = await remote.call("GET", "/health")
    assert (status, health["sessions"]) == (200, 1)
    device = await remote.device(query=url[url.index("?"):])
    hello = await device.hello(device_id="phone")
    assert hello["sequenceNumber"] == 1 and hello["initialSchema"]["nodes"][0]["props"]["text"] == "Hello"
    result = await remote.push(sid, make_schema())
    assert (result["sequenceNumber"], result["devicesUpdated"]) == (2, 1)
    assert (await device.next_of("update"))["payload"]["sequenceNumber"] == 2
    child.signal("TERM")
    assert await device.wait_closed() == (1012, "Service restart")
    return await child.ended


@pytest_twisted.ensureDeferred
async def test_tac_example_serves_under_twistd(reactor, spawn_child, tmp_path):
    """`twistd -ny examples/embed.tac` serves REST and devices on PORT and pushes its first schema."""
    env = {**os.environ, "PORT": str(free_port())}
    child = spawn_child([TWISTD, "-ny", str(EXAMPLES / "embed.tac"), "--pidfile="], env=env, path=str(tmp_path))
    await check_serves(reactor, child)
    assert b"Traceback" not in child.output, child.output.decode()
    # its access log cuts session ids, as the daemon's does
    sid = re.search(WS_URL, child.output).group(3)
    pushes = [line for line in child.output.splitlines() if b'"POST /send/' in line]
    assert pushes and not [line for line in pushes if sid in line], pushes


@pytest_twisted.ensureDeferred
async def test_script_example_serves_with_react(reactor, spawn_child):
    """`python examples/embed_script.py 0` serves REST and devices, pushes its first schema, and stops cleanly on SIGTERM."""
    child = spawn_child([sys.executable, str(EXAMPLES / "embed_script.py"), "0"])
    assert await check_serves(reactor, child) == 0
    assert b"Traceback" not in child.output, child.output.decode()


@pytest_twisted.ensureDeferred
async def test_script_example_bounded_run_exits_by_itself(spawn_child):
    """`--exit-after` ends the script with status 0 after its push."""
    child = spawn_child([sys.executable, str(EXAMPLES / "embed_script.py"), "0", "--exit-after", "0.5"])
    assert await child.ended == 0
    assert PUSHED in child.output


def readme_section(title):
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


@pytest.mark.parametrize("example", ["embed.tac", "embed_script.py"])
def test_readme_embedding_snippet_is_copied_from_the_example(example):
    """The README's Embedding section shows the example's code, line for line."""
    blocks = re.findall(r"```python\n(.*?)```", readme_section("Embedding"), re.S)
    source = (EXAMPLES / example).read_text()
    copied = [b for b in blocks if b in source]
    assert copied, f"no python block of the README's Embedding section is a part of examples/{example}"
    assert len(copied[0].splitlines()) >= 15
