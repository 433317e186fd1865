"""Profile the daemon's fan-out path with py-spy (sampling, attached by pid).

py-spy is a tool, not a dependency of the project: install it into the
environment that runs the benchmarks (``pip install py-spy``); without it
``--profile`` is skipped with a note. The raw samples (collapsed stacks)
are kept in the work directory; the summary lists where the daemon's
on-CPU samples fall: by function (inclusive and self) and by a few
categories of the push path.
"""

import collections
import os
import shutil
import signal
import subprocess
import sys
import time

# (category, substrings of a frame "function (file:line)"): a sample goes to
# the first category any of its frames matches, so the narrow ones come first
CATEGORIES = [
    ("cyclic garbage collector", ("gc_collect",)),
    ("epoll registration (startWriting/stopWriting)", ("epoll_ctl", "EPollReactor._add", "EPollReactor._remove")),
    ("socket send (kernel copy)", ("writeSomeData", "send (libc")),
    ("checksum (canonical JSON + SHA-256)", ("checksum", "canonical")),
    ("delta (compute_delta / choose_update)", ("compute_delta", "choose_update", "_diff_children", "_plan")),
    ("validate", ("validate", "_nodes_ok_fast", "_check_node")),
    ("request body: read + JSON parse", ("read_json",)),
    ("update encode (orjson)", ("encode (lumora_reload/messages", "dumps")),
    ("device messages in (acks, pings: frames, parse, handlers)",
     ("WebSocketAdapterProtocol.dataReceived", "onMessage", "processData")),
    ("deliver: per-device send (Autobahn, transport.write)", ("deliver", "sendPreparedMessage")),
    ("HTTP request parsing / response", ("twisted/web/http", "twisted/web/server")),
    ("reactor loop, recv, other I/O", ("doPoll", "_doReadOrWrite", "mainLoop", "epoll_wait")),
]


def py_spy():
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


class Spy:
    """py-spy attached to `pid` until `stop()`; `stop()` returns the summary."""

    def __init__(self, pid, out_path, rate=500, native=False):
        self.out_path = out_path
        exe = py_spy()
        if exe is None:
            raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--format", "raw", "--output", out_path,
             "--rate", str(rate),
             # --native (C frames: orjson, gc, sockets) pauses the daemon per sample
             *(["--native"] if native else ["--nonblocking"])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # let it attach
        if self.proc.poll() is not None:
            raise RuntimeError("py-spy failed: " + self.proc.stderr.read().decode(errors="replace")[-400:])

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not os.path.exists(self.out_path):
            return {"error": "py-spy wrote nothing: " + self.proc.stderr.read().decode(errors="replace")[-400:]}
        return summarize(self.out_path)


def _short(frame):
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.replace("\\", "/").split("/")
    tail = "/".join(parts[-2:]) if parts[-1] in ("__init__.py",) else parts[-1]
    return f"{name} ({tail})"


def summarize(path, top=15):
    inclusive = collections.Counter()
    own = collections.Counter()
    categories = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            frames = stack.split(";")
            # the first entry may be a thread/process label
            frames = [fr for fr in frames if " (" in fr]
            if not frames:
                continue
            total += n
            own[_short(frames[-1])] += n
            for name in {_short(fr) for fr in frames}:
                inclusive[name] += n
            for category, needles in CATEGORIES:
                if any(any(needle in fr for needle in needles) for fr in frames):
                    categories[category] += n
                    break
            else:
                categories["other"] += n
    pct = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0)
    return {
        "samples": total,
        "raw": path,
        "categories": [(c, pct(n)) for c, n in categories.most_common()],
        # frames under nearly every sample (reactor, twistd) say nothing
        "inclusive": [(f, pct(n)) for f, n in inclusive.most_common() if n < 0.9 * total][:top],
        "self": [(f, pct(n)) for f, n in own.most_common(top)],
    }
