"""The rooms keep their shape: the domain imports no transport, no store is
asked what it is, and no module grows past what one reader holds."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "lumora_reload"
DOMAIN = ["schema", "model.py", "sessions.py", "store.py", "replica.py"]
TRANSPORTS = {"websocket", "api", "web", "cluster", "connection", "server", "tap"}
FOREIGN = ("autobahn", "twisted.web", "twisted.internet.reactor")
MAX_LINES = 550


def modules(names):
    for name in names:
        path = PACKAGE / name
        yield from (sorted(path.rglob("*.py")) if path.is_dir() else [path])


def imported(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            yield from (a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module:
            yield n.module
            yield from (f"{n.module}.{a.name}" for a in n.names)


def test_the_domain_imports_no_transport():
    for path in modules(DOMAIN):
        for name in imported(path):
            parts = name.split(".")
            assert not (parts[0] == "lumora_reload" and len(parts) > 1 and parts[1] in TRANSPORTS), (path, name)
            assert not name.startswith(FOREIGN), (path, name)


def test_no_code_asks_a_store_what_it_is():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "hasattr(self.store" not in text and "hasattr(store" not in text, path


def test_no_module_is_longer_than_one_reader_holds():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long
