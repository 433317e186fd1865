"""Helpers of the browser tests: Debian's chromium driven by Playwright's
synchronous API, and a real `twistd -n lumora-reload` in a subprocess.

The daemon runs in its own process so the test thread is free for
Playwright (whose synchronous API runs its own event loop) and so a test
can kill it and start it again. Nothing here touches the Twisted reactor.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

CHROMIUM = os.environ.get("LUMORA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
STARTED = re.compile(r"Site starting on (\d+)")
WAIT_MS = 20_000


def sync_playwright():
    """Playwright's sync entry point, or a skip when chromium or Playwright is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        pytest.skip("playwright is not installed (pip install '.[test]')")
    return start


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Twistd:
    """`twistd -n lumora-reload` on 127.0.0.1:`port` with `data_dir`, in a
    subprocess; `start` waits for its "Site starting on" line."""

    def __init__(self, data_dir, port=None, *extra):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.extra = extra
        self.proc = None
        self.output = []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout=30):
        argv = [TWISTD, "-n", "--pidfile=", "lumora-reload", "--port", f"tcp:{self.port}:interface=127.0.0.1",
                "--data-dir", str(self.data_dir), *self.extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started = threading.Event()

        def read(stream=self.proc.stdout):
            for line in stream:
                self.output.append(line)
                if STARTED.search(line):
                    started.set()
            started.set()  # ended: let start() see it

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("daemon did not start:\n" + "".join(self.output))
        return self

    def kill(self):
        """SIGKILL: no clean shutdown, no close frames."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    # -- the control API over real HTTP --------------------------------

    def call(self, method, path, body=None, headers=None):
        """(status, parsed JSON body)"""
        data = json.dumps(body).encode() if body is not None else None
        h = {"Content-Type": "application/json"} if data is not None else {}
        h.update(headers or {})
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def new_session(self):
        status, body = self.call("POST", "/session/new")
        assert status == 200, body
        return body["sessionId"]

    def push(self, session_id, schema):
        status, body = self.call("POST", f"/send/{session_id}", schema)
        assert status == 200, body
        return body
